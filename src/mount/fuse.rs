//! `fuse.<subtype>` / `fuse3.<subtype>` mounts go through the mount.fuse / mount.fuse3 helper,
//! as containerd's `mountWithHelper`: `mount.fuse3 SOURCE TARGET -o OPT... -t SUBTYPE`.
//!
//! The helper runs under a clone child that raises no SIGCHLD (see [`sys::clone_child`]), so the
//! reaper's `waitpid(-1)` cannot take its status; the FUSE daemon it leaves behind is re-parented
//! to the shim (the subreaper) and reaped by the reaper like any orphan.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sys::{self, ChildEnd};
use crate::error::{Error, Result};

/// How long a helper may take; a FUSE daemon that never answers would otherwise hold Create.
const HELPER_LIMIT: Duration = Duration::from_secs(60);

/// The helper for `kind`, and the subtype it is given with `-t`.
pub fn helper_for(kind: &str) -> Option<(&'static str, &str)> {
    if let Some(sub) = kind.strip_prefix("fuse3.") {
        return Some(("mount.fuse3", sub));
    }
    kind.strip_prefix("fuse.").map(|sub| ("mount.fuse", sub))
}

fn find_helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The helper's argv: options one `-o` each, as containerd passes them.
pub fn helper_args(helper: &str, source: &str, target: &Path, options: &[String], subtype: &str) -> Vec<String> {
    let mut a = vec![helper.to_string(), source.to_string(), target.display().to_string()];
    for o in options {
        a.push("-o".into());
        a.push(o.clone());
    }
    a.push("-t".into());
    a.push(subtype.to_string());
    a
}

pub fn mount(kind: &str, source: &str, target: &Path, options: &[String]) -> Result<()> {
    let (helper, subtype) = helper_for(kind).expect("caller checked the fuse type");
    if subtype.is_empty() || subtype.contains('/') {
        return Err(Error::InvalidArgument(format!("mount type {kind:?} names no FUSE filesystem")));
    }
    let exe = find_helper(helper)
        .ok_or_else(|| Error::FailedPrecondition(format!("mount type {kind:?} needs {helper}, not found in PATH")))?;
    let args = helper_args(helper, source, target, options, subtype);
    let cargs = args
        .iter()
        .map(|a| sys::cstr(a))
        .collect::<std::io::Result<Vec<CString>>>()
        .map_err(|e| Error::InvalidArgument(format!("fuse mount: {e}")))?;
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let cexe = sys::cpath(&exe).map_err(|e| Error::InvalidArgument(format!("fuse mount: {e}")))?;
    let devnull = c"/dev/null";

    let mut fds = [0; 2];
    // SAFETY: fds has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::io("pipe for the fuse helper", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds from pipe2.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let w = wr.as_raw_fd();
    // execve makes a clone child an ordinary SIGCHLD child again (the kernel resets its exit
    // signal), which the reaper would collect. So the clone child does not exec: it forks the
    // helper as its own child, waits for it, and exits with its status (128+signal if killed).
    // SAFETY: between clone and exec the children only make raw syscalls on memory prepared above.
    let pid = unsafe {
        sys::clone_child(0, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let helper = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0usize, 0usize, 0usize, 0usize);
            if helper == 0 {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let null = libc::open(devnull.as_ptr(), libc::O_RDONLY);
                if null >= 0 {
                    libc::dup2(null, 0);
                }
                libc::dup2(w, 1);
                libc::dup2(w, 2);
                libc::execv(cexe.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
            if helper < 0 {
                libc::_exit(126);
            }
            let mut st = 0;
            loop {
                let r = libc::wait4(helper as libc::pid_t, &mut st, 0, std::ptr::null_mut());
                if r == helper as libc::pid_t {
                    break;
                }
                if r < 0 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(126);
                }
            }
            if libc::WIFEXITED(st) {
                libc::_exit(libc::WEXITSTATUS(st));
            }
            libc::_exit(128 + libc::WTERMSIG(st))
        })
    }
    .map_err(|e| Error::io(format!("start {helper}"), e))?;
    drop(wr);
    let end = sys::wait_clone_child(pid, HELPER_LIMIT).map_err(|e| Error::io(format!("wait for {helper}"), e))?;
    // The daemon the helper started may still hold the pipe: read only what is there.
    // SAFETY: fcntl/read on our own fd into a local buffer.
    let output = unsafe {
        let fl = libc::fcntl(rd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(rd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        let mut buf = vec![0u8; 8192];
        let n = libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
        String::from_utf8_lossy(&buf[..n.max(0) as usize]).trim().to_string()
    };
    let fail = |how: String| {
        Err(Error::Other(format!("mount helper [{}] {how}: {output:?}", args.join(" "))))
    };
    match end {
        ChildEnd::Exited(0) => Ok(()),
        ChildEnd::Exited(127) if output.is_empty() => fail(format!("could not run {}", exe.display())),
        ChildEnd::Exited(126) => fail("could not be started".into()),
        ChildEnd::Exited(c) if c > 128 => fail(format!("killed by signal {}", c - 128)),
        ChildEnd::Exited(c) => fail(format!("failed with exit status {c}")),
        ChildEnd::Signaled(s) => fail(format!("killed by signal {s}")),
        ChildEnd::TimedOut => fail(format!("did not finish within {}s (killed)", HELPER_LIMIT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_and_args() {
        assert_eq!(helper_for("fuse3.squashfuse"), Some(("mount.fuse3", "squashfuse")));
        assert_eq!(helper_for("fuse.sshfs"), Some(("mount.fuse", "sshfs")));
        assert_eq!(helper_for("fuseblk"), None);
        assert_eq!(
            helper_args("mount.fuse3", "/img", Path::new("/t"), &["ro".into(), "allow_other".into()], "squashfuse"),
            ["mount.fuse3", "/img", "/t", "-o", "ro", "-o", "allow_other", "-t", "squashfuse"]
        );
    }
}
