//! The containers this shim serves, exit routing and event ordering.
//!
//! Locking: one short std Mutex over the container map, never held across an await, so a slow
//! or stuck runtime call blocks only the RPC that made it. Each start (create, start, exec start)
//! counts as "in flight" while it runs: exits of pids not yet known (an exec's pid is only known
//! once runc has written its pid file) are kept for it, and matched when the pid is read.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::mount::Mount;
use tokio::sync::Notify;

use crate::cgroups::{self, Cgroup};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::events::{timestamp, Event, Publisher};
use crate::mount::{self, MountSpec};
use crate::options::{self, ShimOptions};
use crate::process::{self, Process, State, Transition};
use crate::reaper::{Exit, ExitSink, Reaper};
use crate::runtime::{CreateOpts, CriuOpts, ExecOpts, Runtime, RuntimeConfig};
use crate::stdio::{IoContext, PendingIo, ProcessIo, StdioPaths};

/// How long Delete waits for a process's output to drain into its FIFOs.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

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
    pub exit: Option<(u32, SystemTime)>,
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Container>,
    creating: HashSet<String>,
    inflight: usize,
    unmatched: HashMap<u32, (u32, SystemTime)>,
}

impl Inner {
    fn container(&mut self, id: &str) -> Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not created")))
    }

    fn end_inflight(&mut self) {
        self.inflight -= 1;
        if self.inflight == 0 {
            self.unmatched.clear();
        }
    }
}

pub struct Supervisor {
    inner: Mutex<Inner>,
    publisher: Publisher,
    reaper: Arc<Reaper>,
    namespace: String,
    /// Notified when Shutdown finds nothing left to serve.
    pub shutdown: Notify,
}

impl ExitSink for Supervisor {
    fn on_exit(&self, exit: Exit) {
        let pid = exit.pid as u32;
        let mut g = self.lock();
        let found = g
            .containers
            .iter()
            .find_map(|(cid, c)| c.find_pid(pid).map(|eid| (cid.clone(), eid)));
        let Some((cid, eid)) = found else {
            if g.inflight > 0 {
                g.unmatched.insert(pid, (exit.status, exit.at));
            } else {
                log::debug!("reaped pid {pid} status {} (not a tracked process)", exit.status);
            }
            return;
        };
        let c = g.containers.get_mut(&cid).unwrap();
        log::info!("container {cid} exec {eid:?} pid {pid} exited with status {}", exit.status);
        let events = if eid.is_empty() {
            init_exited(c, exit.status, exit.at)
        } else {
            c.record_exit(&eid, exit.status, exit.at)
        };
        events.into_iter().for_each(|e| self.publisher.publish(e));
    }
}

/// Init is gone: record it, keep it in the bundle for `delete`, and where the container shares
/// the host's pid namespace (nothing else dies with init) kill the rest, as the Go shim does.
/// Returns the TaskExit events now due.
fn init_exited(c: &mut Container, status: u32, at: SystemTime) -> Vec<Event> {
    let events = c.record_exit("", status, at);
    persist_exit(&c.bundle, status, at);
    if c.shared_pid_ns {
        let (rt, id) = (c.runtime.clone(), c.id.clone());
        tokio::spawn(async move {
            let _ = rt.kill(&id, 9, true).await;
        });
    }
    events
}

/// The init's exit, kept in the bundle so `delete` can report it after a shim crash.
pub fn persist_exit(bundle: &Path, status: u32, at: SystemTime) {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let body = format!("{} {} {}", status, d.as_secs(), d.subsec_nanos());
    let _ = options::write_atomic(&bundle.join("exit-status"), body.as_bytes());
}

pub fn read_persisted_exit(bundle: &Path) -> Option<(u32, SystemTime)> {
    let s = std::fs::read_to_string(bundle.join("exit-status")).ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    let (status, secs, nanos) = (it.next()??, it.next()??, it.next()??);
    Some((status as u32, SystemTime::UNIX_EPOCH + Duration::new(secs, nanos as u32)))
}

