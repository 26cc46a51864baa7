//! A typed client for the OCI runtime binary (runc by default; crun and youki speak the same
//! command line), behind the [`OciRuntime`] trait: the seam the supervisor's unit tests fake.
//!
//! Every invocation goes through the reaper, so its exit status is never stolen; it carries the
//! global flags go-runc gives every verb (`--root`, `--log`, `--log-format json`,
//! `--systemd-cgroup`, `--criu`); and it is bounded by the caller's deadline (less a margin) and
//! by a timeout of its own. A call whose caller went away, or whose time ran out, kills the child.

use std::ffi::OsString;
use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncReadExt as _;

use crate::call::Call;
use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// How long one runtime call may take before the shim kills it and reports DeadlineExceeded.
/// Generous: `create` of a large image under load can take many seconds. The environment
/// variable RUSTSHIM_RUNTIME_TIMEOUT_SECS (set in containerd's environment) overrides it.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn call_timeout() -> Duration {
    static T: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("RUSTSHIM_RUNTIME_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map_or(DEFAULT_CALL_TIMEOUT, Duration::from_secs)
    })
}

/// The CRIU runc is told to use when the runtime options name none (CriuPath; containerd 2.x
/// dropped that option): RUSTSHIM_CRIU_PATH in containerd's environment. Without either, runc
/// runs `criu` from PATH. A newer CRIU can so be used without replacing the system's.
fn default_criu() -> Option<&'static str> {
    static P: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    P.get_or_init(|| std::env::var("RUSTSHIM_CRIU_PATH").ok().filter(|p| !p.trim().is_empty()))
        .as_deref()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub binary: String,
    /// The runtime's state root for this namespace (`<root>/<namespace>`).
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    pub criu_path: Option<String>,
    /// runc's JSON log (`<bundle>/log.json`): every verb writes its errors there.
    pub log: PathBuf,
}

impl RuntimeConfig {
    /// Global flags first, as runc wants them before the verb; the same for every verb.
    pub fn global_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--root".into(), self.root.clone().into()];
        a.extend(["--log".into(), self.log.clone().into(), "--log-format".into(), "json".into()]);
        if self.systemd_cgroup {
            a.push("--systemd-cgroup".into());
        }
        let criu: Option<&str> = self.criu_path.as_deref().or_else(|| default_criu());
        if let Some(criu) = criu {
            a.extend(["--criu".into(), criu.into()]);
        }
        a
    }
}

