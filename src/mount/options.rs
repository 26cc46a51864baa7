//! mount(8)-style options from a snapshotter, split the way containerd's `parseMountOptions`
//! splits them: flags, propagation, the filesystem's data, and the options the shim itself
//! acts on (`loop`, `direct-io`, `uidmap=`, `gidmap=`).

use nix::mount::MsFlags;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    /// Passed to the filesystem as mount(2) data, in order.
    pub data: Vec<String>,
    /// `loop`: attach the source file to a loop device and mount that.
    pub losetup: bool,
    /// `direct-io` with `loop`: the loop device does direct I/O on its backing file.
    pub direct_io: bool,
    pub uidmap: Option<String>,
    pub gidmap: Option<String>,
    /// Userspace-only options (`x-*`, `X-*` other than `X-containerd.*`) that mount(8) keeps out of
    /// the kernel; dropped, kept here only for the log.
    pub stripped: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: Vec::new(),
            losetup: false,
            direct_io: false,
            uidmap: None,
            gidmap: None,
            stripped: Vec::new(),
        }
    }
}

fn flag(o: &str) -> Option<(bool, MsFlags)> {
    Some(match o {
        "async" => (true, MsFlags::MS_SYNCHRONOUS),
        "atime" => (true, MsFlags::MS_NOATIME),
        "bind" => (false, MsFlags::MS_BIND),
        "defaults" => (false, MsFlags::empty()),
        "dev" => (true, MsFlags::MS_NODEV),
        "diratime" => (true, MsFlags::MS_NODIRATIME),
        "dirsync" => (false, MsFlags::MS_DIRSYNC),
        "exec" => (true, MsFlags::MS_NOEXEC),
        "mand" => (false, MsFlags::MS_MANDLOCK),
        "noatime" => (false, MsFlags::MS_NOATIME),
        "nodev" => (false, MsFlags::MS_NODEV),
        "nodiratime" => (false, MsFlags::MS_NODIRATIME),
        "noexec" => (false, MsFlags::MS_NOEXEC),
        "nomand" => (true, MsFlags::MS_MANDLOCK),
        "norelatime" => (true, MsFlags::MS_RELATIME),
        "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
        "nosuid" => (false, MsFlags::MS_NOSUID),
        "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
        "relatime" => (false, MsFlags::MS_RELATIME),
        "remount" => (false, MsFlags::MS_REMOUNT),
        "ro" => (false, MsFlags::MS_RDONLY),
        "rw" => (true, MsFlags::MS_RDONLY),
        "strictatime" => (false, MsFlags::MS_STRICTATIME),
        "suid" => (true, MsFlags::MS_NOSUID),
        "sync" => (false, MsFlags::MS_SYNCHRONOUS),
        _ => return None,
    })
}

fn propagation(o: &str) -> Option<MsFlags> {
    let (rec, base) = match o.strip_prefix('r') {
        Some(b @ ("private" | "shared" | "slave" | "unbindable")) => (true, b),
        _ => (false, o),
    };
    let p = match base {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return None,
    };
    Some(if rec { p | MsFlags::MS_REC } else { p })
}

/// Split `options`. An `X-containerd.*` option is an instruction for containerd's mount manager
/// (mkdir, mkfs, format templates...) that should have been carried out before the mounts reached
/// a shim; doing the mount without it would mount something else than asked, so it is refused by
/// name. Other `x-`/`X-` options are userspace annotations that mount(8) never hands the kernel:
/// they are stripped.
pub fn parse(options: &[String]) -> Result<MountOptions> {
    let mut m = MountOptions::default();
    for o in options {
        if let Some((clear, f)) = flag(o) {
            if clear {
                m.flags &= !f;
            } else {
                m.flags |= f;
            }
        } else if let Some(p) = propagation(o) {
            m.propagation |= p;
        } else if o == "loop" {
            m.losetup = true;
        } else if o == "direct-io" {
            m.direct_io = true;
        } else if let Some(v) = o.strip_prefix("uidmap=") {
            m.uidmap = Some(v.to_string());
        } else if let Some(v) = o.strip_prefix("gidmap=") {
            m.gidmap = Some(v.to_string());
        } else if o.get(.."X-containerd.".len()).is_some_and(|p| p.eq_ignore_ascii_case("X-containerd.")) {
            return Err(Error::InvalidArgument(format!(
                "mount option {o:?} is an instruction for containerd's mount manager, which did \
                 not carry it out; the shim cannot honour it"
            )));
        } else if o.starts_with("x-") || o.starts_with("X-") {
            m.stripped.push(o.clone());
        } else {
            m.data.push(o.clone());
        }
    }
    if !m.losetup && m.direct_io {
        // containerd only reads direct-io as a loop parameter; elsewhere it is filesystem data.
        m.direct_io = false;
        m.data.push("direct-io".into());
    }
    if m.uidmap.is_some() != m.gidmap.is_some() {
        return Err(Error::InvalidArgument(
            "idmapped mount needs both uidmap= and gidmap= (containerd maps both or neither)".into(),
        ));
    }
    Ok(m)
}

impl MountOptions {
    pub fn data_string(&self) -> String {
        self.data.join(",")
    }

