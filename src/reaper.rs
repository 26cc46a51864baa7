//! The one reaper: the shim is the child subreaper, and every child, runc, loggers, container
//! processes re-parented to us and their orphans, is collected here by one SIGCHLD/waitpid loop.
//!
//! Callers that spawn a child go through [`Reaper::spawn`], which registers interest in the pid
//! under the same lock that covers the fork, so the reaper can never collect a child's status
//! before its spawner is listening. Every other exit goes to the supervisor.

use std::collections::HashMap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::signals::Signals;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The exit code, or 128 + signal for a process killed by a signal.
    pub status: u32,
    pub at: SystemTime,
}

/// Where exits of pids nobody spawned through [`Reaper::spawn`] go.
pub trait ExitSink: Send + Sync {
    fn on_exit(&self, exit: Exit);
}

#[derive(Default)]
pub struct Reaper {
    subscribers: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

pub fn set_subreaper() -> std::io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// 128+signal for signalled processes, as containerd and shells report them.
pub fn exit_code(status: WaitStatus) -> Option<(i32, u32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code as u32)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as u32)),
        _ => None,
    }
}

/// A pidfd for `pid`, or None without pidfd support (Linux < 5.3) or once the pid is gone.
/// Opened while the process cannot have been reaped, it names that process and no other.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Send `sig` through a pidfd: a process that was reaped answers ESRCH, never its pid's next owner.
pub fn pidfd_signal(fd: &OwnedFd, sig: i32) -> nix::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// A child spawned through the reaper. Dropped before its exit was collected, it is killed:
/// whoever needed it has gone away (an RPC whose caller hung up or whose deadline passed).
pub struct Child {
    pub pid: i32,
    pidfd: Option<OwnedFd>,
    exited: Option<oneshot::Receiver<Exit>>,
}

impl Child {
    /// Wait for the exit. After it, the child is no longer killed on drop.
    pub async fn wait(&mut self) -> Option<Exit> {
        let rx = self.exited.as_mut()?;
        let exit = rx.await.ok();
        self.exited = None;
        self.pidfd = None;
        exit
    }

    /// SIGKILL, unless its exit was already collected (then its pid may belong to another).
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Send `sig` unless the exit was already collected.
    pub fn signal(&mut self, sig: i32) {
        if let Some(rx) = &mut self.exited {
            if !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                self.exited = None;
                return;
            }
            match &self.pidfd {
                Some(fd) => {
                    let _ = pidfd_signal(fd, sig);
                }
                // SAFETY: our child, not yet reaped (its exit has not been delivered, and the
                // reaper delivers on this thread).
                None => unsafe {
                    libc::kill(self.pid, sig);
                },
            }
        }
    }

}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exited.is_some() {
            log::debug!("killing child pid {}: its caller went away", self.pid);
            self.kill();
        }
    }
}

impl Reaper {
    /// Spawn `cmd` with the empty signal mask and default dispositions, and return its handle.
    /// The std `Child` is dropped without waiting: its status belongs to the reaper.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Child> {
        // SAFETY: reset_for_exec makes only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(|| {
                crate::signals::reset_for_exec();
                Ok(())
            });
        }
        let (tx, rx) = oneshot::channel();
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        subs.insert(pid, tx);
        drop(subs);
        drop(child);
        // Not yet reaped: the reaper runs on this thread, and this function does not yield.
        Ok(Child { pid, pidfd: pidfd_open(pid), exited: Some(rx) })
    }

    /// Collect every child that has exited; call on each SIGCHLD (signals coalesce).
    pub fn reap_all(&self, sink: &dyn ExitSink) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return,
                Ok(ws) => {
                    let Some((pid, status)) = exit_code(ws) else { continue };
                    let exit = Exit { pid, status, at: SystemTime::now() };
                    let sub = self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
                    match sub {
                        Some(tx) => {
                            let _ = tx.send(exit);
                        }
                        None => sink.on_exit(exit),
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return, // ECHILD: no children left
            }
        }
    }

    /// Reap on every SIGCHLD; hand every other handled signal back to the caller. Reaps once
    /// first, for children that exited before the signalfd existed. An error of the signalfd
    /// is returned: without it no exit would ever be seen again, so the shim must not go on.
    pub async fn run(
        self: Arc<Self>,
        mut signals: Signals,
        sink: Arc<dyn ExitSink>,
        other: tokio::sync::mpsc::UnboundedSender<Signal>,
    ) -> std::io::Error {
        loop {
            self.reap_all(sink.as_ref());
            match signals.recv().await {
                Ok(Signal::SIGCHLD) => {}
                Ok(sig) => {
                    let _ = other.send(sig);
                }
                Err(e) => return e,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_is_128_plus() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some((42, 3)));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, nix::sys::signal::Signal::SIGKILL, false)),
            Some((42, 137))
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }

    /// Unit tests never run `reap_all` (a waitpid(-1) would steal other tests' children): here
    /// the test itself waits for its own child by pid.
    #[test]
    fn a_dropped_child_is_killed_and_starts_with_default_signals() {
        // Ignore SIGHUP and block SIGUSR1 here, as the shim does: the child must not inherit it.
        let cmd_out = std::env::temp_dir().join(format!("rs-reaper-{}", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("grep -E '^(SigBlk|SigIgn)' /proc/self/status > {}; exec sleep 100", cmd_out.display())]);
        let reaper = Reaper::default();
        let child = {
            // SAFETY: test-only, restored below; no other test depends on SIGHUP.
            unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
            let c = reaper.spawn(&mut cmd).unwrap();
            unsafe { libc::signal(libc::SIGHUP, libc::SIG_DFL) };
            c
        };
        let pid = child.pid;
        // wait for the shell to have written its status, then drop the handle
        for _ in 0..500 {
            if std::fs::read_to_string(&cmd_out).is_ok_and(|s| s.lines().count() == 2) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let status = std::fs::read_to_string(&cmd_out).unwrap();
        let _ = std::fs::remove_file(&cmd_out);
        for line in status.lines() {
            // signals 1..=31; glibc keeps 32 and 33 for itself
            let bits = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
            assert_eq!(bits & 0x7fff_ffff, 0, "child inherited a mask or ignore: {line}");
        }
        drop(child);
        let ws = waitpid(Pid::from_raw(pid), None).unwrap();
        assert_eq!(ws, WaitStatus::Signaled(Pid::from_raw(pid), Signal::SIGKILL, false));
    }
}
