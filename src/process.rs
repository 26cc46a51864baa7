//! One process (a container's init or an exec): its state machine, exit and waiters.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::stdio::{ProcessIo, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Init after `runc create`; an exec after Exec (not yet started).
    Created,
    Running,
    Paused,
    Stopped { status: u32, at: SystemTime },
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start,
    Pause,
    Resume,
    Exit { status: u32, at: SystemTime },
    Delete,
}

impl State {
    /// The one place that decides which moves are legal.
    pub fn apply(self, t: Transition) -> Result<State> {
        use State::*;
        use Transition as T;
        match (self, t) {
            (Created, T::Start) => Ok(Running),
            (Running, T::Pause) => Ok(Paused),
            (Paused, T::Resume) => Ok(Running),
            (Created | Running | Paused, T::Exit { status, at }) => Ok(Stopped { status, at }),
            (Created | Stopped { .. }, T::Delete) => Ok(Deleted),
            (Deleted, _) => Err(Error::NotFound("process already deleted".into())),
            (Stopped { .. }, T::Exit { .. }) => Err(Error::FailedPrecondition("process already exited".into())),
            (Stopped { .. }, _) => Err(Error::FailedPrecondition("process already finished".into())),
            (Running, T::Start) => Err(Error::FailedPrecondition("process already started".into())),
            (Paused, T::Start) => Err(Error::FailedPrecondition("process is paused".into())),
            (Running | Paused, T::Delete) => {
                Err(Error::FailedPrecondition("cannot delete a running process".into()))
            }
            (Created, T::Pause | T::Resume) => {
                Err(Error::FailedPrecondition("process is not running".into()))
            }
            (Running, T::Resume) => Err(Error::FailedPrecondition("process is not paused".into())),
            (Paused, T::Pause) => Err(Error::FailedPrecondition("process is already paused".into())),
        }
    }
}

pub struct Process {
    pub pid: u32,
    /// A pidfd for `pid`, opened while the process could not yet have been reaped, so a signal
    /// sent through it can never reach a process that later got the same pid.
    pidfd: Option<OwnedFd>,
    state: State,
    pub stdio: StdioPaths,
    pub io: Option<Arc<ProcessIo>>,
    /// The exec's OCI process spec (JSON), kept until Start.
    pub spec: Option<Vec<u8>>,
    exit_tx: watch::Sender<Option<(u32, SystemTime)>>,
    /// A start (runc start / runc exec) is running; its exit must wait for the start event.
    pub starting: bool,
    /// The event that makes this process known to containerd (TaskCreate for init,
    /// TaskExecStarted for an exec) has been queued, so its TaskExit may follow.
    pub announced: bool,
    pub exit_published: bool,
}

impl Process {
    pub fn new(stdio: StdioPaths) -> Self {
        Process {
            pid: 0,
            pidfd: None,
            state: State::Created,
            stdio,
            io: None,
            spec: None,
            exit_tx: watch::channel(None).0,
            starting: false,
            announced: false,
            exit_published: false,
        }
    }

    /// Record the pid. Call only while its exit cannot have been reaped unnoticed (the reaper
    /// runs on this thread and buffers exits of unknown pids), so the pidfd names this process.
    pub fn set_pid(&mut self, pid: u32) {
        self.pid = pid;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        // Without pidfds (Linux < 5.3) signals fall back to kill(2).
        self.pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }

    /// Signal the process through its pidfd (kill(2) without one). ESRCH means it is gone.
    pub fn signal(&self, sig: i32) -> std::result::Result<(), nix::errno::Errno> {
        let r = match &self.pidfd {
            // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
            Some(fd) => unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
            },
            None => unsafe { libc::kill(self.pid as libc::pid_t, sig) as libc::c_long },
        };
        if r == 0 {
            Ok(())
        } else {
            Err(nix::errno::Errno::last())
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn transition(&mut self, t: Transition) -> Result<()> {
        self.state = self.state.apply(t)?;
        if let State::Stopped { status, at } = self.state {
            self.exit_tx.send_replace(Some((status, at)));
            self.pidfd = None; // reaped: the pid may be reused from now on
        }
        Ok(())
    }

    /// A receiver that yields the exit once there is one (also after the fact).
    pub fn subscribe_exit(&self) -> watch::Receiver<Option<(u32, SystemTime)>> {
        self.exit_tx.subscribe()
    }

    pub fn exit(&self) -> Option<(u32, SystemTime)> {
        *self.exit_tx.borrow()
    }

    /// Exited but TaskExit not yet queued.
    pub fn exit_pending(&self) -> bool {
        self.exit().is_some() && !self.exit_published
    }

    /// Counts against publishing init's exit: a start in flight, or started and not yet
    /// reported as exited.
    pub fn holds_init_exit(&self) -> bool {
        self.starting || (self.announced && !self.exit_published)
    }
}

pub async fn wait_exit(mut rx: watch::Receiver<Option<(u32, SystemTime)>>) -> (u32, SystemTime) {
    loop {
        if let Some(e) = *rx.borrow_and_update() {
            return e;
        }
        if rx.changed().await.is_err() {
            // The process was forgotten without an exit: report what Go reports for a lost one.
            return (255, SystemTime::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_moves() {
        let at = SystemTime::now();
        let s = State::Created.apply(Transition::Start).unwrap();
        assert_eq!(s, State::Running);
        let s = s.apply(Transition::Pause).unwrap().apply(Transition::Resume).unwrap();
        let s = s.apply(Transition::Exit { status: 137, at }).unwrap();
        assert_eq!(s, State::Stopped { status: 137, at });
        assert_eq!(s.apply(Transition::Delete).unwrap(), State::Deleted);
        assert_eq!(State::Created.apply(Transition::Exit { status: 1, at }).unwrap(), State::Stopped { status: 1, at });
        assert_eq!(State::Created.apply(Transition::Delete).unwrap(), State::Deleted);
    }

    #[test]
    fn illegal_moves_are_typed() {
        let at = SystemTime::now();
        let stopped = State::Stopped { status: 0, at };
        assert!(matches!(State::Running.apply(Transition::Delete), Err(Error::FailedPrecondition(_))));
        assert!(matches!(State::Paused.apply(Transition::Delete), Err(Error::FailedPrecondition(_))));
        assert!(matches!(stopped.apply(Transition::Start), Err(Error::FailedPrecondition(_))));
        assert!(matches!(State::Running.apply(Transition::Start), Err(Error::FailedPrecondition(_))));
        assert!(matches!(State::Deleted.apply(Transition::Start), Err(Error::NotFound(_))));
        assert!(matches!(State::Created.apply(Transition::Pause), Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn signals_go_through_the_pidfd_and_stop_at_exit() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut p = Process::new(StdioPaths::default());
        p.set_pid(child.id());
        assert!(p.pidfd.is_some(), "pidfd_open failed (kernel < 5.3?)");
        p.signal(0).unwrap();
        p.signal(libc::SIGKILL).unwrap();
        child.wait().unwrap(); // reaped: pidfd_send_signal now says ESRCH, never a recycled pid
        assert_eq!(p.signal(0), Err(nix::errno::Errno::ESRCH));
        p.transition(Transition::Exit { status: 137, at: SystemTime::now() }).unwrap();
        assert!(p.pidfd.is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wait_returns_after_the_fact() {
        let mut p = Process::new(StdioPaths::default());
        p.transition(Transition::Start).unwrap();
        let at = SystemTime::now();
        p.transition(Transition::Exit { status: 3, at }).unwrap();
        assert_eq!(wait_exit(p.subscribe_exit()).await, (3, at));
    }
}
