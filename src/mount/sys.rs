//! Thin wrappers over the mount syscalls that neither libc nor nix wrap (the new mount API,
//! open_tree, mount_setattr) and over clone for helper children the reaper must not see.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use std::os::unix::ffi::OsStrExt as _;

pub const FSCONFIG_SET_FLAG: u32 = 0;
pub const FSCONFIG_SET_STRING: u32 = 1;
pub const FSCONFIG_CMD_CREATE: u32 = 6;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

const OPEN_TREE_CLONE: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} holds a NUL byte")))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{p:?} holds a NUL byte")))
}

fn fd_result(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn unit_result(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A filesystem context (fsopen); `log` drains the messages the kernel left in it.
pub struct FsContext(OwnedFd);

impl FsContext {
    pub fn open(fstype: &str) -> io::Result<Self> {
        let t = cstr(fstype)?;
        // SAFETY: valid C string, flags FSOPEN_CLOEXEC.
        fd_result(unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), 1u32) }).map(FsContext)
    }

    fn config(&self, cmd: u32, key: Option<&CStr>, value: *const libc::c_void, aux: i32) -> io::Result<()> {
        let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
        // SAFETY: key/value are NULL or valid for the duration of the call.
        unit_result(unsafe {
            libc::syscall(libc::SYS_fsconfig, self.0.as_raw_fd(), cmd, key, value, aux)
        })
    }

    pub fn set_flag(&self, key: &str) -> io::Result<()> {
        self.config(FSCONFIG_SET_FLAG, Some(&cstr(key)?), std::ptr::null(), 0)
    }

    pub fn set_string(&self, key: &str, value: &str) -> io::Result<()> {
        let v = cstr(value)?;
        self.config(FSCONFIG_SET_STRING, Some(&cstr(key)?), v.as_ptr().cast(), 0)
    }

    pub fn create(&self) -> io::Result<()> {
        self.config(FSCONFIG_CMD_CREATE, None, std::ptr::null(), 0)
    }

    /// A detached mount of the created superblock with `attrs` (MOUNT_ATTR_*).
    pub fn mount(&self, attrs: u64) -> io::Result<OwnedFd> {
        // SAFETY: integer arguments only; FSMOUNT_CLOEXEC.
        fd_result(unsafe { libc::syscall(libc::SYS_fsmount, self.0.as_raw_fd(), 1u32, attrs as u32) })
    }

    /// What the filesystem said about the last failure ("e overlay: ..." lines), if anything.
    pub fn log(&self) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        let fd = self.0.as_raw_fd();
        // The context fd returns one message per read and ENODATA when empty; make it nonblocking
        // first so a kernel without messages never blocks us.
        // SAFETY: fcntl on our own fd.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        for _ in 0..16 {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf[..n as usize]);
            out.push(line.trim_end().trim_start_matches("e ").to_string());
        }
        out.join("; ")
    }
}

/// A detached copy of the mount at `path` (open_tree with OPEN_TREE_CLONE).
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let p = cpath(path)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: valid C string.
    fd_result(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) })
}

/// Idmap a detached mount through the user namespace `userns`.
pub fn set_idmap(mnt: &OwnedFd, userns: &OwnedFd) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: attr lives across the call; its size is passed.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as u32,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}

/// Attach a detached mount at `target`.
pub fn move_mount(mnt: &OwnedFd, target: &Path) -> io::Result<()> {
    let t = cpath(target)?;
    let empty = c"";
    // SAFETY: valid C strings.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
}

/// The outcome of [`wait_clone_child`].
pub enum ChildEnd {
    Exited(i32),
    Signaled(i32),
    TimedOut,
}

/// Fork a child with `flags` (CLONE_NEWUSER, ...) whose exit raises no SIGCHLD. The reaper's
/// `waitpid(-1)` only collects children that signal SIGCHLD, so such a "clone child" can never
/// have its status stolen: only [`wait_clone_child`] (`__WCLONE`) collects it. The child runs
/// `child` and must only make async-signal-safe calls (the shim may have threads); if it
/// returns, the child exits 127. It must not exec: execve turns it back into a SIGCHLD child.
///
/// # Safety
/// `child` must be async-signal-safe: raw syscalls only, no allocation, no locks.
pub unsafe fn clone_child(flags: libc::c_ulong, child: impl FnOnce()) -> io::Result<i32> {
    // A NULL stack makes clone behave as fork: the child runs on a copy of our stack.
    let pid = libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize);
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            child();
            libc::_exit(127)
        }
        pid => Ok(pid as i32),
    }
}

/// Wait up to `limit` for a child started by [`clone_child`]; kill it when the limit passes.
pub fn wait_clone_child(pid: i32, limit: std::time::Duration) -> io::Result<ChildEnd> {
    let start = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(1);
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own clone child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WCLONE | libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(ChildEnd::Exited(libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(ChildEnd::Signaled(libc::WTERMSIG(status)));
            }
            continue;
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if start.elapsed() >= limit {
            // SAFETY: the pid is our unreaped child, so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: as above; blocking wait after SIGKILL returns promptly.
            unsafe { libc::waitpid(pid, &mut status, libc::__WCLONE) };
            return Ok(ChildEnd::TimedOut);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The property the reaper relies on: a wait without __WCLONE (what `waitpid(-1)` does)
    /// does not see a clone child, even once it has exited; only `wait_clone_child` collects it.
    #[test]
    fn clone_child_is_invisible_to_a_plain_wait() {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { clone_child(0, || libc::_exit(7)) }.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut status = 0;
        // SAFETY: plain waitpid on a pid we own.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert_eq!(r, -1, "a plain wait saw the clone child");
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ECHILD));
        match wait_clone_child(pid, std::time::Duration::from_secs(10)).unwrap() {
            ChildEnd::Exited(7) => {}
            _ => panic!("clone child did not exit 7"),
        }
    }
}
