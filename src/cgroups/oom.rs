//! OOM notifications, event driven on the caller's tokio runtime: a v1 eventfd through
//! `cgroup.event_control`, v2 inotify on `memory.events`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::files::*;
use super::Cgroup;
use crate::error::{Error, Result};

/// Watch for OOM kills in `cg`, calling `on_oom()` once per OOM notification, until the cgroup
/// goes away (v1: the memory cgroup is removed; v2: memory.events disappears or the cgroup is no
/// longer populated). Setup failures are logged and the function returns. Idle cost: one fd
/// registered with the runtime's reactor. Dropping the future stops watching (the fds close,
/// which also unregisters the v1 event in the kernel).
pub async fn watch_oom(cg: Cgroup, on_oom: impl Fn() + Send + 'static) {
    match OomWatcher::new(&cg) {
        Ok(w) => w.run(on_oom).await,
        Err(e) => log::warn!("cannot watch for OOM in {cg:?}: {e}"),
    }
}

/// An OOM watcher whose setup (registration, baseline read) is done synchronously by `new`, so
/// no OOM between `new` and the first poll of `run` is lost. `new` must be called inside a tokio
/// runtime with IO enabled.
pub struct OomWatcher {
    kind: WatchKind,
}

enum WatchKind {
    V1 {
        efd: AsyncFd<EventFd>,
        dir: PathBuf,
    },
    V2 {
        ino: AsyncFd<InotifyFd>,
        dir: PathBuf,
        events_wd: WatchDescriptor,
        cgroup_events: bool,
        last: u64,
    },
}

/// nix's Inotify has AsFd but not AsRawFd, which AsyncFd wants.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl OomWatcher {
    pub fn new(cg: &Cgroup) -> Result<OomWatcher> {
        let dir = cg
            .memory_path()
            .ok_or_else(|| Error::NotFound("no memory cgroup to watch for OOM".into()))?
            .to_path_buf();
        ensure_dir(&dir)?;
        let kind = match cg {
            Cgroup::V1 { .. } => {
                let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
                let oc_path = dir.join("memory.oom_control");
                let oc = File::open(&oc_path)
                    .map_err(|e| Error::io(format!("open {}", oc_path.display()), e))?;
                let ec_path = dir.join("cgroup.event_control");
                // The kernel keeps its own references; oom_control may close right after.
                std::fs::write(&ec_path, format!("{} {}", efd.as_raw_fd(), oc.as_raw_fd()))
                    .map_err(|e| Error::io(format!("write {}", ec_path.display()), e))?;
                drop(oc);
                // SAFETY: the AsyncFd owns the EventFd, whose fd stays open and unchanged until
                // the AsyncFd drops it.
                let efd = unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE) }
                    .map_err(|e| Error::io("register eventfd", e.into_parts().1))?;
                WatchKind::V1 { efd, dir }
            }
            Cgroup::V2 { .. } => {
                let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
                let events = dir.join("memory.events");
                let events_wd = ino
                    .add_watch(&events, AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF)
                    .map_err(|e| match e {
                        nix::Error::ENOENT => Error::NotFound(format!(
                            "{} does not exist (memory controller not enabled?)",
                            events.display()
                        )),
                        e => Error::io(format!("inotify {}", events.display()), e.into()),
                    })?;
                // cgroup.events tells when the last process left ("populated 0").
                let cgroup_events =
                    ino.add_watch(&dir.join("cgroup.events"), AddWatchFlags::IN_MODIFY).is_ok();
                // Baseline after the watch is in place, so no increase can slip between.
                let last = read_oom_kill(&events).ok().flatten().unwrap_or(0);
                // SAFETY: as above, the AsyncFd owns the inotify fd.
                let ino =
                    unsafe { AsyncFd::register_with_interest(InotifyFd(ino), Interest::READABLE) }
                        .map_err(|e| Error::io("register inotify", e.into_parts().1))?;
                WatchKind::V2 { ino, dir, events_wd, cgroup_events, last }
            }
        };
        Ok(OomWatcher { kind })
    }

    pub async fn run(self, on_oom: impl Fn()) {
        match self.kind {
            WatchKind::V1 { efd, dir } => run_v1(efd, &dir, on_oom).await,
            WatchKind::V2 { ino, dir, events_wd, cgroup_events, last } => {
                run_v2(ino, &dir, events_wd, cgroup_events, last, on_oom).await
            }
        }
    }
}

