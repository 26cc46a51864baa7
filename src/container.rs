//! One container: its bundle, init and execs, and the rule for when their exits may be told.
//!
//! This module makes no system calls, so the ordering rules are unit-tested without root:
//! - a process's TaskExit is queued only after the event that announced it (TaskCreate for init,
//!   TaskExecStarted for an exec) and never while its start is still in flight;
//! - init's TaskExit waits until every started exec's TaskExit is queued.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::events::task::TaskExit;

use crate::cgroups::Cgroup;
use crate::error::{Error, Result};
use crate::events::{timestamp, Event};
use crate::process::{Process, Transition};
use crate::options::ShimOptions;
use crate::runtime::{CriuOpts, Runtime};

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    pub runtime: Arc<Runtime>,
    /// No new pid namespace: init's death does not kill the rest, so the shim must.
    pub shared_pid_ns: bool,
    /// Where we mounted the Create request's rootfs, to unmount on delete.
    pub mounted_rootfs: Option<PathBuf>,
    pub deleting: bool,
    pub options: ShimOptions,
    /// Set when Create named a checkpoint: Start restores from it instead of `runc start`.
    pub restore: Option<CriuOpts>,
    /// Init's cgroup, for Stats; found once init exists.
    pub cgroup: Option<Cgroup>,
    pub oom_watch: Option<tokio::task::AbortHandle>,
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

    /// The exec id ("" for init) of the live process with this pid.
    pub fn find_pid(&self, pid: u32) -> Option<String> {
        if pid == 0 {
            return None;
        }
        if self.init.pid == pid && self.init.exit().is_none() {
            return Some(String::new());
        }
        self.execs
            .iter()
            .find(|(_, p)| p.pid == pid && p.exit().is_none())
            .map(|(id, _)| id.clone())
    }

    /// Record an exit and return the TaskExit events that may now be queued, in order.
    pub fn record_exit(&mut self, exec_id: &str, status: u32, at: SystemTime) -> Vec<Event> {
        if let Ok(p) = self.process_mut(exec_id) {
            if p.transition(Transition::Exit { status, at }).is_err() {
                return Vec::new();
            }
        }
        self.publishable_exits()
    }

    /// Every TaskExit whose turn has come: execs first, init last and only when no exec holds it.
    pub fn publishable_exits(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let mut ids: Vec<&String> = self.execs.keys().collect();
        ids.sort(); // deterministic order among execs that exited together
        let ready: Vec<String> = ids
            .into_iter()
            .filter(|id| {
                let p = &self.execs[*id];
                p.exit_pending() && p.announced && !p.starting
            })
            .cloned()
            .collect();
        for id in ready {
            let p = self.execs.get_mut(&id).unwrap();
            p.exit_published = true;
            out.push(exit_event(&self.id, &id, p));
        }
        let init = &self.init;
        if init.exit_pending()
            && init.announced
            && !init.starting
            && !self.execs.values().any(Process::holds_init_exit)
        {
            self.init.exit_published = true;
            out.push(exit_event(&self.id, &self.id, &self.init));
        }
        out
    }
}

fn exit_event(container_id: &str, id: &str, p: &Process) -> Event {
    let (status, at) = p.exit().unwrap_or((0, SystemTime::now()));
    Event::Exit(TaskExit {
        container_id: container_id.to_string(),
        id: id.to_string(),
        pid: p.pid,
        exit_status: status,
        exited_at: timestamp(at),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::Reaper;
    use crate::runtime::RuntimeConfig;
    use crate::stdio::StdioPaths;

    fn container() -> Container {
        let mut init = Process::new(StdioPaths::default());
        init.pid = 100;
        init.announced = true; // TaskCreate queued
        Container {
            id: "c1".into(),
            bundle: "/b".into(),
            init,
            execs: HashMap::new(),
            runtime: Arc::new(Runtime::new(
                RuntimeConfig { binary: "runc".into(), root: "/r".into(), systemd_cgroup: false, criu_path: None },
                Arc::new(Reaper::default()),
            )),
            shared_pid_ns: false,
            mounted_rootfs: None,
            deleting: false,
            options: ShimOptions::default(),
            restore: None,
            cgroup: None,
            oom_watch: None,
        }
    }

    fn exit_ids(ev: &[Event]) -> Vec<String> {
        ev.iter()
            .map(|e| match e {
                Event::Exit(x) => x.id.clone(),
                other => panic!("not an exit: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn init_exit_during_start_waits_for_start_event() {
        let mut c = container();
        c.init.starting = true; // runc start in flight
        let ev = c.record_exit("", 0, SystemTime::now());
        assert!(ev.is_empty(), "TaskExit must not precede TaskStart");
        // start finished: the start event is queued, then pending exits
        c.init.transition(Transition::Start).ok();
        c.init.starting = false;
        assert_eq!(exit_ids(&c.publishable_exits()), ["c1"]);
        assert!(c.publishable_exits().is_empty(), "an exit is told once");
    }

    #[test]
    fn exec_exit_before_its_pid_is_known_waits_for_exec_started() {
        let mut c = container();
        let mut e = Process::new(StdioPaths::default());
        e.starting = true;
        c.execs.insert("e1".into(), e);
        // pid read from the pid file, exit already seen: recorded while still starting
        c.execs.get_mut("e1").unwrap().pid = 200;
        assert!(c.record_exit("e1", 0, SystemTime::now()).is_empty());
        let e = c.execs.get_mut("e1").unwrap();
        e.starting = false;
        e.announced = true; // TaskExecStarted queued
        assert_eq!(exit_ids(&c.publishable_exits()), ["e1"]);
    }

    #[test]
    fn init_exit_after_exec_exits() {
        let mut c = container();
        c.init.transition(Transition::Start).unwrap();
        for (id, pid) in [("a", 201), ("b", 202)] {
            let mut e = Process::new(StdioPaths::default());
            e.pid = pid;
            e.announced = true;
            e.transition(Transition::Start).unwrap();
            c.execs.insert(id.into(), e);
        }
        assert_eq!(c.find_pid(100).as_deref(), Some(""));
        assert_eq!(c.find_pid(202).as_deref(), Some("b"));
        assert!(c.record_exit("", 137, SystemTime::now()).is_empty(), "execs still running");
        assert_eq!(exit_ids(&c.record_exit("b", 137, SystemTime::now())), ["b"]);
        assert_eq!(exit_ids(&c.record_exit("a", 137, SystemTime::now())), ["a", "c1"]);
        assert!(!c.execs.values().any(Process::holds_init_exit));
    }

    #[test]
    fn exec_start_in_flight_holds_init_exit() {
        let mut c = container();
        c.init.transition(Transition::Start).unwrap();
        let mut e = Process::new(StdioPaths::default());
        e.starting = true;
        c.execs.insert("e1".into(), e);
        assert!(c.record_exit("", 0, SystemTime::now()).is_empty());
        // the exec failed to start: it never gets an exit event, and init's exit goes out
        let e = c.execs.get_mut("e1").unwrap();
        e.starting = false;
        e.exit_published = true;
        assert_eq!(exit_ids(&c.publishable_exits()), ["c1"]);
    }

    #[test]
    fn unknown_exec_is_not_found() {
        let c = container();
        assert!(matches!(c.process("nope"), Err(Error::NotFound(_))));
        assert!(c.process("").is_ok());
    }
}
