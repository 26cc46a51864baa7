//! SIGCHLD, SIGTERM and SIGINT as readable pipes (signal-hook's self-pipe): the handler writes a
//! byte, the runtime wakes on the read end. Unlike tokio::signal this keeps no per-signal
//! registry (about 23 kB per shim) and, unlike a signalfd, blocks no signal that children
//! would inherit.

use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;

pub struct SignalPipe {
    rx: pipe::Receiver,
}

impl SignalPipe {
    /// One pipe for all `signals`. Must be called inside the runtime.
    pub fn new(signals: &[libc::c_int]) -> std::io::Result<SignalPipe> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        for sig in signals {
            let w: OwnedFd = w.try_clone()?;
            signal_hook::low_level::pipe::register(*sig, w)?;
        }
        drop(w);
        Ok(SignalPipe { rx: pipe::Receiver::from_owned_fd(r)? })
    }

    /// Wait for at least one delivery; deliveries that arrived meanwhile are consumed too, since
    /// signals coalesce anyway and every consumer re-checks the state.
    pub async fn recv(&mut self) -> std::io::Result<()> {
        let mut buf = [0u8; 64];
        let n = self.rx.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        while let Ok(n) = self.rx.try_read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        Ok(())
    }
}
