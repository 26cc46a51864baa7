//! A typed client for the OCI runtime binary (runc by default; crun and youki speak the same
//! command line). Every invocation goes through the reaper, so its exit status is never stolen,
//! and is bounded by a timeout so a hung runtime cannot hang the shim.

use std::ffi::OsString;
use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use crate::error::{Error, Result};
use crate::reaper::{Exit, Reaper};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub binary: String,
    /// The runtime's state root for this namespace (`<root>/<namespace>`).
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    pub criu_path: Option<String>,
}

pub struct Runtime {
    pub config: RuntimeConfig,
    reaper: Arc<Reaper>,
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

impl Runtime {
    pub fn new(config: RuntimeConfig, reaper: Arc<Reaper>) -> Self {
        Runtime { config, reaper }
    }

    /// Global flags first, as runc wants them before the verb.
    pub fn global_args(&self, log_json: Option<&Path>) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--root".into(), self.config.root.clone().into()];
        if let Some(log) = log_json {
            a.extend(["--log".into(), log.into(), "--log-format".into(), "json".into()]);
        }
        if self.config.systemd_cgroup {
            a.push("--systemd-cgroup".into());
        }
        if let Some(criu) = &self.config.criu_path {
            a.extend(["--criu".into(), criu.into()]);
        }
        a
    }

    pub fn create_args(&self, id: &str, o: &CreateOpts) -> Vec<OsString> {
        let mut a = self.global_args(Some(&o.bundle.join("log.json")));
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
        let mut a = self.global_args(Some(&o.bundle.join("log.json")));
        a.extend(["exec".into(), "--detach".into()]);
        a.extend(["--pid-file".into(), o.pid_file.into()]);
        a.extend(["--process".into(), o.process_json.into()]);
        if let Some(s) = o.console_socket {
            a.extend(["--console-socket".into(), s.into()]);
        }
        a.push(id.into());
        a
    }

    pub fn checkpoint_args(&self, id: &str, bundle: &Path, criu: &CriuOpts, leave_running: bool) -> Vec<OsString> {
        let mut a = self.global_args(Some(&bundle.join("log.json")));
        a.push("checkpoint".into());
        criu.push_args(&mut a);
        if leave_running {
            a.push("--leave-running".into());
        }
        a.push(id.into());
        a
    }

    pub fn restore_args(&self, id: &str, o: &CreateOpts, criu: &CriuOpts) -> Vec<OsString> {
        let mut a = self.global_args(Some(&o.bundle.join("log.json")));
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

    pub async fn checkpoint(&self, id: &str, bundle: &Path, criu: &CriuOpts, leave_running: bool) -> Result<()> {
        let log = bundle.join("log.json");
        let args = self.checkpoint_args(id, bundle, criu, leave_running);
        self.call("checkpoint", args, None, None, Some(&log)).await.map(drop)
    }

    pub async fn restore(&self, id: &str, o: &CreateOpts<'_>, criu: &CriuOpts, stdio: ProcessStdio) -> Result<i32> {
        let _ = std::fs::remove_file(o.pid_file);
        let log = o.bundle.join("log.json");
        self.call("restore", self.restore_args(id, o, criu), Some(stdio), None, Some(&log)).await?;
        read_pid_file(o.pid_file)
    }

    pub async fn create(&self, id: &str, o: &CreateOpts<'_>, stdio: ProcessStdio) -> Result<i32> {
        let _ = std::fs::remove_file(o.pid_file);
        let log = o.bundle.join("log.json");
        self.call("create", self.create_args(id, o), Some(stdio), None, Some(&log)).await?;
        read_pid_file(o.pid_file)
    }

    pub async fn exec(&self, id: &str, o: &ExecOpts<'_>, stdio: ProcessStdio) -> Result<i32> {
        let _ = std::fs::remove_file(o.pid_file);
        let log = o.bundle.join("log.json");
        self.call("exec", self.exec_args(id, o), Some(stdio), None, Some(&log)).await?;
        read_pid_file(o.pid_file)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.simple("start", &["start", id]).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut a = vec!["kill"];
        if all {
            a.push("--all");
        }
        a.extend([id, sig.as_str()]);
        self.simple("kill", &a).await.map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut a = vec!["delete"];
        if force {
            a.push("--force");
        }
        a.push(id);
        match self.simple("delete", &a).await {
            Err(Error::Runtime { message, .. }) if crate::error::runtime_says_gone(&message) => Ok(()),
            r => r.map(drop),
        }
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.simple("pause", &["pause", id]).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.simple("resume", &["resume", id]).await.map(drop)
    }

    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let mut a = self.global_args(None);
        a.extend(["update".into(), "--resources".into(), "-".into(), id.into()]);
        self.call("update", a, None, Some(resources_json), None).await.map(drop)
    }

