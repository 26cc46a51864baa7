//! Exit routing: every exit the reaper collects that no spawner waited for comes here.
//!
//! - An exit of a known process is recorded on it; whether its TaskExit may be told now is
//!   the process's `Report` and `Container::tellable_exits`.
//! - An exit of a pid nobody knows yet may belong to a start in flight (an exec's pid is known
//!   only once runc has written its pid file, and the process may be gone by then). Such exits
//!   are kept, numbered, while any start is in flight; a start claims only exits reaped *after*
//!   it began (Go's per-start exitSubscribers), so a pid recycled from an earlier process can
//!   never be matched to a later exec.
//! - init's exit with a shared pid namespace: the rest is killed first (`runc kill --all`), and
//!   init's exit is told only after that, and after the execs' exits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::call::Call;
use crate::container::Container;
use crate::process::{Process, Report};
use crate::reaper::{Exit, ExitSink};

use super::Supervisor;

/// How long the kill of the rest of a shared pid namespace may take.
const KILL_REST_LIMIT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct ExitRouter {
    next_seq: u64,
    next_ticket: u64,
    /// Starts in flight: ticket -> the sequence number of the first exit each may claim.
    starts: HashMap<u64, u64>,
    /// Exits of pids not yet known, with their sequence numbers.
    unmatched: Vec<(u64, Exit)>,
}

impl ExitRouter {
    pub fn begin(&mut self) -> u64 {
        self.next_ticket += 1;
        self.starts.insert(self.next_ticket, self.next_seq);
        self.next_ticket
    }

    /// Keep an exit of an unknown pid for the starts in flight. False: nobody could claim it.
    pub fn hold(&mut self, exit: Exit) -> bool {
        if self.starts.is_empty() {
            return false;
        }
        self.unmatched.push((self.next_seq, exit));
        self.next_seq += 1;
        true
    }

    /// The latest exit of `pid` reaped since `ticket` began. Every kept exit of that pid is
    /// forgotten: the pid now names this start's process.
    pub fn claim(&mut self, ticket: u64, pid: i32) -> Option<Exit> {
        let since = *self.starts.get(&ticket)?;
        let mut found = None;
        self.unmatched.retain(|(seq, e)| {
            if e.pid != pid {
                return true;
            }
            if *seq >= since {
                found = Some(*e);
            }
            false
        });
        found
    }

    pub fn end(&mut self, ticket: u64) {
        self.starts.remove(&ticket);
        // No start left that began before these exits: nobody can claim them any more.
        match self.starts.values().min() {
            Some(&oldest) => self.unmatched.retain(|(seq, _)| *seq >= oldest),
            None => self.unmatched.clear(),
        }
    }

    pub fn kept(&self) -> usize {
        self.unmatched.len()
    }

    pub fn in_flight(&self) -> usize {
        self.starts.len()
    }

    pub fn unmatched(&self) -> Vec<(i32, u32, SystemTime)> {
        self.unmatched.iter().map(|(_, e)| (e.pid, e.status, e.at)).collect()
    }
}

/// A start in flight, from before its runtime is spawned until its pid is learnt. Owning it is
/// what makes exits of unknown pids be kept; dropping it (on any path) ends that.
pub(super) struct StartTicket {
    sup: Arc<Supervisor>,
    id: u64,
}

impl Drop for StartTicket {
    fn drop(&mut self) {
        self.sup.router().end(self.id);
    }
}

impl Supervisor {
    pub(super) fn router(&self) -> std::sync::MutexGuard<'_, ExitRouter> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call before the runtime is spawned: from here on, exits of unknown pids are kept.
    pub(super) fn begin_start(&self) -> StartTicket {
        StartTicket { sup: self.this(), id: self.router().begin() }
    }

