//! The rootfs mounts in a Create request (the snapshotter's overlay or bind mounts).

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// Split mount(8)-style options into flags and the data string, as containerd does.
pub fn parse_options(options: &[String]) -> (MsFlags, Vec<String>, MsFlags) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (clear, f) = match o.as_str() {
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
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let mut p = match o.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if o.starts_with('r') {
                    p |= MsFlags::MS_REC;
                }
                propagation |= p;
                continue;
            }
            _ => {
                data.push(o.clone());
                continue;
            }
        };
        if clear {
            flags &= !f;
        } else {
            flags |= f;
        }
    }
    (flags, data, propagation)
}

/// Mount every entry at `rootfs/<target>`, in order; on failure undo what was mounted.
pub fn mount_all(mounts: &[MountSpec], rootfs: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, rootfs) {
            let _ = unmount_all(rootfs);
            return Err(Error::Other(format!(
                "mount {} ({} of {}) at {}: {e}",
                m.kind,
                i + 1,
                mounts.len(),
                rootfs.display()
            )));
        }
    }
    Ok(())
}

fn mount_one(m: &MountSpec, rootfs: &Path) -> Result<()> {
    let rel = m.target.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return Err(Error::InvalidArgument(format!("mount target {:?} leaves the rootfs", m.target)));
    }
    let target = if rel.is_empty() { rootfs.to_path_buf() } else { rootfs.join(rel) };
    let (flags, data, propagation) = parse_options(&m.options);
    let data = data.join(",");
    let page = 4096;
    if data.len() >= page {
        return Err(Error::InvalidArgument(format!(
            "mount options of {} bytes exceed the kernel's page-size limit",
            data.len()
        )));
    }
    let kind = if m.kind == "bind" || m.kind == "rbind" { None } else { Some(m.kind.as_str()) };
    let flags = if m.kind == "rbind" { flags | MsFlags::MS_BIND | MsFlags::MS_REC } else { flags };
    mount(
        Some(m.source.as_str()),
        &target,
        kind,
        // A bind mount ignores MS_RDONLY on the first call; the remount below applies it.
        if flags.contains(MsFlags::MS_BIND) { flags & !MsFlags::MS_RDONLY } else { flags },
        if data.is_empty() { None } else { Some(data.as_str()) },
    )?;
    // A read-only bind needs a remount to take effect.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        mount(None::<&str>, &target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>)?;
    }
    if !propagation.is_empty() {
        mount(None::<&str>, &target, None::<&str>, propagation, None::<&str>)?;
    }
    Ok(())
}

/// Unmount everything stacked at `path`, until nothing is mounted there.
pub fn unmount_all(path: &Path) -> Result<()> {
    for _ in 0..64 {
        match umount2(path, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(path, MntFlags::MNT_DETACH)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_are_data() {
        let (f, d, p) = parse_options(&opts(&["index=off", "lowerdir=/a:/b", "upperdir=/u", "workdir=/w"]));
        assert!(f.is_empty());
        assert!(p.is_empty());
        assert_eq!(d.join(","), "index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w");
    }

    #[test]
    fn bind_flags() {
        let (f, d, p) = parse_options(&opts(&["rbind", "ro", "nosuid", "rprivate"]));
        assert!(f.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert!(d.is_empty());
        assert_eq!(p, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let (f, _, _) = parse_options(&opts(&["ro", "rw"]));
        assert!(!f.contains(MsFlags::MS_RDONLY));
    }
}
