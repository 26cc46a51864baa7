//! Zero-copy output: the container's pipe is spliced straight into a FIFO or a `file://` log,
//! without passing through a buffer of the shim's (splice(2) moves pipe pages). Where splice
//! does not apply (a pty, or a kernel that refuses), the caller copies with read/write.
//!
//! Readiness with splice needs care: EAGAIN can mean "source empty" or "destination full", and
//! tokio's readiness may only be cleared for the side that really is not ready, or the copy
//! would wait for an event that never comes. Each side is asked with a zero-timeout poll(2).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use std::sync::Arc;

use tokio::net::unix::pipe;

use super::FileLog;

/// As much as a pipe can hold at once, and then some: splice moves what is there.
const CHUNK: usize = 1 << 20;

/// How a splice copy ended.
pub enum Ended {
    /// The source reached EOF (the container closed its end).
    Eof,
    /// splice is not possible between these two: copy with read/write instead.
    Unsupported,
    /// An error of either side (the reader of a FIFO gone for good, a full disk).
    Failed(std::io::Error),
}

fn splice_once(from: RawFd, to: RawFd) -> std::io::Result<usize> {
    // SAFETY: two valid fds, no offsets (both are streams, or a file in append mode).
    let n = unsafe {
        libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), CHUNK, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Is `fd` ready for `events` right now (poll with a zero timeout)?
fn ready_now(fd: BorrowedFd<'_>, events: libc::c_short) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (events | libc::POLLHUP | libc::POLLERR) != 0
}

/// How long a file job waits for more output before it hands the pipe back to the reactor.
const STREAM_WAIT_MS: libc::c_int = 20;

/// Wait up to `ms` for `fd` to become readable (or hang up).
fn wait_readable(fd: RawFd, ms: libc::c_int) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP))
}

enum Step {
    Moved,
    Eof,
    DestinationFull,
    /// EAGAIN, but both sides look ready now (the reader made room meanwhile): try again.
    Again,
}

/// Splice `from` into a pipe or FIFO until EOF.
pub async fn to_pipe(from: &pipe::Receiver, to: &pipe::Sender) -> Ended {
    let (in_fd, out_fd) = (from.as_raw_fd(), to.as_raw_fd());
    loop {
        if let Err(e) = from.readable().await {
            return Ended::Failed(e);
        }
        let step = from.try_io(|| match splice_once(in_fd, out_fd) {
            Ok(0) => Ok(Step::Eof),
            Ok(_) => Ok(Step::Moved),
            // Only a source that is empty *now* may have its readiness cleared: if the
            // destination was full and its reader made room since, the source still holds data,
            // no new edge will come for it, and its writer may be blocked on it.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !ready_now(to.as_fd(), libc::POLLOUT) {
                    Ok(Step::DestinationFull)
                } else if ready_now(from.as_fd(), libc::POLLIN) {
                    Ok(Step::Again)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        });
        match step {
            Ok(Step::Moved | Step::Again) => {}
            Ok(Step::Eof) => return Ended::Eof,
            Ok(Step::DestinationFull) => {
                // Wait until the reader made room; clear the destination's readiness only
                // while it really is full.
                loop {
                    if let Err(e) = to.writable().await {
                        return Ended::Failed(e);
                    }
                    match to.try_io(|| {
                        if ready_now(to.as_fd(), libc::POLLOUT) {
                            Ok(())
                        } else {
                            Err(std::io::ErrorKind::WouldBlock.into())
                        }
                    }) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Ended::Failed(e),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if unsupported(&e) => return Ended::Unsupported,
            Err(e) => return Ended::Failed(e),
        }
    }
}

/// Splice `from` into a `file://` log until EOF. A write to a file can block (a slow disk), so
/// each burst runs on the blocking pool; the reactor only waits for the pipe.
pub async fn to_file(from: &pipe::Receiver, log: Arc<FileLog>) -> Ended {
    let in_fd = from.as_raw_fd();
    loop {
        if let Err(e) = from.readable().await {
            return Ended::Failed(e);
        }
        // The pipe outlives the job: this future owns it and waits for the job.
        let log = log.clone();
        let burst = tokio::task::spawn_blocking(move || {
            let file = log.at_end()?;
            let out_fd = file.as_raw_fd();
            loop {
                match splice_once(in_fd, out_fd) {
                    Ok(0) => return Ok(true),
                    Ok(_) => {}
                    // Drained: while output keeps coming, wait for it here a moment rather than
                    // hand back to the reactor and start a new job for every pipeful.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if !wait_readable(in_fd, STREAM_WAIT_MS) {
                            return Ok(false);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match burst {
            Ok(Ok(true)) => return Ended::Eof,
            Ok(Ok(false)) => {}
            Ok(Err(e)) if unsupported(&e) => return Ended::Unsupported,
            Ok(Err(e)) => return Ended::Failed(e),
            Err(e) => return Ended::Failed(std::io::Error::other(e)),
        }
        // Drained: clear the pipe's readiness, unless data came in meanwhile.
        let _ = from.try_io(|| {
            if ready_now(from.as_fd(), libc::POLLIN) {
                Ok(())
            } else {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::fd::OwnedFd;

    fn pipe_pair() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    /// A writer thread pushing `total` bytes of a known pattern into `w`.
    fn writer(w: OwnedFd, total: usize) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            let block: Vec<u8> = (0..65_521u32).map(|i| (i % 251) as u8).collect();
            let mut left = total;
            while left > 0 {
                let n = left.min(block.len());
                std::io::Write::write_all(&mut f, &block[..n]).unwrap();
                left -= n;
            }
        })
    }

    fn check_pattern(data: &[u8], total: usize) {
        assert_eq!(data.len(), total);
        for (i, chunk) in data.chunks(65_521).enumerate() {
            for (j, b) in chunk.iter().enumerate() {
                assert_eq!(*b, (j as u32 % 251) as u8, "byte {} of chunk {i}", j);
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipe_to_pipe_through_a_slow_reader_loses_nothing() {
        let total = 8 << 20;
        let (src_r, src_w) = pipe_pair();
        let (dst_r, dst_w) = pipe_pair();
        let from = pipe::Receiver::from_owned_fd(src_r).unwrap();
        let to = pipe::Sender::from_owned_fd(dst_w).unwrap();
        let w = writer(src_w, total);
        // a reader slower than the writer: the destination fills up again and again
        let reader = std::thread::spawn(move || {
            let mut f = std::fs::File::from(dst_r);
            let mut out = Vec::new();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    return out;
                }
                out.extend_from_slice(&buf[..n]);
                if out.len() % (1 << 20) < 4096 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        });
        assert!(matches!(to_pipe(&from, &to).await, Ended::Eof));
        drop(to);
        w.join().unwrap();
        check_pattern(&reader.join().unwrap(), total);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipe_to_file_appends_everything() {
        let total = 4 << 20;
        let path = std::env::temp_dir().join(format!("rs-splice-{}", std::process::id()));
        std::fs::write(&path, b"head\n").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let log = Arc::new(FileLog { file: std::sync::Mutex::new(file) });
        let (src_r, src_w) = pipe_pair();
        let from = pipe::Receiver::from_owned_fd(src_r).unwrap();
        let w = writer(src_w, total);
        assert!(matches!(to_file(&from, log).await, Ended::Eof));
        w.join().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..5], b"head\n", "appended after what was there");
        check_pattern(&data[5..], total);
        std::fs::remove_file(&path).unwrap();
    }
}
