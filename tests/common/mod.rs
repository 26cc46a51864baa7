//! Helpers shared by the end-to-end tests (std only).
//!
//! Every test gets a PRIVATE containerd (its own root, state, socket and log
//! under a short temp dir in /tmp) and its own namespace, so tests can run in
//! parallel and never touch a containerd they did not start.
//!
//! Environment knobs:
//! - `RUSTSHIM_TEST_RUNTIME`: runtime type the tests use (default
//!   `io.containerd.rustshim.v2`). Set it to `io.containerd.runc.v2` to check
//!   the tests themselves against the Go shim.
//! - `RUSTSHIM_ALLOW_SKIP=1`: when root, containerd, ctr or runc is missing,
//!   print `SKIPPED: reason` and pass instead of failing.
//! - `RUSTSHIM_KEEP_TMP=1`: keep the private temp dir (logs, state) after the test.
//! - `RUSTSHIM_CONTAINERD_DIR=/dir`: use `/dir/containerd` and `/dir/ctr`
//!   instead of the ones in $PATH.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Image built by `scripts/make-image.sh` and imported by [`Containerd::import_image`].
pub const IMAGE: &str = "docker.io/library/rsbox:latest";
/// The runtime the tests exercise unless `RUSTSHIM_TEST_RUNTIME` says otherwise.
pub const DEFAULT_RUNTIME: &str = "io.containerd.rustshim.v2";
/// Path of the shim binary under test (built by cargo for the integration tests).
pub const SHIM_BIN: &str = env!("CARGO_BIN_EXE_containerd-shim-rustshim-v2");
/// Default timeout of one `ctr` invocation.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// runtime selection and skip policy
// ---------------------------------------------------------------------------

/// Runtime type used by the tests (`RUSTSHIM_TEST_RUNTIME`, default rustshim).
pub fn runtime() -> String {
    match std::env::var("RUSTSHIM_TEST_RUNTIME") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => DEFAULT_RUNTIME.to_string(),
    }
}

/// True when the tests run against our shim (not the Go reference shim).
pub fn is_rustshim() -> bool {
    runtime() == DEFAULT_RUNTIME
}

/// Shim binary name containerd derives from the runtime type:
/// `io.containerd.runc.v2` -> `containerd-shim-runc-v2`.
pub fn shim_binary_name() -> String {
    let rt = runtime();
    let parts: Vec<&str> = rt.split('.').collect();
    if parts.len() >= 2 {
        format!(
            "containerd-shim-{}-{}",
            parts[parts.len() - 2],
            parts[parts.len() - 1]
        )
    } else {
        format!("containerd-shim-{rt}")
    }
}

fn allow_skip() -> bool {
    matches!(
        std::env::var("RUSTSHIM_ALLOW_SKIP").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Applies the skip policy: returns false (test should return early) after
/// printing `SKIPPED: ...` when RUSTSHIM_ALLOW_SKIP=1, panics otherwise.
pub fn skip_or_fail(test: &str, reason: &str) -> bool {
    if allow_skip() {
        print_skip(test, reason);
        false
    } else {
        panic!(
            "{test}: prerequisite missing: {reason}\n\
             (run scripts/setup.sh or scripts/test.sh as root; set RUSTSHIM_ALLOW_SKIP=1 to skip instead of failing)"
        );
    }
}

/// Prints `SKIPPED: <test>: <reason>` on its own line, straight to fd 2 (libtest captures
/// print!/eprint! of passing tests, and a skip must stay visible). `<test>` is libtest's name of
/// the running test (its thread's name) when there is one, so scripts/matrix.sh can match the
/// line to `test <name> ... ok` and report `skip`; `test` is the fallback.
pub fn print_skip(test: &str, reason: &str) {
    let current = std::thread::current();
    let name = current.name().filter(|n| *n != "main").unwrap_or(test);
    let _ = writeln!(std::io::stderr(), "\nSKIPPED: {name}: {reason}");
}

/// `containerd` / `ctr` to use: `$RUSTSHIM_CONTAINERD_DIR/<name>` when that
/// variable is set (e.g. to test another containerd build), else from $PATH.
pub fn containerd_tool(name: &str) -> PathBuf {
    match std::env::var_os("RUSTSHIM_CONTAINERD_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join(name),
        _ => PathBuf::from(name),
    }
}

/// Looks an executable up in $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if let Ok(md) = fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Some(p);
            }
        }
    }
    None
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Checks what every e2e test needs. Err(reason) when something is missing.
pub fn prerequisites() -> Result<(), String> {
    if effective_uid() != Some(0) {
        return Err("not running as root (containerd and runc need root)".into());
    }
    for tool in ["containerd", "ctr"] {
        let t = containerd_tool(tool);
        if t.is_absolute() || t.components().count() > 1 {
            if !t.exists() {
                return Err(format!(
                    "{} not found (RUSTSHIM_CONTAINERD_DIR)",
                    t.display()
                ));
            }
        } else if which(tool).is_none() {
            return Err(format!(
                "`{tool}` not found in PATH (apt-get install containerd)"
            ));
        }
    }
    for tool in ["runc", "umount"] {
        if which(tool).is_none() {
            return Err(format!(
                "`{tool}` not found in PATH (apt-get install runc util-linux)"
            ));
        }
    }
    if !is_rustshim() && which(&shim_binary_name()).is_none() {
        return Err(format!(
            "runtime {} selected but {} not in PATH",
            runtime(),
            shim_binary_name()
        ));
    }
    if !Path::new(SHIM_BIN).exists() {
        return Err(format!("shim binary {SHIM_BIN} missing (cargo build)"));
    }
    Ok(())
}

