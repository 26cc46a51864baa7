//! Overlay mounts. mount(2) takes its data in one page, which an image of ~50+ layers overflows
//! (containerd's snapshot paths are ~70 bytes each). Like containerd, two ways past it:
//! - the new mount API (Linux 6.8+): `fsopen("overlay")` and one `lowerdir+` per layer, with no
//!   size limit;
//! - otherwise lowerdirs relative to their common parent, mounted from a thread that has its own
//!   cwd (`unshare(CLONE_FS)`), so the shim's cwd never changes and no child process is needed.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::idmap;
use super::options::MountOptions;
use super::sys::{self, FsContext};
use crate::error::{Error, Result};

/// containerd's threshold: mount(2) data must fit a page, minus slack for the kernel's own use.
pub fn page_limit() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (if page > 0 { page as usize } else { 4096 }) - 512
}

/// The layers of a `lowerdir=` option: (regular layers, data-only layers after `::`).
pub fn split_lowerdirs(value: &str) -> (Vec<String>, Vec<String>) {
    let (regular, data) = match value.split_once("::") {
        Some((r, d)) => (r, Some(d)),
        None => (value, None),
    };
    let list = |s: &str| s.split(':').filter(|l| !l.is_empty()).map(str::to_string).collect::<Vec<_>>();
    (list(regular), data.map(list).unwrap_or_default())
}

/// containerd's `compactLowerdirOption`: the lowerdirs' common parent (one level above their
/// longest common prefix, since snapshot ids are numbers), and the data with lowerdirs relative
/// to it. None when there is nothing to gain.
pub fn compact(data: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let idx = data.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&str> = data[idx]["lowerdir=".len()..].split(':').collect();
    if dirs.len() < 2 || dirs.iter().any(|d| !d.starts_with('/') || d.is_empty()) {
        return None;
    }
    let (min, max) = (dirs.iter().min()?, dirs.iter().max()?);
    let mut common = min.bytes().zip(max.bytes()).take_while(|(a, b)| a == b).count();
    while !min.is_char_boundary(common) {
        common -= 1;
    }
    // Go's path.Dir: everything before the last '/' of the common prefix.
    let prefix = &min[..common];
    let parent = &prefix[..prefix.rfind('/')?];
    if parent == "/" || parent.is_empty() {
        return None;
    }
    let base = format!("{parent}/");
    let mut rel = Vec::with_capacity(dirs.len());
    for d in &dirs {
        if d.len() <= base.len() || !d.starts_with(&base) {
            return None;
        }
        rel.push(&d[base.len()..]);
    }
    let mut out: Vec<String> = data.iter().enumerate().filter(|(i, _)| *i != idx).map(|(_, o)| o.clone()).collect();
    out.push(format!("lowerdir={}", rel.join(":")));
    Some((PathBuf::from(parent), out))
}

/// Superblock flags fsconfig takes by name, and the per-mount attributes fsmount takes.
fn new_api_flags(flags: MsFlags) -> (Vec<&'static str>, u64) {
    let mut sb = Vec::new();
    let mut attrs = 0;
    if flags.contains(MsFlags::MS_RDONLY) {
        sb.push("ro");
        attrs |= sys::MOUNT_ATTR_RDONLY;
    }
    if flags.contains(MsFlags::MS_SYNCHRONOUS) {
        sb.push("sync");
    }
    if flags.contains(MsFlags::MS_DIRSYNC) {
        sb.push("dirsync");
    }
    for (f, a) in [
        (MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NOATIME, sys::MOUNT_ATTR_NOATIME),
        (MsFlags::MS_STRICTATIME, sys::MOUNT_ATTR_STRICTATIME),
        (MsFlags::MS_NODIRATIME, sys::MOUNT_ATTR_NODIRATIME),
    ] {
        if flags.contains(f) {
            attrs |= a;
        }
    }
    (sb, attrs)
}

/// How a layer reaches the new mount API.
enum Layer<'a> {
    Path(&'a str),
}

/// Why the new mount API could not be used: `Unsupported` falls back to mount(2).
enum NewApiError {
    Unsupported(std::io::Error),
    Failed(Error),
}

