//! Files the shim keeps in a bundle (and reads from it): written atomically, never through a
//! symlink, never blocking on a FIFO planted where a file belongs. The bundle outlives the
//! daemon: `delete` after a shim crash reads what is kept here.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Write a bundle file through a fresh temporary and a rename. The temporary is created with
/// O_EXCL|O_NOFOLLOW and rename replaces a symlink rather than following it, so a link planted in
/// the bundle can never redirect a write outside it.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// Open `path` without blocking and insist on a regular file: the shim serves every container
/// from one thread, so a FIFO (or a device) named where a file belongs must be refused rather
/// than block everything on its open or read.
pub fn open_regular(opts: &mut std::fs::OpenOptions, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let not_regular = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
    // Checked first too, so a FIFO gets this message rather than open's ENXIO.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(not_regular());
    }
    let f = opts.custom_flags(libc::O_NONBLOCK).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(f)
}

/// Read a file of the bundle, refusing a symlink (which could point anywhere on the host).
pub fn read_bundle_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut data = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::InvalidArgument(format!("{} is a symlink: refused", path.display())),
            _ => Error::InvalidArgument(format!("read {}: {e}", path.display())),
        })?;
    Ok(data)
}

/// Keep init's exit in the bundle, so `delete` can report it after a shim crash.
pub fn persist_exit(bundle: &Path, status: u32, at: SystemTime) {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let body = format!("{} {} {}", status, d.as_secs(), d.subsec_nanos());
    if let Err(e) = write_atomic(&bundle.join("exit-status"), body.as_bytes()) {
        log::warn!("cannot keep the exit status in the bundle: {e}");
    }
}

/// The exit `persist_exit` kept. A file that does not parse is an error (never a panic): it
/// was written by something else, or cut short.
pub fn read_persisted_exit(bundle: &Path) -> Result<Option<(u32, SystemTime)>> {
    let path = bundle.join("exit-status");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    let bad = || Error::InvalidArgument(format!("{}: corrupt exit status {:?}", path.display(), text.trim()));
    let mut it = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    let (Some(Some(status)), Some(Some(secs)), Some(Some(nanos)), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(bad());
    };
    let status = u32::try_from(status).map_err(|_| bad())?;
    let nanos = u32::try_from(nanos).ok().filter(|n| *n < 1_000_000_000).ok_or_else(bad)?;
    let at = SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos)).ok_or_else(bad)?;
    Ok(Some((status, at)))
}

/// Does the container share its pid namespace (no `pid` namespace of its own in config.json)?
/// Read as plain JSON: runc validates the whole spec; the shim needs only this.
pub fn pid_namespace_is_shared(bundle: &Path) -> Result<bool> {
    let path = bundle.join("config.json");
    let data = read_bundle_file(&path)?;
    let spec: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| Error::InvalidArgument(format!("invalid {}: {e}", path.display())))?;
    if !spec.is_object() {
        return Err(Error::InvalidArgument(format!("invalid {}: not a JSON object", path.display())));
    }
    let own = spec
        .pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && n.get("path").and_then(|p| p.as_str()).is_none_or(str::is_empty)
            })
        });
    Ok(!own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rs-bundle-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn bundle_files_never_follow_symlinks() {
        let dir = std::env::temp_dir().join(format!("rs-symlink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let outside = dir.join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let link = dir.join("options.json");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("options.tmp")).unwrap();
        assert!(matches!(read_bundle_file(&link), Err(Error::InvalidArgument(m)) if m.contains("symlink")));
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(read_bundle_file(&link).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exit_status_round_trip_and_corrupt_files() {
        let dir = tmp("exit");
        assert!(read_persisted_exit(&dir).unwrap().is_none());
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        persist_exit(&dir, 137, at);
        assert_eq!(read_persisted_exit(&dir).unwrap(), Some((137, at)));
        // what used to panic (Duration overflow) or misread is an error naming the file
        for corrupt in ["0 18446744073709551615 999999999", "0 1 1000000000", "x 1 2", "1 2", "1 2 3 4", "4294967296 1 1", ""] {
            std::fs::write(dir.join("exit-status"), corrupt).unwrap();
            let e = read_persisted_exit(&dir).unwrap_err();
            assert!(e.to_string().contains("exit-status"), "{corrupt:?}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pid_namespace_from_config_json() {
        let dir = tmp("pidns");
        let case = |json: &str| {
            std::fs::write(dir.join("config.json"), json).unwrap();
            pid_namespace_is_shared(&dir)
        };
        assert!(!case(r#"{"linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}"#).unwrap());
        assert!(case(r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#).unwrap());
        assert!(case(r#"{"linux":{"namespaces":[{"type":"network"}]}}"#).unwrap());
        assert!(case(r#"{"process":{}}"#).unwrap());
        let bad = case("{not json").unwrap_err();
        assert!(matches!(&bad, Error::InvalidArgument(m) if m.contains("config.json")), "{bad}");
        assert!(matches!(case("[1]"), Err(Error::InvalidArgument(_))));
        std::fs::remove_file(dir.join("config.json")).unwrap();
        assert!(matches!(pid_namespace_is_shared(&dir), Err(Error::InvalidArgument(m)) if m.contains("config.json")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