    pub async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.simple("ps", &["ps", "--format", "json", id]).await?;
        let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| Error::Runtime {
            verb: "ps",
            message: format!("cannot parse runtime output: {e}"),
        })?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(|p| p.as_u64()).map(|p| p as u32).collect())
            .unwrap_or_default())
    }

    async fn simple(&self, verb: &'static str, args: &[&str]) -> Result<Vec<u8>> {
        let mut a = self.global_args(None);
        a.extend(args.iter().map(OsString::from));
        self.call(verb, a, None, None, None).await
    }

    /// Run the runtime once. With `stdio`, those fds become the runtime's (and so the container
    /// process's) stdio and nothing is captured; otherwise stdout and stderr are captured.
    async fn call(
        &self,
        verb: &'static str,
        args: Vec<OsString>,
        stdio: Option<ProcessStdio>,
        input: Option<Vec<u8>>,
        log_json: Option<&Path>,
    ) -> Result<Vec<u8>> {
        let mut cmd = Command::new(&self.config.binary);
        cmd.args(&args);
        // SAFETY: prctl is async-signal-safe. The shim runs a current_thread runtime, so the
        // forking thread lives as long as the shim and PDEATHSIG fires only if the shim dies.
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
        let log_offset = log_json.and_then(|l| std::fs::metadata(l).ok()).map_or(0, |m| m.len());
        let spawned = self.reaper.spawn(&mut cmd);
        drop(cmd); // closes our copies of the child's ends, so the pipes see EOF
        // The binary comes from the runtime options: one that cannot be run is a bad argument.
        let (pid, exited) = spawned.map_err(|e| {
            Error::InvalidArgument(format!("runtime binary {:?} cannot be run: {e}", self.config.binary))
        })?;
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
            let exit: Exit = exited.await.map_err(|_| Error::Other("reaper gone".into()))?;
            Ok::<_, Error>((exit, out, err))
        };
        let (exit, out, err) = match tokio::time::timeout(call_timeout(), work).await {
            Ok(r) => r?,
            Err(_) => {
                // SAFETY: the pid is our own child and has not been reaped (we never got its exit).
                unsafe { libc::kill(pid, libc::SIGKILL) };
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
        let mut message = log_json.and_then(|l| last_error_in_log(l, log_offset)).unwrap_or_default();
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

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::from)
}

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

    fn rt() -> Runtime {
        Runtime::new(
            RuntimeConfig {
                binary: "runc".into(),
                root: "/run/containerd/runc/ns".into(),
                systemd_cgroup: true,
                criu_path: None,
            },
            Arc::new(Reaper::default()),
        )
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
        let a = s(rt().checkpoint_args("c1", Path::new("/b"), &criu, true));
        assert_eq!(
            &a[7..],
            [
                "checkpoint", "--image-path", "/ckpt", "--work-path", "/b/criu-work", "--tcp-established",
                "--ext-unix-sk", "--shell-job", "--file-locks", "--empty-ns", "network",
                "--manage-cgroups-mode", "soft", "--leave-running", "c1"
            ]
        );
        let plain = CriuOpts { image_path: "/ckpt".into(), work_path: "/w".into(), parent_path: Some("/p".into()), ..Default::default() };
        let a = s(rt().checkpoint_args("c1", Path::new("/b"), &plain, false));
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