/// CRIU's work directory: the runtime option, else inside the bundle.
fn criu_work_path(bundle: &Path, options: &ShimOptions) -> PathBuf {
    if options.criu_work_path.is_empty() {
        bundle.join("criu-work")
    } else {
        PathBuf::from(&options.criu_work_path)
    }
}

/// Does the container share its pid namespace (no `pid` namespace of its own in config.json)?
/// Read as plain JSON: runc validates the whole spec; the shim needs only this.
fn pid_namespace_is_shared(bundle: &Path) -> Result<bool> {
    let path = bundle.join("config.json");
    let data = options::read_bundle_file(&path)?;
    let spec: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| Error::InvalidArgument(format!("invalid {}: {e}", path.display())))?;
    if !spec.is_object() {
        return Err(Error::InvalidArgument(format!("invalid {}: not a JSON object", path.display())));
    }
    let own = spec
        .pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && n.get("path").and_then(|p| p.as_str()).is_none_or(str::is_empty)
            })
        });
    Ok(!own)
}

impl Supervisor {
    pub fn new(publisher: Publisher, reaper: Arc<Reaper>, namespace: String) -> Self {
        Supervisor { inner: Mutex::default(), publisher, reaper, namespace, shutdown: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn create(&self, req: CreateRequest) -> Result<u32> {
        {
            let mut g = self.lock();
            if g.containers.contains_key(&req.id) || g.creating.contains(&req.id) {
                return Err(Error::AlreadyExists(format!("container {:?} already exists", req.id)));
            }
            g.creating.insert(req.id.clone());
            g.inflight += 1;
        }
        let result = self.do_create(&req).await;
        let mut g = self.lock();
        g.creating.remove(&req.id);
        let mut c = match result {
            Ok(c) => c,
            Err(e) => {
                g.end_inflight();
                log::error!("create {}: {e}", req.id);
                return Err(e);
            }
        };
        let pid = c.init.pid;
        if let Some((status, at)) = g.unmatched.remove(&pid) {
            // Not announced yet: its TaskExit goes out after TaskCreate, below.
            init_exited(&mut c, status, at);
        }
        g.end_inflight();
        c.init.announced = true;
        self.publisher.publish(Event::Create(ev::TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.display().to_string(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(ev::TaskIO {
                stdin: req.stdio.stdin.clone(),
                stdout: req.stdio.stdout.clone(),
                stderr: req.stdio.stderr.clone(),
                terminal: req.stdio.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        }));
        c.publishable_exits().into_iter().for_each(|e| self.publisher.publish(e));
        self.watch_cgroup(&mut c);
        log::info!("container {} created, init pid {pid}", req.id);
        g.containers.insert(req.id.clone(), c);
        Ok(pid)
    }

    async fn do_create(&self, req: &CreateRequest) -> Result<Container> {
        let bundle = &req.bundle;
        let shared_pid_ns = pid_namespace_is_shared(bundle)?;
        req.options.persist(bundle)?;
        let runtime = Arc::new(Runtime::new(
            RuntimeConfig {
                binary: req.options.binary().to_string(),
                root: Path::new(req.options.root()).join(&self.namespace),
                systemd_cgroup: req.options.systemd_cgroup,
                criu_path: Some(req.options.criu_path.clone()).filter(|p| !p.is_empty()),
            },
            self.reaper.clone(),
        ));
        let mut mounted_rootfs = None;
        if !req.rootfs.is_empty() {
            let rootfs = bundle.join("rootfs");
            use std::os::unix::fs::DirBuilderExt as _;
            let _ = std::fs::DirBuilder::new().mode(0o711).create(&rootfs);
            // Never mount through a symlink: it could point anywhere on the host.
            match std::fs::symlink_metadata(&rootfs) {
                Ok(m) if m.is_dir() => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "{} is not a directory inside the bundle",
                        rootfs.display()
                    )))
                }
            }
            let specs: Vec<MountSpec> = req
                .rootfs
                .iter()
                .map(|m| MountSpec {
                    kind: m.type_.clone(),
                    source: m.source.clone(),
                    target: m.target.clone(),
                    options: m.options.clone(),
                })
                .collect();
            mount::mount_all(&specs, &rootfs)?;
            mounted_rootfs = Some(rootfs);
        }
        let mut init = Process::new(req.stdio.clone());
        let restore = (!req.checkpoint.is_empty()).then(|| CriuOpts {
            image_path: PathBuf::from(&req.checkpoint),
            work_path: criu_work_path(bundle, &req.options),
            parent_path: Some(PathBuf::from(&req.parent_checkpoint)).filter(|p| !p.as_os_str().is_empty()),
            ..Default::default()
        });
        // Restoring from a checkpoint happens at Start (runc restore), as in the Go shim.
        if restore.is_none() {
            match self.spawn_init(&req.id, bundle, &runtime, &req.options, &req.stdio, None).await {
                Ok((pid, io)) => {
                    init.set_pid(pid);
                    init.io = Some(Arc::new(io));
                }
                Err(e) => {
                    if let Some(r) = &mounted_rootfs {
                        let _ = mount::unmount_all(r);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            init,
            execs: HashMap::new(),
            runtime,
            shared_pid_ns,
            mounted_rootfs,
            deleting: false,
            options: req.options.clone(),
            restore,
            cgroup: None,
            oom_watch: None,
        })
    }

    /// Set up init's IO and run `runc create`, or `runc restore` from a checkpoint.
    async fn spawn_init(
        &self,
        id: &str,
        bundle: &Path,
        runtime: &Runtime,
        options: &ShimOptions,
        stdio: &StdioPaths,
        restore: Option<&CriuOpts>,
    ) -> Result<(u32, ProcessIo)> {
        let ctx = IoContext {
            container_id: id,
            namespace: &self.namespace,
            reaper: &self.reaper,
            uid: options.io_uid,
            gid: options.io_gid,
        };
        let mut io = PendingIo::prepare(stdio, &ctx).await?;
        let pid_file = bundle.join("init.pid");
        let runtime_stdio = io.take_runtime_stdio();
        let opts = CreateOpts {
            bundle,
            pid_file: &pid_file,
            console_socket: io.console_socket.as_ref().map(|s| s.path()),
            no_pivot: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
        };
        let pid = match restore {
            Some(criu) => runtime.restore(id, &opts, criu, runtime_stdio).await,
            None => runtime.create(id, &opts, runtime_stdio).await,
        };
        let started = pid.and_then(|pid| Ok((pid as u32, io.start()?)));
        match &started {
            // A runtime that hung once would hang the cleanup too: containerd's `delete` action
            // retries it later.
            Err(Error::DeadlineExceeded(_)) => {}
            Err(_) => {
                let _ = runtime.delete(id, true).await;
            }
            Ok(_) => {}
        }
        started
    }

    /// Find init's cgroup (for Stats) and watch it for OOM kills.
    fn watch_cgroup(&self, c: &mut Container) {
        if c.init.pid == 0 || c.init.exit().is_some() {
            return;
        }
        match Cgroup::for_pid(c.init.pid) {
            Ok(cg) => {
                let publisher = self.publisher.clone();
                let container_id = c.id.clone();
                let watch = cgroups::watch_oom(cg.clone(), move || {
                    log::warn!("container {container_id}: OOM kill in its cgroup");
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

    pub async fn stats(&self, id: &str) -> Result<containerd_shim_protos::protobuf::well_known_types::any::Any> {
        let cg = self
            .lock()
            .container(id)?
            .cgroup
            .clone()
            .ok_or_else(|| Error::NotFound(format!("container {id} has no cgroup")))?;
        cg.stats()
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        if exec_id.is_empty() {
            self.start_init(id).await
        } else {
            self.start_exec(id, exec_id).await
        }
    }

    async fn start_init(&self, id: &str) -> Result<u32> {
        let (runtime, restore, bundle, options, stdio) = {
            let mut g = self.lock();
            let c = g.container(id)?;
            if c.init.starting {
                return Err(Error::FailedPrecondition(format!("container {id} is already starting")));
            }
            c.init.state().apply(Transition::Start)?;
            c.init.starting = true;
            let restore = c.restore.take();
            let parts = (c.runtime.clone(), restore, c.bundle.clone(), c.options.clone(), c.init.stdio.clone());
            if parts.1.is_some() {
                g.inflight += 1; // init's pid is unknown until runc restore writes it
            }
            parts
        };
        let result = match &restore {
            None => runtime.start(id).await,
            Some(criu) => {
                let spawned = self.spawn_init(id, &bundle, &runtime, &options, &stdio, Some(criu)).await;
                let mut g = self.lock();
                let early_exit = spawned.as_ref().ok().and_then(|(pid, _)| g.unmatched.remove(pid));
                g.end_inflight();
                let c = g.container(id)?;
                match spawned {
                    Ok((pid, io)) => {
                        c.init.set_pid(pid);
                        c.init.io = Some(Arc::new(io));
                        if let Some((status, at)) = early_exit {
                            // Still starting: its TaskExit goes out after TaskStart, below.
                            init_exited(c, status, at);
                        }
                        self.watch_cgroup(c);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let mut g = self.lock();
        let c = g.container(id)?;
        c.init.starting = false;
        if result.is_ok() {
            let _ = c.init.transition(Transition::Start); // unless it already exited
            self.publisher.publish(Event::Start(ev::TaskStart {
                container_id: id.to_string(),
                pid: c.init.pid,
                ..Default::default()
            }));
            log::info!("container {id} started, pid {}", c.init.pid);
        }
        c.publishable_exits().into_iter().for_each(|e| self.publisher.publish(e));
        result.map(|_| c.init.pid)
    }

    async fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (runtime, bundle, spec, stdio, io_owner) = {
            let mut g = self.lock();
            let c = g.container(id)?;
            if c.init.exit().is_some() || c.deleting {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} has stopped: cannot start exec {exec_id}"
                )));
            }
            let (runtime, bundle, io_owner) =
                (c.runtime.clone(), c.bundle.clone(), (c.options.io_uid, c.options.io_gid));
            let p = c.process_mut(exec_id)?;
            if p.starting {
                return Err(Error::FailedPrecondition(format!("exec {exec_id} is already starting")));
            }
            p.state().apply(Transition::Start)?;
            let spec = p.spec.take().unwrap_or_default();
            p.starting = true;
            let stdio = p.stdio.clone();
            g.inflight += 1;
            (runtime, bundle, spec, stdio, io_owner)
        };
        let process_json = bundle.join(format!("{exec_id}.process.json"));
        let pid_file = bundle.join(format!("{exec_id}.pid"));
        let result = async {
            options::write_atomic(&process_json, &spec)?;
            let ctx = IoContext {
                container_id: id,
                namespace: &self.namespace,
                reaper: &self.reaper,
                uid: io_owner.0,
                gid: io_owner.1,
            };
            let mut io = PendingIo::prepare(&stdio, &ctx).await?;
            let stdio = io.take_runtime_stdio();
            let opts = ExecOpts {
                bundle: &bundle,
                process_json: &process_json,
                pid_file: &pid_file,
                console_socket: io.console_socket.as_ref().map(|s| s.path()),
            };
            let pid = runtime.exec(id, &opts, stdio).await?;
            Ok::<_, Error>((pid as u32, io.start()?))
        }
        .await;
        let _ = std::fs::remove_file(&process_json);
        let mut g = self.lock();
        let early_exit = match &result {
            Ok((pid, _)) => g.unmatched.remove(pid),
            Err(_) => None,
        };
        g.end_inflight();
        let c = g.container(id)?;
        let p = c.process_mut(exec_id)?;
        p.starting = false;
        match result {
            Ok((pid, io)) => {
                p.set_pid(pid);
                p.io = Some(Arc::new(io));
                let _ = p.transition(Transition::Start);
                if let Some((status, at)) = early_exit {
                    let _ = p.transition(Transition::Exit { status, at });
                }
                p.announced = true;
                self.publisher.publish(Event::ExecStarted(ev::TaskExecStarted {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    pid,
                    ..Default::default()
                }));
                log::info!("container {id} exec {exec_id} started, pid {pid}");
                c.publishable_exits().into_iter().for_each(|e| self.publisher.publish(e));
                Ok(pid)
            }
            Err(e) => {
                // Unblock its Wait; it never started, so no TaskExit is told for it.
                let _ = p.transition(Transition::Exit { status: 255, at: SystemTime::now() });
                p.exit_published = true;
                c.publishable_exits().into_iter().for_each(|e| self.publisher.publish(e));
                log::error!("container {id} exec {exec_id} failed to start: {e}");
                Err(e)
            }
        }
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
        if c.init.exit().is_some() || c.deleting {
            return Err(Error::FailedPrecondition(format!("container {id} has stopped: cannot add exec")));
        }
        let mut p = Process::new(stdio);
        p.spec = Some(spec);
        c.execs.insert(exec_id.to_string(), p);
        self.publisher.publish(Event::ExecAdded(ev::TaskExecAdded {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }));
        Ok(())
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, u32, SystemTime)> {
        if !exec_id.is_empty() {
            return self.delete_exec(id, exec_id).await;
        }
        let (state, io, runtime, mounted, bundle) = {
            let mut g = self.lock();
            let c = g.container(id)?;
            if c.deleting {
                return Err(Error::FailedPrecondition(format!("container {id} is being deleted")));
            }
            let state = c.init.state();
            state.apply(Transition::Delete)?;
            if c.init.starting {
                return Err(Error::FailedPrecondition(format!("container {id} is starting")));
            }
            c.deleting = true;
            (state, c.init.io.clone(), c.runtime.clone(), c.mounted_rootfs.clone(), c.bundle.clone())
        };
        if let Some(io) = &io {
            io.drain(DRAIN_LIMIT).await;
        }
        let never_started = state == State::Created;
        if let Err(e) = runtime.delete(id, never_started).await {
            if let Ok(c) = self.lock().container(id) {
                c.deleting = false;
            }
            return Err(e);
        }
        if never_started {
            // runc delete --force killed it; give the reaper a moment to record the status.
            let rx = {
                let mut g = self.lock();
                let init = &g.container(id)?.init;
                (init.pid != 0).then(|| init.subscribe_exit())
            };
            if let Some(rx) = rx {
                let _ = tokio::time::timeout(DRAIN_LIMIT, process::wait_exit(rx)).await;
            }
        }
        if let Some(rootfs) = &mounted {
            if let Err(e) = mount::unmount_all(rootfs) {
                log::warn!("container {id}: unmount {}: {e}", rootfs.display());
            }
        }
        let mut g = self.lock();
        let c = g
            .containers
            .remove(id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not created")))?;
        drop(g);
        if let Some(w) = &c.oom_watch {
            w.abort();
        }
        let (status, at) = c.init.exit().or_else(|| read_persisted_exit(&bundle)).unwrap_or((0, SystemTime::now()));
        self.publisher.publish(Event::Delete(ev::TaskDelete {
            container_id: id.to_string(),
            pid: c.init.pid,
            exit_status: status,
            exited_at: timestamp(at),
            id: id.to_string(),
            ..Default::default()
        }));
        log::info!("container {id} deleted");
        Ok((c.init.pid, status, at))
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<(u32, u32, SystemTime)> {
        let p = {
            let mut g = self.lock();
            let c = g.container(id)?;
            let p = c.process(exec_id)?;
            if p.starting {
                return Err(Error::FailedPrecondition(format!("exec {exec_id} is starting")));
            }
            p.state().apply(Transition::Delete)?;
            let mut p = c.execs.remove(exec_id).unwrap();
            let _ = p.transition(Transition::Delete);
            // An exec deleted before it started never holds init's exit.
            p.exit_published = true;
            c.publishable_exits().into_iter().for_each(|e| self.publisher.publish(e));
            let bundle = c.bundle.clone();
            let _ = std::fs::remove_file(bundle.join(format!("{exec_id}.pid")));
            p
        };
        if let Some(io) = &p.io {
            io.drain(DRAIN_LIMIT).await;
        }
        let (status, at) = p.exit().unwrap_or((0, SystemTime::now()));
        Ok((p.pid, status, at))
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let runtime = {
            let mut g = self.lock();
            let c = g.container(id)?;
            let p = c.process(exec_id)?;
            if p.exit().is_some() {
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
        runtime.kill(id, signal, all).await
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

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<(u32, SystemTime)> {
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

    pub async fn pids(&self, id: &str) -> Result<Vec<(u32, Option<String>)>> {
        let runtime = self.lock().container(id)?.runtime.clone();
        let pids = runtime.ps(id).await?;
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

    pub async fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let runtime = {
            let mut g = self.lock();
            let c = g.container(id)?;
            c.init.state().apply(if pause { Transition::Pause } else { Transition::Resume })?;
            c.runtime.clone()
        };
        if pause {
            runtime.pause(id).await?;
        } else {
            runtime.resume(id).await?;
        }
        let mut g = self.lock();
        let c = g.container(id)?;
        let _ = c.init.transition(if pause { Transition::Pause } else { Transition::Resume });
        let container_id = id.to_string();
        self.publisher.publish(if pause {
            Event::Paused(ev::TaskPaused { container_id, ..Default::default() })
        } else {
            Event::Resumed(ev::TaskResumed { container_id, ..Default::default() })
        });
        Ok(())
    }

    /// `image_path` empty means the runtime option CriuImagePath.
    pub async fn checkpoint(&self, id: &str, mut criu: CriuOpts, exit: bool) -> Result<()> {
        let (runtime, bundle) = {
            let mut g = self.lock();
            let c = g.container(id)?;
            if c.init.state() != State::Running {
                return Err(Error::FailedPrecondition(format!("container {id} is not running")));
            }
            if criu.image_path.as_os_str().is_empty() {
                criu.image_path = PathBuf::from(&c.options.criu_image_path);
            }
            if criu.image_path.as_os_str().is_empty() {
                return Err(Error::InvalidArgument("checkpoint: no image path".into()));
            }
            if criu.work_path.as_os_str().is_empty() {
                criu.work_path = criu_work_path(&c.bundle, &c.options);
            }
            (c.runtime.clone(), c.bundle.clone())
        };
        runtime.checkpoint(id, &bundle, &criu, !exit).await
    }

    pub async fn update(&self, id: &str, resources: Vec<u8>) -> Result<()> {
        let runtime = self.lock().container(id)?.runtime.clone();
        runtime.update(id, resources).await
    }

    pub fn init_pid(&self, id: &str) -> u32 {
        self.lock().containers.get(id).map_or(0, |c| c.init.pid)
    }

    /// True when nothing is left to serve (so Shutdown may end the shim).
    pub fn is_empty(&self) -> bool {
        let g = self.lock();
        g.containers.is_empty() && g.creating.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_namespace_from_config_json() {
        let dir = std::env::temp_dir().join(format!("rs-pidns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let case = |json: &str| {
            std::fs::write(dir.join("config.json"), json).unwrap();
            pid_namespace_is_shared(&dir)
        };
        assert!(!case(r#"{"linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}"#).unwrap());
        assert!(case(r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#).unwrap());
        assert!(case(r#"{"linux":{"namespaces":[{"type":"network"}]}}"#).unwrap());
        assert!(case(r#"{"process":{}}"#).unwrap());
        let bad = case("{not json").unwrap_err();
        assert!(matches!(&bad, Error::InvalidArgument(m) if m.contains("config.json")), "{bad}");
        assert!(matches!(case("[1]"), Err(Error::InvalidArgument(_))));
        std::fs::remove_file(dir.join("config.json")).unwrap();
        assert!(matches!(pid_namespace_is_shared(&dir), Err(Error::InvalidArgument(m)) if m.contains("config.json")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
