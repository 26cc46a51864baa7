//! Support for the CRI tests beside this file (e2e_cri.rs and others, bench_pod_start.rs): a
//! PRIVATE containerd with the CRI plugin enabled and the `rustshim` runtime handler configured,
//! and the CRI client calls they share (k8s-cri + tonic).
//!
//! Everything lives in a short temp dir `/tmp/rscri-XXXXXX` (root, state,
//! gRPC socket, pod logs, containerd.log). Dropping [`CriContainerd`] stops
//! that containerd (by pid), kills only the shims whose command line names its
//! socket, force-deletes only the runc containers whose ids this test created,
//! unmounts what is left under the temp dir, removes the pod cgroup parent the
//! test chose and finally the temp dir.
//!
//! Environment knobs:
//! - `RUSTSHIM_CONTAINERD_BIN_DIR` (or `RUSTSHIM_CONTAINERD_DIR`, as for the
//!   other e2e tests): directory holding `containerd` and `ctr` (default
//!   `/usr/bin`); the config is written for the version it reports (config
//!   version 2 for 1.6/1.7, version 3 for 2.x).
//! - `RUSTSHIM_TEST_RUNTIME=io.containerd.runc.v2`: run the same flow against
//!   containerd's Go shim (handler `runc`) to check the test itself.
//! - `RUSTSHIM_ALLOW_SKIP=1`: when a prerequisite is missing, print
//!   `SKIPPED: reason` and pass instead of failing.
//! - `RUSTSHIM_KEEP_TMP=1`: keep the temp dir (logs, state) after the test.
//! - `RUSTSHIM_CRI_SHIM_DIR=/dir`: serve the `rustshim` handler with
//!   `/dir/containerd-shim-rustshim-v2` instead of the debug build cargo made
//!   for the tests (scripts/bench points it at its release copy). containerd
//!   then finds both shims in a private `bin/` of the temp dir holding links to
//!   exactly that binary and to the Go shim of the containerd dir under test,
//!   so nothing else in `/dir` (the bench keeps a Go shim copy there) is used.
#![allow(dead_code)]

pub use crate::common::{describe, pid_alive, random_suffix, repo_root, send_signal, tail, wait_until, which};
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The shim binary cargo built for the integration tests.
pub const SHIM_BIN: &str = env!("CARGO_BIN_EXE_containerd-shim-rustshim-v2");
/// Binary names containerd derives from the two runtime types configured.
pub const RUST_SHIM_NAME: &str = "containerd-shim-rustshim-v2";
pub const GO_SHIM_NAME: &str = "containerd-shim-runc-v2";

/// `RUSTSHIM_CRI_SHIM_DIR`, when set: the directory whose rustshim binary serves the pods.
fn shim_dir_override() -> Option<PathBuf> {
    std::env::var("RUSTSHIM_CRI_SHIM_DIR")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The rustshim binary the `rustshim` handler runs: `$RUSTSHIM_CRI_SHIM_DIR/containerd-shim-rustshim-v2`,
/// else [`SHIM_BIN`].
pub fn rust_shim_bin() -> PathBuf {
    match shim_dir_override() {
        Some(d) => d.join(RUST_SHIM_NAME),
        None => PathBuf::from(SHIM_BIN),
    }
}

/// Runtime type of the shim and the CRI runtime handler name mapped to it.
pub const RUNTIME_TYPE: &str = "io.containerd.rustshim.v2";
pub const HANDLER: &str = "rustshim";

/// True unless `RUSTSHIM_TEST_RUNTIME=io.containerd.runc.v2` asks to check
/// the test itself against containerd's Go shim (handler `runc`).
pub fn testing_rustshim() -> bool {
    !matches!(
        std::env::var("RUSTSHIM_TEST_RUNTIME")
            .as_deref()
            .map(str::trim),
        Ok("io.containerd.runc.v2")
    )
}

/// The CRI runtime handler the pod uses.
pub fn handler() -> &'static str {
    if testing_rustshim() {
        HANDLER
    } else {
        "runc"
    }
}

