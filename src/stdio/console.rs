//! Terminal mode: the runtime sends the pty master over a console socket (SCM_RIGHTS).

use std::io::{IoSliceMut, Read as _};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{Error, Result};

/// A listening socket in a private directory, both removed on drop.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// The directory is made by mkdtemp (0700, an unpredictable name): a predictable socket
    /// path in a shared $TMPDIR would let another user bind it first and be sent the pty.
    pub fn new() -> Result<Self> {
        let template = std::env::temp_dir().join("rustshim-pty-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| Error::io(format!("console socket directory in {}", template.display()), e.into()))?;
        let path = dir.join("pty.sock");
        let listener = UnixListener::bind(&path).map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            Error::io(format!("console socket {}", path.display()), e)
        })?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take the master the runtime sent. Called after the runtime exited successfully, so the
    /// connection and its message are already queued; never blocks waiting for them.
    pub fn receive(self) -> Result<OwnedFd> {
        self.listener.set_nonblocking(true).map_err(|e| Error::io("console socket", e))?;
        let (mut stream, _) = self.listener.accept().map_err(|e| {
            Error::io("the runtime did not connect to the console socket", e)
        })?;
        stream.set_nonblocking(true).map_err(|e| Error::io("console socket", e))?;
        let mut name = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| Error::io("receive pty master", e.into()))?;
        for cmsg in msg.cmsgs().map_err(|e| Error::io("receive pty master", e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    for extra in &fds[1..] {
                        // SAFETY: fds received by SCM_RIGHTS are ours to close.
                        drop(unsafe { OwnedFd::from_raw_fd(*extra) });
                    }
                    // SAFETY: as above; this one we keep.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let _ = stream.read(&mut [0u8; 1]);
        Err(Error::Other("the runtime sent no pty master on the console socket".into()))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The pty master, shared by the copy tasks and ResizePty.
pub struct Console {
    fd: AsyncFd<OwnedFd>,
}

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

impl Console {
    pub fn new(master: OwnedFd) -> Result<Self> {
        set_nonblocking(master.as_raw_fd())?;
        // SAFETY: the Console owns the master fd and keeps it open while registered.
        let fd = unsafe { AsyncFd::register(master) }.map_err(|e| Error::io("pty master", e.into()))?;
        Ok(Console { fd })
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
        unsafe { tiocswinsz(self.fd.get_ref().as_raw_fd(), &ws) }
            .map(drop)
            .map_err(|e| Error::io("resize pty", e.into()))
    }

    pub async fn readable(&self) -> std::io::Result<()> {
        self.fd.readable().await.map(|mut g| g.retain_ready())
    }

    /// Read what is there; Ok(0) once the last slave fd is closed (the kernel says EIO),
    /// WouldBlock (readiness cleared) when drained.
    pub fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = self.fd.try_io(Interest::READABLE, |fd| nix::unistd::read(fd.as_fd(), buf).map_err(Into::into));
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            r => r,
        }
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(Into::into)) {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

fn set_nonblocking(fd: RawFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    // SAFETY: fd is open for the duration of this call.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = OFlag::from_bits_truncate(fcntl(bfd, FcntlArg::F_GETFL)?);
    fcntl(bfd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_socket_lives_in_a_private_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let s = ConsoleSocket::new().unwrap();
        let dir = s.path().parent().unwrap().to_path_buf();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(dir.file_name().unwrap().to_str().unwrap().starts_with("rustshim-pty-"));
        let other = ConsoleSocket::new().unwrap();
        assert_ne!(other.path().parent(), Some(dir.as_path()), "each socket its own directory");
        drop(s);
        assert!(!dir.exists(), "removed with the socket");
    }
}
