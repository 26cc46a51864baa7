//! A process's stdio: what the container gets, and the copies the shim runs.
//!
//! The container never gets containerd's FIFOs: it gets pipes (or a pty), and the shim copies.
//! Output FIFOs are opened read-write, so the shim is itself a reader and a container writing
//! while nobody listens (containerd restarting, a client detached) never gets SIGPIPE. The stdin
//! FIFO gets a held writer, so the container sees EOF only when CloseIO drops it.

pub mod binary;
pub mod console;
pub mod splice;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::runtime::ProcessStdio;
use crate::reaper::Reaper;
use binary::{BinaryUri, Logger};
use console::{Console, ConsoleSocket};

/// Where one of containerd's stdio fields points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    None,
    Fifo(PathBuf),
    File(PathBuf),
    Binary(BinaryUri),
}

impl Target {
    pub fn parse(uri: &str) -> Result<Target> {
        if uri.is_empty() {
            return Ok(Target::None);
        }
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::InvalidArgument(format!("file URI {uri:?} needs an absolute path")));
            }
            return Ok(Target::File(PathBuf::from(path)));
        }
        if let Some(rest) = uri.strip_prefix("binary://") {
            return BinaryUri::parse(rest).map(Target::Binary);
        }
        if let Some(path) = uri.strip_prefix("fifo://") {
            return Ok(Target::Fifo(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(Error::InvalidArgument(format!(
                "stdio URI {uri:?}: scheme {scheme:?} is not supported"
            )));
        }
        if !uri.starts_with('/') {
            return Err(Error::InvalidArgument(format!("stdio path {uri:?} is not absolute")));
        }
        Ok(Target::Fifo(PathBuf::from(uri)))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Who the IO is for, and what it may need to start.
pub struct IoContext<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
    pub reaper: &'a Reaper,
    /// Owner of the pipes the container gets (runc Options IoUid/IoGid).
    pub uid: u32,
    pub gid: u32,
}

/// What the shim holds for a running process's stdio.
#[derive(Default)]
pub struct ProcessIo {
    /// Our writer on the stdin FIFO; dropping it is CloseIO.
    stdin_holder: Mutex<Option<OwnedFd>>,
    console: Option<Arc<Console>>,
    stdin_copy: Mutex<Option<JoinHandle<()>>>,
    output_copies: Mutex<Vec<JoinHandle<()>>>,
    logger: Option<Logger>,
}

/// IO prepared before the runtime runs; `start` after it succeeded.
pub struct PendingIo {
    pub runtime_stdio: ProcessStdio,
    pub console_socket: Option<ConsoleSocket>,
    stdin: Option<(pipe::Receiver, OwnedFd)>,
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    /// Non-terminal: our ends of the container's pipes, copied into the sinks.
    pipes: (Option<pipe::Sender>, Option<pipe::Receiver>, Option<pipe::Receiver>),
    logger: Option<Logger>,
}

enum Sink {
    Pipe(pipe::Sender),
    /// `file://`: written on tokio's blocking pool, since a write to a regular file can block
    /// (a slow disk, NFS) and the shim serves everything from one thread.
    File(Arc<FileLog>),
}

/// A `file://` log. Opened without O_APPEND, which splice(2) refuses, so every write goes to
/// the end under this lock instead; stdout and stderr naming the same file share one FileLog.
pub struct FileLog {
    file: Mutex<std::fs::File>,
}

impl FileLog {
    fn at_end(&self) -> std::io::Result<std::sync::MutexGuard<'_, std::fs::File>> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        std::io::Seek::seek(&mut *f, std::io::SeekFrom::End(0))?;
        Ok(f)
    }

    fn append(&self, buf: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut *self.at_end()?, buf)
    }
}