/// Extra tool needed by one test (e.g. `script` for TTY tests); same skip policy.
pub fn require_tool(test: &str, tool: &str) -> bool {
    if which(tool).is_some() {
        true
    } else {
        skip_or_fail(test, &format!("`{tool}` not found in PATH"))
    }
}

// ---------------------------------------------------------------------------
// small utilities
// ---------------------------------------------------------------------------

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A short pseudo-random lowercase suffix (time, pid and a counter mixed), for unique names.
pub fn random_suffix(n: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut x = nanos
        ^ (std::process::id() as u64).rotate_left(32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::new();
    for _ in 0..n {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        s.push(ALPHA[(v % ALPHA.len() as u64) as usize] as char);
    }
    s
}

/// Creates a fresh short directory `/tmp/rs-XXXXXX` (unix socket paths are
/// limited to ~106 bytes, so the private containerd lives close to `/`).
fn make_temp_dir() -> PathBuf {
    for _ in 0..100 {
        let p = PathBuf::from(format!("/tmp/rs-{}", random_suffix(6)));
        if fs::create_dir(&p).is_ok() {
            return p;
        }
    }
    panic!("could not create a temp dir under /tmp");
}

/// Sends a signal to one pid with the `kill` program (std only, no libc).
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg("-s")
        .arg(signal.trim_start_matches("SIG"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command with a timeout, optionally feeding `stdin` (the pipe is held
/// open for `hold_stdin` after the data is written, then closed). On timeout
/// the child is SIGKILLed and "TIMEOUT after ..." is appended to stderr.
pub fn run_with_timeout(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    hold_stdin: Duration,
    timeout: Duration,
) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&data);
            let _ = w.flush();
            thread::sleep(hold_stdin);
            drop(w);
        });
    }
    let rx_out = spawn_reader(child.stdout.take().unwrap());
    let rx_err = spawn_reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => panic!("wait {cmd:?}: {e}"),
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        thread::sleep(Duration::from_millis(10));
    };
    // A grandchild may still hold the pipes (e.g. under `script`): do not hang on it.
    let stdout = rx_out
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    let mut stderr = rx_err
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\nTIMEOUT after {timeout:?}: {cmd:?}\n").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Formats an Output for panic messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts a private containerd, `containerd --config <dir>/config.toml`, with PATH `path` and the
/// extra `env`, its output appended to `<dir>/containerd.log`, its temporary files (e.g.
/// ctrd-checkpoint* image dirs) in `<dir>/tmp` rather than the host's /tmp, in a process group
/// of its own (a ^C to the test run does not hit it directly). Waits up to 30 s for
/// `ctr -a sock version`; when containerd exits or does not answer, it is killed and this panics
/// with the log's tail, naming test `name`.
pub fn spawn_containerd(
    name: &str,
    containerd: &Path,
    ctr: &Path,
    dir: &Path,
    sock: &Path,
    path: &std::ffi::OsStr,
    env: &[(String, String)],
) -> Child {
    let log_path = dir.join("containerd.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open containerd.log");
    let tmp = dir.join("tmp");
    let _ = fs::create_dir_all(&tmp);
    let mut child = Command::new(containerd)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .env("TMPDIR", &tmp)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("spawn containerd");
    let log_tail = || tail(&String::from_utf8_lossy(&fs::read(&log_path).unwrap_or_default()), 40);
    let mut last = String::new();
    let mut exited = None;
    let ok = wait_until(Duration::from_secs(30), || {
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            return true;
        }
        let o = run_with_timeout(
            Command::new(ctr).arg("-a").arg(sock).arg("version"),
            None,
            Duration::ZERO,
            Duration::from_secs(5),
        );
        last = describe(&o);
        o.status.success()
    });
    if let Some(st) = exited {
        panic!("[{name}] containerd exited at startup: {st}\n--- containerd.log tail ---\n{}", log_tail());
    }
    if !ok {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "[{name}] containerd did not answer `ctr version` within 30s: {last}\n--- containerd.log tail ---\n{}",
            log_tail()
        );
    }
    child
}