/// File name of the shim binary serving the pod (argv[0]'s basename).
pub fn shim_name() -> &'static str {
    if testing_rustshim() {
        "containerd-shim-rustshim-v2"
    } else {
        "containerd-shim-runc-v2"
    }
}
/// The sandbox image built by scripts/make-pause.sh and named in the config.
pub const PAUSE_IMAGE: &str = "localhost/rustshim/pause:1.0";
/// The busybox app image built by scripts/make-image.sh.
pub const APP_IMAGE: &str = "docker.io/library/rsbox:latest";
/// containerd's CRI namespace.
pub const K8S_NS: &str = "k8s.io";

// ---------------------------------------------------------------------------
// skip policy and prerequisites
// ---------------------------------------------------------------------------

fn allow_skip() -> bool {
    matches!(
        std::env::var("RUSTSHIM_ALLOW_SKIP").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Prints `SKIPPED: ...` (and returns) when RUSTSHIM_ALLOW_SKIP=1, panics otherwise.
pub fn skip_or_fail(test: &str, reason: &str) {
    if allow_skip() {
        crate::common::print_skip(test, reason);
    } else {
        panic!(
            "{test}: cannot run: {reason}\n\
             (run as root with containerd, ctr, runc, gcc + libc6-dev and busybox-static installed, \
             e.g. via scripts/setup.sh; set RUSTSHIM_ALLOW_SKIP=1 to skip instead of failing)"
        );
    }
}


fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Directory holding the containerd and ctr under test:
/// `RUSTSHIM_CONTAINERD_BIN_DIR`, else `RUSTSHIM_CONTAINERD_DIR` (the name
/// tests/common and scripts/matrix.sh use), else /usr/bin.
pub fn containerd_bin_dir() -> PathBuf {
    for var in ["RUSTSHIM_CONTAINERD_BIN_DIR", "RUSTSHIM_CONTAINERD_DIR"] {
        if let Ok(v) = std::env::var(var) {
            if !v.trim().is_empty() {
                return PathBuf::from(v.trim());
            }
        }
    }
    PathBuf::from("/usr/bin")
}

/// Checks everything the CRI test needs; Err(reason) when something is missing.
pub fn prerequisites() -> Result<(), String> {
    if effective_uid() != Some(0) {
        return Err("not running as root (containerd, runc and mounts need root)".into());
    }
    let bin = containerd_bin_dir();
    for tool in ["containerd", "ctr"] {
        if !is_executable(&bin.join(tool)) {
            return Err(format!(
                "{} not found (containerd dir {}, from RUSTSHIM_CONTAINERD_BIN_DIR / \
                 RUSTSHIM_CONTAINERD_DIR or /usr/bin; apt-get install containerd, \
                 or scripts/fetch-containerd.sh trixie|sid)",
                bin.join(tool).display(),
                bin.display()
            ));
        }
    }
    for (tool, pkg) in [
        ("runc", "runc"),
        ("umount", "util-linux"),
        ("gcc", "gcc libc6-dev"),
        ("tar", "tar"),
        ("sha256sum", "coreutils"),
    ] {
        if which(tool).is_none() {
            return Err(format!(
                "`{tool}` not found in PATH (apt-get install {pkg})"
            ));
        }
    }
    let busybox = std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    if !is_executable(Path::new(&busybox)) {
        return Err(format!(
            "{busybox} not found (apt-get install busybox-static)"
        ));
    }
    if !Path::new(SHIM_BIN).exists() {
        return Err(format!("shim binary {SHIM_BIN} missing (cargo build)"));
    }
    let shim = rust_shim_bin();
    if !is_executable(&shim) {
        return Err(format!(
            "shim binary {} missing or not executable (RUSTSHIM_CRI_SHIM_DIR)",
            shim.display()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// small utilities
// ---------------------------------------------------------------------------









// ---------------------------------------------------------------------------
// containerd version and config
// ---------------------------------------------------------------------------

/// (major, minor, patch) parsed from `containerd --version`, plus the raw line.
pub fn containerd_version(bin_dir: &Path) -> Result<((u32, u32, u32), String), String> {
    let o = run_with_timeout(
        Command::new(bin_dir.join("containerd")).arg("--version"),
        Duration::from_secs(20),
    );
    if !o.status.success() {
        return Err(format!("`containerd --version` failed\n{}", describe(&o)));
    }
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    // "containerd github.com/containerd/containerd 1.6.20~ds1 ..." or "... v2.1.9 ..."
    for word in line.split_whitespace().skip(2) {
        let w = word.trim_start_matches('v');
        let nums: Vec<u32> = w
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map_while(|p| p.parse().ok())
            .collect();
        if nums.len() == 3 && w.starts_with(|c: char| c.is_ascii_digit()) {
            return Ok(((nums[0], nums[1], nums[2]), line));
        }
    }
    Err(format!("cannot parse a version from `{line}`"))
}

/// containerd config with CRI enabled and the rustshim handler, for `version`.
///
/// `restrict_oom_score_adj = true`: CRI gives the sandbox oom_score_adj -998,
/// which needs CAP_SYS_RESOURCE; in a container (like CI) runc init then
/// fails with "failed to update /proc/self/oom_score_adj: Permission denied".
/// Restricting clamps it to containerd's own value.
///
/// Two knobs exercise what deploy/ documents:
/// - `RUSTSHIM_CRI_RUNTIME_PATH=1`: `runtime_path` = the absolute shim path
///   (instead of finding the shim in containerd's PATH);
/// - `RUSTSHIM_CRI_OPTIONS="Key = value; ..."`: an `options` table for the
///   handler (CRI then sends `runtimeoptions.v1.Options` to the shim: the
///   table as ConfigBody on 1.7+, or only `ConfigPath` on 1.6).
pub fn cri_config(dir: &Path, version: (u32, u32, u32)) -> String {
    cri_config_with(dir, version, &[], false)
}

/// [`cri_config`] with extra `key = value` lines for the handler's runtime options (e.g. a
/// `BinaryName`), merged with `RUSTSHIM_CRI_OPTIONS`. With `as_runc_type`, the rustshim handler
/// is declared as runtime type io.containerd.runc.v2 with `runtime_path` naming the shim: CRI
/// then sends it runc's options type and reads its runtime's features (which it does, e.g., for
/// user-namespace pods; for any other runtime type it fails to decode the options).
pub fn cri_config_with(dir: &Path, version: (u32, u32, u32), options: &[String], as_runc_type: bool) -> String {
    let d = dir.display();
    let plugin = if version.0 >= 2 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    };
    let mut extra = String::new();
    if matches!(
        std::env::var("RUSTSHIM_CRI_RUNTIME_PATH").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    ) && testing_rustshim()
    {
        extra.push_str(&format!("        runtime_path = \"{}\"\n", rust_shim_bin().display()));
    }
    let runtime_type = if as_runc_type && testing_rustshim() {
        extra.push_str(&format!("        runtime_path = \"{}\"\n", rust_shim_bin().display()));
        "io.containerd.runc.v2"
    } else {
        RUNTIME_TYPE
    };
    let mut opts = std::env::var("RUSTSHIM_CRI_OPTIONS").unwrap_or_default();
    for o in options {
        opts.push(';');
        opts.push_str(o);
    }
    {
        if !opts.trim_matches(|c: char| c == ';' || c.is_whitespace()).is_empty() {
            extra.push_str(&format!(
                "      [plugins.\"{plugin}\".containerd.runtimes.{}.options]\n",
                handler()
            ));
            for kv in opts.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                extra.push_str(&format!("        {kv}\n"));
            }
        }
    }
    let common = format!(
        r#"root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/c.sock"

[debug]
  level = "debug"
"#
    );
    if version.0 >= 2 {
        // containerd 2.x: config version 3, CRI split into images/runtime plugins
        format!(
            r#"version = 3
{common}
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
    socket_path = "{d}/nri.sock"
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{PAUSE_IMAGE}"
  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    enable_cdi = false
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{HANDLER}]
        runtime_type = "{runtime_type}"
        sandboxer = "podsandbox"
{extra}    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{d}/cni/bin"]
      conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"#
        )
    } else {
        // containerd 1.6 / 1.7: config version 2, one CRI plugin
        let nri = if version >= (1, 7, 0) {
            format!(
                r#"  [plugins."io.containerd.nri.v1.nri"]
    disable = true
    socket_path = "{d}/nri.sock"
"#
            )
        } else {
            String::new()
        };
        format!(
            r#"version = 2
{common}
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
{nri}  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    disable_apparmor = true
    enable_selinux = false
    restrict_oom_score_adj = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}]
        runtime_type = "{runtime_type}"
{extra}    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{d}/cni/bin"
      conf_dir = "{d}/cni/conf"
"#
        )
    }
}

// ---------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------

/// A running rustshim process: pid and argv.
#[derive(Debug, Clone)]
pub struct ShimProc {
    pub pid: u32,
    pub args: Vec<String>,
}

impl ShimProc {
    /// Value of a Go-style flag (`-id X`, `--id X`, `-id=X`).
    pub fn flag(&self, name: &str) -> Option<String> {
        flag_value(&self.args, name)
    }
}

pub fn flag_value(args: &[String], name: &str) -> Option<String> {
    let (one, two) = (format!("-{name}"), format!("--{name}"));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == one || *a == two {
            return it.next().cloned();
        }
        for p in [&one, &two] {
            if let Some(v) = a.strip_prefix(&format!("{p}=")) {
                return Some(v.to_string());
            }
        }
    }
    None
}

