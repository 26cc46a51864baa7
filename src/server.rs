//! The daemon: subreaper, event forwarder, reaper and the ttrpc Task server, on one thread.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::shim_async::create_task;

use crate::events::Publisher;
use nix::sys::signal::Signal;

use crate::reaper::{self, ExitSink, Reaper};
use crate::runtime::RuncFactory;
use crate::signals::{self, Signals};
use crate::supervisor::Supervisor;
use crate::task_service::TaskService;

pub struct Config {
    pub namespace: String,
    pub ttrpc_address: String,
    /// The listening socket inherited from `start`.
    pub listener_fd: RawFd,
    /// Its path, removed when the shim exits.
    pub socket_path: Option<String>,
}

/// Serve until Shutdown finds nothing left, or SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<(), String> {
    // Before anything is spawned, so no SIGCHLD is missed (the signals are blocked already).
    let signals = Signals::new().map_err(|e| format!("signalfd: {e}"))?;
    let reaper = Arc::new(Reaper::default());
    let (publisher, forwarder) = Publisher::new(cfg.ttrpc_address.clone(), cfg.namespace.clone());
    tokio::spawn(forwarder);
    let runtimes = Arc::new(RuncFactory(reaper.clone()));
    let sup = Supervisor::new(publisher.clone(), reaper.clone(), runtimes, cfg.namespace.clone());
    let (other_tx, mut other_signals) = tokio::sync::mpsc::unbounded_channel();
    let mut reaping = tokio::spawn(reaper.clone().run(signals, sup.clone() as Arc<dyn ExitSink>, other_tx));

    let service = Arc::new(TaskService::new(sup.clone()));
    let mut services = create_task(service.clone());
    // containerd 1.6/1.7 call task.v2, 2.x calls task.v3: the same service under both names.
    for (name, svc) in create_task(service) {
        services.insert(name.replace(".v3.", ".v2."), svc);
    }
    // SAFETY: the fd was handed to us by `start` as our listening socket and nothing else owns it.
    let mut server = unsafe { ttrpc::asynchronous::Server::new().add_unix_listener(cfg.listener_fd) }
        .map_err(|e| format!("listen on inherited socket: {e}"))?
        .register_service(services);
    server.start().await.map_err(|e| format!("start ttrpc server: {e}"))?;
    log::info!("serving on {}", cfg.socket_path.as_deref().unwrap_or("inherited socket"));

    let idle_limit = crate::idle::limit();
    let fatal = loop {
        // The leaked-shim check runs only while no process lives: a busy shim never wakes for it.
        let check = idle_limit.filter(|_| sup.idle_facts().live_processes == 0).map(crate::idle::check_every);
        tokio::select! {
            _ = sup.shutdown.notified() => break None,
            _ = sup.changed.notified() => {}
            _ = tokio::time::sleep(check.unwrap_or_default()), if check.is_some() => {
                let limit = idle_limit.unwrap_or_default();
                match crate::idle::verdict(&sup.idle_facts(), limit) {
                    Ok(()) => {
                        log::warn!(
                            "exiting: no live process, no bundle, no undelivered exit, and no call from containerd for {}s (a shim containerd lost track of)",
                            limit.as_secs()
                        );
                        break None;
                    }
                    Err(why) => log::debug!("leaked-shim check: staying ({why})"),
                }
            }
            sig = other_signals.recv() => match sig {
                Some(Signal::SIGTERM | Signal::SIGINT) => {
                    log::info!("SIGTERM/SIGINT: shutting down");
                    break None;
                }
                Some(Signal::SIGUSR1) => sup.dump().iter().for_each(|l| log::info!("{l}")),
                Some(sig) => log::debug!("signal {sig} ignored"),
                None => {}
            },
            r = &mut reaping => {
                // Without the reaper no exit is ever seen again: every Wait would hang. Better
                // to die loudly, so containerd cleans up, than to serve a lie.
                let e = r.map_or_else(|e| format!("reaper task: {e}"), |e| format!("reading signals: {e}"));
                log::error!("reaper stopped: {e}");
                break Some(e);
            }
        }
    };
    // Let the Shutdown reply go out, then stop serving: containerd waits for the connection to
    // close. The socket goes before the events are flushed, so nobody dials a shim that is done.
    tokio::task::yield_now().await;
    if let Some(path) = &cfg.socket_path {
        let _ = std::fs::remove_file(crate::bootstrap::socket_path(path));
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), server.shutdown()).await;
    let window = crate::events::flush_window();
    if !publisher.flush(window).await {
        log::error!("events still undelivered after {}s: giving up", window.as_secs());
    }
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Process-wide setup that must happen before the runtime's thread exists.
pub fn prepare_process() -> std::io::Result<()> {
    reaper::set_subreaper()?;
    close_inherited_fds();
    // Before the runtime's threads exist, so every thread has the handled signals blocked and
    // they reach only the signalfd.
    signals::block()?;
    // A shim outlives containerd: a dead reader on a FIFO or socket must be an error, not death.
    // SAFETY: setting signal dispositions to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    Ok(())
}

/// Close every fd above the listener that containerd's environment leaked to us (fds without
/// CLOEXEC in containerd or its parent), so none can reach a container.
fn close_inherited_fds() {
    let first = crate::bootstrap::LISTENER_FD as u32 + 1;
    // SAFETY: no other thread exists yet, and nothing in this process owns these fds.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|fd| *fd >= first as i32) {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
}