/// Exit code of a finished process (signals map to 128+N like a shell).
pub fn exit_code(st: &ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

pub fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// the test image
// ---------------------------------------------------------------------------

/// The repository's top directory (the one with scripts/), also from tests/cri-e2e.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("scripts/make-image.sh").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// Builds the busybox OCI archive once per test process and returns its path.
pub fn image_archive() -> PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(&dir).expect("create CARGO_TARGET_TMPDIR");
        let out = dir.join("rsbox.tar");
        let script = repo_root().join("scripts/make-image.sh");
        let o = run_with_timeout(
            Command::new("bash").arg(&script).arg(&out).arg(IMAGE),
            None,
            Duration::ZERO,
            Duration::from_secs(120),
        );
        assert!(o.status.success(), "make-image.sh failed\n{}", describe(&o));
        out
    })
    .clone()
}

// ---------------------------------------------------------------------------
// private containerd
// ---------------------------------------------------------------------------

/// A private containerd instance. Dropping it stops the daemon, kills the
/// shims it left (only those whose cmdline names this instance's socket),
/// removes their runc containers, unmounts and removes the temp dir.
pub struct Containerd {
    pub name: String,
    /// Temp dir `/tmp/rs-XXXXXX` holding everything.
    pub dir: PathBuf,
    /// gRPC socket (`<dir>/c.sock`).
    pub sock: PathBuf,
    /// Namespace unique to this test.
    pub ns: String,
    child: Option<Child>,
    /// Shim socket paths seen in bundles (removed at drop if left behind).
    seen_shim_sockets: Mutex<HashSet<PathBuf>>,
    /// Extra environment for containerd (and so for the shims it starts),
    /// kept across restarts; see [`Containerd::start_with_env`].
    extra_env: Vec<(String, String)>,
    /// Directories put in front of containerd's PATH (e.g. a newer mkfs.erofs for its differ).
    extra_path: Vec<PathBuf>,
}

/// What a test adds to its private containerd: see [`Containerd::start_custom`].
#[derive(Default)]
pub struct Custom<'a> {
    pub env: &'a [(&'a str, &'a str)],
    /// TOML appended under `[plugins]` of the generated config (plugin sections only).
    pub plugins_toml: &'a str,
    pub extra_path: Vec<PathBuf>,
}

impl Containerd {
    /// Starts a private containerd for test `name` (use the test fn name).
    /// Returns None (after printing SKIPPED) only when prerequisites are
    /// missing and RUSTSHIM_ALLOW_SKIP=1; panics when they are missing otherwise.
    pub fn start(name: &str) -> Option<Containerd> {
        Self::start_with_env(name, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables for
    /// containerd. containerd passes its environment on to the shims it
    /// starts, so this is how a test sets e.g. `RUSTSHIM_RUNTIME_TIMEOUT_SECS`
    /// for the shim daemons. The variables survive [`restart`](Self::restart).
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Option<Containerd> {
        Self::start_custom(name, Custom { env, ..Default::default() })
    }

    /// Like [`start`](Self::start), with extra environment, plugin configuration and PATH.
    pub fn start_custom(name: &str, custom: Custom<'_>) -> Option<Containerd> {
        let env = custom.env;
        if let Err(reason) = prerequisites() {
            skip_or_fail(name, &reason);
            return None;
        }
        let dir = make_temp_dir();
        let sock = dir.join("c.sock");
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let mut clean = clean;
        clean.truncate(24);
        let clean = clean.trim_end_matches('-').to_string();
        let ns = format!(
            "{}-{}",
            clean,
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("rs-")
        );
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/c.sock"

[debug]
  level = "debug"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
{}
"#,
            custom.plugins_toml
        );
        fs::write(dir.join("config.toml"), config).expect("write config.toml");
        fs::create_dir_all(dir.join("fifo")).expect("mkdir fifo");
        let mut c = Containerd {
            name: name.to_string(),
            dir,
            sock,
            ns,
            child: None,
            seen_shim_sockets: Mutex::new(HashSet::new()),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra_path: custom.extra_path,
        };
        c.spawn_daemon();
        Some(c)
    }

    fn spawn_daemon(&mut self) {
        let shim_dir = Path::new(SHIM_BIN).parent().unwrap().to_path_buf();
        let mut paths = vec![shim_dir];
        paths.extend(self.extra_path.iter().cloned());
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        let path = std::env::join_paths(paths).unwrap();
        let child = spawn_containerd(
            &self.name,
            &containerd_tool("containerd"),
            &containerd_tool("ctr"),
            &self.dir,
            &self.sock,
            &path,
            &self.extra_env,
        );
        self.child = Some(child);
    }

    /// Pid of the running containerd (panics if it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("containerd not running").id()
    }