fn new_api(
    source: &str,
    target: &Path,
    o: &MountOptions,
    layers: Vec<Layer<'_>>,
    data_layers: &[String],
) -> std::result::Result<(), NewApiError> {
    let ctx = FsContext::open("overlay").map_err(NewApiError::Unsupported)?;
    let fail = |what: String, e: std::io::Error, ctx: &FsContext| {
        let log = ctx.log();
        let detail = if log.is_empty() { String::new() } else { format!(" ({log})") };
        NewApiError::Failed(Error::Other(format!("overlay at {}: {what}: {e}{detail}", target.display())))
    };
    let _ = ctx.set_string("source", source);
    let mut first = true;
    for l in layers {
        let Layer::Path(p) = l;
        let r = ctx.set_string("lowerdir+", p);
        if let Err(e) = r {
            // A kernel without lowerdir+ (< 6.8) says EINVAL on the first layer; later failures
            // are about the layer itself.
            if first && e.raw_os_error() == Some(libc::EINVAL) {
                return Err(NewApiError::Unsupported(e));
            }
            return Err(fail(format!("lowerdir+ {p}"), e, &ctx));
        }
        first = false;
    }
    for d in data_layers {
        ctx.set_string("datadir+", d).map_err(|e| fail(format!("datadir+ {d}"), e, &ctx))?;
    }
    for opt in &o.data {
        if opt.starts_with("lowerdir=") {
            continue;
        }
        let r = match opt.split_once('=') {
            Some((k, v)) => ctx.set_string(k, v),
            None => ctx.set_flag(opt),
        };
        r.map_err(|e| fail(format!("option {opt:?}"), e, &ctx))?;
    }
    let (sb, attrs) = new_api_flags(o.flags);
    for f in sb {
        ctx.set_flag(f).map_err(|e| fail(format!("flag {f}"), e, &ctx))?;
    }
    ctx.create().map_err(|e| fail("create".into(), e, &ctx))?;
    let mnt = ctx.mount(attrs).map_err(|e| fail("fsmount".into(), e, &ctx))?;
    sys::move_mount(&mnt, target).map_err(|e| fail("attach".into(), e, &ctx))?;
    Ok(())
}

/// mount(2), from `chdir` when lowerdirs are relative to it. The chdir happens in a thread of
/// its own that first unshares its fs attributes, so the rest of the shim keeps its cwd.
fn classic(source: &str, target: &Path, flags: MsFlags, data: &str, chdir: Option<&Path>) -> std::io::Result<()> {
    let Some(dir) = chdir else {
        return mount(Some(source), target, Some("overlay"), flags, Some(data)).map_err(Into::into);
    };
    let (source, target, data, dir) = (source.to_string(), target.to_path_buf(), data.to_string(), dir.to_path_buf());
    std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
        std::env::set_current_dir(&dir)?;
        mount(Some(source.as_str()), &target, Some("overlay"), flags, Some(data.as_str()))?;
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("overlay mount thread panicked")))
}

