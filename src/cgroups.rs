//! The container's cgroup: where it is, its metrics for Stats, and OOM notifications.
//!
//! Files are read directly (no cgroups crate, see docs/crates.md). Discovery joins
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

// Not wired into the task service yet; remove once Stats/OOM use it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{Error, Result};

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
    /// The cgroup of `pid`, from /proc/<pid>/cgroup and /proc/self/mountinfo.
    pub fn for_pid(pid: u32) -> Result<Cgroup> {
        Self::for_pid_in(Path::new("/proc"), pid)
    }

    /// Like `for_pid` with another procfs root (`<proc>/<pid>/cgroup`, `<proc>/self/mountinfo`).
    pub fn for_pid_in(proc_root: &Path, pid: u32) -> Result<Cgroup> {
        let cg_file = proc_root.join(pid.to_string()).join("cgroup");
        let cgroup = std::fs::read_to_string(&cg_file).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("process {pid} not found")),
            _ => Error::io(format!("read {}", cg_file.display()), e),
        })?;
        let mi_file = proc_root.join("self/mountinfo");
        let mountinfo = std::fs::read_to_string(&mi_file)
            .map_err(|e| Error::io(format!("read {}", mi_file.display()), e))?;
        Self::from_proc_files(&cgroup, &mountinfo).map_err(|e| match e {
            Error::NotFound(m) => Error::NotFound(format!("process {pid}: {m}")),
            e => e,
        })
    }

    /// Pure parser: the contents of /proc/<pid>/cgroup and of a mountinfo file.
    pub fn from_proc_files(cgroup_file: &str, mountinfo: &str) -> Result<Cgroup> {
        let mounts = parse_mountinfo(mountinfo);
        let mut paths = HashMap::new();
        let mut has_v1_controller = false;
        let mut unified: Option<&str> = None;
        for line in cgroup_file.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut it = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
                return Err(Error::InvalidArgument(format!("malformed cgroup line {line:?}")));
            };
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            if id == "0" && ctrls.is_empty() {
                unified = Some(path);
                continue;
            }
            let names: Vec<&str> = ctrls.split(',').filter(|n| !n.is_empty()).collect();
            if names.is_empty() {
                continue;
            }
            if names.iter().any(|n| !n.starts_with("name=")) {
                has_v1_controller = true;
            }
            let candidates = mounts.iter().filter(|m| {
                m.fstype == "cgroup" && names.iter().all(|n| m.super_opts.iter().any(|o| o == n))
            });
            if let Some(m) = pick_mount(candidates, path) {
                let dir = m.join(path);
                for n in names {
                    paths.insert(n.to_string(), dir.clone());
                }
            }
        }
        if has_v1_controller && paths.keys().any(|k| !k.starts_with("name=")) {
            return Ok(Cgroup::V1 { paths });
        }
        if let Some(path) = unified {
            let candidates = mounts.iter().filter(|m| m.fstype == "cgroup2");
            if let Some(m) = pick_mount(candidates, path) {
                return Ok(Cgroup::V2 { path: m.join(path) });
            }
        }
        Err(Error::NotFound("no mounted cgroup hierarchy found".into()))
    }

    /// The container's metrics as an Any with the bare type URL containerd expects.
    pub fn stats(&self) -> Result<Any> {
        let (type_url, bytes) = match self {
            Cgroup::V1 { paths } => (V1_METRICS_TYPE, metrics_v1(paths)?.write_to_bytes()),
            Cgroup::V2 { path } => (V2_METRICS_TYPE, metrics_v2(path)?.write_to_bytes()),
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

// ---------------------------------------------------------------------------------------------
// mountinfo

#[derive(Debug)]
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: Vec<String>,
}

impl Mount {
    /// The directory of cgroup `path` (as written in /proc/<pid>/cgroup) under this mount.
    fn join(&self, path: &str) -> PathBuf {
        let rel = match under_root(&self.root, path) {
            Some(rel) => rel,
            None => path,
        };
        let rel = rel.trim_start_matches('/');
        if rel.is_empty() {
            self.point.clone()
        } else {
            self.point.join(rel)
        }
    }
}

/// `path` relative to `root` when `path` is at or below it.
fn under_root<'a>(root: &str, path: &'a str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Of several mounts of one hierarchy (bind mounts), the one whose root is the closest ancestor
/// of `path`; else the first.
fn pick_mount<'a>(candidates: impl Iterator<Item = &'a Mount>, path: &str) -> Option<&'a Mount> {
    let all: Vec<&Mount> = candidates.collect();
    all.iter()
        .filter(|m| under_root(&m.root, path).is_some())
        .max_by_key(|m| m.root.trim_end_matches('/').len())
        .or(all.first())
        .copied()
}

fn parse_mountinfo(s: &str) -> Vec<Mount> {
    s.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // id parent maj:min root point opts [optional...] - fstype source super_opts
            let sep = f.iter().skip(6).position(|x| *x == "-")? + 6;
            let fstype = *f.get(sep + 1)?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                root: unescape_octal(f[3]),
                point: PathBuf::from(unescape_octal(f[4])),
                fstype: fstype.to_string(),
                super_opts: f
                    .get(sep + 3)
                    .map(|o| o.split(',').map(String::from).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 0xff {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// file helpers

/// A cgroup file's contents; None when missing or unreadable (a cgroup being torn down answers
/// ENODEV, a disabled feature EOPNOTSUPP...): metrics are best effort per file.
fn read_file(dir: &Path, name: &str) -> Option<String> {
    let p = dir.join(name);
    match std::fs::read_to_string(&p) {
        Ok(s) => Some(s),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                log::debug!("cgroup stats: read {}: {e}", p.display());
            }
            None
        }
    }
}

/// A single-number file. `max_as` is what the literal "max" stands for.
fn read_u64(dir: &Path, name: &str, max_as: u64) -> Option<u64> {
    parse_u64(read_file(dir, name)?.trim(), max_as)
}

fn parse_u64(s: &str, max_as: u64) -> Option<u64> {
    if s == "max" {
        return Some(max_as);
    }
    // Some v1 counters can be negative transiently (e.g. after a reset); clamp to zero.
    s.parse::<u64>().ok().or_else(|| s.parse::<i64>().ok().map(|v| v.max(0) as u64))
}

/// A flat keyed file (`key value` per line).
fn read_kv(dir: &Path, name: &str) -> Option<HashMap<String, u64>> {
    read_file(dir, name).map(|s| parse_kv(&s))
}

fn parse_kv(s: &str) -> HashMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = parse_u64(it.next()?, u64::MAX)?;
            Some((k.to_string(), v))
        })
        .collect()
}

fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::NotFound(format!("cgroup {} does not exist", dir.display())))
    }
}

/// Names of the page sizes that have a `hugetlb.<size>.<suffix>` file in `dir`, sorted.
fn hugetlb_sizes(dir: &Path, suffix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut sizes: Vec<String> = rd
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?.strip_suffix('.')?;
            (!size.is_empty() && !size.contains('.')).then(|| size.to_string())
        })
        .collect();
    sizes.sort_by_key(|s| (hugepage_bytes(s), s.clone()));
    sizes
}

fn hugepage_bytes(size: &str) -> u64 {
    let digits: String = size.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().unwrap_or(0);
    match &size[digits.len()..] {
        "KB" => n << 10,
        "MB" => n << 20,
        "GB" => n << 30,
        "TB" => n << 40,
        _ => n,
    }
}

// ---------------------------------------------------------------------------------------------
// v1 metrics

const V1_READ: [&str; 6] = ["pids", "cpu", "cpuacct", "memory", "blkio", "hugetlb"];

fn metrics_v1(paths: &HashMap<String, PathBuf>) -> Result<v1::Metrics> {
    for c in V1_READ {
        if let Some(p) = paths.get(c) {
            ensure_dir(p)?;
        }
    }
    let mut m = v1::Metrics::new();
    if let Some(dir) = paths.get("pids") {
        m.pids = MessageField::some(v1::PidsStat {
            current: read_u64(dir, "pids.current", 0).unwrap_or(0),
            // v1: "max" (no limit) is reported as 0, as containerd does.
            limit: read_u64(dir, "pids.max", 0).unwrap_or(0),
            ..Default::default()
        });
    }
    if paths.contains_key("cpu") || paths.contains_key("cpuacct") {
        m.cpu = MessageField::some(cpu_v1(paths.get("cpuacct"), paths.get("cpu")));
    }
    if let Some(dir) = paths.get("memory") {
        m.memory = MessageField::some(memory_v1(dir));
        if let Some(kv) = read_kv(dir, "memory.oom_control") {
            m.memory_oom_control = MessageField::some(v1::MemoryOomControl {
                oom_kill_disable: kv.get("oom_kill_disable").copied().unwrap_or(0),
                under_oom: kv.get("under_oom").copied().unwrap_or(0),
                oom_kill: kv.get("oom_kill").copied().unwrap_or(0),
                ..Default::default()
            });
        }
    }
    if let Some(dir) = paths.get("blkio") {
        m.blkio = MessageField::some(blkio_v1(dir));
    }
    if let Some(dir) = paths.get("hugetlb") {
        m.hugetlb = hugetlb_sizes(dir, "usage_in_bytes")
            .into_iter()
            .map(|size| {
                let f = |what: &str| {
                    read_u64(dir, &format!("hugetlb.{size}.{what}"), u64::MAX).unwrap_or(0)
                };
                v1::HugetlbStat {
                    usage: f("usage_in_bytes"),
                    max: f("max_usage_in_bytes"),
                    failcnt: f("failcnt"),
                    pagesize: size.clone(),
                    ..Default::default()
                }
            })
            .collect();
    }
    Ok(m)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn cpu_v1(cpuacct: Option<&PathBuf>, cpu: Option<&PathBuf>) -> v1::CPUStat {
    let mut usage = v1::CPUUsage::new();
    if let Some(dir) = cpuacct {
        usage.total = read_u64(dir, "cpuacct.usage", 0).unwrap_or(0);
        if let Some(s) = read_file(dir, "cpuacct.usage_percpu") {
            usage.per_cpu = s.split_whitespace().filter_map(|v| parse_u64(v, 0)).collect();
        }
        if let Some(kv) = read_kv(dir, "cpuacct.stat") {
            // USER_HZ ticks -> nanoseconds.
            let tick_ns = |k: &str| {
                let ticks = kv.get(k).copied().unwrap_or(0) as u128;
                (ticks * 1_000_000_000 / clock_ticks() as u128) as u64
            };
            usage.user = tick_ns("user");
            usage.kernel = tick_ns("system");
        }
    }
    let mut throttling = v1::Throttle::new();
    if let Some(kv) = cpu.and_then(|dir| read_kv(dir, "cpu.stat")) {
        let g = |k: &str| kv.get(k).copied().unwrap_or(0);
        throttling.periods = g("nr_periods");
        throttling.throttled_periods = g("nr_throttled");
        throttling.throttled_time = g("throttled_time");
    }
    v1::CPUStat {
        usage: MessageField::some(usage),
        throttling: MessageField::some(throttling),
        ..Default::default()
    }
}

fn memory_v1(dir: &Path) -> v1::MemoryStat {
    let kv = read_kv(dir, "memory.stat").unwrap_or_default();
    let g = |k: &str| kv.get(k).copied().unwrap_or(0);
    let entry = |prefix: &str| -> MessageField<v1::MemoryEntry> {
        let f = |what: &str| read_u64(dir, &format!("{prefix}.{what}"), u64::MAX);
        let (usage, max, failcnt, limit) =
            (f("usage_in_bytes"), f("max_usage_in_bytes"), f("failcnt"), f("limit_in_bytes"));
        if usage.is_none() && max.is_none() && failcnt.is_none() && limit.is_none() {
            return MessageField::none();
        }
        MessageField::some(v1::MemoryEntry {
            usage: usage.unwrap_or(0),
            max: max.unwrap_or(0),
            failcnt: failcnt.unwrap_or(0),
            limit: limit.unwrap_or(0),
            ..Default::default()
        })
    };
    v1::MemoryStat {
        cache: g("cache"),
        rss: g("rss"),
        rss_huge: g("rss_huge"),
        mapped_file: g("mapped_file"),
        dirty: g("dirty"),
        writeback: g("writeback"),
        pg_pg_in: g("pgpgin"),
        pg_pg_out: g("pgpgout"),
        pg_fault: g("pgfault"),
        pg_maj_fault: g("pgmajfault"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        hierarchical_memory_limit: g("hierarchical_memory_limit"),
        hierarchical_swap_limit: g("hierarchical_memsw_limit"),
        total_cache: g("total_cache"),
        total_rss: g("total_rss"),
        total_rss_huge: g("total_rss_huge"),
        total_mapped_file: g("total_mapped_file"),
        total_dirty: g("total_dirty"),
        total_writeback: g("total_writeback"),
        total_pg_pg_in: g("total_pgpgin"),
        total_pg_pg_out: g("total_pgpgout"),
        total_pg_fault: g("total_pgfault"),
        total_pg_maj_fault: g("total_pgmajfault"),
        total_inactive_anon: g("total_inactive_anon"),
        total_active_anon: g("total_active_anon"),
        total_inactive_file: g("total_inactive_file"),
        total_active_file: g("total_active_file"),
        total_unevictable: g("total_unevictable"),
        usage: entry("memory"),
        swap: entry("memory.memsw"),
        kernel: entry("memory.kmem"),
        kernel_tcp: entry("memory.kmem.tcp"),
        ..Default::default()
    }
}

fn blkio_v1(dir: &Path) -> v1::BlkIOStat {
    let mut devices: Option<HashMap<(u64, u64), String>> = None;
    let mut s = v1::BlkIOStat::new();
    let mut read = |name: &str, into: &mut Vec<v1::BlkIOEntry>| -> bool {
        let Some(content) = read_file(dir, &format!("blkio.{name}")) else { return false };
        let devs = devices.get_or_insert_with(block_devices);
        *into = parse_blkio(&content, devs);
        true
    };
    // The CFQ (and BFQ-less old kernel) statistics first, as containerd does...
    let mut n = 0;
    if dir.join("blkio.io_serviced_recursive").exists() {
        read("sectors_recursive", &mut s.sectors_recursive);
        read("io_service_bytes_recursive", &mut s.io_service_bytes_recursive);
        read("io_serviced_recursive", &mut s.io_serviced_recursive);
        read("io_queued_recursive", &mut s.io_queued_recursive);
        read("io_service_time_recursive", &mut s.io_service_time_recursive);
        read("io_wait_time_recursive", &mut s.io_wait_time_recursive);
        read("io_merged_recursive", &mut s.io_merged_recursive);
        read("time_recursive", &mut s.io_time_recursive);
        n = s.sectors_recursive.len()
            + s.io_service_bytes_recursive.len()
            + s.io_serviced_recursive.len()
            + s.io_queued_recursive.len()
            + s.io_service_time_recursive.len()
            + s.io_wait_time_recursive.len()
            + s.io_merged_recursive.len()
            + s.io_time_recursive.len();
    }
    // ...else the throttle statistics, which every blkio cgroup has.
    if n == 0 {
        s = v1::BlkIOStat::new();
        if !read("throttle.io_service_bytes_recursive", &mut s.io_service_bytes_recursive) {
            read("throttle.io_service_bytes", &mut s.io_service_bytes_recursive);
        }
        if !read("throttle.io_serviced_recursive", &mut s.io_serviced_recursive) {
            read("throttle.io_serviced", &mut s.io_serviced_recursive);
        }
    }
    s
}

/// `major:minor [op] value` lines; the `Total` line is skipped.
fn parse_blkio(content: &str, devices: &HashMap<(u64, u64), String>) -> Vec<v1::BlkIOEntry> {
    content
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split([' ', ':']).filter(|s| !s.is_empty()).collect();
            let (major, minor, op, value) = match f.as_slice() {
                [ma, mi, v] => (ma, mi, "", v),
                [ma, mi, op, v] => (ma, mi, *op, v),
                _ => return None,
            };
            let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
            Some(v1::BlkIOEntry {
                op: op.to_string(),
                device: devices.get(&(major, minor)).cloned().unwrap_or_default(),
                major,
                minor,
                value: value.parse().ok()?,
                ..Default::default()
            })
        })
        .collect()
}