/// Every live shim process of the runtime under test (any containerd).
pub fn all_shim_procs() -> Vec<ShimProc> {
    shim_procs_where(|name| name == shim_name())
}

/// Every live process whose argv[0] basename passes `keep` (any containerd).
fn shim_procs_where(keep: impl Fn(&str) -> bool) -> Vec<ShimProc> {
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let Some(argv0) = args.first() else { continue };
        if !Path::new(argv0)
            .file_name()
            .is_some_and(|n| keep(&n.to_string_lossy()))
        {
            continue;
        }
        if !pid_alive(pid) {
            continue;
        }
        v.push(ShimProc { pid, args });
    }
    v.sort_by_key(|p| p.pid);
    v
}

/// Memory of one process in kB: (VmRSS, Pss, private, anonymous, threads).
pub fn memory_of(pid: u32) -> Option<(u64, u64, u64, u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rss = field(&status, "VmRSS:");
    let threads = field(&status, "Threads:");
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let pss = field(&rollup, "Pss:");
    let private = field(&rollup, "Private_Clean:") + field(&rollup, "Private_Dirty:");
    let anon = field(&rollup, "Anonymous:");
    Some((rss, pss, private, anon, threads))
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut v: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    v.sort();
    v.dedup();
    v.reverse();
    v
}

