//! One container: its bundle, init and execs, and the rule for when their exits may be told.
//!
//! This module makes no system calls, so the ordering rules are unit-tested without root:
//! - a process's TaskExit is queued only after the event that announced it, never while its
//!   start is in flight (each process's [`Report`] says where it stands);
//! - init's TaskExit waits until every exec that may still exit has had its TaskExit queued,
//!   and (shared pid namespace) until the rest of the container was killed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::events::task::TaskExit;

use crate::cgroups::Cgroup;
use crate::error::{Error, Result};
use crate::events::{timestamp, Event};
use crate::options::ShimOptions;
use crate::process::{ExitInfo, Process, Report};
use crate::runtime::{CriuOpts, OciRuntime};

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    pub runtime: Arc<dyn OciRuntime>,
    /// No new pid namespace: init's death does not kill the rest, so the shim must.
    pub shared_pid_ns: bool,
    /// Where we mounted the Create request's rootfs, to unmount on delete.
    pub mounted_rootfs: Option<PathBuf>,
    /// A Delete of init is running: no exec may start, no second Delete.
    pub deleting: bool,
    pub options: ShimOptions,
    /// Set when Create named a checkpoint: Start restores from it instead of `runc start`.
    pub restore: Option<CriuOpts>,
    /// Init's cgroup, for Stats; found once init exists.
    pub cgroup: Option<Cgroup>,
    pub oom_watch: Option<tokio::task::AbortHandle>,
    /// The kill of the rest of a shared pid namespace after init's exit, once started.
    pub kill_rest: Option<tokio::task::AbortHandle>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} not found in container {}", self.id)))
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = &self.id;
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} not found in container {id}")))
    }

    /// The exec id ("" for init) of the process with this pid that has not exited yet.
    pub fn find_pid(&self, pid: u32) -> Option<String> {
        if pid == 0 {
            return None;
        }
        if self.init.pid == pid && !self.init.has_exited() {
            return Some(String::new());
        }
        self.execs
            .iter()
            .find(|(_, p)| p.pid == pid && !p.has_exited())
            .map(|(id, _)| id.clone())
    }

    /// The reaper saw this process exit.
    pub fn record_exit(&mut self, exec_id: &str, exit: ExitInfo) {
        let kill_rest = exec_id.is_empty() && self.shared_pid_ns;
        if let Ok(p) = self.process_mut(exec_id) {
            p.reaped(exit, kill_rest);
        }
    }

    /// Every TaskExit whose turn has come, told now: execs first, init last and only when no
    /// exec may still exit.
    pub fn tellable_exits(&mut self) -> Vec<Event> {
        let mut out = self.tell_execs(|r| matches!(r, Report::Held(_)));
        if matches!(self.init.report, Report::Held(_)) && !self.execs.values().any(|p| p.report.holds_init_exit()) {
            out.extend(self.tell_init());
        }
        out
    }

    /// Delete: every exit seen and not yet told goes out now, execs first, whatever still holds
    /// it; a TaskExit must never be lost behind a TaskDelete.
    pub fn all_pending_exits(&mut self) -> Vec<Event> {
        let mut out = self.tell_execs(|r| r.pending_exit().is_some());
        out.extend(self.tell_init());
        out
    }

    /// Tell the exits of the execs whose report matches, in exec-id order (deterministic among
    /// execs that exited together).
    fn tell_execs(&mut self, which: impl Fn(Report) -> bool) -> Vec<Event> {
        let mut ids: Vec<String> = self.execs.iter().filter(|(_, p)| which(p.report)).map(|(id, _)| id.clone()).collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let p = self.execs.get_mut(&id).unwrap();
            if let Some(e) = p.tell_exit() {
                out.push(exit_event(&self.id, &id, p.pid, e));
            }
        }
        out
    }

    fn tell_init(&mut self) -> Option<Event> {
        let e = self.init.tell_exit()?;
        Some(exit_event(&self.id, &self.id, self.init.pid, e))
    }
}

