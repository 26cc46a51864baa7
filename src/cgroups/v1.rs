//! cgroup v1 metrics (`io.containerd.cgroups.v1.Metrics`), one directory per controller.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::protobuf::MessageField;

use super::files::*;
use crate::error::Result;

const V1_READ: [&str; 6] = ["pids", "cpu", "cpuacct", "memory", "blkio", "hugetlb"];

pub(super) fn metrics_v1(paths: &HashMap<String, PathBuf>) -> Result<v1::Metrics> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::testutil::*;
    use super::super::Cgroup;
    use crate::error::Error;

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
}