/// (major, minor) -> "/dev/<name>" from /proc/partitions.
fn block_devices() -> HashMap<(u64, u64), String> {
    let s = std::fs::read_to_string("/proc/partitions").unwrap_or_default();
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [ma, mi, _, name] = f.as_slice() else { return None };
            Some(((ma.parse().ok()?, mi.parse().ok()?), format!("/dev/{name}")))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// v2 metrics

fn metrics_v2(dir: &Path) -> Result<v2::Metrics> {
    ensure_dir(dir)?;
    let mut m = v2::Metrics::new();
    if let Some(current) = read_u64(dir, "pids.current", 0) {
        m.pids = MessageField::some(v2::PidsStat {
            current,
            // v2: "max" is reported as u64::MAX, as containerd's cgroup2 package does.
            limit: read_u64(dir, "pids.max", u64::MAX).unwrap_or(0),
            ..Default::default()
        });
    }
    if let Some(kv) = read_kv(dir, "cpu.stat") {
        let g = |k: &str| kv.get(k).copied().unwrap_or(0);
        m.cpu = MessageField::some(v2::CPUStat {
            usage_usec: g("usage_usec"),
            user_usec: g("user_usec"),
            system_usec: g("system_usec"),
            nr_periods: g("nr_periods"),
            nr_throttled: g("nr_throttled"),
            throttled_usec: g("throttled_usec"),
            nr_bursts: g("nr_bursts"),
            burst_usec: g("burst_usec"),
            psi: read_psi(dir, "cpu.pressure"),
            ..Default::default()
        });
    }
    let mem_stat = read_kv(dir, "memory.stat");
    let mem_current = read_u64(dir, "memory.current", u64::MAX);
    if mem_stat.is_some() || mem_current.is_some() {
        let kv = mem_stat.unwrap_or_default();
        let g = |k: &str| kv.get(k).copied().unwrap_or(0);
        // Newer kernels split these into _anon and _file.
        let g_or_sum = |k: &str| {
            kv.get(k).copied().unwrap_or_else(|| g(&format!("{k}_anon")) + g(&format!("{k}_file")))
        };
        let f = |name: &str| read_u64(dir, name, u64::MAX).unwrap_or(0);
        m.memory = MessageField::some(v2::MemoryStat {
            anon: g("anon"),
            file: g("file"),
            kernel_stack: g("kernel_stack"),
            slab: g("slab"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            file_writeback: g("file_writeback"),
            anon_thp: g("anon_thp"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            slab_reclaimable: g("slab_reclaimable"),
            slab_unreclaimable: g("slab_unreclaimable"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
            workingset_refault: g_or_sum("workingset_refault"),
            workingset_activate: g_or_sum("workingset_activate"),
            workingset_nodereclaim: g("workingset_nodereclaim"),
            pgrefill: g("pgrefill"),
            pgscan: g("pgscan"),
            pgsteal: g("pgsteal"),
            pgactivate: g("pgactivate"),
            pgdeactivate: g("pgdeactivate"),
            pglazyfree: g("pglazyfree"),
            pglazyfreed: g("pglazyfreed"),
            thp_fault_alloc: g("thp_fault_alloc"),
            thp_collapse_alloc: g("thp_collapse_alloc"),
            usage: mem_current.unwrap_or(0),
            usage_limit: f("memory.max"),
            swap_usage: f("memory.swap.current"),
            swap_limit: f("memory.swap.max"),
            max_usage: f("memory.peak"),
            swap_max_usage: f("memory.swap.peak"),
            psi: read_psi(dir, "memory.pressure"),
            ..Default::default()
        });
    }
    if let Some(kv) = read_kv(dir, "memory.events") {
        let g = |k: &str| kv.get(k).copied().unwrap_or(0);
        m.memory_events = MessageField::some(v2::MemoryEvents {
            low: g("low"),
            high: g("high"),
            max: g("max"),
            oom: g("oom"),
            oom_kill: g("oom_kill"),
            oom_group_kill: g("oom_group_kill"),
            ..Default::default()
        });
    }
    let io_stat = read_file(dir, "io.stat");
    let io_psi = read_psi(dir, "io.pressure");
    if io_stat.is_some() || io_psi.is_some() {
        m.io = MessageField::some(v2::IOStat {
            usage: io_stat.as_deref().map(parse_io_stat).unwrap_or_default(),
            psi: io_psi,
            ..Default::default()
        });
    }
    m.hugetlb = hugetlb_sizes(dir, "current")
        .into_iter()
        .map(|size| {
            let f = |what: &str| {
                read_u64(dir, &format!("hugetlb.{size}.{what}"), u64::MAX).unwrap_or(0)
            };
            let events = read_kv(dir, &format!("hugetlb.{size}.events")).unwrap_or_default();
            v2::HugeTlbStat {
                current: f("current"),
                max: f("max"),
                failcnt: events.get("max").copied().unwrap_or(0),
                pagesize: size.clone(),
                ..Default::default()
            }
        })
        .collect();
    Ok(m)
}

/// `maj:min rbytes=.. wbytes=.. rios=.. wios=.. ...` per device.
fn parse_io_stat(s: &str) -> Vec<v2::IOEntry> {
    s.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let (ma, mi) = it.next()?.split_once(':')?;
            let mut e = v2::IOEntry {
                major: ma.parse().ok()?,
                minor: mi.parse().ok()?,
                ..Default::default()
            };
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else { continue };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` / `full ...`
fn read_psi(dir: &Path, name: &str) -> MessageField<v2::PSIStats> {
    let Some(s) = read_file(dir, name) else { return MessageField::none() };
    let mut stats = v2::PSIStats::new();
    for line in s.lines() {
        let mut it = line.split_whitespace();
        let kind = it.next();
        let mut d = v2::PSIData::new();
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else { continue };
            match k {
                "avg10" => d.avg10 = v.parse().unwrap_or(0.0),
                "avg60" => d.avg60 = v.parse().unwrap_or(0.0),
                "avg300" => d.avg300 = v.parse().unwrap_or(0.0),
                "total" => d.total = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        match kind {
            Some("some") => stats.some = MessageField::some(d),
            Some("full") => stats.full = MessageField::some(d),
            _ => {}
        }
    }
    MessageField::some(stats)
}

// ---------------------------------------------------------------------------------------------
// OOM

/// Watch for OOM kills in `cg`, calling `on_oom()` once per OOM notification, until the cgroup
/// goes away (v1: the memory cgroup is removed; v2: memory.events disappears or the cgroup is no
/// longer populated). Setup failures are logged and the function returns. Idle cost: one fd
/// registered with the runtime's reactor. Dropping the future stops watching (the fds close,
/// which also unregisters the v1 event in the kernel).
pub async fn watch_oom(cg: Cgroup, on_oom: impl Fn() + Send + 'static) {
    match OomWatcher::new(&cg) {
        Ok(w) => w.run(on_oom).await,
        Err(e) => log::warn!("cannot watch for OOM in {cg:?}: {e}"),
    }
}

/// An OOM watcher whose setup (registration, baseline read) is done synchronously by `new`, so
/// no OOM between `new` and the first poll of `run` is lost. `new` must be called inside a tokio
/// runtime with IO enabled.
pub struct OomWatcher {
    kind: WatchKind,
}

enum WatchKind {
    V1 {
        efd: AsyncFd<EventFd>,
        dir: PathBuf,
    },
    V2 {
        ino: AsyncFd<InotifyFd>,
        dir: PathBuf,
        events_wd: WatchDescriptor,
        cgroup_events: bool,
        last: u64,
    },
}

/// nix's Inotify has AsFd but not AsRawFd, which AsyncFd wants.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl OomWatcher {
    pub fn new(cg: &Cgroup) -> Result<OomWatcher> {
        let dir = cg
            .memory_path()
            .ok_or_else(|| Error::NotFound("no memory cgroup to watch for OOM".into()))?
            .to_path_buf();
        ensure_dir(&dir)?;
        let kind = match cg {
            Cgroup::V1 { .. } => {
                let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
                let oc_path = dir.join("memory.oom_control");
                let oc = File::open(&oc_path)
                    .map_err(|e| Error::io(format!("open {}", oc_path.display()), e))?;
                let ec_path = dir.join("cgroup.event_control");
                // The kernel keeps its own references; oom_control may close right after.
                std::fs::write(&ec_path, format!("{} {}", efd.as_raw_fd(), oc.as_raw_fd()))
                    .map_err(|e| Error::io(format!("write {}", ec_path.display()), e))?;
                drop(oc);
                // SAFETY: the AsyncFd owns the EventFd, whose fd stays open and unchanged until
                // the AsyncFd drops it.
                let efd = unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE) }
                    .map_err(|e| Error::io("register eventfd", e.into_parts().1))?;
                WatchKind::V1 { efd, dir }
            }
            Cgroup::V2 { .. } => {
                let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
                let events = dir.join("memory.events");
                let events_wd = ino
                    .add_watch(&events, AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF)
                    .map_err(|e| match e {
                        nix::Error::ENOENT => Error::NotFound(format!(
                            "{} does not exist (memory controller not enabled?)",
                            events.display()
                        )),
                        e => Error::io(format!("inotify {}", events.display()), e.into()),
                    })?;
                // cgroup.events tells when the last process left ("populated 0").
                let cgroup_events =
                    ino.add_watch(&dir.join("cgroup.events"), AddWatchFlags::IN_MODIFY).is_ok();
                // Baseline after the watch is in place, so no increase can slip between.
                let last = read_oom_kill(&events).ok().flatten().unwrap_or(0);
                // SAFETY: as above, the AsyncFd owns the inotify fd.
                let ino =
                    unsafe { AsyncFd::register_with_interest(InotifyFd(ino), Interest::READABLE) }
                        .map_err(|e| Error::io("register inotify", e.into_parts().1))?;
                WatchKind::V2 { ino, dir, events_wd, cgroup_events, last }
            }
        };
        Ok(OomWatcher { kind })
    }

    pub async fn run(self, on_oom: impl Fn()) {
        match self.kind {
            WatchKind::V1 { efd, dir } => run_v1(efd, &dir, on_oom).await,
            WatchKind::V2 { ino, dir, events_wd, cgroup_events, last } => {
                run_v2(ino, &dir, events_wd, cgroup_events, last, on_oom).await
            }
        }
    }
}

async fn run_v1(efd: AsyncFd<EventFd>, dir: &Path, on_oom: impl Fn()) {
    loop {
        let mut guard = match efd.readable().await {
            Ok(g) => g,
            Err(e) => {
                log::warn!("oom watch {}: {e}", dir.display());
                return;
            }
        };
        match guard.try_io(|fd| fd.get_ref().read().map_err(io::Error::from)) {
            Ok(Ok(_count)) => {
                // The kernel also signals the eventfd when the cgroup is removed.
                if !dir.exists() {
                    log::debug!("oom watch {}: cgroup removed", dir.display());
                    return;
                }
                on_oom();
            }
            Ok(Err(e)) => {
                log::warn!("oom watch {}: read eventfd: {e}", dir.display());
                return;
            }
            Err(_would_block) => continue,
        }
    }
}

async fn run_v2(
    ino: AsyncFd<InotifyFd>,
    dir: &Path,
    events_wd: WatchDescriptor,
    cgroup_events: bool,
    mut last: u64,
    on_oom: impl Fn(),
) {
    let events = dir.join("memory.events");
    if cgroup_events && populated(dir) == Some(false) {
        log::debug!("oom watch {}: cgroup has no processes", dir.display());
        return;
    }
    loop {
        let mut guard = match ino.readable().await {
            Ok(g) => g,
            Err(e) => {
                log::warn!("oom watch {}: {e}", dir.display());
                return;
            }
        };
        let evs = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
            Ok(Ok(evs)) => evs,
            Ok(Err(e)) => {
                log::warn!("oom watch {}: read inotify: {e}", dir.display());
                return;
            }
            Err(_would_block) => continue,
        };
        let gone = evs.iter().any(|e| {
            e.wd == events_wd
                && e.mask.intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF)
        });
        match read_oom_kill(&events) {
            Ok(Some(n)) if n > last => {
                last = n;
                on_oom();
            }
            Ok(_) => {}
            Err(e) => {
                // A removed cgroup answers ENOENT from open, or ENODEV from read.
                if e.kind() != io::ErrorKind::NotFound && e.raw_os_error() != Some(libc::ENODEV) {
                    log::warn!("oom watch {}: {e}", events.display());
                }
                return;
            }
        }
        if gone || (cgroup_events && populated(dir) == Some(false)) {
            log::debug!("oom watch {}: cgroup gone or empty", dir.display());
            return;
        }
    }
}

/// The `oom_kill` counter of a memory.events file (None if the file has no such line, e.g.
/// while it is being rewritten).
fn read_oom_kill(events: &Path) -> io::Result<Option<u64>> {
    let s = std::fs::read_to_string(events)?;
    Ok(parse_kv(&s).get("oom_kill").copied())
}

fn populated(dir: &Path) -> Option<bool> {
    read_kv(dir, "cgroup.events")?.get("populated").map(|v| *v != 0)
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A scratch directory removed on drop (no tempfile crate here).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("rustshim-cg-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn sub(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
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

    const HYBRID_MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn parse_v1_hybrid() {
        let cg = "\
12:pids:/default/abc
8:cpu,cpuacct:/default/abc
5:memory:/default/abc
4:blkio:/default/abc
3:cpuset:/default/abc
1:name=systemd:/default/abc
0::/system.slice/containerd.service
";
        let Cgroup::V1 { paths } = Cgroup::from_proc_files(cg, HYBRID_MOUNTINFO).unwrap() else {
            panic!("expected v1")
        };
        assert_eq!(paths["memory"], PathBuf::from("/sys/fs/cgroup/memory/default/abc"));
        assert_eq!(paths["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/default/abc"));
        assert_eq!(paths["cpuacct"], paths["cpu"]);
        assert_eq!(paths["pids"], PathBuf::from("/sys/fs/cgroup/pids/default/abc"));
        assert_eq!(paths["name=systemd"], PathBuf::from("/sys/fs/cgroup/systemd/default/abc"));
        // Not mounted here: no entry, no error.
        let cg2 = format!("{cg}13:hugetlb:/default/abc\n");
        let Cgroup::V1 { paths } = Cgroup::from_proc_files(&cg2, HYBRID_MOUNTINFO).unwrap() else {
            panic!("expected v1")
        };
        assert!(!paths.contains_key("hugetlb"));
    }

    #[test]
    fn parse_v1_host_layout_and_root_paths() {
        // This host: cpu and cpuacct mounted separately, a process at the root of most.
        let mi = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let cg = "4:memory:/process_api/x\n2:cpuacct:/\n1:cpu:/\n0::/\n";
        let Cgroup::V1 { paths } = Cgroup::from_proc_files(cg, mi).unwrap() else { panic!() };
        assert_eq!(paths["cpu"], PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(paths["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpuacct"));
        assert_eq!(paths["memory"], PathBuf::from("/sys/fs/cgroup/memory/process_api/x"));
    }

    #[test]
    fn parse_v2_pure_and_hybrid_unified_only() {
        let mi = "\
25 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        let cg = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            Cgroup::from_proc_files(cg, mi).unwrap(),
            Cgroup::V2 { path: PathBuf::from("/sys/fs/cgroup/system.slice/docker-abc.scope") }
        );
        // Only a named v1 hierarchy besides unified: still v2.
        let cg = "1:name=systemd:/x\n0::/k8s/pod1/c1 (deleted)\n";
        assert_eq!(
            Cgroup::from_proc_files(cg, HYBRID_MOUNTINFO).unwrap(),
            Cgroup::V2 { path: PathBuf::from("/sys/fs/cgroup/unified/k8s/pod1/c1") }
        );
        // Root cgroup.
        assert_eq!(
            Cgroup::from_proc_files("0::/\n", mi).unwrap(),
            Cgroup::V2 { path: PathBuf::from("/sys/fs/cgroup") }
        );
    }

    #[test]
    fn parse_mount_root_and_escapes() {
        // A cgroup mount whose root is not "/" (e.g. inside a container) and a bind mount.
        let mi = "\
50 40 0:32 /docker/ctr /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory
51 40 0:32 / /mnt/all\\040memory rw - cgroup cgroup rw,memory
";
        let Cgroup::V1 { paths } =
            Cgroup::from_proc_files("5:memory:/docker/ctr/sub\n", mi).unwrap()
        else {
            panic!()
        };
        assert_eq!(paths["memory"], PathBuf::from("/sys/fs/cgroup/memory/sub"));
        let Cgroup::V1 { paths } = Cgroup::from_proc_files("5:memory:/other\n", mi).unwrap() else {
            panic!()
        };
        assert_eq!(paths["memory"], PathBuf::from("/mnt/all memory/other"));
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(
            Cgroup::from_proc_files("garbage\n", HYBRID_MOUNTINFO),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Cgroup::from_proc_files("0::/x\n", "1 0 0:1 / / rw - ext4 x rw\n"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            Cgroup::for_pid_in(Path::new("/nonexistent-proc"), 1),
            Err(Error::NotFound(_))
        ));
    }

    fn decode_v1(any: &Any) -> v1::Metrics {
        assert_eq!(any.type_url, V1_METRICS_TYPE);
        v1::Metrics::parse_from_bytes(&any.value).unwrap()
    }

    fn decode_v2(any: &Any) -> v2::Metrics {
        assert_eq!(any.type_url, V2_METRICS_TYPE);
        v2::Metrics::parse_from_bytes(&any.value).unwrap()
    }

    #[test]
    fn stats_v1_from_files() {
        let t = TempDir::new("v1");
        let mem = t.sub(
            "memory",
            &[
                (
                    "memory.stat",
                    "cache 4096\nrss 8192\nrss_huge 0\nmapped_file 100\ndirty 1\nwriteback 2\npgpgin 10\n\
                     pgpgout 11\npgfault 12\npgmajfault 13\ninactive_anon 14\nactive_anon 15\n\
                     inactive_file 16\nactive_file 17\nunevictable 18\n\
                     hierarchical_memory_limit 9223372036854771712\nhierarchical_memsw_limit 1024\n\
                     total_cache 5000\ntotal_rss 9000\ntotal_pgpgin 20\ntotal_unevictable 21\n",
                ),
                ("memory.usage_in_bytes", "123456\n"),
                ("memory.limit_in_bytes", "268435456\n"),
                ("memory.max_usage_in_bytes", "200000\n"),
                ("memory.failcnt", "3\n"),
                ("memory.kmem.usage_in_bytes", "777\n"),
                ("memory.kmem.tcp.usage_in_bytes", "0\n"),
                ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            ],
        );
        let cpu =
            t.sub("cpu", &[("cpu.stat", "nr_periods 7\nnr_throttled 3\nthrottled_time 999\n")]);
        let cpuacct = t.sub(
            "cpuacct",
            &[
                ("cpuacct.usage", "5000000000\n"),
                ("cpuacct.usage_percpu", "3000000000 2000000000 \n"),
                (
                    "cpuacct.stat",
                    format!("user {}\nsystem {}\n", clock_ticks() * 2, clock_ticks()).as_str(),
                ),
            ],
        );
        let pids = t.sub("pids", &[("pids.current", "4\n"), ("pids.max", "max\n")]);
        let blkio = t.sub(
            "blkio",
            &[
                (
                    "blkio.throttle.io_service_bytes_recursive",
                    "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n254:0 Async 12288\n254:0 Total 12288\nTotal 12288\n",
                ),
                ("blkio.throttle.io_serviced", "8:16 Read 1\n8:16 Write 2\nTotal 3\n"),
            ],
        );
        let hugetlb = t.sub(
            "hugetlb",
            &[
                ("hugetlb.2MB.usage_in_bytes", "2097152\n"),
                ("hugetlb.2MB.max_usage_in_bytes", "4194304\n"),
                ("hugetlb.2MB.failcnt", "1\n"),
                ("hugetlb.2MB.rsvd.usage_in_bytes", "0\n"),
                ("hugetlb.1GB.usage_in_bytes", "0\n"),
            ],
        );
        let paths: HashMap<String, PathBuf> = [
            ("memory", mem),
            ("cpu", cpu),
            ("cpuacct", cpuacct),
            ("pids", pids.clone()),
            ("blkio", blkio),
            ("hugetlb", hugetlb),
            ("devices", t.0.join("not-read-so-may-be-missing")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let m = decode_v1(&Cgroup::V1 { paths: paths.clone() }.stats().unwrap());

        assert_eq!((m.pids.current, m.pids.limit), (4, 0));
        let u = &m.cpu.usage;
        assert_eq!(u.total, 5_000_000_000);
        assert_eq!(u.per_cpu, vec![3_000_000_000, 2_000_000_000]);
        assert_eq!((u.user, u.kernel), (2_000_000_000, 1_000_000_000));
        let th = &m.cpu.throttling;
        assert_eq!((th.periods, th.throttled_periods, th.throttled_time), (7, 3, 999));

        let mm = &m.memory;
        assert_eq!(
            (mm.cache, mm.rss, mm.mapped_file, mm.pg_pg_in, mm.pg_maj_fault),
            (4096, 8192, 100, 10, 13)
        );
        assert_eq!(mm.unevictable, 18);
        assert_eq!(mm.hierarchical_memory_limit, 9223372036854771712);
        assert_eq!(mm.hierarchical_swap_limit, 1024);
        assert_eq!(
            (mm.total_cache, mm.total_rss, mm.total_pg_pg_in, mm.total_unevictable),
            (5000, 9000, 20, 21)
        );
        assert_eq!(
            (mm.usage.usage, mm.usage.limit, mm.usage.max, mm.usage.failcnt),
            (123456, 268435456, 200000, 3)
        );
        assert!(mm.swap.is_none(), "no memsw files: no swap entry");
        assert_eq!(mm.kernel.usage, 777);
        assert!(mm.kernel_tcp.is_some());
        assert_eq!(m.memory_oom_control.oom_kill, 2);

        let b = &m.blkio;
        let ops: Vec<(u64, u64, &str, u64)> = b
            .io_service_bytes_recursive
            .iter()
            .map(|e| (e.major, e.minor, e.op.as_str(), e.value))
            .collect();
        assert_eq!(
            ops,
            vec![
                (254, 0, "Read", 4096),
                (254, 0, "Write", 8192),
                (254, 0, "Sync", 0),
                (254, 0, "Async", 12288),
                (254, 0, "Total", 12288)
            ]
        );
        // Falls back to the non-recursive throttle file.
        assert_eq!(b.io_serviced_recursive.len(), 2);
        assert_eq!((b.io_serviced_recursive[1].minor, b.io_serviced_recursive[1].value), (16, 2));

        let h: Vec<(&str, u64, u64, u64)> =
            m.hugetlb.iter().map(|h| (h.pagesize.as_str(), h.usage, h.max, h.failcnt)).collect();
        assert_eq!(h, vec![("2MB", 2097152, 4194304, 1), ("1GB", 0, 0, 0)]);

        // A controller directory that is gone -> NotFound naming it.
        std::fs::remove_dir_all(&pids).unwrap();
        match (Cgroup::V1 { paths }).stats() {
            Err(Error::NotFound(msg)) => {
                assert!(msg.contains(&pids.display().to_string()), "{msg}")
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn stats_v1_blkio_cfq_preferred() {
        let t = TempDir::new("blkio");
        let d = t.sub(
            "blkio",
            &[
                ("blkio.io_serviced_recursive", "8:0 Read 5\n8:0 Write 6\nTotal 11\n"),
                ("blkio.sectors_recursive", "8:0 42\n"),
                ("blkio.throttle.io_serviced", "8:0 Read 99\n"),
            ],
        );
        let paths = HashMap::from([("blkio".to_string(), d)]);
        let m = decode_v1(&Cgroup::V1 { paths }.stats().unwrap());
        assert_eq!(
            m.blkio.io_serviced_recursive.iter().map(|e| e.value).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert_eq!(m.blkio.sectors_recursive[0].op, "");
        assert_eq!(m.blkio.sectors_recursive[0].value, 42);
        assert!(m.memory.is_none() && m.cpu.is_none() && m.pids.is_none());
    }

    #[test]
    fn stats_v2_from_files() {
        let t = TempDir::new("v2");
        let d = t.sub(
            "c1",
            &[
                ("pids.current", "3\n"),
                ("pids.max", "max\n"),
                (
                    "cpu.stat",
                    "usage_usec 1000\nuser_usec 600\nsystem_usec 400\nnr_periods 10\nnr_throttled 2\nthrottled_usec 50\n",
                ),
                ("cpu.pressure", "some avg10=1.50 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"),
                ("memory.current", "1048576\n"),
                ("memory.max", "max\n"),
                ("memory.swap.current", "0\n"),
                ("memory.swap.max", "4096\n"),
                (
                    "memory.stat",
                    "anon 700\nfile 300\nkernel_stack 16\nslab 8\nsock 0\nshmem 4\nfile_mapped 2\n\
                     pgfault 55\npgmajfault 1\nworkingset_refault_anon 3\nworkingset_refault_file 4\n\
                     thp_fault_alloc 9\n",
                ),
                ("memory.events", "low 0\nhigh 1\nmax 2\noom 3\noom_kill 4\noom_group_kill 0\n"),
                ("io.stat", "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=5 wbytes=6 rios=7 wios=8\n"),
                ("hugetlb.2MB.current", "0\n"),
                ("hugetlb.2MB.max", "max\n"),
                ("hugetlb.2MB.events", "max 7\n"),
            ],
        );
        let m = decode_v2(&Cgroup::V2 { path: d.clone() }.stats().unwrap());
        assert_eq!((m.pids.current, m.pids.limit), (3, u64::MAX));
        let c = &m.cpu;
        assert_eq!(
            (
                c.usage_usec,
                c.user_usec,
                c.system_usec,
                c.nr_periods,
                c.nr_throttled,
                c.throttled_usec
            ),
            (1000, 600, 400, 10, 2, 50)
        );
        assert_eq!(c.psi.some.avg10, 1.5);
        assert_eq!((c.psi.some.total, c.psi.full.total), (1234, 5));
        let mm = &m.memory;
        assert_eq!(
            (mm.usage, mm.usage_limit, mm.swap_usage, mm.swap_limit),
            (1048576, u64::MAX, 0, 4096)
        );
        assert_eq!(
            (mm.anon, mm.file, mm.kernel_stack, mm.slab, mm.shmem, mm.file_mapped),
            (700, 300, 16, 8, 4, 2)
        );
        assert_eq!(
            (mm.pgfault, mm.pgmajfault, mm.workingset_refault, mm.thp_fault_alloc),
            (55, 1, 7, 9)
        );
        assert!(mm.psi.is_none());
        let e = &m.memory_events;
        assert_eq!((e.low, e.high, e.max, e.oom, e.oom_kill), (0, 1, 2, 3, 4));
        let io: Vec<_> =
            m.io.usage
                .iter()
                .map(|e| (e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios))
                .collect();
        assert_eq!(io, vec![(8, 0, 100, 200, 1, 2), (254, 16, 5, 6, 7, 8)]);
        assert_eq!(m.hugetlb.len(), 1);
        assert_eq!(
            (m.hugetlb[0].pagesize.as_str(), m.hugetlb[0].max, m.hugetlb[0].failcnt),
            ("2MB", u64::MAX, 7)
        );

        // Only cpu.stat (a cgroup without memory/pids/io controllers enabled): the rest absent.
        let bare = t.sub("bare", &[("cpu.stat", "usage_usec 1\n")]);
        let m = decode_v2(&Cgroup::V2 { path: bare }.stats().unwrap());
        assert_eq!(m.cpu.usage_usec, 1);
        assert!(
            m.memory.is_none() && m.pids.is_none() && m.io.is_none() && m.memory_events.is_none()
        );

        let gone = t.0.join("gone");
        match (Cgroup::V2 { path: gone.clone() }).stats() {
            Err(Error::NotFound(msg)) => assert!(msg.contains(&gone.display().to_string())),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

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

    #[test]
    fn watch_oom_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let f = watch_oom(Cgroup::V2 { path: PathBuf::from("/nonexistent") }, || {});
        is_send(&f);
    }

    async fn wait_count(n: &AtomicUsize, want: usize) -> bool {
        for _ in 0..200 {
            if n.load(Ordering::SeqCst) >= want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn watch_oom_v2_fake_files() {
        let t = TempDir::new("oom2");
        let d = t.sub("c", &[("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")]);
        let cg = Cgroup::V2 { path: d.clone() };
        let fired = Arc::new(AtomicUsize::new(0));
        let f2 = fired.clone();
        let w = OomWatcher::new(&cg).unwrap();
        let task = tokio::spawn(w.run(move || {
            f2.fetch_add(1, Ordering::SeqCst);
        }));

        // A change that is not an OOM kill: nothing.
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 5\noom 0\noom_kill 0\n")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 0);

        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 6\noom 1\noom_kill 1\n")
            .unwrap();
        assert!(wait_count(&fired, 1).await, "on_oom not called");
        // Same counter again (another field changed): no second call.
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        assert!(!task.is_finished());

        // The cgroup goes away: the watcher returns.
        std::fs::remove_dir_all(&d).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("watcher did not end")
            .unwrap();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn watch_oom_v2_ends_when_unpopulated() {
        let t = TempDir::new("oom2p");
        let d = t.sub(
            "c",
            &[("memory.events", "oom_kill 0\n"), ("cgroup.events", "populated 1\nfrozen 0\n")],
        );
        let fired = Arc::new(AtomicUsize::new(0));
        let f2 = fired.clone();
        let w = OomWatcher::new(&Cgroup::V2 { path: d.clone() }).unwrap();
        let task = tokio::spawn(w.run(move || {
            f2.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        // The kill and the last process leaving: on_oom, then the end.
        std::fs::write(d.join("memory.events"), "oom_kill 1\n").unwrap();
        std::fs::write(d.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("watcher did not end")
            .unwrap();
        assert_eq!(fired.load(Ordering::SeqCst), 1);

        // Already empty at the start: returns at once. No memory.events: setup fails (NotFound).
        tokio::time::timeout(
            Duration::from_secs(5),
            watch_oom(Cgroup::V2 { path: d.clone() }, || panic!()),
        )
        .await
        .unwrap();
        let none = t.sub("nomem", &[]);
        assert!(matches!(OomWatcher::new(&Cgroup::V2 { path: none }), Err(Error::NotFound(_))));
        assert!(matches!(
            OomWatcher::new(&Cgroup::V1 { paths: HashMap::new() }),
            Err(Error::NotFound(_))
        ));
    }

    /// The real v1 path: needs root and a v1 memory controller at /sys/fs/cgroup/memory.
    #[tokio::test]
    async fn watch_oom_v1_real() {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !nix::unistd::geteuid().is_root() || !root.join("cgroup.event_control").exists() {
            eprintln!(
                "SKIP watch_oom_v1_real: needs root and a cgroup v1 memory controller at {}",
                root.display()
            );
            return;
        }
        let dir = root.join(format!("rustshim-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("SKIP watch_oom_v1_real: cannot create {}: {e}", dir.display());
            return;
        }
        struct Rmdir(PathBuf);
        impl Drop for Rmdir {
            fn drop(&mut self) {
                for _ in 0..50 {
                    if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                eprintln!("could not remove {}", self.0.display());
            }
        }
        let guard = Rmdir(dir.clone());
        let limit = (32u64 << 20).to_string();
        std::fs::write(dir.join("memory.limit_in_bytes"), &limit).unwrap();
        if dir.join("memory.memsw.limit_in_bytes").exists() {
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &limit);
        }

        let cg = Cgroup::V1 { paths: HashMap::from([("memory".to_string(), dir.clone())]) };
        let fired = Arc::new(AtomicUsize::new(0));
        let f2 = fired.clone();
        let w = OomWatcher::new(&cg).unwrap();
        let task = tokio::spawn(w.run(move || {
            f2.fetch_add(1, Ordering::SeqCst);
        }));

        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && x=$(head -c 200M /dev/zero | tr '\0' a); echo survived"#)
            .arg("sh")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ok = wait_count(&fired, 1).await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "no OOM notification from the v1 eventfd");
        // The stats see it too.
        let m = decode_v1(&cg.stats().unwrap());
        assert!(m.memory_oom_control.oom_kill >= 1 || m.memory.usage.failcnt > 0);

        // Removing the cgroup ends the watcher (the kernel signals the eventfd on removal).
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("watcher did not end")
            .unwrap();
        assert!(!dir.exists());
    }
}