/// The memory cgroup (v1) or unified cgroup path of a pid, as a host path.
pub fn memory_cgroup_dir(pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for l in text.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == "memory") {
            return Some(PathBuf::from(format!("/sys/fs/cgroup/memory{path}")));
        }
    }
    // pure cgroup v2
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(format!("/sys/fs/cgroup{p}")))
}

// ---------------------------------------------------------------------------
// test images
// ---------------------------------------------------------------------------

/// Builds (once per test process) the pause and busybox image archives.
pub fn build_images() -> Result<(PathBuf, PathBuf), String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let pause = dir.join("cri-pause.tar");
    let app = dir.join("cri-rsbox.tar");
    for (script, out, name) in [
        ("scripts/make-pause.sh", &pause, PAUSE_IMAGE),
        ("scripts/make-image.sh", &app, APP_IMAGE),
    ] {
        let o = run_with_timeout(
            Command::new("bash")
                .arg(repo_root().join(script))
                .arg(out)
                .arg(name),
            Duration::from_secs(120),
        );
        if !o.status.success() {
            return Err(format!("{script} failed\n{}", describe(&o)));
        }
    }
    Ok((pause, app))
}

// ---------------------------------------------------------------------------
// the private containerd
// ---------------------------------------------------------------------------

pub struct CriContainerd {
    pub name: String,
    /// `/tmp/rscri-XXXXXX`
    pub dir: PathBuf,
    /// gRPC socket (CRI is served on it too).
    pub sock: PathBuf,
    pub bin_dir: PathBuf,
    pub version: (u32, u32, u32),
    pub version_line: String,
    /// Pod log directory (CRI `log_directory`).
    pub log_dir: PathBuf,
    /// Cgroup parent of the pod (`/rustshim-cri-<suffix>`), removed at drop.
    pub cgroup_parent: String,
    /// containerd's PATH: where it looks the shim binaries up.
    pub path: Vec<PathBuf>,
    child: Option<Child>,
    /// Sandbox and container ids this test created (force-deleted at drop if left).
    ids: Mutex<Vec<String>>,
    /// Set once the test saved containerd.log for a failure report.
    pub failed: std::sync::atomic::AtomicBool,
}

