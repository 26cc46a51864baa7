//! The `loop` option: attach the source file to a free loop device and mount the device, as
//! containerd's `setupLoop`. The device is set to autoclear, so the kernel detaches it when its
//! last user (the mount) goes away: unmounting the rootfs is all the cleanup there is.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. Keep it open until the mount holds the device; dropping it then
/// leaves the autoclear to the kernel.
pub struct LoopDevice {
    pub path: PathBuf,
    file: File,
}

impl LoopDevice {
    /// Detach now (for a mount that failed): autoclear only acts once the device was opened
    /// by a mount, and a failed mount may never have.
    pub fn detach(self) {
        // SAFETY: ioctl without argument on our own fd.
        unsafe { libc::ioctl(self.file.as_raw_fd(), LOOP_CLR_FD, 0) };
    }
}

fn info(backing: &Path, flags: u32) -> LoopInfo64 {
    let mut name = [0u8; 64];
    let b = backing.as_os_str().as_encoded_bytes();
    let n = b.len().min(63);
    name[..n].copy_from_slice(&b[..n]);
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: flags,
        lo_file_name: name,
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

/// Attach `backing` to a free loop device.
pub fn attach(backing: &Path, readonly: bool, direct_io: bool) -> Result<LoopDevice> {
    let ctx = |what: &str| format!("loop device for {}: {what}", backing.display());
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(libc::O_CLOEXEC | if direct_io { libc::O_DIRECT } else { 0 })
        .open(backing)
        .map_err(|e| Error::io(ctx("open the backing file"), e))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| Error::io(ctx("open /dev/loop-control"), e))?;
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if readonly {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    // Another process may take the device GET_FREE named before we configure it: retry.
    let mut last = None;
    for _ in 0..100 {
        // SAFETY: ioctl without argument.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(Error::io(ctx("find a free loop device"), std::io::Error::last_os_error()));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(Error::io(ctx(&format!("open {}", path.display())), e)),
        };
        let cfg = LoopConfig { fd: file.as_raw_fd() as u32, block_size: 0, info: info(backing, flags), reserved: [0; 8] };
        // SAFETY: cfg lives across the call and has the kernel's layout.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok(LoopDevice { path, file: dev });
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EBUSY) => {
                last = Some(e);
                continue;
            }
            // Kernels before 5.8: LOOP_SET_FD then LOOP_SET_STATUS64.
            Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                // SAFETY: plain ioctls with an fd / a struct that outlives the call.
                if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, file.as_raw_fd()) } < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EBUSY) {
                        last = Some(e);
                        continue;
                    }
                    return Err(Error::io(ctx(&format!("attach {}", path.display())), e));
                }
                let st = info(backing, flags);
                if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64, &st as *const LoopInfo64) } < 0 {
                    let e = std::io::Error::last_os_error();
                    unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
                    return Err(Error::io(ctx(&format!("set status of {}", path.display())), e));
                }
                return Ok(LoopDevice { path, file: dev });
            }
            _ => return Err(Error::io(ctx(&format!("configure {}", path.display())), e)),
        }
    }
    Err(Error::io(
        ctx("no free loop device after 100 tries"),
        last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EBUSY)),
    ))
}
