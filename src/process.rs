//! One process (a container's init or an exec): its lifecycle state, the state machine that
//! decides when its exit may be told, and its waiters.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::stdio::{ProcessIo, StdioPaths};

/// An exit as containerd sees it: status and time.
pub type ExitInfo = (u32, SystemTime);

/// The lifecycle containerd sees (State, Wait). `Stopped` is entered only when the exit is
/// *told* (see [`Report`]), so State, Wait and TaskExit never disagree.
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

/// Whether a process's exit may be told (TaskExit queued), as one state machine.
///
/// The rules it encodes, each a race the Go shim fixed in its own time:
/// - TaskExit never precedes the event that announced the process (TaskCreate for init before
///   `runc start`, TaskStart for init, TaskExecStarted for an exec): an exit reaped while a start
///   is in flight is held until the start's event is queued (containerd #8617).
/// - init's exit waits for every exec that may still exit (containerd #9719): see
///   `Container::tellable_exits`. With a shared pid namespace init's exit also waits until the
///   rest of the container was killed (Go's handleInitExit kills first, then reports).
/// - a start that failed owes no TaskExit at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Not announced yet: an exec before Start, init before TaskCreate.
    Unannounced,
    /// A start (create, start, exec, restore) is in flight.
    Starting,
    /// A start is in flight and the process already exited.
    StartingExited(ExitInfo),
    /// Announced, no exit seen.
    Announced,
    /// Init exited; the shim is killing the rest of its shared pid namespace.
    KillingRest(ExitInfo),
    /// Exited and announced: waiting only for its turn (init behind its execs).
    Held(ExitInfo),
    /// TaskExit queued; the process is Stopped.
    Told,
    /// Never announced and never will be (a start that failed, an exec deleted unstarted).
    Silent,
}

impl Report {
    pub fn begin_start(self) -> Result<Report> {
        match self {
            Report::Unannounced | Report::Announced => Ok(Report::Starting),
            Report::Starting | Report::StartingExited(_) => {
                Err(Error::FailedPrecondition("process is already starting".into()))
            }
            _ => Err(Error::FailedPrecondition("process has already exited".into())),
        }
    }

    /// The start's event was queued (`ok`), or the start failed. `announced_before`: init was
    /// announced by TaskCreate before this start, so it still owes a TaskExit after a failed start.
    /// `kill_rest`: init of a shared pid namespace (see `reaped`).
    pub fn end_start(self, ok: bool, announced_before: bool, kill_rest: bool) -> Report {
        match (self, ok || announced_before) {
            (Report::Starting, true) => Report::Announced,
            (Report::StartingExited(e), true) if kill_rest => Report::KillingRest(e),
            (Report::StartingExited(e), true) => Report::Held(e),
            (Report::Starting | Report::StartingExited(_), false) => Report::Silent,
            (other, _) => other,
        }
    }

    /// The reaper saw the exit. `kill_rest`: init of a shared pid namespace.
    pub fn reaped(self, exit: ExitInfo, kill_rest: bool) -> Report {
        match self {
            Report::Starting => Report::StartingExited(exit),
            Report::Announced if kill_rest => Report::KillingRest(exit),
            Report::Announced => Report::Held(exit),
            // Unannounced with a known pid cannot happen (the pid is learnt by a start); a
            // second exit of the same process is a duplicate. Neither changes anything.
            other => other,
        }
    }

    /// The kill of the rest of the pid namespace is done.
    pub fn rest_killed(self) -> Report {
        match self {
            Report::KillingRest(e) => Report::Held(e),
            other => other,
        }
    }

    /// The exit, if the reaper saw it and it is not yet told.
    pub fn pending_exit(self) -> Option<ExitInfo> {
        match self {
            Report::StartingExited(e) | Report::KillingRest(e) | Report::Held(e) => Some(e),
            _ => None,
        }
    }

    /// Could still exit or be told: holds init's exit back while true.
    pub fn holds_init_exit(self) -> bool {
        matches!(self, Report::Starting | Report::StartingExited(_) | Report::Announced | Report::Held(_))
    }
}

pub struct Process {
    pub pid: u32,
    /// A pidfd for `pid`, opened while the process could not yet have been reaped, so a signal
    /// sent through it can never reach a process that later got the same pid.
    pidfd: Option<OwnedFd>,
    state: State,
    pub report: Report,
    pub stdio: StdioPaths,
    pub io: Option<Arc<ProcessIo>>,
    /// The exec's OCI process spec (JSON), kept until Start.
    pub spec: Option<Vec<u8>>,
    exit_tx: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    pub fn new(stdio: StdioPaths) -> Self {
        Process {
            pid: 0,
            pidfd: None,
            state: State::Created,
            report: Report::Unannounced,
            stdio,
            io: None,
            spec: None,
            exit_tx: watch::channel(None).0,
        }
    }

    /// Record the pid and say whether that process still exists. Call only while its exit
    /// cannot have been reaped unnoticed (the reaper runs on this thread and keeps exits of
    /// unknown pids for the starts in flight), so the pidfd names this process. A pid that is
    /// already gone was reaped: its exit is among those the start may claim.
    pub fn set_pid(&mut self, pid: u32) -> bool {
        self.pid = pid;
        self.pidfd = crate::reaper::pidfd_open(pid as i32);
        // Without pidfds (Linux < 5.3) liveness is asked of kill(pid, 0).
        self.pidfd.is_some() || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
    }