impl CriContainerd {
    /// Starts the private containerd. Err(reason) when a prerequisite is
    /// missing (the caller applies the skip policy); panics on real failures.
    pub fn start(name: &str) -> Result<CriContainerd, String> {
        Self::start_with(name, &[], false)
    }

    /// Like [`start`](Self::start), with extra runtime options for the handler (see
    /// [`cri_config_with`]).
    pub fn start_with(name: &str, runtime_options: &[String], as_runc_type: bool) -> Result<CriContainerd, String> {
        prerequisites()?;
        let bin_dir = containerd_bin_dir();
        let (version, version_line) = containerd_version(&bin_dir)?;
        let dir = (0..100)
            .map(|_| PathBuf::from(format!("/tmp/rscri-{}", random_suffix(6))))
            .find(|p| fs::create_dir(p).is_ok())
            .expect("could not create a temp dir under /tmp");
        let suffix = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("rscri-")
            .to_string();
        for sub in ["pods", "cni/bin", "cni/conf"] {
            fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        fs::write(dir.join("config.toml"), cri_config_with(&dir, version, runtime_options, as_runc_type)).expect("write config");
        let path = daemon_path(&dir, &bin_dir);
        let mut c = CriContainerd {
            name: name.to_string(),
            sock: dir.join("c.sock"),
            log_dir: dir.join("pods"),
            cgroup_parent: format!("/rustshim-cri-{suffix}"),
            path,
            dir,
            bin_dir,
            version,
            version_line,
            child: None,
            ids: Mutex::new(Vec::new()),
            failed: std::sync::atomic::AtomicBool::new(false),
        };
        c.spawn_daemon();
        Ok(c)
    }

    fn spawn_daemon(&mut self) {
        let child = crate::common::spawn_containerd(
            &self.name,
            &self.bin_dir.join("containerd"),
            &self.bin_dir.join("ctr"),
            &self.dir,
            &self.sock,
            &std::env::join_paths(&self.path).unwrap(),
            &[],
        );
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The binary containerd runs for shim `name`: the first one on its PATH, else the one
    /// beside containerd (its own fallback).
    pub fn resolve_shim(&self, name: &str) -> Option<PathBuf> {
        self.path
            .iter()
            .chain(std::iter::once(&self.bin_dir))
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    }

    /// `ctr -a SOCK -n k8s.io ARGS`
    pub fn ctr(&self, args: &[&str], timeout: Duration) -> Output {
        run_with_timeout(
            Command::new(self.bin_dir.join("ctr"))
                .arg("-a")
                .arg(&self.sock)
                .arg("-n")
                .arg(K8S_NS)
                .args(args),
            timeout,
        )
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args, Duration::from_secs(60));
        assert!(
            o.status.success(),
            "[{}] `ctr {}` failed\n{}\n--- containerd.log tail ---\n{}",
            self.name,
            args.join(" "),
            describe(&o),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Imports an OCI archive into the k8s.io namespace.
    pub fn import(&self, archive: &Path) {
        self.ctr_ok(&["images", "import", &archive.display().to_string()]);
    }

    pub fn log(&self) -> String {
        fs::read(self.dir.join("containerd.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Warning/error lines of containerd.log, including the shim's own
    /// (containerd tags those with `runtime=io.containerd.<name>.v2`).
    pub fn interesting_log(&self, max: usize) -> String {
        let log = self.log();
        let v: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("level=error")
                    || l.contains("level=warning")
                    || l.contains("level=fatal")
                    || l.contains("panic")
            })
            .collect();
        v[v.len().saturating_sub(max)..].join("\n")
    }

    /// Why the CRI plugin did not load, if containerd logged it.
    pub fn cri_load_error(&self) -> Option<String> {
        self.log()
            .lines()
            .find(|l| l.contains("failed to load plugin") && l.contains("cri"))
            .map(|l| l.to_string())
    }

    /// Records an id this test created (so the drop can clean up after a failure).
    pub fn remember_id(&self, id: &str) {
        self.ids.lock().unwrap().push(id.to_string());
    }

    /// Bundle directory containerd created for `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(K8S_NS)
            .join(id)
    }

    /// The shim address recorded in a bundle: the shim's `address` file
    /// (1.x reads it), else the `address` of the `bootstrap.json` that
    /// containerd 2.x writes itself.
    pub fn bundle_address(&self, id: &str) -> Option<String> {
        let b = self.bundle(id);
        if let Ok(s) = fs::read_to_string(b.join("address")) {
            return Some(s.trim().to_string());
        }
        let json = fs::read_to_string(b.join("bootstrap.json")).ok()?;
        let key = "\"address\":";
        let rest = json[json.find(key)? + key.len()..]
            .trim_start()
            .strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_string())
    }

    /// Live shims (of the runtime under test) started by THIS containerd (their -address is our socket).
    pub fn shims(&self) -> Vec<ShimProc> {
        let sock = self.sock.display().to_string();
        all_shim_procs()
            .into_iter()
            .filter(|p| p.flag("address").as_deref() == Some(sock.as_str()))
            .collect()
    }

    /// Live shims of either kind started by THIS containerd.
    pub fn all_shims(&self) -> Vec<ShimProc> {
        let sock = self.sock.display().to_string();
        shim_procs_where(|name| name.starts_with("containerd-shim-"))
            .into_iter()
            .filter(|p| p.flag("address").as_deref() == Some(sock.as_str()))
            .collect()
    }

    /// Copies containerd.log to target/tmp/e2e-logs/<name>.log; returns the path.
    pub fn save_log(&self) -> Option<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        fs::create_dir_all(&dir).ok()?;
        let (a, b, c) = self.version;
        let dst = dir.join(format!("{}-containerd-{a}.{b}.{c}.log", self.name));
        fs::copy(self.dir.join("containerd.log"), &dst).ok()?;
        Some(dst)
    }

    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        send_signal(child.id(), "TERM");
        if !wait_until(Duration::from_secs(15), || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    fn cleanup(&mut self) {
        // shim sockets named in bundles (removed if a killed shim left them)
        let mut sockets = Vec::new();
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task");
        if let Ok(rd) = fs::read_dir(&tasks) {
            for ns in rd.flatten() {
                for b in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    if let Ok(a) = fs::read_to_string(b.path().join("address")) {
                        let a = a.trim();
                        sockets.push(PathBuf::from(a.strip_prefix("unix://").unwrap_or(a)));
                    }
                }
            }
        }
        self.stop_daemon();
        // shims whose -address is our socket: ours by construction (of either handler: a
        // test may have run pods of both)
        let shims = self.all_shims();
        for s in &shims {
            send_signal(s.pid, "KILL");
        }
        wait_until(Duration::from_secs(5), || {
            shims.iter().all(|s| !pid_alive(s.pid))
        });
        for s in sockets {
            let _ = fs::remove_file(s);
        }
        // runc containers with ids this test created, if any were left
        let root = format!("/run/containerd/runc/{K8S_NS}");
        for id in self.ids.lock().unwrap().iter() {
            if Path::new(&root).join(id).exists() {
                let _ = run_with_timeout(
                    Command::new("runc").args(["--root", &root, "delete", "--force", id]),
                    Duration::from_secs(20),
                );
            }
        }
        // runc's per-namespace dir: removed only when empty (other users of k8s.io keep theirs)
        let _ = fs::remove_dir(&root);
        // mounts under the temp dir (rootfs overlays, sandbox shm), deepest first
        for m in mounts_under(&self.dir) {
            let _ = run_with_timeout(
                Command::new("umount").arg("-l").arg(&m),
                Duration::from_secs(20),
            );
        }
        // the pod cgroup parent this test chose, in every hierarchy
        remove_cgroup_tree(&self.cgroup_parent);
        let keep = matches!(
            std::env::var("RUSTSHIM_KEEP_TMP").as_deref(),
            Ok("1") | Ok("true") | Ok("yes")
        );
        if keep {
            let _ = writeln!(
                std::io::stderr(),
                "[{}] kept {}",
                self.name,
                self.dir.display()
            );
        } else if mounts_under(&self.dir).is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            let _ = writeln!(
                std::io::stderr(),
                "[{}] mounts still under {}: not removing it",
                self.name,
                self.dir.display()
            );
        }
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        if thread::panicking() && !self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(p) = self.save_log() {
                let _ = writeln!(
                    std::io::stderr(),
                    "[{}] containerd.log saved to {}",
                    self.name,
                    p.display()
                );
            }
        }
        self.cleanup();
    }
}