    /// A start learnt its process's pid (from runc's pid file). Called with the map locked, so
    /// the reaper cannot run in between. If the process is already gone, its exit was reaped
    /// while this start was in flight and is claimed now; an exit of the same pid reaped
    /// before the start began belongs to an earlier process and is not.
    pub(super) fn learn_pid(&self, ticket: &StartTicket, p: &mut Process, pid: u32, kill_rest: bool) {
        let alive = p.set_pid(pid);
        let claimed = self.router().claim(ticket.id, pid as i32);
        if alive {
            if claimed.is_some() {
                log::debug!("pid {pid}: an exit of an earlier process with this pid was not matched");
            }
            return;
        }
        let exit = match claimed {
            Some(e) => (e.status, e.at),
            None => {
                log::warn!("pid {pid} is gone but its exit was not seen: reporting 255");
                (255, SystemTime::now())
            }
        };
        p.reaped(exit, kill_rest);
    }

    /// After any change to a container's processes: tell every TaskExit whose turn has come,
    /// and start the kill of the rest of a shared pid namespace once init is gone.
    pub(super) fn settle(&self, c: &mut Container) {
        if matches!(c.init.report, Report::KillingRest(_)) && c.kill_rest.is_none() {
            self.kill_rest(c);
        }
        for e in c.tellable_exits() {
            self.publisher.publish(e);
        }
    }

    /// Go's handleInitExit: with a shared pid namespace nothing dies with init, so kill every
    /// process left before init's exit is told. Reporting first would let containerd delete
    /// (and close the output FIFOs) while the kill still has the cgroup frozen and the
    /// children's last output is still in flight.
    fn kill_rest(&self, c: &mut Container) {
        let (runtime, id, me) = (c.runtime.clone(), c.id.clone(), self.me.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = runtime.kill(&Call::bounded(KILL_REST_LIMIT), &id, libc::SIGKILL as u32, true).await {
                log::warn!("container {id}: kill the rest after init's exit: {e}");
            }
            let Some(sup) = me.upgrade() else { return };
            let mut g = sup.lock();
            if let Some(c) = g.containers.get_mut(&id) {
                c.init.report = c.init.report.rest_killed();
                sup.settle(c);
            }
        });
        c.kill_rest = Some(task.abort_handle());
    }
}

impl ExitSink for Supervisor {
    fn on_exit(&self, exit: Exit) {
        let pid = exit.pid as u32;
        let mut g = self.lock();
        let found = g
            .containers
            .iter()
            .find_map(|(cid, c)| c.find_pid(pid).map(|eid| (cid.clone(), eid)));
        let Some((cid, eid)) = found else {
            if !self.router().hold(exit) {
                log::debug!("reaped pid {pid} status {} (not a tracked process)", exit.status);
            }
            return;
        };
        let c = g.containers.get_mut(&cid).unwrap();
        log::info!("container {cid} exec {eid:?} pid {pid} exited with status {}", exit.status);
        c.record_exit(&eid, (exit.status, exit.at));
        if eid.is_empty() {
            crate::bundle::persist_exit(&c.bundle, exit.status, exit.at);
        }
        self.settle(c);
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: i32) -> Exit {
        Exit { pid, status: 1, at: SystemTime::now() }
    }

    #[test]
    fn exits_are_kept_only_while_a_start_is_in_flight() {
        let mut r = ExitRouter::default();
        assert!(!r.hold(exit(10)), "no start in flight: nobody can claim it");
        let t = r.begin();
        assert!(r.hold(exit(10)));
        assert_eq!(r.claim(t, 10).map(|e| e.pid), Some(10));
        assert_eq!(r.claim(t, 10), None, "claimed once");
        r.end(t);
        assert_eq!(r.kept(), 0);
    }

    #[test]
    fn a_start_never_claims_an_exit_from_before_it_began() {
        let mut r = ExitRouter::default();
        let early = r.begin();
        r.hold(exit(42)); // an orphan with pid 42 dies while `early` runs
        let late = r.begin(); // pid 42 is recycled for the process `late` starts
        assert_eq!(r.claim(late, 42), None, "a recycled pid must not match a later start");
        r.hold(exit(43));
        r.end(early);
        assert_eq!(r.kept(), 1, "exits `late` may still claim are kept");
        assert_eq!(r.claim(late, 43).map(|e| e.pid), Some(43));
        r.end(late);
        assert_eq!(r.kept(), 0);
    }
}