/// Temporary idmapped mount points for the layers, for kernels that cannot take layers by fd;
/// removed (detached) by `Drop` once the overlay holds its own references to them.
struct TempLayers {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Drop for TempLayers {
    fn drop(&mut self) {
        for m in &self.mounted {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(m);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Name prefix of the temporary idmapped-layer directory beside a rootfs.
pub const IDMAP_DIR_PREFIX: &str = ".idmap-";

fn temp_layers(target: &Path, layers: &[String], userns: &OwnedFd) -> Result<TempLayers> {
    // Beside the rootfs, in the bundle: whatever is left there is the bundle's to clean.
    let parent = target.parent().unwrap_or(target);
    let dir = parent.join(format!("{IDMAP_DIR_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let mut t = TempLayers { dir, mounted: Vec::new() };
    for (i, l) in layers.iter().enumerate() {
        let p = t.dir.join(i.to_string());
        std::fs::create_dir_all(&p).map_err(|e| Error::io(format!("create {}", p.display()), e))?;
        let fd = idmap::idmapped_tree(Path::new(l), userns)?;
        sys::move_mount(&fd, &p).map_err(|e| Error::io(format!("attach idmapped layer at {}", p.display()), e))?;
        t.mounted.push(p);
    }
    Ok(t)
}

pub fn mount_overlay(source: &str, target: &Path, o: &MountOptions) -> Result<()> {
    let lower_idx = o.data.iter().position(|d| d.starts_with("lowerdir="));
    let (layers, data_layers) =
        lower_idx.map(|i| split_lowerdirs(&o.data[i]["lowerdir=".len()..])).unwrap_or_default();
    let userns = match o.idmap() {
        Some((u, g)) => Some(idmap::userns_fd(u, g)?),
        None => None,
    };
    // Held until the overlay is mounted: it takes its own references to the layers.
    let mut _temp = None;
    let (o, layers) = match &userns {
        None => (std::borrow::Cow::Borrowed(o), layers),
        Some(userns) => {
            let Some(idx) = lower_idx.filter(|_| !layers.is_empty()) else {
                return Err(Error::InvalidArgument("idmapped overlay without lowerdir=".into()));
            };
            // overlayfs clones each layer's mount, which it cannot do for a detached one: the
            // idmapped layers get temporary mount points, as in containerd.
            let temp = temp_layers(target, &layers, userns)?;
            let paths: Vec<String> = temp.mounted.iter().map(|p| p.display().to_string()).collect();
            let mut lower = paths.join(":");
            if !data_layers.is_empty() {
                lower = format!("{lower}::{}", data_layers.join(":"));
            }
            let mut opts = o.clone();
            opts.data[idx] = format!("lowerdir={lower}");
            _temp = Some(temp);
            (std::borrow::Cow::Owned(opts), paths)
        }
    };
    if o.data_string().len() >= page_limit() && !layers.is_empty() {
        let paths = layers.iter().map(|l| Layer::Path(l.as_str())).collect();
        match new_api(source, target, &o, paths, &data_layers) {
            Ok(()) => return Ok(()),
            Err(NewApiError::Failed(e)) => return Err(e),
            Err(NewApiError::Unsupported(e)) => {
                log::debug!("overlay lowerdir+ unsupported ({e}); compacting lowerdirs")
            }
        }
    }
    mount_paths(source, target, &o)
}

/// mount(2) with path layers, compacted when the data does not fit a page.
fn mount_paths(source: &str, target: &Path, o: &MountOptions) -> Result<()> {
    let data = o.data_string();
    let (chdir, data) = if data.len() >= page_limit() {
        match compact(&o.data) {
            Some((dir, d)) => (Some(dir), d.join(",")),
            None => (None, data),
        }
    } else {
        (None, data)
    };
    if data.len() >= page_limit() + 512 {
        return Err(Error::InvalidArgument(format!(
            "overlay options of {} bytes exceed the kernel's page-size limit even with lowerdirs \
             relative to their common parent, and this kernel has no lowerdir+ (Linux 6.8+)",
            data.len()
        )));
    }
    let flags = o.flags & !(MsFlags::MS_SHARED | MsFlags::MS_PRIVATE | MsFlags::MS_SLAVE | MsFlags::MS_UNBINDABLE);
    classic(source, target, flags, &data, chdir.as_deref())
        .map_err(|e| Error::io(format!("mount overlay at {}", target.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdirs_split() {
        assert_eq!(split_lowerdirs("/a:/b"), (vec!["/a".to_string(), "/b".to_string()], vec![]));
        assert_eq!(split_lowerdirs("/a::/d1:/d2"), (vec!["/a".to_string()], vec!["/d1".to_string(), "/d2".to_string()]));
    }

    #[test]
    fn compaction_as_containerd() {
        let root = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let data = vec![
            "index=off".to_string(),
            format!("lowerdir={root}/12/fs:{root}/11/fs:{root}/3/fs"),
            format!("upperdir={root}/13/fs"),
        ];
        let (dir, d) = compact(&data).unwrap();
        assert_eq!(dir, Path::new(root));
        assert_eq!(d, vec!["index=off".to_string(), format!("upperdir={root}/13/fs"), "lowerdir=12/fs:11/fs:3/fs".into()]);
        // One layer, or nothing in common: nothing to compact.
        assert!(compact(&[format!("lowerdir={root}/1/fs")]).is_none());
        assert!(compact(&["lowerdir=/a/1:/b/2".to_string()]).is_none());
        assert!(compact(&["lowerdir=rel/1:rel/2".to_string()]).is_none());
        // Paths that differ inside a multi-byte character.
        let (dir, _) = compact(&["lowerdir=/x/s/\u{e9}/1:/x/s/\u{e8}/2".to_string()]).unwrap();
        assert_eq!(dir, Path::new("/x/s"));
    }

    #[test]
    fn flags_for_the_new_api() {
        let (sb, attrs) = new_api_flags(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(sb, ["ro"]);
        assert_eq!(attrs, sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV);
    }
}

#[cfg(test)]
pub(super) fn mount_paths_for_test(source: &str, target: &Path, o: &MountOptions) -> Result<()> {
    mount_paths(source, target, o)
}
