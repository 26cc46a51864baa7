//! Where a process's cgroup is: `/proc/<pid>/cgroup` joined with the cgroup mounts of
//! `/proc/self/mountinfo` (v1 controllers win on a hybrid host).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::Cgroup;
use crate::error::{Error, Result};

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
        // Streamed, never read whole: on a busy node mountinfo is hundreds of KiB (every
        // container's overlay with its lowerdirs), and a heap grown to hold it once stays
        // resident in every shim (massif: 256 KiB of a 314 KiB peak, with 1,000 containers up).
        let mounts = std::fs::File::open(&mi_file)
            .and_then(|f| cgroup_mounts(io::BufReader::with_capacity(4096, f)))
            .map_err(|e| Error::io(format!("read {}", mi_file.display()), e))?;
        Self::from_mounts(&cgroup, &mounts).map_err(|e| match e {
            Error::NotFound(m) => Error::NotFound(format!("process {pid}: {m}")),
            e => e,
        })
    }

    /// Pure parser: the contents of /proc/<pid>/cgroup and of a mountinfo file.
    pub fn from_proc_files(cgroup_file: &str, mountinfo: &str) -> Result<Cgroup> {
        let mounts = cgroup_mounts(mountinfo.as_bytes()).expect("reading a slice cannot fail");
        Self::from_mounts(cgroup_file, &mounts)
    }

    fn from_mounts(cgroup_file: &str, mounts: &[Mount]) -> Result<Cgroup> {
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
}

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

/// The cgroup mounts of a mountinfo file, read one line at a time into one reused buffer.
fn cgroup_mounts(mut r: impl io::BufRead) -> io::Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(mounts);
        }
        // The kernel escapes only space, tab, newline and backslash: a mount point with bytes
        // that are not UTF-8 shows them raw. Such a line is skipped (no cgroup mount is one);
        // read whole, the file used to fail on it.
        if let Some(m) = std::str::from_utf8(&line).ok().and_then(cgroup_mount) {
            mounts.push(m);
        }
    }
}

fn cgroup_mount(line: &str) -> Option<Mount> {
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
        super_opts: f.get(sep + 3).map(|o| o.split(',').map(String::from).collect()).unwrap_or_default(),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`; this undoes it (tests use it too).
pub fn unescape_octal(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn mountinfo_is_read_line_by_line_across_long_lines() {
        // A busy node's overlay lines run to KiBs (one lowerdir per layer); the reader's buffer
        // is smaller than one of them and the cgroup mounts around it are still all found.
        let lower: Vec<String> = (0..500).map(|i| format!("/var/lib/snap/{i}/fs")).collect();
        let overlay = format!(
            "99 22 0:99 / /run/c/rootfs rw - overlay overlay rw,lowerdir={}\n",
            lower.join(":")
        );
        let text = format!("{overlay}{HYBRID_MOUNTINFO}{overlay}");
        let mounts = cgroup_mounts(io::BufReader::with_capacity(64, text.as_bytes())).unwrap();
        assert_eq!(mounts.len(), 7, "{mounts:?}");
        assert_eq!(mounts[6].fstype, "cgroup2");
        assert_eq!(mounts[0].point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    }

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
}