/// What the supervisor needs of an OCI runtime. Every method takes the [`Call`] it runs for:
/// its deadline bounds the child, and its cancellation kills it.
#[async_trait]
pub trait OciRuntime: Send + Sync {
    async fn create(&self, call: &Call, id: &str, o: &CreateOpts<'_>, stdio: ProcessStdio) -> Result<i32>;
    async fn restore(&self, call: &Call, id: &str, o: &CreateOpts<'_>, criu: &CriuOpts, stdio: ProcessStdio) -> Result<i32>;
    async fn start(&self, call: &Call, id: &str) -> Result<()>;
    async fn exec(&self, call: &Call, id: &str, o: &ExecOpts<'_>, stdio: ProcessStdio) -> Result<i32>;
    async fn kill(&self, call: &Call, id: &str, signal: u32, all: bool) -> Result<()>;
    /// "does not exist" is success: delete is idempotent.
    async fn delete(&self, call: &Call, id: &str, force: bool) -> Result<()>;
    async fn pause(&self, call: &Call, id: &str) -> Result<()>;
    async fn resume(&self, call: &Call, id: &str) -> Result<()>;
    async fn ps(&self, call: &Call, id: &str) -> Result<Vec<u32>>;
    async fn update(&self, call: &Call, id: &str, resources_json: Vec<u8>) -> Result<()>;
    async fn checkpoint(&self, call: &Call, id: &str, criu: &CriuOpts, leave_running: bool) -> Result<()>;
}

/// Makes the runtime of each container from its options.
pub trait RuntimeFactory: Send + Sync {
    fn runtime(&self, config: RuntimeConfig) -> Arc<dyn OciRuntime>;
}

/// The real one: run the binary.
pub struct Runc {
    pub config: RuntimeConfig,
    reaper: Arc<Reaper>,
}

pub struct RuncFactory(pub Arc<Reaper>);

impl RuntimeFactory for RuncFactory {
    fn runtime(&self, config: RuntimeConfig) -> Arc<dyn OciRuntime> {
        Arc::new(Runc::new(config, self.0.clone()))
    }
}

/// The stdio a runtime's `create`/`exec` hands to the container process (non-terminal mode).
#[derive(Default)]
pub struct ProcessStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

pub struct CreateOpts<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

/// CRIU options shared by `checkpoint` and `restore` (containerd.runc.v1.CheckpointOptions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriuOpts {
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    pub parent_path: Option<PathBuf>,
    pub open_tcp: bool,
    pub external_unix_sockets: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub empty_namespaces: Vec<String>,
    pub cgroups_mode: String,
}

impl CriuOpts {
    fn push_args(&self, a: &mut Vec<OsString>) {
        a.extend(["--image-path".into(), self.image_path.clone().into()]);
        a.extend(["--work-path".into(), self.work_path.clone().into()]);
        if let Some(p) = &self.parent_path {
            a.extend(["--parent-path".into(), p.clone().into()]);
        }
        for (on, flag) in [
            (self.open_tcp, "--tcp-established"),
            (self.external_unix_sockets, "--ext-unix-sk"),
            (self.shell_job, "--shell-job"),
            (self.file_locks, "--file-locks"),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        for ns in &self.empty_namespaces {
            a.extend(["--empty-ns".into(), ns.into()]);
        }
        if !self.cgroups_mode.is_empty() {
            a.extend(["--manage-cgroups-mode".into(), self.cgroups_mode.clone().into()]);
        }
    }
}

pub struct ExecOpts<'a> {
    pub bundle: &'a Path,
    pub process_json: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
}

fn to_stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

impl Runc {
    pub fn new(config: RuntimeConfig, reaper: Arc<Reaper>) -> Self {
        Runc { config, reaper }
    }

    pub fn create_args(&self, id: &str, o: &CreateOpts) -> Vec<OsString> {
        let mut a = self.config.global_args();
        a.extend(["create".into(), "--bundle".into(), o.bundle.into()]);
        a.extend(["--pid-file".into(), o.pid_file.into()]);
        if let Some(s) = o.console_socket {
            a.extend(["--console-socket".into(), s.into()]);
        }
        if o.no_pivot {
            a.push("--no-pivot".into());
        }
        if o.no_new_keyring {
            a.push("--no-new-keyring".into());
        }
        a.push(id.into());
        a
    }

    pub fn exec_args(&self, id: &str, o: &ExecOpts) -> Vec<OsString> {
        let mut a = self.config.global_args();
        a.extend(["exec".into(), "--detach".into()]);
        a.extend(["--pid-file".into(), o.pid_file.into()]);
        a.extend(["--process".into(), o.process_json.into()]);
        if let Some(s) = o.console_socket {
            a.extend(["--console-socket".into(), s.into()]);
        }
        a.push(id.into());
        a
    }

    pub fn checkpoint_args(&self, id: &str, criu: &CriuOpts, leave_running: bool) -> Vec<OsString> {
        let mut a = self.config.global_args();
        a.push("checkpoint".into());
        criu.push_args(&mut a);
        if leave_running {
            a.push("--leave-running".into());
        }
        a.push(id.into());
        a
    }

    pub fn restore_args(&self, id: &str, o: &CreateOpts, criu: &CriuOpts) -> Vec<OsString> {
        let mut a = self.config.global_args();
        a.extend(["restore".into(), "--detach".into()]);
        a.extend(["--pid-file".into(), o.pid_file.into()]);
        criu.push_args(&mut a);
        // The shim is the subreaper; runc must not make itself one.
        a.push("--no-subreaper".into());
        a.extend(["--bundle".into(), o.bundle.into()]);
        if let Some(s) = o.console_socket {
            a.extend(["--console-socket".into(), s.into()]);
        }
        if o.no_pivot {
            a.push("--no-pivot".into());
        }
        a.push(id.into());
        a
    }

    async fn simple(&self, call: &Call, verb: &'static str, id: &str, args: &[&str]) -> Result<Vec<u8>> {
        let mut a = self.config.global_args();
        a.extend(args.iter().map(OsString::from));
        self.call(call, verb, id, a, None, None).await
    }

    /// Run the runtime once. With `stdio`, those fds become the runtime's (and so the container
    /// process's) stdio and nothing is captured; otherwise stdout and stderr are captured.
    async fn call(
        &self,
        call: &Call,
        verb: &'static str,
        id: &str,
        args: Vec<OsString>,
        stdio: Option<ProcessStdio>,
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        // One debug line per runtime call: what ran, how long it took, how it ended (its
        // log.json error when it failed).
        if !log::log_enabled!(log::Level::Debug) {
            return self.run(call, verb, args, stdio, input).await;
        }
        let argv = args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        let start = Instant::now();
        let r = self.run(call, verb, args, stdio, input).await;
        let took = start.elapsed();
        match &r {
            Ok(_) => log::debug!("runtime {verb} id={id} took={took:?} status=0 argv=[{} {argv}]", self.config.binary),
            Err(e) => log::debug!("runtime {verb} id={id} took={took:?} failed: {e} argv=[{} {argv}]", self.config.binary),
        }
        r
    }

    async fn run(
        &self,
        call: &Call,
        verb: &'static str,
        args: Vec<OsString>,
        stdio: Option<ProcessStdio>,
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        if call.is_cancelled() {
            return Err(Error::Cancelled(format!("{verb}: the caller went away before it ran")));
        }
        let mut cmd = Command::new(&self.config.binary);
        cmd.args(&args);
        // SAFETY: prctl is async-signal-safe. The shim forks from its one runtime thread, which
        // lives as long as the shim, so PDEATHSIG fires only if the shim dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let mut captured = None;
        let mut stdin_writer = None;
        match stdio {
            Some(s) => {
                cmd.stdin(to_stdio(s.stdin)).stdout(to_stdio(s.stdout)).stderr(to_stdio(s.stderr));
            }
            None => {
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
                captured = Some((out_r, err_r));
                if input.is_some() {
                    let (in_r, in_w) = pipe()?;
                    cmd.stdin(Stdio::from(in_r));
                    stdin_writer = Some(in_w);
                } else {
                    cmd.stdin(Stdio::null());
                }
            }
        }
        // Only errors this call appends count: the log is shared by every call on the bundle.
        let log_json = self.config.log.as_path();
        let log_offset = std::fs::metadata(log_json).map_or(0, |m| m.len());
        let spawned = self.reaper.spawn(&mut cmd);
        drop(cmd); // closes our copies of the child's ends, so the pipes see EOF
        // The binary comes from the runtime options: one that cannot be run is a bad argument.
        // From here on, dropping `child` (this future dropped) kills the runtime.
        let mut child = spawned.map_err(|e| {
            Error::InvalidArgument(format!("runtime binary {:?} cannot be run: {e}", self.config.binary))
        })?;
        let own_limit = Instant::now() + call_timeout();
        let work = async {
            if let (Some(w), Some(data)) = (stdin_writer, input) {
                let mut w = tokio::net::unix::pipe::Sender::from_owned_fd(w)
                    .map_err(|e| Error::io("runtime stdin", e))?;
                use tokio::io::AsyncWriteExt as _;
                w.write_all(&data).await.map_err(|e| Error::io("runtime stdin", e))?;
            }
            let (out, err) = match captured {
                Some((o, e)) => tokio::try_join!(read_all(o), read_all(e))?,
                None => (Vec::new(), Vec::new()),
            };
            let exit = child.wait().await.ok_or_else(|| Error::Other("reaper gone".into()))?;
            Ok::<_, Error>((exit, out, err))
        };
        let caller_deadline = call.deadline.filter(|d| *d < own_limit);
        let (exit, out, err) = tokio::select! {
            r = work => r?,
            _ = call.cancelled() => {
                return Err(Error::Cancelled(format!("{} {verb}: the caller went away; killed it", self.config.binary)));
            }
            _ = call.expired(), if caller_deadline.is_some() => {
                return Err(Error::DeadlineExceeded(format!(
                    "{} {verb} did not finish before the caller's deadline and was killed",
                    self.config.binary
                )));
            }
            _ = tokio::time::sleep_until(own_limit.into()) => {
                return Err(Error::DeadlineExceeded(format!(
                    "{} {verb} did not finish within {}s and was killed",
                    self.config.binary,
                    call_timeout().as_secs()
                )));
            }
        };
        if exit.status == 0 {
            return Ok(out);
        }
        let mut message = last_error_in_log(log_json, log_offset).unwrap_or_default();
        if message.is_empty() {
            message = String::from_utf8_lossy(&err).trim().to_string();
            if let Some(m) = last_error_in_text(&message) {
                message = m;
            }
        }
        if message.is_empty() {
            message = format!("{} exited with status {}", self.config.binary, exit.status);
        }
        Err(Error::Runtime { verb, message })
    }
}


#[async_trait]
impl OciRuntime for Runc {
    async fn create(&self, call: &Call, id: &str, o: &CreateOpts<'_>, stdio: ProcessStdio) -> Result<i32> {
        let _ = std::fs::remove_file(o.pid_file);
        self.call(call, "create", id, self.create_args(id, o), Some(stdio), None).await?;
        read_pid_file(o.pid_file)
    }

    async fn restore(&self, call: &Call, id: &str, o: &CreateOpts<'_>, criu: &CriuOpts, stdio: ProcessStdio) -> Result<i32> {
        let _ = std::fs::remove_file(o.pid_file);
        let restore_log = criu.work_path.join("restore.log");
        // A log left by an earlier attempt must not be mistaken for this one's.
        let _ = std::fs::remove_file(&restore_log);
        let r = self.call(call, "restore", id, self.restore_args(id, o, criu), Some(stdio), None).await;
        r.map_err(|e| with_criu_log(e, &restore_log, &o.bundle.join("criu-restore.log")))?;
        read_pid_file(o.pid_file)
    }

    async fn start(&self, call: &Call, id: &str) -> Result<()> {
        self.simple(call, "start", id, &["start", id]).await.map(drop)
    }

    async fn exec(&self, call: &Call, id: &str, o: &ExecOpts<'_>, stdio: ProcessStdio) -> Result<i32> {
        let _ = std::fs::remove_file(o.pid_file);
        self.call(call, "exec", id, self.exec_args(id, o), Some(stdio), None).await?;
        read_pid_file(o.pid_file)
    }

    async fn kill(&self, call: &Call, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut a = vec!["kill"];
        if all {
            a.push("--all");
        }
        a.extend([id, sig.as_str()]);
        self.simple(call, "kill", id, &a).await.map(drop)
    }

    async fn delete(&self, call: &Call, id: &str, force: bool) -> Result<()> {
        let mut a = vec!["delete"];
        if force {
            a.push("--force");
        }
        a.push(id);
        match self.simple(call, "delete", id, &a).await {
            Err(Error::Runtime { message, .. }) if crate::error::runtime_says_gone(&message) => Ok(()),
            r => r.map(drop),
        }
    }

    async fn pause(&self, call: &Call, id: &str) -> Result<()> {
        self.simple(call, "pause", id, &["pause", id]).await.map(drop)
    }

    async fn resume(&self, call: &Call, id: &str) -> Result<()> {
        self.simple(call, "resume", id, &["resume", id]).await.map(drop)
    }

    async fn ps(&self, call: &Call, id: &str) -> Result<Vec<u32>> {
        let out = self.simple(call, "ps", id, &["ps", "--format", "json", id]).await?;
        let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| Error::Runtime {
            verb: "ps",
            message: format!("cannot parse runtime output: {e}"),
        })?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(|p| p.as_u64()).map(|p| p as u32).collect())
            .unwrap_or_default())
    }

    async fn update(&self, call: &Call, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let mut a = self.config.global_args();
        a.extend(["update".into(), "--resources".into(), "-".into(), id.into()]);
        self.call(call, "update", id, a, None, Some(resources_json)).await.map(drop)
    }

    async fn checkpoint(&self, call: &Call, id: &str, criu: &CriuOpts, leave_running: bool) -> Result<()> {
        let args = self.checkpoint_args(id, criu, leave_running);
        let dump_log = criu.work_path.join("dump.log");
        let _ = std::fs::remove_file(&dump_log);
        let r = self.call(call, "checkpoint", id, args, None, None).await.map(drop);
        // runc's log.json sits in the bundle: keep CRIU's log beside it.
        r.map_err(|e| with_criu_log(e, &dump_log, &self.config.log.with_file_name("criu-dump.log")))
    }
}

