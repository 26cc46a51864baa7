//! The binary protocol's one-shot actions: `start` (find or launch the daemon for this group
//! and print its address) and `delete` (clean up after a daemon that is gone).

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use sha2::{Digest, Sha256};

use crate::cli::Flags;
use crate::error::{Error, Result};
use crate::events::timestamp;
use crate::mount;
use crate::options::{self, ShimOptions};
use crate::supervisor::read_persisted_exit;

pub const SOCKET_DIR: &str = "/run/containerd/s";
/// The daemon finds its listening socket here, as the Go shim passes it.
pub const LISTENER_FD: i32 = 3;

/// Go's path.Clean for the absolute/relative paths containerd hashes.
fn clean(path: &str) -> String {
    let abs = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (abs, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// `unix:///run/containerd/s/<sha256(path.Join(address, namespace, group))>`, as containerd's
/// shim library computes it.
pub fn socket_address(containerd_address: &str, namespace: &str, group: &str) -> String {
    let joined = clean(&format!("{containerd_address}/{namespace}/{group}"));
    let digest = Sha256::digest(joined.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{SOCKET_DIR}/{hex}")
}

/// The group this container's shim serves: the explicit runc group annotation, else the CRI
/// sandbox, else the container itself.
pub fn group_id(bundle: &Path, id: &str) -> String {
    let annotations = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| v.get("annotations").cloned());
    for key in ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"] {
        if let Some(g) = annotations.as_ref().and_then(|a| a.get(key)).and_then(|g| g.as_str()) {
            if !g.is_empty() {
                return g.to_string();
            }
        }
    }
    id.to_string()
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Bind the group's socket; `Ok(None)` means a live shim already serves it (a group join).
fn bind_socket(address: &str) -> Result<Option<UnixListener>> {
    let path = socket_path(address);
    if let Some(dir) = Path::new(path).parent() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            // A stale socket from a shim that died: take it over.
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).map_err(|e| Error::io(format!("bind {path}"), e))?
        }
        Err(e) => return Err(Error::io(format!("bind {path}"), e)),
    };
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod {path}"), e))?;
    Ok(Some(listener))
}

/// `start`: containerd runs this with CombinedOutput, so on success stdout carries only the
/// address and nothing at all goes to stderr.
pub fn start(flags: &Flags) -> Result<String> {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let bundle = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    let address = socket_address(&flags.address, &flags.namespace, &group_id(&bundle, &flags.id));
    let Some(listener) = bind_socket(&address)? else {
        options::write_atomic(&bundle.join("address"), address.as_bytes())?;
        return Ok(address);
    };
    let result = spawn_daemon(flags, &bundle, &address, listener);
    if result.is_err() {
        let _ = std::fs::remove_file(socket_path(&address));
    }
    result?;
    options::write_atomic(&bundle.join("address"), address.as_bytes())?;
    Ok(address)
}

fn spawn_daemon(flags: &Flags, bundle: &Path, address: &str, listener: UnixListener) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find own executable", e))?;
    let log = open_log_fifo(bundle);
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.args(["-socket", address]);
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
        .process_group(0);
    let fd = listener.as_raw_fd();
    // SAFETY: dup2/fcntl are async-signal-safe; fd is open in the child after fork.
    unsafe {
        cmd.pre_exec(move || {
            if fd == LISTENER_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| Error::io("spawn shim daemon", e))?;
    adjust_oom_score(child.id());
    // The daemon is re-parented once we exit; it is never waited for here.
    drop(child);
    Ok(())
}

/// The bundle's `log` FIFO, opened read-write and non-blocking so the daemon's log writes never
/// block or raise SIGPIPE while containerd is away.
fn open_log_fifo(bundle: &Path) -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"))
        .ok()
        .map(OwnedFd::from)
}

/// The Go shim runs one point above containerd's own oom_score_adj, so the OOM killer takes a
/// shim before containerd.
fn adjust_oom_score(pid: u32) {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), (own + 1).min(1000).to_string());
}

/// `delete`: the daemon is gone; make sure the container is too, and report what we know.
pub fn delete(flags: &Flags) -> Result<Vec<u8>> {
    let bundle = match &flags.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().map_err(|e| Error::io("current directory", e))?,
    };
    let opts = ShimOptions::load(&bundle);
    let root = PathBuf::from(opts.root()).join(&flags.namespace);
    let out = Command::new(opts.binary())
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &flags.id])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if !o.status.success() => {
            let msg = String::from_utf8_lossy(&o.stderr);
            if !crate::error::runtime_says_gone(&msg) {
                eprintln!("rustshim delete: {} delete {}: {}", opts.binary(), flags.id, msg.trim());
            }
        }
        Err(e) => eprintln!("rustshim delete: run {}: {e}", opts.binary()),
        Ok(_) => {}
    }
    if let Err(e) = mount::unmount_all(&bundle.join("rootfs")) {
        eprintln!("rustshim delete: unmount rootfs: {e}");
    }
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    // The real status when the daemon recorded it before dying; else what the Go shim says.
    let (status, at) = read_persisted_exit(&bundle).unwrap_or((137, SystemTime::now()));
    let resp = DeleteResponse { pid, exit_status: status, exited_at: timestamp(at), ..Default::default() };
    resp.write_to_bytes().map_err(|e| Error::Other(e.to_string()))
}

pub fn print(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_matches_containerd() {
        // Observed on this host with containerd 1.6: sha256("/tmp/probe16/c.sock/probe/c1").
        let a = socket_address("/tmp/probe16/c.sock", "probe", "c1");
        let want: String = Sha256::digest(b"/tmp/probe16/c.sock/probe/c1")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, format!("unix:///run/containerd/s/{want}"));
        assert_eq!(a.len(), "unix://".len() + SOCKET_DIR.len() + 1 + 64);
        // path.Join cleans: duplicate slashes and a trailing slash do not change the hash.
        assert_eq!(socket_address("/run/containerd//containerd.sock/", "default", "x"),
                   socket_address("/run/containerd/containerd.sock", "default", "x"));
    }

    #[test]
    fn go_path_clean() {
        assert_eq!(clean("/a//b/./c/.."), "/a/b");
        assert_eq!(clean("a/../../b"), "../b");
        assert_eq!(clean("/.."), "/");
    }

    #[test]
    fn grouping_annotations() {
        let dir = std::env::temp_dir().join(format!("rs-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(group_id(&dir, "c1"), "c1");
        std::fs::write(dir.join("config.json"), r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#).unwrap();
        assert_eq!(group_id(&dir, "c1"), "pod1");
        std::fs::write(
            dir.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.containerd.runc.v2.group":"g"}}"#,
        )
        .unwrap();
        assert_eq!(group_id(&dir, "c1"), "g");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
