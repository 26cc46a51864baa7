//! The one reaper: the shim is the child subreaper, and every child, runc, loggers, container
//! processes re-parented to us and their orphans, is collected here by one SIGCHLD/waitpid loop.
//!
//! Callers that spawn a child go through [`Reaper::spawn`], which registers interest in the pid
//! under the same lock that covers the fork, so the reaper can never collect a child's status
//! before its spawner is listening. Every other exit goes to the supervisor.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::signals::SignalPipe;

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

impl Reaper {
    /// Spawn `cmd` and return its pid with a receiver for its exit. The std `Child` is dropped
    /// without waiting: its status belongs to the reaper.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(i32, oneshot::Receiver<Exit>)> {
        let (tx, rx) = oneshot::channel();
        let mut subs = self.subscribers.lock().unwrap();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        subs.insert(pid, tx);
        drop(subs);
        drop(child);
        Ok((pid, rx))
    }

    /// Collect every child that has exited; call on each SIGCHLD (signals coalesce).
    pub fn reap_all(&self, sink: &dyn ExitSink) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return,
                Ok(ws) => {
                    let Some((pid, status)) = exit_code(ws) else { continue };
                    let exit = Exit { pid, status, at: SystemTime::now() };
                    let sub = self.subscribers.lock().unwrap().remove(&pid);
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

    /// Run forever: reap on every SIGCHLD. Reaps once first, for children that exited before
    /// the signal pipe existed.
    pub async fn run(self: Arc<Self>, mut sigchld: SignalPipe, sink: Arc<dyn ExitSink>) {
        loop {
            self.reap_all(sink.as_ref());
            if let Err(e) = sigchld.recv().await {
                log::error!("SIGCHLD pipe failed: {e}");
                return;
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
}
