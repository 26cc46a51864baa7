//! Idmapped mounts (`uidmap=`/`gidmap=`): a user namespace built from the mappings, as
//! containerd's `GetUsernsFD`, and detached mounts idmapped through it.

use std::io::Write as _;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use super::options::{id_map_text, parse_id_map};
use super::sys;
use crate::error::{Error, Result};

/// A user namespace with the given mappings, held by an fd. The process that created it is
/// gone by the time this returns: the fd alone keeps the namespace alive.
pub fn userns_fd(uidmap: &str, gidmap: &str) -> Result<OwnedFd> {
    let uids = id_map_text(&parse_id_map("uidmap", uidmap)?);
    let gids = id_map_text(&parse_id_map("gidmap", gidmap)?);
    // SAFETY: the child only makes raw syscalls (prctl, getppid, pause, _exit).
    let pid = unsafe {
        sys::clone_child(libc::CLONE_NEWUSER as libc::c_ulong, || loop {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::pause();
        })
    }
    .map_err(|e| Error::io("create a user namespace for the idmapped mount", e))?;
    let result = (|| {
        let write = |file: &str, text: &str| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/{file}"))
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| Error::io(format!("write {file} {:?} of the idmap user namespace", text.trim()), e))
        };
        write("uid_map", &uids)?;
        write("gid_map", &gids)?;
        let p = sys::cpath(Path::new(&format!("/proc/{pid}/ns/user"))).map_err(|e| Error::io("ns path", e))?;
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("open the idmap user namespace", std::io::Error::last_os_error()));
        }
        // SAFETY: fresh fd from open.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })();
    // SAFETY: pid is our unreaped clone child, so it cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = sys::wait_clone_child(pid, Duration::from_secs(10));
    result
}

/// A detached, idmapped copy of the mount tree at `path` (not recursive: as containerd, a layer
/// directory's own submounts are not part of the layer).
pub fn idmapped_tree(path: &Path, userns: &OwnedFd) -> Result<OwnedFd> {
    let fd = sys::open_tree_clone(path, false).map_err(|e| Error::io(format!("open_tree {}", path.display()), e))?;
    sys::set_idmap(&fd, userns).map_err(|e| Error::io(format!("idmap {}", path.display()), e))?;
    Ok(fd)
}

/// Idmap what is mounted at `target`: an idmapped copy goes on top of it, as containerd's
/// `IDMapMount(target, target)`; unmount_all takes both off.
pub fn idmap_in_place(target: &Path, userns: &OwnedFd) -> Result<()> {
    let fd = idmapped_tree(target, userns)?;
    sys::move_mount(&fd, target).map_err(|e| Error::io(format!("attach idmapped {}", target.display()), e))
}