    /// Signal the process through its pidfd (kill(2) without one). ESRCH means it is gone.
    pub fn signal(&self, sig: i32) -> std::result::Result<(), nix::errno::Errno> {
        match &self.pidfd {
            Some(fd) => crate::reaper::pidfd_signal(fd, sig),
            None if self.has_exited() => Err(nix::errno::Errno::ESRCH),
            None => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::try_from(sig).ok(),
            ),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn transition(&mut self, t: Transition) -> Result<()> {
        self.state = self.state.apply(t)?;
        if let State::Stopped { status, at } = self.state {
            self.exit_tx.send_replace(Some((status, at)));
        }
        Ok(())
    }

    /// The reaper saw this process exit: its pid may be reused from now on.
    pub fn reaped(&mut self, exit: ExitInfo, kill_rest: bool) {
        self.pidfd = None;
        self.report = self.report.reaped(exit, kill_rest);
    }

    /// The exit is told now (TaskExit queued by the caller): State and Wait see it from here.
    pub fn tell_exit(&mut self) -> Option<ExitInfo> {
        let e = self.report.pending_exit()?;
        self.report = Report::Told;
        let _ = self.transition(Transition::Exit { status: e.0, at: e.1 });
        Some(e)
    }

    /// A start that failed: no TaskExit, but Wait returns (status 255, as Go reports it).
    pub fn fail_start(&mut self, announced_before: bool) {
        self.report = self.report.end_start(false, announced_before, false);
        if self.report == Report::Silent {
            self.pidfd = None;
            let _ = self.transition(Transition::Exit { status: 255, at: SystemTime::now() });
        }
    }

    /// A receiver that yields the told exit once there is one (also after the fact).
    pub fn subscribe_exit(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit_tx.subscribe()
    }

    /// The told exit.
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit_tx.borrow()
    }

    /// Exited as far as the shim knows, told or not.
    pub fn has_exited(&self) -> bool {
        self.exit().is_some() || self.report.pending_exit().is_some()
    }
}

pub async fn wait_exit(mut rx: watch::Receiver<Option<ExitInfo>>) -> ExitInfo {
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
    fn report_moves() {
        let e = (3, SystemTime::now());
        use Report::*;
        assert_eq!(Unannounced.begin_start().unwrap(), Starting);
        assert_eq!(Announced.begin_start().unwrap(), Starting);
        assert!(Starting.begin_start().is_err());
        assert!(Held(e).begin_start().is_err());
        // an exit during the start waits for the start's event
        assert_eq!(Starting.reaped(e, false), StartingExited(e));
        assert_eq!(StartingExited(e).end_start(true, false, false), Held(e));
        assert_eq!(StartingExited(e).end_start(true, false, true), KillingRest(e));
        assert_eq!(Starting.end_start(true, false, false), Announced);
        // a failed exec start owes nothing; a failed init start (after TaskCreate) still does
        assert_eq!(Starting.end_start(false, false, false), Silent);
        assert_eq!(StartingExited(e).end_start(false, true, false), Held(e));
        assert_eq!(Announced.reaped(e, true), KillingRest(e));
        assert_eq!(KillingRest(e).rest_killed(), Held(e));
        assert_eq!(Held(e).reaped((9, e.1), false), Held(e), "a duplicate exit changes nothing");
        assert!(Starting.holds_init_exit() && Announced.holds_init_exit() && Held(e).holds_init_exit());
        assert!(!Unannounced.holds_init_exit() && !Told.holds_init_exit() && !Silent.holds_init_exit());
    }

    #[test]
    fn state_and_wait_see_the_exit_only_when_told() {
        let mut p = Process::new(StdioPaths::default());
        p.report = Report::Announced;
        p.transition(Transition::Start).unwrap();
        let at = SystemTime::now();
        p.reaped((3, at), false);
        assert_eq!(p.state(), State::Running, "reaped but not told");
        assert!(p.exit().is_none() && p.has_exited());
        assert_eq!(p.tell_exit(), Some((3, at)));
        assert_eq!(p.state(), State::Stopped { status: 3, at });
        assert_eq!(p.tell_exit(), None, "an exit is told once");
    }

    #[test]
    fn signals_go_through_the_pidfd_and_stop_at_exit() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut p = Process::new(StdioPaths::default());
        assert!(p.set_pid(child.id()));
        assert!(p.pidfd.is_some(), "pidfd_open failed (kernel < 5.3?)");
        p.signal(0).unwrap();
        p.signal(libc::SIGKILL).unwrap();
        child.wait().unwrap(); // reaped: pidfd_send_signal now says ESRCH, never a recycled pid
        assert_eq!(p.signal(0), Err(nix::errno::Errno::ESRCH));
        p.reaped((137, SystemTime::now()), false);
        assert!(p.pidfd.is_none());
        assert!(!Process::new(StdioPaths::default()).set_pid(crate::PID_NEVER_USED), "no such pid");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wait_returns_after_the_fact() {
        let mut p = Process::new(StdioPaths::default());
        p.report = Report::Announced;
        p.transition(Transition::Start).unwrap();
        let at = SystemTime::now();
        p.reaped((3, at), false);
        p.tell_exit();
        assert_eq!(wait_exit(p.subscribe_exit()).await, (3, at));
    }
}