fn is_generic_criu_error(m: &str) -> bool {
    m.ends_with("FAILED.") || m.starts_with("exited, status=") || m.contains("failed with -")
}

/// runc reports a CRIU failure as "criu failed: type NOTIFY errno 0" and a log path: the cause
/// is in CRIU's own log. Add it to the message, and keep a copy of the log in the bundle
/// (`keep`, as the Go shim keeps criu-dump.log) since the work dir may be elsewhere or reused.
fn with_criu_log(e: Error, criu_log: &Path, keep: &Path) -> Error {
    let Error::Runtime { verb, message } = e else { return e };
    let Ok(text) = std::fs::read_to_string(criu_log) else { return Error::Runtime { verb, message } };
    if criu_log != keep && std::fs::copy(criu_log, keep).is_err() {
        log::warn!("cannot keep {} as {}", criu_log.display(), keep.display());
    }
    match criu_log_errors(&text) {
        Some(cause) => Error::Runtime { verb, message: format!("{message}: criu: {cause} (log: {})", keep.display()) },
        None => Error::Runtime { verb, message: format!("{message} (criu log: {})", keep.display()) },
    }
}

/// The cause in a CRIU log: its last `Error (file:line): text` line that is not one of the
/// generic lines that follow a cause ("Dump files (pid: 9) failed with -1", "Dumping FAILED.",
/// a helper's exit status). Earlier errors can be harmless (CRIU goes on when it cannot raise
/// RLIMIT_NOFILE, say).
pub fn criu_log_errors(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once("Error (").map(|(_, rest)| rest))
        .map(|rest| rest.split_once("): ").map_or(rest, |(_, m)| m).trim())
        .filter(|m| !m.is_empty() && !is_generic_criu_error(m))
        .last()
        .map(str::to_string)
}