impl Sink {
    fn open(target: &Target, what: &str) -> Result<Option<Sink>> {
        match target {
            Target::None | Target::Binary(_) => Ok(None),
            Target::Fifo(p) => pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(p)
                .map(|s| Some(Sink::Pipe(s)))
                .map_err(|e| Error::io(format!("open {what} fifo {}", p.display()), e)),
            Target::File(p) => {
                if let Some(dir) = p.parent() {
                    use std::os::unix::fs::DirBuilderExt as _;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(dir)
                        .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
                }
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create(true).mode(0o644);
                crate::bundle::open_regular(&mut opts, p)
                    .map(|f| Some(Sink::File(Arc::new(FileLog { file: Mutex::new(f) }))))
                    .map_err(|e| Error::InvalidArgument(format!("{what} file {}: {e}", p.display())))
            }
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Pipe(s) => s.write_all(buf).await,
            Sink::File(log) => {
                let (log, data) = (log.clone(), buf.to_vec());
                tokio::task::spawn_blocking(move || log.append(&data)).await.map_err(std::io::Error::other)?
            }
        }
    }
}

/// A close-on-exec pipe: children get only the ends handed to them explicitly.
/// The size of a container's stdout/stderr pipe (the kernel default is 64 KiB).
const OUTPUT_PIPE_SIZE: libc::c_int = 1 << 20;

pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::from)
}

fn tokio_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(what.to_string(), e)
}

fn open_stdin(p: &std::path::Path) -> Result<(pipe::Receiver, OwnedFd)> {
    let r = pipe::OpenOptions::new()
        .open_receiver(p)
        .map_err(|e| Error::io(format!("open stdin fifo {}", p.display()), e))?;
    use std::os::unix::fs::OpenOptionsExt as _;
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| Error::io(format!("hold stdin fifo {}", p.display()), e))?;
    Ok((r, OwnedFd::from(holder)))
}