/// The TaskExit of process `id` (the exec id, or the container id for init).
pub fn exit_event(container_id: &str, id: &str, pid: u32, (status, at): ExitInfo) -> Event {
    Event::Exit(TaskExit {
        container_id: container_id.to_string(),
        id: id.to_string(),
        pid,
        exit_status: status,
        exited_at: timestamp(at),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::process::Transition;
    use crate::stdio::StdioPaths;

    struct NoRuntime;
    #[async_trait::async_trait]
    impl OciRuntime for NoRuntime {
        async fn create(&self, _: &crate::call::Call, _: &str, _: &crate::runtime::CreateOpts<'_>, _: crate::runtime::ProcessStdio) -> Result<i32> { unreachable!() }
        async fn restore(&self, _: &crate::call::Call, _: &str, _: &crate::runtime::CreateOpts<'_>, _: &CriuOpts, _: crate::runtime::ProcessStdio) -> Result<i32> { unreachable!() }
        async fn start(&self, _: &crate::call::Call, _: &str) -> Result<()> { unreachable!() }
        async fn exec(&self, _: &crate::call::Call, _: &str, _: &crate::runtime::ExecOpts<'_>, _: crate::runtime::ProcessStdio) -> Result<i32> { unreachable!() }
        async fn kill(&self, _: &crate::call::Call, _: &str, _: u32, _: bool) -> Result<()> { unreachable!() }
        async fn delete(&self, _: &crate::call::Call, _: &str, _: bool) -> Result<()> { unreachable!() }
        async fn pause(&self, _: &crate::call::Call, _: &str) -> Result<()> { unreachable!() }
        async fn resume(&self, _: &crate::call::Call, _: &str) -> Result<()> { unreachable!() }
        async fn ps(&self, _: &crate::call::Call, _: &str) -> Result<Vec<u32>> { unreachable!() }
        async fn update(&self, _: &crate::call::Call, _: &str, _: Vec<u8>) -> Result<()> { unreachable!() }
        async fn checkpoint(&self, _: &crate::call::Call, _: &str, _: &CriuOpts, _: bool) -> Result<()> { unreachable!() }
    }

    fn container() -> Container {
        let mut init = Process::new(StdioPaths::default());
        init.pid = 100;
        init.report = Report::Announced; // TaskCreate queued
        Container {
            id: "c1".into(),
            bundle: "/b".into(),
            init,
            execs: HashMap::new(),
            runtime: Arc::new(NoRuntime),
            shared_pid_ns: false,
            mounted_rootfs: None,
            deleting: false,
            options: ShimOptions::default(),
            restore: None,
            cgroup: None,
            oom_watch: None,
            kill_rest: None,
        }
    }

    fn exec(report: Report, pid: u32) -> Process {
        let mut e = Process::new(StdioPaths::default());
        e.pid = pid;
        e.report = report;
        if report != Report::Unannounced {
            e.transition(Transition::Start).unwrap();
        }
        e
    }

    fn exit_ids(ev: &[Event]) -> Vec<String> {
        ev.iter()
            .map(|e| match e {
                Event::Exit(x) => x.id.clone(),
                other => panic!("not an exit: {other:?}"),
            })
            .collect()
    }

    fn now() -> ExitInfo {
        (0, SystemTime::now())
    }

    #[test]
    fn init_exit_during_start_waits_for_start_event() {
        let mut c = container();
        c.init.report = c.init.report.begin_start().unwrap(); // runc start in flight
        c.record_exit("", now());
        assert!(c.tellable_exits().is_empty(), "TaskExit must not precede TaskStart");
        assert_eq!(c.init.state(), crate::process::State::Created, "State must not say stopped yet");
        // start finished: the start event is queued, then pending exits
        c.init.report = c.init.report.end_start(true, true, false);
        assert_eq!(exit_ids(&c.tellable_exits()), ["c1"]);
        assert!(c.tellable_exits().is_empty(), "an exit is told once");
    }

    #[test]
    fn init_exit_after_exec_exits() {
        let mut c = container();
        c.init.transition(Transition::Start).unwrap();
        c.execs.insert("a".into(), exec(Report::Announced, 201));
        c.execs.insert("b".into(), exec(Report::Announced, 202));
        c.execs.insert("never".into(), exec(Report::Unannounced, 0));
        assert_eq!(c.find_pid(100).as_deref(), Some(""));
        assert_eq!(c.find_pid(202).as_deref(), Some("b"));
        c.record_exit("", (137, SystemTime::now()));
        assert!(c.tellable_exits().is_empty(), "execs still running");
        assert_eq!(c.init.state(), crate::process::State::Running, "init reads running until told");
        assert_eq!(c.find_pid(100), None, "an exited pid is not matched again");
        c.record_exit("b", now());
        assert_eq!(exit_ids(&c.tellable_exits()), ["b"]);
        c.record_exit("a", now());
        assert_eq!(exit_ids(&c.tellable_exits()), ["a", "c1"]);
    }

    #[test]
    fn exec_start_in_flight_holds_init_exit() {
        let mut c = container();
        c.init.transition(Transition::Start).unwrap();
        c.execs.insert("e1".into(), exec(Report::Starting, 0));
        c.record_exit("", now());
        assert!(c.tellable_exits().is_empty());
        // the exec failed to start: it never gets an exit event, and init's exit goes out
        c.execs.get_mut("e1").unwrap().fail_start(false);
        assert_eq!(exit_ids(&c.tellable_exits()), ["c1"]);
    }

    #[test]
    fn shared_pid_namespace_init_waits_for_the_kill_of_the_rest() {
        let mut c = container();
        c.shared_pid_ns = true;
        c.init.transition(Transition::Start).unwrap();
        c.record_exit("", now());
        assert!(matches!(c.init.report, Report::KillingRest(_)));
        assert!(c.tellable_exits().is_empty(), "reported only after the rest was killed");
        c.init.report = c.init.report.rest_killed();
        assert_eq!(exit_ids(&c.tellable_exits()), ["c1"]);
    }

    #[test]
    fn delete_tells_every_pending_exit_execs_first() {
        let mut c = container();
        c.shared_pid_ns = true;
        c.init.transition(Transition::Start).unwrap();
        c.execs.insert("e1".into(), exec(Report::Announced, 201));
        c.execs.insert("e0".into(), exec(Report::Starting, 0));
        c.record_exit("", now());
        c.record_exit("e0", now()); // cannot happen with pid 0, but a held exit of a start
        c.execs.get_mut("e0").unwrap().report = Report::StartingExited(now());
        assert!(c.tellable_exits().is_empty());
        assert_eq!(exit_ids(&c.all_pending_exits()), ["e0", "c1"], "e1 never exited: nothing to tell");
    }

    #[test]
    fn unknown_exec_is_not_found() {
        let c = container();
        assert!(matches!(c.process("nope"), Err(Error::NotFound(_))));
        assert!(c.process("").is_ok());
    }
}
