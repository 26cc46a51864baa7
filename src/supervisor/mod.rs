//! The containers this shim serves, and what each RPC does to them.
//!
//! - `lifecycle.rs`: create, start, exec, delete, and the rollback of a failed create.
//! - `exits.rs`: exit routing: the reaper's exits to processes, exits of pids not yet known to
//!   the starts in flight, and when a TaskExit may be told.
//!
//! Locking: one short std Mutex over the container map, never held across an await, so a slow or
//! stuck runtime call blocks only the RPC that made it; the exit router has its own (taken after
//! the map's, never before).
//!
//! Cancellation: every RPC that changes something runs as a task of its own (`call::detached`),
//! so its bookkeeping always runs to the end; its caller going away only cancels the runtime
//! children it started. Every await in this module is inside such a task.

mod exits;
mod inspect;
mod lifecycle;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::types::mount::Mount;
use tokio::sync::Notify;

use crate::call::{self, Call};
use crate::cgroups::{self, Cgroup};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::events::{Event, Publisher};
use crate::options::ShimOptions;
use crate::process::{self, ExitInfo, State, Transition};
use crate::reaper::Reaper;
use crate::runtime::{CriuOpts, RuntimeFactory};
use crate::stdio::{ProcessIo, StdioPaths};
use exits::ExitRouter;

pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    /// A checkpoint image to restore from at Start, and its parent.
    pub checkpoint: String,
    pub parent_checkpoint: String,
    pub rootfs: Vec<Mount>,
    pub stdio: StdioPaths,
    pub options: ShimOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    pub id: String,
    pub bundle: String,
    pub pid: u32,
    pub status: State,
    pub container_paused: bool,
    pub stdio: StdioPaths,
    pub exit: Option<ExitInfo>,
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Container>,
    /// Ids held by a Create in flight, or by the rollback of one that failed.
    reserved: HashSet<String>,
    /// Shutdown came while a rollback still held an id: exit once it is done.
    shutdown_requested: bool,
}

impl Inner {
    fn container(&mut self, id: &str) -> Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not created")))
    }

    fn nothing_left(&self) -> bool {
        self.containers.is_empty() && self.reserved.is_empty()
    }
}

pub struct Supervisor {
    inner: Mutex<Inner>,
    router: Mutex<ExitRouter>,
    publisher: Publisher,
    reaper: Arc<Reaper>,
    runtimes: Arc<dyn RuntimeFactory>,
    namespace: String,
    /// Itself, for the tasks it starts (a kill after init's exit outlives the call that saw it).
    me: Weak<Supervisor>,
    /// Notified when Shutdown finds nothing left to serve.
    pub shutdown: Notify,
    /// When containerd last called (the leaked-shim check).
    last_call: Mutex<std::time::Instant>,
    /// Notified when a process exits or a container goes: the leaked-shim check looks again.
    pub changed: Notify,
}

/// An id reserved by a Create until its container is registered or its rollback is done.
struct Reservation {
    sup: Arc<Supervisor>,
    id: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut g = self.sup.lock();
        g.reserved.remove(&self.id);
        let exit_now = g.shutdown_requested && g.nothing_left();
        drop(g);
        if exit_now {
            log::info!("shutdown: the last rollback is done");
            self.sup.shutdown.notify_one();
        }
    }
}