/// Removes `/sys/fs/cgroup/<hierarchy><parent>` (empty dirs only, depth first).
pub fn remove_cgroup_tree(parent: &str) {
    assert!(
        parent.starts_with("/rustshim-cri-"),
        "refusing to remove cgroup {parent}"
    );
    fn rm(dir: &Path) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.flatten().map(|e| e.path()));
    }
    for r in roots {
        let d = PathBuf::from(format!("{}{parent}", r.display()));
        if d.is_dir() {
            rm(&d);
        }
    }
}

/// containerd's PATH for a private instance in `dir`: the rustshim under test first, then
/// the containerd dir under test (its Go shim), then ours.
///
/// By default the rustshim is the one in SHIM_BIN's dir. With `RUSTSHIM_CRI_SHIM_DIR`, `dir/bin`
/// holds links to that dir's rustshim and to `bin_dir`'s Go shim: putting the whole dir first
/// would also put whatever else it holds ahead of `bin_dir` (scripts/bench's dir has a copy of
/// the Go shim from the PATH, not necessarily from `bin_dir`).
fn daemon_path(dir: &Path, bin_dir: &Path) -> Vec<PathBuf> {
    let first = if shim_dir_override().is_some() {
        let links = dir.join("bin");
        fs::create_dir_all(&links).expect("mkdir bin");
        let mut targets = vec![(rust_shim_bin(), RUST_SHIM_NAME)];
        if is_executable(&bin_dir.join(GO_SHIM_NAME)) {
            targets.push((bin_dir.join(GO_SHIM_NAME), GO_SHIM_NAME));
        }
        for (target, name) in targets {
            let target = fs::canonicalize(&target).unwrap_or(target);
            std::os::unix::fs::symlink(&target, links.join(name))
                .unwrap_or_else(|e| panic!("link {} -> {}: {e}", links.join(name).display(), target.display()));
        }
        links
    } else {
        Path::new(SHIM_BIN).parent().unwrap().to_path_buf()
    };
    let mut paths = vec![first, bin_dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    paths
}

/// A command with a timeout and no stdin (tests/common's runner).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    crate::common::run_with_timeout(cmd, None, Duration::ZERO, timeout)
}