impl PendingIo {
    /// Open everything the process's stdio needs, and start a binary logger if one is asked for.
    pub async fn prepare(paths: &StdioPaths, ctx: &IoContext<'_>) -> Result<PendingIo> {
        let stdin_t = Target::parse(&paths.stdin)?;
        let stdout_t = Target::parse(&paths.stdout)?;
        let stderr_t = if paths.terminal { Target::None } else { Target::parse(&paths.stderr)? };
        let stdin = match &stdin_t {
            Target::None => None,
            Target::Fifo(p) => Some(open_stdin(p)?),
            _ => return Err(Error::InvalidArgument(format!("stdin {:?} must be a FIFO", paths.stdin))),
        };
        let binary = match (&stdout_t, &stderr_t) {
            (Target::Binary(a), Target::Binary(b)) if a != b => {
                return Err(Error::InvalidArgument("stdout and stderr name different loggers".into()))
            }
            (Target::Binary(b), _) | (_, Target::Binary(b)) => Some(b.clone()),
            _ => None,
        };
        let mut io = PendingIo {
            runtime_stdio: ProcessStdio::default(),
            console_socket: None,
            stdin,
            stdout: Sink::open(&stdout_t, "stdout")?,
            stderr: None,
            pipes: (None, None, None),
            logger: None,
        };
        // One FileLog for both when they name the same file (containerd's file:// does).
        io.stderr = match (&stdout_t, &stderr_t, &io.stdout) {
            (Target::File(a), Target::File(b), Some(Sink::File(log))) if a == b => Some(Sink::File(log.clone())),
            _ => Sink::open(&stderr_t, "stderr")?,
        };
        let mut logger_fds = (None, None);
        if paths.terminal {
            io.console_socket = Some(ConsoleSocket::new()?);
            if binary.is_some() {
                let (r, w) = pipe()?;
                io.stdout = Some(Sink::Pipe(pipe::Sender::from_owned_fd(w).map_err(tokio_err("logger pipe"))?));
                logger_fds.0 = Some(r);
            }
        } else {
            if io.stdin.is_some() {
                let (r, w) = pipe()?;
                io.runtime_stdio.stdin = Some(r);
                io.pipes.0 = Some(pipe::Sender::from_owned_fd(w).map_err(tokio_err("stdin pipe"))?);
            }
            for (i, target) in [&stdout_t, &stderr_t].into_iter().enumerate() {
                if *target == Target::None {
                    continue;
                }
                let (r, w) = pipe()?;
                // A larger output pipe: a busy container's output moves in fewer, larger splices
                // (and fewer wakeups of the writer). Pages are allocated only as data sits in
                // it, so an idle container costs nothing more. Best effort.
                // SAFETY: fcntl on a pipe fd we own.
                unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&r), libc::F_SETPIPE_SZ, OUTPUT_PIPE_SIZE) };
                let ours = if i == 0 { &mut io.runtime_stdio.stdout } else { &mut io.runtime_stdio.stderr };
                *ours = Some(w);
                if let Target::Binary(_) = target {
                    // The logger reads the container's pipe itself: no copy through the shim.
                    if i == 0 { logger_fds.0 = Some(r) } else { logger_fds.1 = Some(r) }
                } else {
                    let rx = pipe::Receiver::from_owned_fd(r).map_err(tokio_err("output pipe"))?;
                    if i == 0 { io.pipes.1 = Some(rx) } else { io.pipes.2 = Some(rx) }
                }
            }
            if ctx.uid != 0 || ctx.gid != 0 {
                let s = &io.runtime_stdio;
                for fd in [&s.stdin, &s.stdout, &s.stderr].into_iter().flatten() {
                    nix::unistd::fchown(fd, Some(ctx.uid.into()), Some(ctx.gid.into()))?;
                }
            }
        }
        if let Some(uri) = binary {
            io.logger = Some(
                Logger::start(&uri, logger_fds.0, logger_fds.1, ctx.container_id, ctx.namespace, ctx.reaper)
                    .await?,
            );
        }
        Ok(io)
    }

    /// Take the fds the runtime must get; what stays here is the shim's side.
    pub fn take_runtime_stdio(&mut self) -> ProcessStdio {
        std::mem::take(&mut self.runtime_stdio)
    }

    /// The runtime succeeded: start copying. For a terminal, receive the pty master first.
    pub fn start(mut self) -> Result<ProcessIo> {
        let mut io = ProcessIo::default();
        io.logger = self.logger.take();
        if let Some(sock) = self.console_socket.take() {
            let console = Arc::new(Console::new(sock.receive()?)?);
            if let Some((fifo, holder)) = self.stdin.take() {
                *io.stdin_holder.get_mut().unwrap() = Some(holder);
                let c = console.clone();
                *io.stdin_copy.get_mut().unwrap() = Some(tokio::spawn(copy(fifo, Dest::Console(c))));
            }
            if let Some(sink) = self.stdout.take() {
                io.output_copies.get_mut().unwrap().push(tokio::spawn(copy(console.clone(), Dest::Sink(sink))));
            }
            io.console = Some(console);
            return Ok(io);
        }
        let (stdin_w, stdout_r, stderr_r) = self.pipes;
        if let (Some((fifo, holder)), Some(w)) = (self.stdin.take(), stdin_w) {
            *io.stdin_holder.get_mut().unwrap() = Some(holder);
            *io.stdin_copy.get_mut().unwrap() = Some(tokio::spawn(copy(fifo, Dest::Pipe(w))));
        }
        if let (Some(r), Some(sink)) = (stdout_r, self.stdout.take()) {
            io.output_copies.get_mut().unwrap().push(tokio::spawn(copy_output(r, sink)));
        }
        if let (Some(r), Some(sink)) = (stderr_r, self.stderr.take()) {
            io.output_copies.get_mut().unwrap().push(tokio::spawn(copy_output(r, sink)));
        }
        Ok(io)
    }
}

impl ProcessIo {
    pub fn console(&self) -> Option<&Arc<Console>> {
        self.console.as_ref()
    }

    /// CloseIO: once the client's writers are gone too, the copy sees EOF and closes the
    /// container's stdin.
    pub fn close_stdin(&self) {
        self.stdin_holder.lock().unwrap().take();
    }