impl Supervisor {
    pub fn new(
        publisher: Publisher,
        reaper: Arc<Reaper>,
        runtimes: Arc<dyn RuntimeFactory>,
        namespace: String,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Supervisor {
            inner: Mutex::default(),
            router: Mutex::default(),
            publisher,
            reaper,
            runtimes,
            namespace,
            me: me.clone(),
            shutdown: Notify::new(),
            last_call: Mutex::new(std::time::Instant::now()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn this(&self) -> Arc<Supervisor> {
        self.me.upgrade().expect("the supervisor outlives its calls")
    }

    fn reserve(&self, id: &str) -> Result<Reservation> {
        let mut g = self.lock();
        if g.containers.contains_key(id) || g.reserved.contains(id) {
            return Err(Error::AlreadyExists(format!("container {id:?} already exists")));
        }
        g.reserved.insert(id.to_string());
        Ok(Reservation { sup: self.this(), id: id.to_string() })
    }

    pub async fn create(&self, call: Call, req: CreateRequest) -> Result<u32> {
        let sup = self.this();
        call::detached(call, move |call| async move { sup.create_task(&call, req).await }).await
    }

    pub async fn start(&self, call: Call, id: &str, exec_id: &str) -> Result<u32> {
        let (sup, id, exec_id) = (self.this(), id.to_string(), exec_id.to_string());
        call::detached(call, move |call| async move {
            if exec_id.is_empty() {
                sup.start_init_task(&call, &id).await
            } else {
                sup.start_exec_task(&call, &id, &exec_id).await
            }
        })
        .await
    }

    pub async fn delete(&self, call: Call, id: &str, exec_id: &str) -> Result<(u32, u32, SystemTime)> {
        let (sup, id, exec_id) = (self.this(), id.to_string(), exec_id.to_string());
        call::detached(call, move |call| async move {
            if exec_id.is_empty() {
                sup.delete_init_task(&call, &id).await
            } else {
                sup.delete_exec_task(&id, &exec_id).await
            }
        })
        .await
    }

    pub fn add_exec(&self, id: &str, exec_id: &str, stdio: StdioPaths, spec: Vec<u8>) -> Result<()> {
        let mut value: serde_json::Value = serde_json::from_slice(&spec)
            .map_err(|e| Error::InvalidArgument(format!("exec {exec_id}: invalid process spec: {e}")))?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| Error::InvalidArgument(format!("exec {exec_id}: process spec is not an object")))?;
        obj.insert("terminal".into(), serde_json::Value::Bool(stdio.terminal));
        let spec = serde_json::to_vec(&value).map_err(|e| Error::Other(e.to_string()))?;
        let mut g = self.lock();
        let c = g.container(id)?;
        if c.execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("exec {exec_id:?} already exists in container {id}")));
        }
        if c.init.has_exited() || c.deleting {
            return Err(Error::FailedPrecondition(format!("container {id} has stopped: cannot add exec")));
        }
        let mut p = process::Process::new(stdio);
        p.spec = Some(spec);
        c.execs.insert(exec_id.to_string(), p);
        self.publisher.publish(Event::ExecAdded(ev::TaskExecAdded {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }));
        Ok(())
    }

    pub async fn kill(&self, call: Call, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let runtime = {
            let mut g = self.lock();
            let c = g.container(id)?;
            let p = c.process(exec_id)?;
            if p.has_exited() {
                return Err(Error::NotFound(format!("process {} already finished", p.pid)));
            }
            if !exec_id.is_empty() {
                if p.pid == 0 {
                    return Err(Error::FailedPrecondition(format!("exec {exec_id} has not started")));
                }
                let sig = nix::sys::signal::Signal::try_from(signal as i32)
                    .map_err(|_| Error::InvalidArgument(format!("invalid signal {signal}")))?;
                return match p.signal(sig as i32) {
                    Ok(()) => Ok(()),
                    Err(nix::errno::Errno::ESRCH) => {
                        Err(Error::NotFound(format!("process {} already finished", p.pid)))
                    }
                    Err(e) => Err(e.into()),
                };
            }
            c.runtime.clone()
        };
        let id = id.to_string();
        call::detached(call, move |call| async move { runtime.kill(&call, &id, signal, all).await }).await
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<ProcessState> {
        let mut g = self.lock();
        let c = g.container(id)?;
        let paused = c.init.state() == State::Paused;
        let p = c.process(exec_id)?;
        Ok(ProcessState {
            id: if exec_id.is_empty() { id.to_string() } else { exec_id.to_string() },
            bundle: c.bundle.display().to_string(),
            pid: p.pid,
            status: p.state(),
            container_paused: paused,
            stdio: p.stdio.clone(),
            exit: p.exit(),
        })
    }

    /// Returns when the exit is told (the same moment State says stopped and TaskExit is queued).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let rx = {
            let mut g = self.lock();
            g.container(id)?.process(exec_id)?.subscribe_exit()
        };
        Ok(process::wait_exit(rx).await)
    }

    fn io(&self, id: &str, exec_id: &str) -> Result<Option<Arc<ProcessIo>>> {
        let mut g = self.lock();
        Ok(g.container(id)?.process(exec_id)?.io.clone())
    }

    pub fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        if let Some(io) = self.io(id, exec_id)? {
            io.close_stdin();
        }
        Ok(())
    }

    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        match self.io(id, exec_id)?.as_ref().and_then(|io| io.console()) {
            Some(console) => console.resize(width, height),
            None => Ok(()),
        }
    }

    pub async fn pids(&self, call: Call, id: &str) -> Result<Vec<(u32, Option<String>)>> {
        let runtime = self.lock().container(id)?.runtime.clone();
        let cid = id.to_string();
        let pids = call::detached(call, move |call| async move { runtime.ps(&call, &cid).await }).await?;
        let mut g = self.lock();
        let c = g.container(id)?;
        Ok(pids
            .into_iter()
            .map(|pid| {
                let exec = c.execs.iter().find(|(_, p)| p.pid == pid).map(|(id, _)| id.clone());
                (pid, exec)
            })
            .collect())
    }

    pub async fn pause(&self, call: Call, id: &str, pause: bool) -> Result<()> {
        let (sup, id) = (self.this(), id.to_string());
        call::detached(call, move |call| async move { sup.pause_task(&call, &id, pause).await }).await
    }

    async fn pause_task(&self, call: &Call, id: &str, pause: bool) -> Result<()> {
        let t = if pause { Transition::Pause } else { Transition::Resume };
        let runtime = {
            let mut g = self.lock();
            let c = g.container(id)?;
            c.init.state().apply(t)?;
            c.runtime.clone()
        };
        if pause {
            runtime.pause(call, id).await?;
        } else {
            runtime.resume(call, id).await?;
        }
        let mut g = self.lock();
        let c = g.container(id)?;
        let _ = c.init.transition(t); // unless init's exit was told meanwhile
        let container_id = id.to_string();
        self.publisher.publish(if pause {
            Event::Paused(ev::TaskPaused { container_id, ..Default::default() })
        } else {
            Event::Resumed(ev::TaskResumed { container_id, ..Default::default() })
        });
        Ok(())
    }

    /// `image_path` empty means the runtime option CriuImagePath.
    pub async fn checkpoint(&self, call: Call, id: &str, mut criu: CriuOpts, exit: bool) -> Result<()> {
        let runtime = {
            let mut g = self.lock();
            let c = g.container(id)?;
            // A paused container can be checkpointed too (containerd's client pauses a task
            // around its checkpoints); it stays paused, as with the Go shim.
            match c.init.state() {
                _ if c.init.has_exited() => {
                    return Err(Error::FailedPrecondition(format!("container {id} is not running: cannot checkpoint it")))
                }
                State::Running | State::Paused => {}
                State::Created => {
                    return Err(Error::FailedPrecondition(format!("container {id} is not started: cannot checkpoint it")))
                }
                _ => return Err(Error::FailedPrecondition(format!("container {id} is not running: cannot checkpoint it"))),
            }
            if criu.image_path.as_os_str().is_empty() {
                criu.image_path = PathBuf::from(&c.options.criu_image_path);
            }
            if criu.image_path.as_os_str().is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint of {id}: no image path (neither the request's path, the options' image_path nor CriuImagePath)"
                )));
            }
            if criu.work_path.as_os_str().is_empty() {
                criu.work_path = lifecycle::criu_work_path(&c.bundle, &c.options);
            }
            c.runtime.clone()
        };
        let id = id.to_string();
        call::detached(call, move |call| async move { runtime.checkpoint(&call, &id, &criu, !exit).await }).await
    }

    pub async fn update(&self, call: Call, id: &str, resources: Vec<u8>) -> Result<()> {
        let runtime = self.lock().container(id)?.runtime.clone();
        let id = id.to_string();
        call::detached(call, move |call| async move { runtime.update(&call, &id, resources).await }).await
    }

    pub fn stats(&self, id: &str) -> Result<Any> {
        let cg = self
            .lock()
            .container(id)?
            .cgroup
            .clone()
            .ok_or_else(|| Error::NotFound(format!("container {id} has no cgroup")))?;
        cg.stats()
    }

    /// Find init's cgroup (for Stats) and watch it for OOM kills.
    fn watch_cgroup(&self, c: &mut Container) {
        if c.init.pid == 0 || c.init.has_exited() {
            return;
        }
        match Cgroup::for_pid(c.init.pid) {
            Ok(cg) => {
                let publisher = self.publisher.clone();
                let container_id = c.id.clone();
                let limits = cg.clone();
                let watch = cgroups::watch_oom(cg.clone(), move || {
                    // TaskOOM carries only the id: which limit was hit is for the log.
                    log::warn!("container {container_id}: OOM kill in its cgroup: {}", cgroups::oom_cause(&limits));
                    publisher.publish(Event::Oom(ev::TaskOOM {
                        container_id: container_id.clone(),
                        ..Default::default()
                    }));
                });
                c.oom_watch = Some(tokio::spawn(watch).abort_handle());
                c.cgroup = Some(cg);
            }
            Err(e) => log::warn!("container {}: no cgroup for pid {}: {e}", c.id, c.init.pid),
        }
    }

    pub fn init_pid(&self, id: &str) -> u32 {
        self.lock().containers.get(id).map_or(0, |c| c.init.pid)
    }

    /// Shutdown: with no container left, end the shim (now, or once the rollbacks still running
    /// are done: containerd sends Shutdown once and never again).
    pub fn request_shutdown(&self) {
        let mut g = self.lock();
        if !g.containers.is_empty() {
            return;
        }
        if g.reserved.is_empty() {
            drop(g);
            log::info!("shutdown: no container left");
            self.shutdown.notify_one();
        } else {
            log::info!("shutdown: waiting for the rollback of {:?}", g.reserved);
            g.shutdown_requested = true;
        }
    }
}
