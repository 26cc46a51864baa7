//! What an operator (and the leaked-shim check) can see of the supervisor without changing it.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use super::Supervisor;
use crate::idle::Facts;
use crate::process::Process;

fn age(t: SystemTime) -> String {
    SystemTime::now().duration_since(t).map_or_else(|_| "0s".into(), |d| format!("{:.1?}", d))
}

fn describe(p: &Process) -> String {
    format!("pid={} state={:?} report={:?} exit={:?}", p.pid, p.state(), p.report, p.exit().map(|e| e.0))
}

impl Supervisor {
    /// containerd called: the leaked-shim clock starts again.
    pub fn touch(&self) {
        *self.last_call.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn idle_facts(&self) -> Facts {
        let g = self.lock();
        let mut f = Facts {
            queued_events: self.publisher.pending().len(),
            in_flight: g.reserved.len(),
            since_last_call: self.last_call.lock().unwrap_or_else(|p| p.into_inner()).elapsed(),
            ..Default::default()
        };
        for c in g.containers.values() {
            if c.bundle.exists() {
                f.bundles_present += 1;
            }
            for p in std::iter::once(&c.init).chain(c.execs.values()) {
                if p.pid == 0 || p.exit().is_some() {
                    continue;
                }
                if p.has_exited() {
                    f.untold_exits += 1;
                } else {
                    f.live_processes += 1;
                }
            }
        }
        f
    }

    /// SIGUSR1: the whole state, as log lines. Reads only; the shim keeps serving.
    pub fn dump(&self) -> Vec<String> {
        let mut out = Vec::new();
        let pending = self.publisher.pending();
        {
            let g = self.lock();
            let router = self.router();
            out.push(format!(
                "state dump: {} containers, reserved ids {:?}, shutdown requested {}, {} starts in flight, {} unmatched exits, {} queued events, last call {:.1?} ago",
                g.containers.len(),
                g.reserved,
                g.shutdown_requested,
                router.in_flight(),
                router.kept(),
                pending.len(),
                self.last_call.lock().unwrap_or_else(|p| p.into_inner()).elapsed(),
            ));
            for (pid, status, at) in router.unmatched() {
                out.push(format!("  unmatched exit: pid={pid} status={status} age={}", age(at)));
            }
            let mut ids: Vec<&String> = g.containers.keys().collect();
            ids.sort();
            for id in ids {
                let c = &g.containers[id];
                out.push(format!(
                    "  container {id}: bundle={} shared_pid_ns={} deleting={} kill_rest={} init {}",
                    c.bundle.display(),
                    c.shared_pid_ns,
                    c.deleting,
                    c.kill_rest.is_some(),
                    describe(&c.init)
                ));
                let mut execs: Vec<&String> = c.execs.keys().collect();
                execs.sort();
                for eid in execs {
                    out.push(format!("    exec {eid}: {}", describe(&c.execs[eid])));
                }
            }
        }
        for (topic, at) in pending.iter().take(20) {
            out.push(format!("  queued event {topic} age={}", age(*at)));
        }
        out.push(format!("  process: {}", process_facts()));
        out
    }
}

/// Open fds by kind and RSS, from /proc/self.
fn process_facts() -> String {
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for e in std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten() {
        let target = std::fs::read_link(e.path()).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
        let kind = match target.split_once(':') {
            Some((k, _)) if !target.starts_with('/') => k.to_string(),
            _ if target.starts_with("/dev/") => target,
            _ => "file".to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).map(|l| l[k.len()..].trim().to_string());
    let mut s = String::new();
    let _ = write!(s, "fds {} {:?}", kinds.values().sum::<usize>(), kinds);
    let _ = write!(s, " rss {} threads {}", field("VmRSS:").unwrap_or_default(), field("Threads:").unwrap_or_default());
    s
}