async fn run_v1(efd: AsyncFd<EventFd>, dir: &Path, on_oom: impl Fn()) {
    loop {
        let mut guard = match efd.readable().await {
            Ok(g) => g,
            Err(e) => {
                log::warn!("oom watch {}: {e}", dir.display());
                return;
            }
        };
        match guard.try_io(|fd| fd.get_ref().read().map_err(io::Error::from)) {
            Ok(Ok(_count)) => {
                // The kernel also signals the eventfd when the cgroup is removed.
                if !dir.exists() {
                    log::debug!("oom watch {}: cgroup removed", dir.display());
                    return;
                }
                on_oom();
            }
            Ok(Err(e)) => {
                log::warn!("oom watch {}: read eventfd: {e}", dir.display());
                return;
            }
            Err(_would_block) => continue,
        }
    }
}

async fn run_v2(
    ino: AsyncFd<InotifyFd>,
    dir: &Path,
    events_wd: WatchDescriptor,
    cgroup_events: bool,
    mut last: u64,
    on_oom: impl Fn(),
) {
    let events = dir.join("memory.events");
    if cgroup_events && populated(dir) == Some(false) {
        log::debug!("oom watch {}: cgroup has no processes", dir.display());
        return;
    }
    loop {
        let mut guard = match ino.readable().await {
            Ok(g) => g,
            Err(e) => {
                log::warn!("oom watch {}: {e}", dir.display());
                return;
            }
        };
        let evs = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
            Ok(Ok(evs)) => evs,
            Ok(Err(e)) => {
                log::warn!("oom watch {}: read inotify: {e}", dir.display());
                return;
            }
            Err(_would_block) => continue,
        };
        let gone = evs.iter().any(|e| {
            e.wd == events_wd
                && e.mask.intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF)
        });
        match read_oom_kill(&events) {
            Ok(Some(n)) if n > last => {
                last = n;
                on_oom();
            }
            Ok(_) => {}
            Err(e) => {
                // A removed cgroup answers ENOENT from open, or ENODEV from read.
                if e.kind() != io::ErrorKind::NotFound && e.raw_os_error() != Some(libc::ENODEV) {
                    log::warn!("oom watch {}: {e}", events.display());
                }
                return;
            }
        }
        if gone || (cgroup_events && populated(dir) == Some(false)) {
            log::debug!("oom watch {}: cgroup gone or empty", dir.display());
            return;
        }
    }
}

/// The `oom_kill` counter of a memory.events file (None if the file has no such line, e.g.
/// while it is being rewritten).
fn read_oom_kill(events: &Path) -> io::Result<Option<u64>> {
    let s = std::fs::read_to_string(events)?;
    Ok(parse_kv(&s).get("oom_kill").copied())
}

