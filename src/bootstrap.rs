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
use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use sha2::{Digest, Sha256};

use crate::cli::Flags;
use crate::error::{Error, Result};
use crate::events::timestamp;
use crate::mount;
use crate::options::{self, ShimOptions};
use crate::bundle::read_persisted_exit;

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

/// `unix://<dir>/<sha256(path.Join(address, namespace, group))>`, as containerd's shim library
/// computes it; `dir` is /run/containerd/s unless containerd 2.3+ names another.
fn socket_address_in(dir: &str, containerd_address: &str, namespace: &str, group: &str) -> String {
    let joined = clean(&format!("{containerd_address}/{namespace}/{group}"));
    let digest = Sha256::digest(joined.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{dir}/{hex}")
}

/// `-info` (containerd 2.x): what this runtime is, and the OCI runtime's features so containerd
/// can check e.g. idmapped mount support.
pub fn info(build: &str) -> Result<Vec<u8>> {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let options_any = Any::parse_from_bytes(&stdin).ok().filter(|a| !a.type_url.is_empty());
    let opts = options::decode(options_any.as_ref())?;
    let mut info = RuntimeInfo {
        name: "io.containerd.rustshim.v2".into(),
        version: MessageField::some(RuntimeVersion {
            version: crate::version::VERSION.into(),
            revision: crate::version::GIT_REVISION.into(),
            ..Default::default()
        }),
        options: options_any.into(),
        annotations: [("io.containerd.rustshim.build".to_string(), build.to_string())].into(),
        ..Default::default()
    };
    if let Ok(out) = Command::new(opts.binary()).arg("features").stdin(Stdio::null()).output() {
        if out.status.success() {
            let mut f = Any::new();
            f.type_url = "types.containerd.io/opencontainers/runtime-spec/1/features/Features".into();
            f.value = out.stdout;
            info.features = MessageField::some(f);
        }
    }
    info.write_to_bytes().map_err(|e| Error::Other(e.to_string()))
}

/// The group this container's shim serves: the explicit runc group annotation, else the CRI
/// sandbox, else the container itself.
pub fn group_id(bundle: &Path, id: &str) -> String {
    let annotations = crate::bundle::read_bundle_file(&bundle.join("config.json"))
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

/// The filesystem path of a `unix://` address (containerd passes both forms).
pub fn socket_path(address: &str) -> &str {
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

/// What `start` finds on stdin: containerd 2.3+ sends BootstrapParams, older ones (and 2.3+ for
/// some shim names) the bare runtime-options Any.
#[derive(Debug, PartialEq)]
pub enum StartInput {
    Legacy(Option<Any>),
    Bootstrap(BootstrapParams),
}

impl StartInput {
    /// A raw Any can also decode as BootstrapParams, so it counts as one only when its ids
    /// match the flags containerd passed.
    pub fn parse(stdin: &[u8], flags: &Flags) -> StartInput {
        if let Ok(p) = BootstrapParams::parse_from_bytes(stdin) {
            if p.instance_id == flags.id && p.namespace == flags.namespace {
                return StartInput::Bootstrap(p);
            }
        }
        StartInput::Legacy(Any::parse_from_bytes(stdin).ok().filter(|a| !a.type_url.is_empty()))
    }

    pub fn options(&self) -> Option<&Any> {
        match self {
            StartInput::Legacy(a) => a.as_ref(),
            StartInput::Bootstrap(p) => p.extensions.iter().filter_map(|e| e.value.as_ref()).find(|a| {
                let t = crate::protos::bare_type_url(&a.type_url);
                t.ends_with("Options")
            }),
        }
    }

    fn socket_dir(&self) -> &str {
        match self {
            StartInput::Bootstrap(p) => p.socket_dir.as_deref().filter(|d| !d.is_empty()).unwrap_or(SOCKET_DIR),
            StartInput::Legacy(_) => SOCKET_DIR,
        }
    }

    /// The reply in the form the caller speaks: BootstrapResult for BootstrapParams, else the
    /// plain address (containerd 1.6 cannot read JSON). Version 2: task.v2 and v3 are both served.
    pub fn reply(&self, address: &str) -> Vec<u8> {
        match self {
            StartInput::Legacy(_) => address.as_bytes().to_vec(),
            StartInput::Bootstrap(_) => BootstrapResult {
                version: 2,
                address: address.to_string(),
                protocol: "ttrpc".into(),
                ..Default::default()
            }
            .write_to_bytes()
            .unwrap_or_default(),
        }
    }
}

/// `start`: containerd runs this with CombinedOutput, so on success stdout carries only the
/// reply and nothing at all goes to stderr.
pub fn start(flags: &Flags) -> Result<Vec<u8>> {
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let input = StartInput::parse(&stdin, flags);
    // Bad options are reported by Create, which gets the same Any, with a proper error code.
    let opts = options::decode(input.options()).unwrap_or_default();
    let bundle = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    let group = group_id(&bundle, &flags.id);
    let address = socket_address_in(input.socket_dir(), &flags.address, &flags.namespace, &group);
    let Some(listener) = bind_socket(&address)? else {
        crate::bundle::write_atomic(&bundle.join("address"), address.as_bytes())?;
        return Ok(input.reply(&address));
    };
    let result = spawn_daemon(flags, &bundle, &address, listener, &opts);
    if result.is_err() {
        let _ = std::fs::remove_file(socket_path(&address));
    }
    result?;
    crate::bundle::write_atomic(&bundle.join("address"), address.as_bytes())?;
    Ok(input.reply(&address))
}

/// Move the daemon into the ShimCgroup option's cgroup: every v1 hierarchy that has that path,
/// and the unified one. A path that exists nowhere is an error, as in the Go shim.
fn place_in_cgroup(pid: u32, path: &str) -> Result<()> {
    let rel = path.trim_start_matches('/');
    let mut placed = 0;
    let roots = std::fs::read_dir("/sys/fs/cgroup").map_err(|e| Error::io("/sys/fs/cgroup", e))?;
    let mut dirs: Vec<PathBuf> = roots.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.push(PathBuf::from("/sys/fs/cgroup"));
    for root in dirs {
        let procs = root.join(rel).join("cgroup.procs");
        if procs.exists() && std::fs::write(&procs, pid.to_string()).is_ok() {
            placed += 1;
        }
    }
    if placed == 0 {
        return Err(Error::InvalidArgument(format!("shim cgroup {path:?} does not exist")));
    }
    Ok(())
}

fn spawn_daemon(flags: &Flags, bundle: &Path, address: &str, listener: UnixListener, opts: &ShimOptions) -> Result<()> {
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
    if !opts.shim_cgroup.is_empty() {
        if let Err(e) = place_in_cgroup(child.id(), &opts.shim_cgroup) {
            // SAFETY: our own child, not yet waited for.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let mut child = child;
            let _ = child.wait();
            return Err(e);
        }
    }
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

/// The daemon died without removing its socket; remove it unless a live shim (another
/// container of the same group may have started one) answers on it.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else { return };
    let path = socket_path(address.trim());
    if !path.starts_with('/') || UnixStream::connect(path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(path);
}

/// `delete`: the daemon is gone; make sure the container is too, and report what we know.
pub fn delete(flags: &Flags) -> Result<Vec<u8>> {
    let bundle = match &flags.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().map_err(|e| Error::io("current directory", e))?,
    };
    let opts = ShimOptions::load(&bundle);
    let root = PathBuf::from(opts.root()).join(&flags.namespace);
    // containerd runs `delete` after every normal teardown too; when the runtime's state
    // directory is already gone (runc, crun and youki all keep one per container) there is
    // nothing to delete, and skipping the call saves a runtime start per container.
    let out = if !root.join(&flags.id).exists() {
        Ok(std::process::Output { status: Default::default(), stdout: Vec::new(), stderr: Vec::new() })
    } else {
        // The global flags of every runtime call (go-runc gives them to every verb): a wrapper
        // runtime may require --log, and runc's errors then reach log.json.
        let config = crate::runtime::RuntimeConfig {
            binary: opts.binary().to_string(),
            root,
            systemd_cgroup: opts.systemd_cgroup,
            criu_path: None,
            log: bundle.join("log.json"),
        };
        Command::new(opts.binary())
            .args(config.global_args())
            .args(["delete", "--force", &flags.id])
            .stdin(Stdio::null())
            .output()
    };
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
    remove_dead_socket(&bundle);
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    // The real status when the daemon recorded it before dying; else what the Go shim says.
    let kept = read_persisted_exit(&bundle).unwrap_or_else(|e| {
        eprintln!("rustshim delete: {e}");
        None
    });
    let (status, at) = kept.unwrap_or((137, SystemTime::now()));
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
    use containerd_shim_protos::bootstrap_api::Extension;

    fn socket_address(a: &str, ns: &str, group: &str) -> String {
        socket_address_in(SOCKET_DIR, a, ns, group)
    }

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

    fn flags() -> Flags {
        crate::cli::parse(["-namespace", "ns", "-id", "c1", "start"].map(String::from)).unwrap()
    }

    #[test]
    fn start_input_legacy_any_and_bootstrap_params() {
        let mut opts = Any::new();
        opts.type_url = "containerd.runc.v1.Options".into();
        let legacy = StartInput::parse(&opts.write_to_bytes().unwrap(), &flags());
        assert_eq!(legacy.options().map(|a| a.type_url.as_str()), Some("containerd.runc.v1.Options"));
        assert_eq!(legacy.reply("unix:///x"), b"unix:///x");
        assert_eq!(StartInput::parse(b"", &flags()), StartInput::Legacy(None));

        let params = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "ns".into(),
            extensions: vec![Extension { value: MessageField::some(opts.clone()), ..Default::default() }],
            socket_dir: Some("/run/other/s".into()),
            ..Default::default()
        };
        let b = StartInput::parse(&params.write_to_bytes().unwrap(), &flags());
        assert_eq!(b.options(), Some(&opts));
        assert_eq!(b.socket_dir(), "/run/other/s");
        let r = BootstrapResult::parse_from_bytes(&b.reply("unix:///run/other/s/ab")).unwrap();
        assert_eq!((r.version, r.address.as_str(), r.protocol.as_str()), (2, "unix:///run/other/s/ab", "ttrpc"));
        // same bytes, other ids: a legacy Any after all
        let other = BootstrapParams { instance_id: "zz".into(), ..params };
        assert!(matches!(StartInput::parse(&other.write_to_bytes().unwrap(), &flags()), StartInput::Legacy(_)));
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
