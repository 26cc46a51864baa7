//! `binary://` loggers: a program that receives the container's stdout on fd 3 and stderr on
//! fd 4, and says it is ready by closing fd 5. Its environment holds only CONTAINER_ID and
//! CONTAINER_NAMESPACE, as with the Go shim.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;


use crate::error::{Error, Result};
use crate::reaper::{Child, Reaper};

/// How long a logger may take to close its ready fd.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGTERM, how long a logger may take to flush before SIGKILL (the Go shim's 12 s).
const TERM_TIMEOUT: Duration = Duration::from_secs(12);
/// How long a logger is given to finish on its own once its input ended.
const EOF_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryUri {
    pub path: PathBuf,
    /// Query parameters, in order, each passed as `key value`.
    pub args: Vec<(String, String)>,
}

/// Go's url.Parse refuses a `%` not followed by two hex digits; the `url` crate keeps it as text.
fn check_escapes(s: &str, what: &str) -> Result<()> {
    let b = s.as_bytes();
    for (i, _) in b.iter().enumerate().filter(|(_, c)| **c == b'%') {
        if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)) {
            return Err(Error::InvalidArgument(format!("binary logger {what} {s:?}: bad percent escape")));
        }
    }
    Ok(())
}

impl BinaryUri {
    /// `rest` is what follows `binary://`: an absolute path, then an optional query. Parsed as
    /// the Go shim does (url.Parse, then Path and Query()): the path is percent-decoded with `+`
    /// kept, query keys and values also turn `+` into a space, a repeated key passes its first
    /// value only, and a `#fragment` is not part of either. Unlike Go (which drops them silently)
    /// bad escapes and `;` in the query are refused, as is a host (`binary://host/path`, where Go
    /// would run /path). percent-encoding and form_urlencoded rather than the url crate: see
    /// docs/dependencies.md.
    pub fn parse(rest: &str) -> Result<BinaryUri> {
        let bad = |m: String| Error::InvalidArgument(format!("binary logger URI \"binary://{rest}\": {m}"));
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (raw_path, query) = rest.split_once('?').map_or((rest, None), |(p, q)| (p, Some(q)));
        if !raw_path.starts_with('/') {
            let host = raw_path.split('/').next().unwrap_or_default();
            return Err(bad(match host.is_empty() {
                true => "no program path (binary:///path)".into(),
                false => format!("has host {host:?}: the program's path must be absolute (binary:///path)"),
            }));
        }
        check_escapes(raw_path, "path")?;
        let path = percent_encoding::percent_decode_str(raw_path)
            .decode_utf8()
            .map_err(|_| bad("path is not UTF-8".into()))?
            .into_owned();
        if path.len() < 2 {
            return Err(bad("no program path (binary:///path)".into()));
        }
        let mut args: Vec<(String, String)> = Vec::new();
        if let Some(query) = query {
            check_escapes(query, "query")?;
            if query.contains(';') {
                return Err(bad("';' in the query: separate parameters with '&'".into()));
            }
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                if !args.iter().any(|(have, _)| *have == k) {
                    args.push((k.into_owned(), v.into_owned()));
                }
            }
        }
        Ok(BinaryUri { path: PathBuf::from(path), args })
    }
}

/// A running logger; its exit goes through the shim's reaper. Dropped while it runs (a create
/// that failed or whose caller went away), it is killed.
pub struct Logger {
    child: tokio::sync::Mutex<Child>,
}