use crate::stdio::pipe;

async fn read_all(fd: OwnedFd) -> Result<Vec<u8>> {
    let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
        .map_err(|e| Error::io("runtime output", e))?;
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await.map_err(|e| Error::io("runtime output", e))?;
    Ok(buf)
}

fn read_pid_file(path: &Path) -> Result<i32> {
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| Error::io(format!("read pid file {}", path.display()), e))?;
    s.trim()
        .parse()
        .map_err(|_| Error::Other(format!("pid file {} holds no pid: {s:?}", path.display())))
}

/// The `"level":"error"` messages this call appended to runc's JSON log, joined: the last one
/// alone often hides the cause (e.g. "can't get final child's PID from pipe: EOF" after the
/// nsexec line that says why).
pub fn last_error_in_log(path: &Path, from: u64) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let data = data.get(from as usize..).unwrap_or_default();
    let msgs: Vec<String> = String::from_utf8_lossy(data)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .filter_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
        .collect();
    // Keep the message bounded: the first cause and the final error are what matter.
    match msgs.len() {
        0 => None,
        1 | 2 => Some(msgs.join(": ")),
        n => Some(format!("{}: ...: {}", msgs[0], msgs[n - 1])),
    }
}

/// runc without --log prints logrus text; keep the msg of its last error line if there is one.
fn last_error_in_text(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| l.contains("level=error"))?;
    let start = line.find("msg=\"")? + 5;
    let rest = &line[start..];
    let end = rest.rfind('"')?;
    Some(rest[..end].replace("\\\"", "\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(binary: &str) -> RuntimeConfig {
        RuntimeConfig {
            binary: binary.into(),
            root: "/run/containerd/runc/ns".into(),
            systemd_cgroup: true,
            criu_path: None,
            log: "/b/log.json".into(),
        }
    }

    fn rt() -> Runc {
        Runc::new(config("runc"), Arc::new(Reaper::default()))
    }

    fn s(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn create_argv() {
        let o = CreateOpts {
            bundle: Path::new("/b"),
            pid_file: Path::new("/b/init.pid"),
            console_socket: Some(Path::new("/tmp/c.sock")),
            no_pivot: true,
            no_new_keyring: false,
        };
        assert_eq!(
            s(rt().create_args("c1", &o)),
            [
                "--root", "/run/containerd/runc/ns", "--log", "/b/log.json", "--log-format", "json",
                "--systemd-cgroup", "create", "--bundle", "/b", "--pid-file", "/b/init.pid",
                "--console-socket", "/tmp/c.sock", "--no-pivot", "c1"
            ]
        );
    }

    #[test]
    fn exec_argv() {
        let o = ExecOpts {
            bundle: Path::new("/b"),
            process_json: Path::new("/b/e1.json"),
            pid_file: Path::new("/b/e1.pid"),
            console_socket: None,
        };
        let a = s(rt().exec_args("c1", &o));
        assert_eq!(
            &a[7..],
            ["exec", "--detach", "--pid-file", "/b/e1.pid", "--process", "/b/e1.json", "c1"]
        );
    }

    #[test]
    fn criu_log_error_lines() {
        let log = "(00.001) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n(00.010) Error (criu/sk-inet.c:199): inet: Connected TCP socket, consider using --tcp-established option.\n(00.011) Error (criu/cr-dump.c:1545): Dump files (pid: 9) failed with -1\nError (criu/util.c:657): exited, status=1\n(00.012) Error (criu/cr-dump.c:1975): Dumping FAILED.\n";
        assert_eq!(
            criu_log_errors(log).as_deref(),
            Some("inet: Connected TCP socket, consider using --tcp-established option.")
        );
        assert_eq!(criu_log_errors("(0.1) Warn (x.c:1): meh\n"), None);
        assert_eq!(criu_log_errors("(0.1) Error (x.c:1): one\n").as_deref(), Some("one"));
        let dir = std::env::temp_dir().join(format!("rs-criulog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dump.log"), log).unwrap();
        let e = Error::Runtime { verb: "checkpoint", message: "criu failed: type NOTIFY errno 0".into() };
        let e = with_criu_log(e, &dir.join("dump.log"), &dir.join("criu-dump.log"));
        let m = e.to_string();
        assert!(m.starts_with("checkpoint: criu failed: type NOTIFY errno 0: criu: inet: Connected TCP socket"), "{m}");
        assert!(m.contains("criu-dump.log"), "{m}");
        assert!(dir.join("criu-dump.log").exists());
        // no log: the runtime's message unchanged
        let e = Error::Runtime { verb: "restore", message: "x".into() };
        assert_eq!(with_criu_log(e, &dir.join("nope.log"), &dir.join("k")).to_string(), "restore: x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checkpoint_and_restore_argv() {
        let criu = CriuOpts {
            image_path: "/ckpt".into(),
            work_path: "/b/criu-work".into(),
            parent_path: None,
            open_tcp: true,
            external_unix_sockets: true,
            shell_job: true,
            file_locks: true,
            empty_namespaces: vec!["network".into()],
            cgroups_mode: "soft".into(),
        };
        let a = s(rt().checkpoint_args("c1", &criu, true));
        assert_eq!(
            &a[7..],
            [
                "checkpoint", "--image-path", "/ckpt", "--work-path", "/b/criu-work", "--tcp-established",
                "--ext-unix-sk", "--shell-job", "--file-locks", "--empty-ns", "network",
                "--manage-cgroups-mode", "soft", "--leave-running", "c1"
            ]
        );
        let plain = CriuOpts { image_path: "/ckpt".into(), work_path: "/w".into(), parent_path: Some("/p".into()), ..Default::default() };
        let a = s(rt().checkpoint_args("c1", &plain, false));
        assert_eq!(&a[7..], ["checkpoint", "--image-path", "/ckpt", "--work-path", "/w", "--parent-path", "/p", "c1"]);
        let o = CreateOpts {
            bundle: Path::new("/b"),
            pid_file: Path::new("/b/init.pid"),
            console_socket: None,
            no_pivot: false,
            no_new_keyring: false,
        };
        let a = s(rt().restore_args("c1", &o, &plain));
        assert_eq!(
            &a[7..],
            [
                "restore", "--detach", "--pid-file", "/b/init.pid", "--image-path", "/ckpt", "--work-path", "/w",
                "--parent-path", "/p", "--no-subreaper", "--bundle", "/b", "c1"
            ]
        );
    }

    #[test]
    fn every_verb_gets_the_global_flags() {
        let mut c = config("runc");
        c.systemd_cgroup = false;
        c.criu_path = Some("/opt/criu".into());
        assert_eq!(
            s(c.global_args()),
            ["--root", "/run/containerd/runc/ns", "--log", "/b/log.json", "--log-format", "json", "--criu", "/opt/criu"]
        );
    }

    /// A runtime that hangs: a caller that goes away, or a deadline that passes, kills it.
    /// (The test waits for its own child by pid: unit tests never run the reaper's waitpid(-1).)
    #[tokio::test(flavor = "current_thread")]
    async fn a_hung_runtime_is_killed_with_its_caller() {
        let dir = std::env::temp_dir().join(format!("rs-hang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("hang-runc");
        let pidfile = dir.join("pid");
        std::fs::write(&script, format!("#!/bin/sh\necho $$ > {}\nexec sleep 1000\n", pidfile.display())).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = config(script.to_str().unwrap());
        cfg.log = dir.join("log.json");
        let runc = Runc::new(cfg, Arc::new(Reaper::default()));
        let child_pid = || -> Option<i32> { std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok() };
        let reap = |pid: i32| {
            let ws = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
            assert!(matches!(ws, nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)), "{ws:?}");
        };

        // 1. the caller goes away
        let call = Call::background();
        let c2 = call.clone();
        let canceller = async {
            while child_pid().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c2.cancel();
        };
        let (r, ()) = tokio::join!(runc.start(&call, "c1"), canceller);
        assert!(matches!(&r, Err(Error::Cancelled(m)) if m.contains("start")), "{r:?}");
        reap(child_pid().unwrap());

        // 2. the caller's deadline (less the margin) passes
        std::fs::remove_file(&pidfile).unwrap();
        let call = Call::with_timeout(Some(Duration::from_millis(500)));
        let r = runc.kill(&call, "c1", 9, false).await;
        assert!(matches!(&r, Err(Error::DeadlineExceeded(m)) if m.contains("kill") && m.contains("deadline")), "{r:?}");
        assert_eq!(Error::DeadlineExceeded(String::new()).code(), ttrpc::Code::DEADLINE_EXCEEDED);
        reap(child_pid().unwrap());

        // 3. a call that was cancelled before it ran starts nothing
        std::fs::remove_file(&pidfile).unwrap();
        let call = Call::background();
        call.cancel();
        assert!(matches!(runc.pause(&call, "c1").await, Err(Error::Cancelled(_))));
        assert!(child_pid().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_lines() {
        let dir = std::env::temp_dir().join(format!("rs-logjson-{}", std::process::id()));
        std::fs::write(
            &dir,
            "{\"level\":\"info\",\"msg\":\"hi\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n",
        )
        .unwrap();
        assert_eq!(last_error_in_log(&dir, 0).as_deref(), Some("exec: \"nope\": not found"));
        let mut more = std::fs::read_to_string(&dir).unwrap();
        let offset = more.len() as u64;
        more.push_str("{\"level\":\"error\",\"msg\":\"nsexec: permission denied\"}\n{\"level\":\"error\",\"msg\":\"can't get final child's PID\"}\n");
        std::fs::write(&dir, more).unwrap();
        assert_eq!(
            last_error_in_log(&dir, offset).as_deref(),
            Some("nsexec: permission denied: can't get final child's PID")
        );
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            last_error_in_text("time=\"x\" level=error msg=\"container not running\"").as_deref(),
            Some("container not running")
        );
    }
}