    /// Wait (bounded) for the output copies to drain after the process exited, then stop all.
    pub async fn drain(&self, limit: Duration) {
        let copies = std::mem::take(&mut *self.output_copies.lock().unwrap());
        let aborts: Vec<_> = copies.iter().map(|h| h.abort_handle()).collect();
        if tokio::time::timeout(limit, async {
            for h in copies {
                let _ = h.await;
            }
        })
        .await
        .is_err()
        {
            log::warn!("stdio copy did not drain within {limit:?}");
            aborts.iter().for_each(|a| a.abort());
        }
        if let Some(h) = self.stdin_copy.lock().unwrap().take() {
            h.abort();
        }
        self.close_stdin();
        if let Some(logger) = &self.logger {
            logger.shutdown().await;
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.output_copies.get_mut().unwrap().iter().for_each(|h| h.abort());
        if let Some(h) = self.stdin_copy.get_mut().unwrap() {
            h.abort();
        }
    }
}

const BUF: usize = 32 * 1024;

/// What a copy loop reads from: a pipe (FIFO or the container's pipe) or the pty master.
trait Source {
    async fn ready(&self) -> std::io::Result<()>;
    /// Ok(0) at EOF; WouldBlock once drained (readiness cleared).
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl Source for pipe::Receiver {
    async fn ready(&self) -> std::io::Result<()> {
        self.readable().await
    }
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        pipe::Receiver::try_read(self, buf)
    }
}

impl Source for Arc<Console> {
    async fn ready(&self) -> std::io::Result<()> {
        self.readable().await
    }
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        Console::try_read(self, buf)
    }
}

/// Where a copy loop writes.
enum Dest {
    Sink(Sink),
    Pipe(pipe::Sender),
    Console(Arc<Console>),
}

impl Dest {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Dest::Sink(s) => s.write_all(buf).await,
            Dest::Pipe(p) => p.write_all(buf).await,
            Dest::Console(c) => c.write_all(buf).await,
        }
    }
}

/// A container's output pipe into its FIFO or file: spliced, without a buffer of the shim's;
/// copied with read/write where splice does not apply.
async fn copy_output(from: pipe::Receiver, to: Sink) {
    let ended = match &to {
        Sink::Pipe(p) => splice::to_pipe(&from, p).await,
        Sink::File(log) => splice::to_file(&from, log.clone()).await,
    };
    match ended {
        splice::Ended::Eof => {}
        splice::Ended::Failed(e) => log::warn!("stdio copy: {e}"),
        splice::Ended::Unsupported => copy(from, Dest::Sink(to)).await,
    }
}

/// Copy until EOF. The buffer exists only while data flows: an idle container's streams cost
/// the shim no buffer memory. Dropping `to` at the end closes it (the container's stdin).
async fn copy(from: impl Source, mut to: Dest) {
    loop {
        if from.ready().await.is_err() {
            return;
        }
        let mut buf = vec![0u8; BUF];
        loop {
            match from.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if let Err(e) = to.write_all(&buf[..n]).await {
                        log::warn!("stdio copy: {e}");
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(Target::parse("").unwrap(), Target::None);
        assert_eq!(Target::parse("/run/x/stdout").unwrap(), Target::Fifo("/run/x/stdout".into()));
        assert_eq!(Target::parse("fifo:///a").unwrap(), Target::Fifo("/a".into()));
        assert_eq!(Target::parse("file:///var/log/c.log").unwrap(), Target::File("/var/log/c.log".into()));
        assert!(Target::parse("relative/path").is_err());
        assert!(Target::parse("ftp://x").unwrap_err().to_string().contains("ftp"));
        match Target::parse("binary:///usr/bin/logger?tag=web").unwrap() {
            Target::Binary(b) => assert_eq!(b.args, [("tag".to_string(), "web".to_string())]),
            other => panic!("{other:?}"),
        }
    }
}