/// A CRI client channel over containerd's unix socket.
pub async fn connect(sock: &Path) -> tonic::transport::Channel {
    let path = sock.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect to CRI on {}: {e}", sock.display()))
}

// ---------------------------------------------------------------------------
// CRI client side (what kubelet would send)
// ---------------------------------------------------------------------------

/// Upper bound of one CRI call.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// A CRI call with a timeout; the error is a readable string. Prints nothing (for timed calls).
pub async fn rpc<T, F>(what: &str, fut: F) -> Result<T, String>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!(
            "{what} failed: code={:?} message={:?}",
            s.code(),
            s.message()
        )),
        Err(_) => Err(format!("{what} timed out after {RPC_TIMEOUT:?}")),
    }
}

/// [`rpc`], printing how long a successful call took.
pub async fn call<T, F>(what: &str, fut: F) -> Result<T, String>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    let r = rpc(what, fut).await;
    if r.is_ok() {
        println!("  {what}: {:?}", started.elapsed());
    }
    r
}

/// CRI's Version; when it fails, says why the CRI plugin did not load if containerd logged it.
pub async fn cri_version(
    cd: &CriContainerd,
    rt: &mut RuntimeServiceClient<Channel>,
) -> Result<api::VersionResponse, String> {
    call("Version", rt.version(api::VersionRequest::default()))
        .await
        .map_err(|e| match cd.cri_load_error() {
            Some(why) => format!("{e}\nthe CRI plugin did not load: {why}"),
            None => e,
        })
}

