//! The container's cgroup: where it is, its metrics for Stats, and OOM notifications.
//!
//! Files are read directly (no cgroups crate: docs/dependencies.md). Discovery joins
//! `/proc/<pid>/cgroup` with the cgroup mounts in `/proc/self/mountinfo`; on a hybrid host (v1
//! controllers plus an empty unified hierarchy) the v1 controllers win, and v2 is chosen only when
//! the unified hierarchy is the only one in use.
//!
//! Metrics go out as an `Any` with the bare type URL containerd and CRI decode by
//! (`io.containerd.cgroups.v1.Metrics` / `io.containerd.cgroups.v2.Metrics`). Files that are
//! missing or unreadable are skipped; only a missing cgroup directory is an error (NotFound).
//!
//! OOM watching is event driven on the caller's tokio runtime (no threads, no timers): v1 uses an
//! eventfd registered through `cgroup.event_control` for `memory.oom_control`, v2 uses inotify
//! `IN_MODIFY` on `memory.events` and reports each increase of `oom_kill`.
//!
//! Modules by job: `discovery` (where a process's cgroup is), `v1`/`v2` (metrics of each
//! hierarchy), `oom` (OOM notifications), `files` (reading cgroup files, shared by the others).

mod discovery;
mod files;
mod oom;
mod v1;
mod v2;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

use crate::error::{Error, Result};

pub use discovery::unescape_octal;
pub use oom::{oom_cause, watch_oom, OomWatcher};

pub const V1_METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// A process's cgroup, as absolute directories in this (the shim's) mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// One directory per v1 controller ("memory", "cpu", "cpuacct", "name=systemd", ...).
    V1 { paths: HashMap<String, PathBuf> },
    /// The unified hierarchy's directory.
    V2 { path: PathBuf },
}

impl Cgroup {
    /// The container's metrics as an Any with the bare type URL containerd expects.
    pub fn stats(&self) -> Result<Any> {
        let (type_url, bytes) = match self {
            Cgroup::V1 { paths } => (V1_METRICS_TYPE, v1::metrics_v1(paths)?.write_to_bytes()),
            Cgroup::V2 { path } => (V2_METRICS_TYPE, v2::metrics_v2(path)?.write_to_bytes()),
        };
        let value = bytes.map_err(|e| Error::Other(format!("encode metrics: {e}")))?;
        Ok(Any { type_url: type_url.into(), value, ..Default::default() })
    }

    /// The memory cgroup directory (v1 memory controller, or the v2 directory).
    pub fn memory_path(&self) -> Option<&Path> {
        match self {
            Cgroup::V1 { paths } => paths.get("memory").map(PathBuf::as_path),
            Cgroup::V2 { path } => Some(path),
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use containerd_shim_protos::cgroups::metrics as v1;
    use containerd_shim_protos::cgroups_v2::metrics as v2;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::protobuf::Message;

    use super::{V1_METRICS_TYPE, V2_METRICS_TYPE};

    /// A scratch directory removed on drop (no tempfile crate here).
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("rustshim-cg-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub fn sub(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
            let d = self.0.join(name);
            std::fs::create_dir_all(&d).unwrap();
            for (f, c) in files {
                std::fs::write(d.join(f), c).unwrap();
            }
            d
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn decode_v1(any: &Any) -> v1::Metrics {
        assert_eq!(any.type_url, V1_METRICS_TYPE);
        v1::Metrics::parse_from_bytes(&any.value).unwrap()
    }

    pub fn decode_v2(any: &Any) -> v2::Metrics {
        assert_eq!(any.type_url, V2_METRICS_TYPE);
        v2::Metrics::parse_from_bytes(&any.value).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn stats_real_process() {
        let cg = Cgroup::for_pid(std::process::id()).expect("own cgroup");
        let any = cg.stats().expect("stats of own cgroup");
        match &cg {
            Cgroup::V1 { paths } => {
                let m = decode_v1(&any);
                if paths.contains_key("memory") {
                    assert!(
                        m.memory.usage.usage > 0,
                        "memory usage of a live cgroup: {:?}",
                        m.memory
                    );
                }
                if paths.contains_key("cpuacct") {
                    assert!(m.cpu.usage.total > 0);
                }
            }
            Cgroup::V2 { .. } => {
                let m = decode_v2(&any);
                assert!(m.cpu.usage_usec > 0);
            }
        }
        // On this host (cgroup v1 hybrid) the result must be v1.
        if Path::new("/sys/fs/cgroup/memory/memory.stat").exists() {
            assert_eq!(any.type_url, V1_METRICS_TYPE);
        }
    }
}