    /// Runs `ctr -a <sock> -n <ns> ARGS` with the default timeout.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_timeout(args, CTR_TIMEOUT)
    }

    pub fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        run_with_timeout(&mut self.ctr_cmd(args), None, Duration::ZERO, timeout)
    }

    /// Runs ctr with `input` on stdin; stdin is closed `hold` after writing.
    /// (ctr has a race: EOF before the task is created never triggers CloseIO,
    /// so keep `hold` around a second.)
    pub fn ctr_stdin(&self, args: &[&str], input: &[u8], hold: Duration) -> Output {
        run_with_timeout(&mut self.ctr_cmd(args), Some(input), hold, CTR_TIMEOUT)
    }

    /// The ctr command line (for background use).
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(containerd_tool("ctr"));
        cmd.arg("-a")
            .arg(&self.sock)
            .arg("-n")
            .arg(&self.ns)
            .args(args);
        cmd
    }

    /// Shell-quoted `ctr -a SOCK -n NS` prefix, for `script -c` command strings.
    pub fn ctr_prefix(&self) -> String {
        format!(
            "{} -a {} -n {}",
            containerd_tool("ctr").display(),
            self.sock.display(),
            self.ns
        )
    }

    /// Runs ctr and panics (with stdout, stderr and the containerd.log tail)
    /// unless it exits 0. Returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        self.check_ok(args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Panics with full diagnostics unless `out` succeeded.
    pub fn check_ok(&self, args: &[&str], out: &Output) {
        if !out.status.success() {
            panic!(
                "[{}] `ctr {}` failed\n{}\n--- containerd.log tail ---\n{}",
                self.name,
                args.join(" "),
                describe(out),
                tail(&self.log(), 60)
            );
        }
    }

    /// `ctr run --runtime R --fifo-dir D FLAGS IMAGE ID CMD...`
    pub fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        let args = self.run_args(flags, id, cmd);
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.ctr(&a)
    }

    pub fn run_args(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        let rt = runtime();
        let fifo = self.fifo_dir();
        let mut v: Vec<String> = vec![
            "run".into(),
            "--runtime".into(),
            rt,
            "--fifo-dir".into(),
            fifo,
        ];
        v.extend(flags.iter().map(|s| s.to_string()));
        v.push(IMAGE.into());
        v.push(id.into());
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }

    /// `ctr run -d ...`, panicking on failure.
    pub fn run_detached(&self, flags: &[&str], id: &str, cmd: &[&str]) {
        let mut f = vec!["-d"];
        f.extend_from_slice(flags);
        let args = self.run_args(&f, id, cmd);
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.ctr_ok(&a);
    }

    /// `ctr task exec --fifo-dir D --exec-id EID FLAGS ID CMD...`
    pub fn exec(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Output {
        let args = self.exec_args(flags, id, exec_id, cmd);
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.ctr(&a)
    }

    pub fn exec_args(&self, flags: &[&str], id: &str, exec_id: &str, cmd: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "task".into(),
            "exec".into(),
            "--fifo-dir".into(),
            self.fifo_dir(),
            "--exec-id".into(),
            exec_id.into(),
        ];
        v.extend(flags.iter().map(|s| s.to_string()));
        v.push(id.into());
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }

    /// Directory for ctr's IO FIFOs (kept inside the private temp dir).
    pub fn fifo_dir(&self) -> String {
        self.dir.join("fifo").display().to_string()
    }

    /// Parses `ctr task ls`: (id, pid, status) rows.
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() >= 3 {
                    Some((
                        f[0].to_string(),
                        f[1].parse().unwrap_or(0),
                        f[2].to_string(),
                    ))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Status column of `ctr task ls` for `id` (None when the task is absent).
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.tasks().into_iter().find(|t| t.0 == id).map(|t| t.2)
    }

    /// Pid column of `ctr task ls` for `id`.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        self.tasks().into_iter().find(|t| t.0 == id).map(|t| t.1)
    }

    /// Polls `ctr task ls` until `id` has `status` (e.g. "STOPPED").
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) {
        let mut last = None;
        let ok = wait_until(timeout, || {
            last = self.task_status(id);
            last.as_deref() == Some(status)
        });
        assert!(
            ok,
            "[{}] task {id} did not reach {status} within {timeout:?} (last: {last:?})\n--- containerd.log tail ---\n{}",
            self.name,
            tail(&self.log(), 40)
        );
    }

    /// Kills (SIGKILL), deletes the task and the container; tolerant of
    /// "already gone".
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = wait_until(Duration::from_secs(10), || {
            !matches!(
                self.task_status(id).as_deref(),
                Some("RUNNING") | Some("CREATED") | Some("PAUSED")
            )
        });
        let _ = self.ctr(&["task", "delete", id]);
        let _ = self.ctr(&["container", "delete", id]);
    }

    /// Bundle directory containerd created for task `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
    }

    /// The shim socket path from the bundle's `address` file (without unix://).
    pub fn shim_socket(&self, id: &str) -> Option<PathBuf> {
        let a = fs::read_to_string(self.bundle(id).join("address")).ok()?;
        let a = a.trim();
        let p = PathBuf::from(a.strip_prefix("unix://").unwrap_or(a));
        self.seen_shim_sockets.lock().unwrap().insert(p.clone());
        Some(p)
    }

    /// Imports the busybox test image (built once per test process).
    pub fn import_image(&self) {
        let tar = image_archive();
        let tar = tar.to_string_lossy().into_owned();
        self.ctr_ok(&["images", "import", &tar]);
        let ls = self.ctr_ok(&["images", "ls", "-q"]);
        assert!(
            ls.lines().any(|l| l.trim() == IMAGE),
            "[{}] image {IMAGE} not registered after import; images:\n{ls}",
            self.name
        );
    }

    /// Full containerd.log (includes shim log lines copied by containerd).
    pub fn log(&self) -> String {
        fs::read(self.dir.join("containerd.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends `signal` to our containerd (and only to it).
    pub fn kill(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Stops containerd with `signal` and waits for it to exit (SIGKILL after 15 s).
    pub fn stop(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        send_signal(child.id(), signal);
        let exited = wait_until(Duration::from_secs(15), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Stops containerd with `signal` and starts it again on the same root,
    /// state, address and log.
    pub fn restart(&mut self, signal: &str) {
        self.stop(signal);
        self.start_again();
    }

    /// Starts containerd again after [`stop`](Self::stop) (same config).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "containerd is still running");
        self.spawn_daemon();
    }

    /// Shim daemon pids serving container `id` for this containerd.
    pub fn shim_pids(&self, id: &str) -> Vec<u32> {
        shim_processes(&self.sock)
            .into_iter()
            .filter(|(_, args)| arg_value(args, "id").as_deref() == Some(id))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The single shim daemon pid for `id` (panics if there is none or several).
    pub fn shim_pid(&self, id: &str) -> u32 {
        let mut pids = Vec::new();
        wait_until(Duration::from_secs(5), || {
            pids = self.shim_pids(id);
            !pids.is_empty()
        });
        assert_eq!(
            pids.len(),
            1,
            "[{}] expected one shim for {id}, found {pids:?}",
            self.name
        );
        pids[0]
    }

    /// All shim daemons started by this containerd.
    pub fn all_shim_pids(&self) -> Vec<u32> {
        shim_processes(&self.sock)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// Mount points under the private temp dir.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(&self.dir)
    }

    fn cleanup(&mut self) {
        // 1. remember shim sockets from bundle `address` files
        let task_root = self.dir.join("state/io.containerd.runtime.v2.task");
        let mut namespaces = vec![self.ns.clone()];
        if let Ok(rd) = fs::read_dir(&task_root) {
            for ns in rd.flatten() {
                let ns_name = ns.file_name().to_string_lossy().into_owned();
                if !namespaces.contains(&ns_name) {
                    namespaces.push(ns_name);
                }
                if let Ok(rd2) = fs::read_dir(ns.path()) {
                    for b in rd2.flatten() {
                        if let Ok(a) = fs::read_to_string(b.path().join("address")) {
                            let a = a.trim();
                            let p = PathBuf::from(a.strip_prefix("unix://").unwrap_or(a));
                            self.seen_shim_sockets.lock().unwrap().insert(p);
                        }
                    }
                }
            }
        }
        // 2. stop our containerd
        self.stop("SIGTERM");
        // 3. kill shims whose cmdline names our socket (ours by construction)
        let shims = shim_processes(&self.sock);
        for (pid, _) in &shims {
            send_signal(*pid, "SIGKILL");
        }
        wait_until(Duration::from_secs(5), || {
            shims
                .iter()
                .all(|(p, _)| !Path::new(&format!("/proc/{p}")).exists())
        });
        // 4. remove leftover runc containers of our namespaces (unique names)
        for ns in &namespaces {
            let root = format!("/run/containerd/runc/{ns}");
            if !Path::new(&root).exists() {
                continue;
            }
            if let Ok(rd) = fs::read_dir(&root) {
                for e in rd.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let _ = run_with_timeout(
                        Command::new("runc").args(["--root", &root, "delete", "--force", &id]),
                        None,
                        Duration::ZERO,
                        Duration::from_secs(10),
                    );
                }
            }
            let _ = fs::remove_dir(&root);
        }
        // 5. empty cgroups runc left for our namespaces (ctr's default cgroup
        //    path is /<ns>/<id>; nobody removes the /<ns> parent)
        remove_namespace_cgroups(&namespaces);
        // 6. unmount everything under the temp dir, deepest first
        for _ in 0..3 {
            let mut m = mounts_under(&self.dir);
            if m.is_empty() {
                break;
            }
            m.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for mp in m {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&mp)
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // 7. stale shim sockets of ours
        for s in self.seen_shim_sockets.lock().unwrap().iter() {
            if let Ok(md) = fs::symlink_metadata(s) {
                if md.file_type().is_socket() && s.starts_with("/run/containerd/s") {
                    let _ = fs::remove_file(s);
                }
            }
        }
    }
}

/// rmdir `<hierarchy>/<ns>` (and its child cgroups) in every cgroup v1
/// hierarchy and the v2 unified tree. Only empty cgroups can be removed, so
/// this never affects running processes.
fn remove_namespace_cgroups(namespaces: &[String]) {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.is_symlink()),
        );
    }
    for root in roots {
        for ns in namespaces {
            if ns.is_empty() || ns.contains('/') || ns.starts_with('.') {
                continue;
            }
            let dir = root.join(ns);
            if !dir.is_dir() {
                continue;
            }
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = fs::remove_dir(e.path());
                    }
                }
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if thread::panicking() {
            // keep the log for post-mortem
            let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
            let _ = fs::create_dir_all(&logs);
            let dst = logs.join(format!("{}.containerd.log", self.ns));
            if fs::copy(self.dir.join("containerd.log"), &dst).is_ok() {
                eprintln!("[{}] containerd.log saved to {}", self.name, dst.display());
            }
        }
        self.cleanup();
        if std::env::var("RUSTSHIM_KEEP_TMP").as_deref() == Ok("1") {
            eprintln!(
                "[{}] RUSTSHIM_KEEP_TMP=1: keeping {}",
                self.name,
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------

/// argv of a process (None if it is gone or a kernel thread).
pub fn proc_cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Contents of /proc/<pid>/status.
pub fn proc_status(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// (state, ppid) from /proc/<pid>/stat.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True when process `pid` has a handler installed for signal `sig`
/// (SigCgt in /proc/<pid>/status), e.g. after a shell ran `trap ... TERM`.
pub fn catches_signal(pid: u32, sig: u32) -> bool {
    let Some(st) = proc_status(pid) else {
        return false;
    };
    st.lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .map(|mask| mask & (1u64 << (sig - 1)) != 0)
        .unwrap_or(false)
}

/// True if the pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// All numeric pids in /proc.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Children (any state) of `ppid`.
pub fn children_of(ppid: u32) -> Vec<(u32, char)> {
    all_pids()
        .into_iter()
        .filter_map(|p| match proc_stat(p) {
            Some((st, pp)) if pp == ppid => Some((p, st)),
            _ => None,
        })
        .collect()
}

/// Zombie children of `ppid`.
pub fn zombies_of(ppid: u32) -> Vec<u32> {
    children_of(ppid)
        .into_iter()
        .filter(|(_, s)| *s == 'Z')
        .map(|(p, _)| p)
        .collect()
}

/// Value following `-flag` or `--flag` in a Go-style argv.
pub fn arg_value(args: &[String], flag: &str) -> Option<String> {
    let a = format!("-{flag}");
    let b = format!("--{flag}");
    let eq_a = format!("-{flag}=");
    let eq_b = format!("--{flag}=");
    for (i, x) in args.iter().enumerate() {
        if *x == a || *x == b {
            return args.get(i + 1).cloned();
        }
        if let Some(v) = x.strip_prefix(&eq_a).or_else(|| x.strip_prefix(&eq_b)) {
            return Some(v.to_string());
        }
    }
    None
}

/// Long-lived shim daemons (not the transient `start`/`delete` runs) of the
/// selected runtime whose `-address` is `sock`: (pid, argv).
pub fn shim_processes(sock: &Path) -> Vec<(u32, Vec<String>)> {
    let bin = shim_binary_name();
    let sock = sock.to_string_lossy().into_owned();
    let mut v = Vec::new();
    for pid in all_pids() {
        let Some(args) = proc_cmdline(pid) else {
            continue;
        };
        let is_shim = Path::new(&args[0])
            .file_name()
            .map(|f| f.to_string_lossy() == bin)
            .unwrap_or(false);
        if !is_shim {
            continue;
        }
        if arg_value(&args, "address").as_deref() != Some(sock.as_str()) {
            continue;
        }
        if matches!(
            args.last().map(|s| s.as_str()),
            Some("start") | Some("delete")
        ) {
            continue;
        }
        if !pid_alive(pid) {
            continue;
        }
        v.push((pid, args));
    }
    v
}

/// Mount points (from /proc/self/mountinfo) at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4).map(rustshim::cgroups::unescape_octal))
        .filter(|mp| mp == &prefix || mp.starts_with(&format!("{prefix}/")))
        .collect()
}

// ---------------------------------------------------------------------------
// events
// ---------------------------------------------------------------------------

/// One line of `ctr events`.
#[derive(Clone, Debug)]
pub struct Event {
    pub namespace: String,
    pub topic: String,
    pub body: String,
    pub line: String,
}

impl Event {
    fn parse(line: &str) -> Option<Event> {
        // "2026-11-26 14:05:53.164 +0000 UTC <ns> <topic> <json>"
        let parts: Vec<&str> = line.splitn(7, ' ').collect();
        if parts.len() < 6 || !parts[5].starts_with('/') {
            return None;
        }
        Some(Event {
            namespace: parts[4].to_string(),
            topic: parts[5].to_string(),
            body: parts.get(6).unwrap_or(&"").to_string(),
            line: line.to_string(),
        })
    }

    /// Top-level JSON field as a string (strings unquoted, numbers as text).
    pub fn field(&self, key: &str) -> Option<String> {
        json_field(&self.body, key)
    }

    pub fn container_id(&self) -> Option<String> {
        self.field("container_id")
    }

    /// For /tasks/exit: the process id (exec id, or container id for init).
    pub fn id(&self) -> Option<String> {
        self.field("id")
    }

    pub fn exec_id(&self) -> Option<String> {
        self.field("exec_id")
    }

    /// exit_status of /tasks/exit or /tasks/delete (containerd's JSON omits
    /// zero values, so a missing field means 0).
    pub fn exit_status(&self) -> u32 {
        self.field("exit_status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub fn pid(&self) -> Option<u32> {
        self.field("pid").and_then(|s| s.parse().ok())
    }
}

/// Minimal extraction of a top-level-ish `"key":value` from a JSON object.
/// Matches only where the key follows `{` or `,`, so `"id"` does not match
/// `"container_id"`. containerd omits zero values (e.g. `exit_status` 0).
pub fn json_field(body: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let bytes = body.as_bytes();
    let mut start = 0;
    while let Some(off) = body[start..].find(&pat) {
        let at = start + off;
        let prev = if at == 0 { b'{' } else { bytes[at - 1] };
        start = at + pat.len();
        if prev != b'{' && prev != b',' {
            continue;
        }
        let rest = &body[start..];
        if let Some(r) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut esc = false;
            for ch in r.chars() {
                if esc {
                    out.push(ch);
                    esc = false;
                } else if ch == '\\' {
                    esc = true;
                } else if ch == '"' {
                    return Some(out);
                } else {
                    out.push(ch);
                }
            }
            return None;
        }
        let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
        return Some(rest[..end].trim().to_string());
    }
    None
}

/// Collects `ctr events` lines in a background thread.
pub struct EventStream {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl EventStream {
    /// Spawns `ctr events` against the private containerd and returns once it
    /// is subscribed (checked by provoking a /namespaces/update event).
    pub fn start(c: &Containerd) -> EventStream {
        let mut cmd = Command::new(containerd_tool("ctr"));
        cmd.arg("-a")
            .arg(&c.sock)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn ctr events");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l2 = lines.clone();
        thread::spawn(move || {
            use std::io::BufRead;
            let r = std::io::BufReader::new(out);
            for line in r.lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line);
            }
        });
        let es = EventStream {
            child,
            lines,
            name: c.name.clone(),
        };
        // make sure the namespace exists, then poke it until the event shows up
        let _ = c.ctr(&["namespaces", "create", &c.ns]);
        let mut n = 0u32;
        let ok = wait_until(Duration::from_secs(15), || {
            n += 1;
            let _ = c.ctr(&["namespaces", "label", &c.ns, &format!("rsprobe={n}")]);
            thread::sleep(Duration::from_millis(100));
            es.lines().iter().any(|l| l.contains("/namespaces/update"))
        });
        assert!(
            ok,
            "[{}] `ctr events` did not report a probe event within 15s",
            c.name
        );
        es
    }

    /// Raw lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Parsed events so far.
    pub fn events(&self) -> Vec<Event> {
        self.lines()
            .iter()
            .filter_map(|l| Event::parse(l))
            .collect()
    }

    /// /tasks/* events for one container, in arrival order.
    pub fn task_events(&self, container_id: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| {
                e.topic.starts_with("/tasks/") && e.container_id().as_deref() == Some(container_id)
            })
            .collect()
    }

    /// Topics of [`task_events`].
    pub fn task_topics(&self, container_id: &str) -> Vec<String> {
        self.task_events(container_id)
            .into_iter()
            .map(|e| e.topic)
            .collect()
    }

    /// Waits until `pred` holds over the events so far; panics with all lines
    /// on timeout. Returns the events.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let mut evs = Vec::new();
        if wait_until(timeout, || {
            evs = self.events();
            pred(&evs)
        }) {
            return evs;
        }
        panic!(
            "[{}] timed out after {timeout:?} waiting for {what}; events:\n{}",
            self.name,
            self.lines().join("\n")
        );
    }

    /// Waits for the /tasks/exit of process `id` (exec id or container id for
    /// init) of container `cid` and returns it.
    pub fn wait_exit(&self, cid: &str, id: &str, timeout: Duration) -> Event {
        let evs = self.wait_for(&format!("/tasks/exit of {cid}/{id}"), timeout, |evs| {
            evs.iter().any(|e| is_exit_of(e, cid, id))
        });
        evs.into_iter().find(|e| is_exit_of(e, cid, id)).unwrap()
    }

    /// Waits for /tasks/delete of container `cid`.
    pub fn wait_delete(&self, cid: &str, timeout: Duration) -> Event {
        let pred =
            |e: &Event| e.topic == "/tasks/delete" && e.container_id().as_deref() == Some(cid);
        let evs = self.wait_for(&format!("/tasks/delete of {cid}"), timeout, |evs| {
            evs.iter().any(pred)
        });
        evs.into_iter().find(pred).unwrap()
    }
}

fn is_exit_of(e: &Event, cid: &str, id: &str) -> bool {
    e.topic == "/tasks/exit"
        && e.container_id().as_deref() == Some(cid)
        && e.id().as_deref() == Some(id)
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// background processes
// ---------------------------------------------------------------------------

/// A child (e.g. an attached `ctr run`) whose stdout/stderr are collected in
/// the background. Dropping it SIGKILLs the child (only that pid).
pub struct Background {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Background {
    pub fn spawn(mut cmd: Command) -> Background {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ] {
            let o = out.clone();
            let mut r = r;
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => o.lock().unwrap().extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
        Background { child, out }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Output (stdout and stderr interleaved) so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn output_len(&self) -> usize {
        self.out.lock().unwrap().len()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut st = None;
        wait_until(timeout, || {
            st = self.child.try_wait().ok().flatten();
            st.is_some()
        });
        st
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A figure for docs/reliability.md: straight to fd 2 (not captured by the
/// harness) and to $RUSTSHIM_RELIABILITY_REPORT.
pub fn report(test: &str, line: &str) {
    let msg = format!("RELIABILITY: [{}] {test}: {line}\n", runtime());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
    if let Ok(p) = std::env::var("RUSTSHIM_RELIABILITY_REPORT") {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = std::io::Write::write_all(&mut f, msg.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------
// mounts: images and loop devices
// ---------------------------------------------------------------------------

/// An OCI archive of `n` layers (scripts/make-layered-image.sh), built once per test process
/// and size; returns (archive, image name).
pub fn layered_image_archive(n: usize) -> (PathBuf, String) {
    static IMGS: OnceLock<Mutex<std::collections::HashMap<usize, PathBuf>>> = OnceLock::new();
    let name = format!("docker.io/library/rsbox-l{n}:latest");
    let mut m = IMGS.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = m.get(&n) {
        return (p.clone(), name);
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&dir).expect("create CARGO_TARGET_TMPDIR");
    let out = dir.join(format!("rsbox-l{n}.tar"));
    let o = run_with_timeout(
        Command::new("bash")
            .arg(repo_root().join("scripts/make-layered-image.sh"))
            .arg(&out)
            .arg(&name)
            .arg(n.to_string()),
        None,
        Duration::ZERO,
        Duration::from_secs(600),
    );
    assert!(o.status.success(), "make-layered-image.sh failed\n{}", describe(&o));
    m.insert(n, out.clone());
    (out, name)
}

/// Loop devices (`loopN`) whose backing file lies at or below `dir`.
pub fn loop_devices_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/sys/block") else { return out };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("loop") {
            continue;
        }
        if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) {
            let b = b.trim().trim_end_matches(" (deleted)").to_string();
            if Path::new(&b).starts_with(dir) {
                out.push((n, b));
            }
        }
    }
    out
}

/// The CRIU to test with: $RUSTSHIM_CRIU, else the newest build scripts/install-criu.sh cached.
pub fn criu_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RUSTSHIM_CRIU").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var("RUSTSHIM_CACHE").unwrap_or_else(|_| "/var/cache/rustshim".into());
    let mut found: Vec<PathBuf> = fs::read_dir(&cache)
        .map_err(|e| format!("{cache}: {e}"))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("criu-"))
        .map(|e| e.path().join("bin/criu"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| format!("no {cache}/criu-*/bin/criu: run scripts/install-criu.sh"))
}