/// Waits (15 s at most each) until CRI sees the imported images: it learns about them from
/// containerd's events, a moment after the import.
pub async fn wait_for_images(
    img: &mut ImageServiceClient<Channel>,
    images: &[&str],
) -> Result<(), String> {
    for image in images {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = call(
                "ImageStatus",
                img.image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    verbose: false,
                }),
            )
            .await?;
            if r.image.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("CRI does not see the imported image {image}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Host network (no CNI needed), the container's own pid namespace, the pod's ipc: what the
/// pods of these tests and their containers declare alike.
pub fn host_network_namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A host-network pod (no CNI needed) with a fresh uid, logging to `cd`'s pod log dir, under
/// the cgroup parent `cd` removes at drop; labelled `test=<test>`.
pub fn host_network_pod_config(cd: &CriContainerd, name: &str, test: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{}", random_suffix(12)),
            namespace: "default".into(),
            attempt: 0,
        }),
        // kubelet leaves the hostname empty for host-network pods (runc
        // refuses a hostname without a private UTS namespace)
        hostname: String::new(),
        log_directory: cd.log_dir.display().to_string(),
        labels: HashMap::from([("test".to_string(), test.to_string())]),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cd.cgroup_parent.clone(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox ([`APP_IMAGE`]) container in a host-network pod, as kubelet would configure it;
/// `log_path` is relative to the pod's log directory.
pub fn container_config(name: &str, cmd: &[&str], log_path: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: APP_IMAGE.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.into(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_shares: 2,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}
