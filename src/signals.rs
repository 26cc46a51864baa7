//! The shim's own signals (SIGCHLD, SIGTERM, SIGINT, SIGUSR1) through one signalfd.
//!
//! Why a signalfd and not a self-pipe: the shim then holds no pipe of its own, so every pipe in a
//! shim's fd table is some process's stdio and a leak is plain to see; and no handler runs at
//! all. The price is a blocked mask, which children would inherit: `Reaper::spawn` resets the
//! mask and every disposition in the child before exec (see `reset_for_exec`).

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::unix::AsyncFd;

/// The signals the shim handles. Blocked in every thread from `block()` on.
pub const HANDLED: [Signal; 4] = [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1];

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    HANDLED.iter().for_each(|s| set.add(*s));
    set
}

/// Block the handled signals. Call before any thread exists (tokio's blocking threads inherit
/// the mask), so no handled signal is ever delivered the default way.
pub fn block() -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None)
}

/// In a forked child, before exec: the empty mask and default dispositions every program
/// expects (the shim ignores SIGPIPE and SIGHUP and blocks the handled signals; a runtime or
/// logger inheriting that would not die of a closed pipe or a hangup).
///
/// # Safety
/// Only async-signal-safe calls: meant for `CommandExt::pre_exec`.
pub unsafe fn reset_for_exec() {
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for sig in 1..libc::SIGRTMIN() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// The handled signals as a readable fd in the runtime.
pub struct Signals {
    fd: AsyncFd<SignalFd>,
}

impl Signals {
    /// Must be called inside the runtime, after `block()`.
    pub fn new() -> std::io::Result<Signals> {
        let sfd = SignalFd::with_flags(&handled_set(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        // SAFETY: the AsyncFd owns the SignalFd, whose fd stays open and unchanged until the
        // AsyncFd drops it.
        let fd = unsafe { AsyncFd::register_with_interest(sfd, tokio::io::Interest::READABLE) }?;
        Ok(Signals { fd })
    }

    /// The next signal. Signals of one kind coalesce while pending; every consumer re-checks
    /// the state it cares about (the reaper reaps until waitpid says nothing is left).
    pub async fn recv(&mut self) -> std::io::Result<Signal> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            match guard.get_inner_mut().read_signal() {
                Ok(Some(info)) => {
                    return Signal::try_from(info.ssi_signo as i32).map_err(std::io::Error::from);
                }
                Ok(None) => guard.clear_ready(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