    pub fn idmap(&self) -> Option<(&str, &str)> {
        Some((self.uidmap.as_deref()?, self.gidmap.as_deref()?))
    }
}

/// One `container-id:host-id:size` range of a uidmap=/gidmap= option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// `0:100000:65536[,65536:300000:10]` as containerd writes it (`parseIDMappingList`).
pub fn parse_id_map(which: &str, s: &str) -> Result<Vec<IdRange>> {
    let bad = |why: &str| Error::InvalidArgument(format!("{which}={s:?}: {why}"));
    if s.is_empty() {
        return Err(bad("empty mapping"));
    }
    let mut out = Vec::new();
    for r in s.split(',') {
        let parts: Vec<&str> = r.split(':').collect();
        if parts.len() != 3 {
            return Err(bad("each mapping must be container-id:host-id:size"));
        }
        let n = |p: &str, what: &str| {
            p.parse::<u32>().map_err(|_| bad(&format!("{what} {p:?} is not a non-negative integer")))
        };
        let range = IdRange {
            container: n(parts[0], "container id")?,
            host: n(parts[1], "host id")?,
            size: n(parts[2], "size")?,
        };
        if range.size == 0 {
            return Err(bad("a mapping of size 0 maps nothing"));
        }
        if range.container.checked_add(range.size - 1).is_none() || range.host.checked_add(range.size - 1).is_none() {
            return Err(bad("mapping overflows the 32-bit id space"));
        }
        out.push(range);
    }
    // The kernel accepts at most 340 lines in a uid_map (5 before Linux 4.15).
    if out.len() > 340 {
        return Err(bad("more than 340 ranges"));
    }
    Ok(out)
}

/// The text written to /proc/<pid>/uid_map or gid_map.
pub fn id_map_text(ranges: &[IdRange]) -> String {
    ranges.iter().map(|r| format!("{} {} {}\n", r.container, r.host, r.size)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_are_data() {
        let m = parse(&opts(&["index=off", "lowerdir=/a:/b", "upperdir=/u", "workdir=/w"])).unwrap();
        assert!(m.flags.is_empty());
        assert!(m.propagation.is_empty());
        assert_eq!(m.data_string(), "index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w");
    }

    #[test]
    fn bind_flags() {
        let m = parse(&opts(&["rbind", "ro", "nosuid", "rprivate"])).unwrap();
        assert!(m.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert!(m.data.is_empty());
        assert_eq!(m.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let m = parse(&opts(&["ro", "rw"])).unwrap();
        assert!(!m.flags.contains(MsFlags::MS_RDONLY));
        // "relatime" is a flag, not the recursive form of "elatime".
        let m = parse(&opts(&["relatime"])).unwrap();
        assert_eq!(m.flags, MsFlags::MS_RELATIME);
        assert!(m.propagation.is_empty());
    }

    #[test]
    fn shim_options_never_reach_the_kernel() {
        let m = parse(&opts(&["ro", "loop", "direct-io", "uidmap=0:1000:10", "gidmap=0:2000:10"])).unwrap();
        assert!(m.losetup && m.direct_io);
        assert_eq!(m.idmap(), Some(("0:1000:10", "0:2000:10")));
        assert!(m.data.is_empty(), "{:?}", m.data);
        // direct-io without loop is the filesystem's business (e.g. fuse).
        let m = parse(&opts(&["direct-io"])).unwrap();
        assert!(!m.direct_io);
        assert_eq!(m.data, ["direct-io"]);
    }

    #[test]
    fn userspace_options_stripped_containerd_instructions_refused() {
        let m = parse(&opts(&["x-systemd.automount", "X-mount.mkdir", "noatime"])).unwrap();
        assert_eq!(m.stripped, ["x-systemd.automount", "X-mount.mkdir"]);
        assert!(m.data.is_empty());
        for o in ["X-containerd.mkdir.path=/x/upper:0755", "x-containerd.mkfs.fs=ext4"] {
            let e = parse(&opts(&["ro", o])).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)));
            assert!(e.to_string().contains(o), "{e}");
        }
    }

    #[test]
    fn odd_input_never_panics() {
        for o in ["X-containerdé", "X-containeré.x", "é", "", "r", "=", "uidmap=", "lowerdir=:::"] {
            let _ = parse(&opts(&[o]));
        }
    }

    #[test]
    fn half_an_idmap_is_refused() {
        let e = parse(&opts(&["uidmap=0:1000:1"])).unwrap_err();
        assert!(e.to_string().contains("gidmap"), "{e}");
    }

    #[test]
    fn id_maps() {
        let r = parse_id_map("uidmap", "0:100000:65536,65536:300000:10").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1], IdRange { container: 65536, host: 300000, size: 10 });
        assert_eq!(id_map_text(&r), "0 100000 65536\n65536 300000 10\n");
        for bad in ["", "0:1", "0:1:2:3", "a:1:2", "0:-1:2", "0:1:0", "0:4294967295:2", "0:1:2,"] {
            let e = parse_id_map("uidmap", bad).unwrap_err();
            assert!(e.to_string().starts_with("uidmap="), "{bad}: {e}");
        }
    }
}
