//! cgroup v2 metrics (`io.containerd.cgroups.v2.Metrics`) of the unified hierarchy.

use std::path::Path;

use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::MessageField;

use super::files::*;
use crate::error::Result;

pub(super) fn metrics_v2(dir: &Path) -> Result<v2::Metrics> {
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

#[cfg(test)]
mod tests {
    use super::super::Cgroup;
    use crate::cgroups::testutil::*;
    use crate::error::Error;

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
}