fn populated(dir: &Path) -> Option<bool> {
    read_kv(dir, "cgroup.events")?.get("populated").map(|v| *v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::testutil::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn watch_oom_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let f = watch_oom(Cgroup::V2 { path: PathBuf::from("/nonexistent") }, || {});
        is_send(&f);
    }

    async fn wait_count(n: &AtomicUsize, want: usize) -> bool {
        for _ in 0..200 {
            if n.load(Ordering::SeqCst) >= want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn watch_oom_v2_fake_files() {
        let t = TempDir::new("oom2");
        let d = t.sub("c", &[("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")]);
        let cg = Cgroup::V2 { path: d.clone() };
        let fired = Arc::new(AtomicUsize::new(0));
        let f2 = fired.clone();
        let w = OomWatcher::new(&cg).unwrap();
        let task = tokio::spawn(w.run(move || {
            f2.fetch_add(1, Ordering::SeqCst);
        }));

        // A change that is not an OOM kill: nothing.
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 5\noom 0\noom_kill 0\n")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 0);

        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 6\noom 1\noom_kill 1\n")
            .unwrap();
        assert!(wait_count(&fired, 1).await, "on_oom not called");
        // Same counter again (another field changed): no second call.
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        assert!(!task.is_finished());

        // The cgroup goes away: the watcher returns.
        std::fs::remove_dir_all(&d).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("watcher did not end")
            .unwrap();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn watch_oom_v2_ends_when_unpopulated() {
        let t = TempDir::new("oom2p");
        let d = t.sub(
            "c",
            &[("memory.events", "oom_kill 0\n"), ("cgroup.events", "populated 1\nfrozen 0\n")],
        );
        let fired = Arc::new(AtomicUsize::new(0));
        let f2 = fired.clone();
        let w = OomWatcher::new(&Cgroup::V2 { path: d.clone() }).unwrap();
        let task = tokio::spawn(w.run(move || {
            f2.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        // The kill and the last process leaving: on_oom, then the end.
        std::fs::write(d.join("memory.events"), "oom_kill 1\n").unwrap();
        std::fs::write(d.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("watcher did not end")
            .unwrap();
        assert_eq!(fired.load(Ordering::SeqCst), 1);

        // Already empty at the start: returns at once. No memory.events: setup fails (NotFound).
        tokio::time::timeout(
            Duration::from_secs(5),
            watch_oom(Cgroup::V2 { path: d.clone() }, || panic!()),
        )
        .await
        .unwrap();
        let none = t.sub("nomem", &[]);
        assert!(matches!(OomWatcher::new(&Cgroup::V2 { path: none }), Err(Error::NotFound(_))));
        assert!(matches!(
            OomWatcher::new(&Cgroup::V1 { paths: HashMap::new() }),
            Err(Error::NotFound(_))
        ));
    }

    /// The real v1 path: needs root and a v1 memory controller at /sys/fs/cgroup/memory.
    #[tokio::test]
    async fn watch_oom_v1_real() {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !nix::unistd::geteuid().is_root() || !root.join("cgroup.event_control").exists() {
            crate::testing::print_skip(&format!("needs root and a cgroup v1 memory controller at {}", root.display()));
            return;
        }
        let dir = root.join(format!("rustshim-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            crate::testing::print_skip(&format!("cannot create {}: {e}", dir.display()));
            return;
        }
        struct Rmdir(PathBuf);
        impl Drop for Rmdir {
            fn drop(&mut self) {
                for _ in 0..50 {
                    if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                eprintln!("could not remove {}", self.0.display());
            }
        }
        let guard = Rmdir(dir.clone());
        let limit = (32u64 << 20).to_string();
        std::fs::write(dir.join("memory.limit_in_bytes"), &limit).unwrap();
        if dir.join("memory.memsw.limit_in_bytes").exists() {
            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &limit);
        }

        let cg = Cgroup::V1 { paths: HashMap::from([("memory".to_string(), dir.clone())]) };
        let fired = Arc::new(AtomicUsize::new(0));
        let f2 = fired.clone();
        let w = OomWatcher::new(&cg).unwrap();
        let task = tokio::spawn(w.run(move || {
            f2.fetch_add(1, Ordering::SeqCst);
        }));

        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && x=$(head -c 200M /dev/zero | tr '\0' a); echo survived"#)
            .arg("sh")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ok = wait_count(&fired, 1).await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "no OOM notification from the v1 eventfd");
        // The stats see it too.
        let m = decode_v1(&cg.stats().unwrap());
        assert!(m.memory_oom_control.oom_kill >= 1 || m.memory.usage.failcnt > 0);

        // Removing the cgroup ends the watcher (the kernel signals the eventfd on removal).
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("watcher did not end")
            .unwrap();
        assert!(!dir.exists());
    }
}

/// Which limit an OOM kill in `cg` hit, for the log line: the container's own memory limit, a
/// parent's (the pod's, on Kubernetes), or none (the whole host ran out). TaskOOM carries only
/// the container id, so this is said in the log.
///
/// v1: a charge that fails counts in `memory.failcnt` of the cgroup whose limit it hit, so the
/// nearest cgroup (the container's, then each parent's) with failures is the one. v2: the
/// `oom` count of `memory.events` counts the OOMs of a cgroup's subtree, so the container's
/// own count says whether it (or a child of it) hit its limit, a parent's otherwise.
pub fn oom_cause(cg: &Cgroup) -> String {
    let Some(dir) = cg.memory_path() else { return "no memory cgroup known".into() };
    let v2 = matches!(cg, Cgroup::V2 { .. });
    let hit = |d: &Path| -> Option<u64> {
        if v2 {
            read_kv(d, "memory.events")?.get("oom").copied().filter(|n| *n > 0)
        } else {
            read_u64(d, "memory.failcnt", 0).filter(|n| *n > 0)
        }
    };
    let limit = |d: &Path| -> Option<u64> {
        let l = if v2 { read_u64(d, "memory.max", u64::MAX)? } else { read_u64(d, "memory.limit_in_bytes", 0)? };
        // v1 writes "unlimited" as the largest page-aligned i64.
        (l < (1 << 62)).then_some(l)
    };
    if hit(dir).is_some() {
        return match limit(dir) {
            Some(l) => format!("the container's own memory limit ({l} bytes) was hit"),
            None => "the container's own memory cgroup hit a limit".into(),
        };
    }
    let mut d = dir.parent();
    while let Some(p) = d {
        if !p.join(if v2 { "memory.events" } else { "memory.failcnt" }).exists() {
            break;
        }
        if let (Some(_), Some(l)) = (hit(p), limit(p)) {
            return format!("a parent's memory limit ({l} bytes, {}) was hit, not the container's own", p.display());
        }
        d = p.parent();
    }
    "no cgroup memory limit was hit: the host ran out of memory".into()
}

#[cfg(test)]
mod cause_tests {
    use super::*;
    use crate::cgroups::testutil::TempDir;

    #[test]
    fn own_parent_or_host_v1() {
        let t = TempDir::new("oomcause1");
        let unlimited = "9223372036854771712";
        t.sub("pod", &[("memory.failcnt", "0"), ("memory.limit_in_bytes", "104857600")]);
        let c = t.sub("pod/c1", &[("memory.failcnt", "3"), ("memory.limit_in_bytes", "20971520")]);
        let cg = |d: &Path| Cgroup::V1 { paths: [("memory".to_string(), d.to_path_buf())].into() };
        assert!(oom_cause(&cg(&c)).contains("own memory limit (20971520 bytes)"), "{}", oom_cause(&cg(&c)));
        // the pod's limit: the container's own count stays 0, the pod's grows
        let c2 = t.sub("pod/c2", &[("memory.failcnt", "0"), ("memory.limit_in_bytes", unlimited)]);
        std::fs::write(t.0.join("pod/memory.failcnt"), "5").unwrap();
        let s = oom_cause(&cg(&c2));
        assert!(s.contains("parent's memory limit (104857600 bytes") && s.contains("pod"), "{s}");
        // nobody's: the host
        std::fs::write(t.0.join("pod/memory.failcnt"), "0").unwrap();
        assert!(oom_cause(&cg(&c2)).contains("host ran out"));
    }

    #[test]
    fn own_or_parent_v2() {
        let t = TempDir::new("oomcause2");
        t.sub("pod", &[("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"), ("memory.max", "104857600")]);
        let c = t.sub("pod/c1", &[("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 1\n"), ("memory.max", "max")]);
        let s = oom_cause(&Cgroup::V2 { path: c.clone() });
        assert!(s.contains("parent's memory limit (104857600 bytes"), "{s}");
        std::fs::write(c.join("memory.events"), "max 2\noom 1\noom_kill 1\n").unwrap();
        std::fs::write(c.join("memory.max"), "20971520").unwrap();
        assert!(oom_cause(&Cgroup::V2 { path: c }).contains("own memory limit (20971520 bytes)"));
    }
}