impl Logger {
    /// Start the logger with `stdout_r`/`stderr_r` as its fds 3 and 4, and wait until ready.
    pub async fn start(
        uri: &BinaryUri,
        stdout_r: Option<OwnedFd>,
        stderr_r: Option<OwnedFd>,
        container_id: &str,
        namespace: &str,
        reaper: &Reaper,
    ) -> Result<Logger> {
        let (ready_r, ready_w) = super::pipe()?;
        let null = || std::fs::File::open("/dev/null").map(OwnedFd::from);
        let fd3 = match stdout_r {
            Some(fd) => fd,
            None => null().map_err(|e| Error::io("/dev/null", e))?,
        };
        let fd4 = match stderr_r {
            Some(fd) => fd,
            None => null().map_err(|e| Error::io("/dev/null", e))?,
        };
        let mut cmd = Command::new(&uri.path);
        for (k, v) in &uri.args {
            cmd.arg(k);
            if !v.is_empty() {
                cmd.arg(v);
            }
        }
        cmd.env_clear()
            .env("CONTAINER_ID", container_id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let fds = [fd3.as_raw_fd(), fd4.as_raw_fd(), ready_w.as_raw_fd()];
        // SAFETY: only dup2/fcntl between fork and exec. Each source is first moved above 5 so a
        // source that already sits at 3..=5 is not overwritten before it is placed.
        unsafe {
            cmd.pre_exec(move || {
                let mut high = [0; 3];
                for (i, fd) in fds.iter().enumerate() {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in high.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = reaper
            .spawn(&mut cmd)
            .map_err(|e| Error::InvalidArgument(format!("start logger {}: {e}", uri.path.display())))?;
        drop(cmd);
        drop((fd3, fd4, ready_w));
        let logger = Logger { child: tokio::sync::Mutex::new(child) };
        // Ready when fd 5 is closed (EOF), by the logger or by its exit.
        let wait_ready = async move {
            use tokio::io::AsyncReadExt as _;
            let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)?;
            let mut sink = Vec::new();
            r.read_to_end(&mut sink).await
        };
        if tokio::time::timeout(READY_TIMEOUT, wait_ready).await.is_err() {
            logger.kill().await;
            return Err(Error::DeadlineExceeded(format!(
                "logger {} did not signal ready (close fd 5) within {}s",
                uri.path.display(),
                READY_TIMEOUT.as_secs()
            )));
        }
        Ok(logger)
    }

    async fn kill(&self) {
        let mut child = self.child.lock().await;
        child.kill();
        child.wait().await;
    }

    /// Let the logger finish once its input ended; then SIGTERM, then SIGKILL.
    pub async fn shutdown(&self) {
        let mut child = self.child.lock().await;
        if tokio::time::timeout(EOF_GRACE, child.wait()).await.is_ok() {
            return;
        }
        child.signal(libc::SIGTERM);
        if tokio::time::timeout(TERM_TIMEOUT, child.wait()).await.is_ok() {
            return;
        }
        log::warn!("logger pid {} ignored SIGTERM for {}s: killing it", child.pid, TERM_TIMEOUT.as_secs());
        child.kill();
        child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_in_order() {
        let u = BinaryUri::parse("/usr/bin/log%20ger?id=c1&dir=%2Fvar%2Flog&flag").unwrap();
        assert_eq!(u.path, PathBuf::from("/usr/bin/log ger"));
        assert_eq!(
            u.args,
            [("id".into(), "c1".into()), ("dir".into(), "/var/log".into()), ("flag".into(), String::new())]
        );
        assert!(BinaryUri::parse("relative?x=1").is_err());
        assert!(BinaryUri::parse("/p?x=%zz").is_err());
    }

    /// What Go's url.Parse + Path + Query() make of the same URIs.
    #[test]
    fn go_url_semantics() {
        // a '+' in the path stays a '+'; in the query it is a space, %2B a '+'
        let u = BinaryUri::parse("/opt/c++/log+ger?msg=a+b&plus=%2B&sp=%20").unwrap();
        assert_eq!(u.path, PathBuf::from("/opt/c++/log+ger"));
        assert_eq!(u.args, [("msg".into(), "a b".into()), ("plus".into(), "+".into()), ("sp".into(), " ".into())]);
        // a repeated key passes its first value only; a fragment is not part of the path
        let u = BinaryUri::parse("/l?k=1&k=2&j#frag").unwrap();
        assert_eq!(u.path, PathBuf::from("/l"));
        assert_eq!(u.args, [("k".into(), "1".into()), ("j".into(), String::new())]);
        assert_eq!(BinaryUri::parse("/a%2Fb").unwrap().path, PathBuf::from("/a/b"));
        assert_eq!(BinaryUri::parse("/caf%C3%A9").unwrap().path, PathBuf::from("/caf\u{e9}"));
        for bad in ["/p%zz", "/p%4", "/p?a=1;b=2", "host/p", "", "/", "/%ff"] {
            let e = BinaryUri::parse(bad).unwrap_err();
            assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("binary")), "{bad:?}: {e}");
        }
    }
}
