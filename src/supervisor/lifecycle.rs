//! Create, start, exec start and delete: each runs as its own task (see `call::detached`), so
//! whatever path it takes, its bookkeeping is finished and nothing is left half-done.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;

use super::{CreateRequest, Reservation, Supervisor};
use crate::bundle;
use crate::call::Call;
use crate::container::Container;
use crate::error::{Error, Result};
use crate::events::{timestamp, Event};
use crate::mount::{self, MountSpec};
use crate::options::ShimOptions;
use crate::process::{self, Process, Report, State, Transition};
use crate::runtime::{CreateOpts, CriuOpts, ExecOpts, OciRuntime, RuntimeConfig};
use crate::stdio::{IoContext, PendingIo, ProcessIo, StdioPaths};

/// How long Delete waits for a process's output to drain into its FIFOs.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long the cleanup of a failed create may take (a runtime that hung once may hang again).
const ROLLBACK_LIMIT: Duration = Duration::from_secs(10);

/// CRIU's work directory: the runtime option, else inside the bundle.
pub(super) fn criu_work_path(bundle: &Path, options: &ShimOptions) -> PathBuf {
    if options.criu_work_path.is_empty() {
        bundle.join("criu-work")
    } else {
        PathBuf::from(&options.criu_work_path)
    }
}

/// What a failed create must undo, recorded as it goes.
#[derive(Default)]
struct Rollback {
    id: String,
    /// The runtime ran (or was killed while running) `create`: its state and `runc init` may remain.
    runtime: Option<Arc<dyn OciRuntime>>,
    mounted: Option<PathBuf>,
}

impl Rollback {
    /// Undo, then free the id. Runs as a task of its own after the error was answered: the
    /// caller's deadline may be all but gone, and the id stays reserved until this is done,
    /// so a retry of the same id cannot race the cleanup.
    async fn run(self, reservation: Reservation) {
        if let Some(rt) = &self.runtime {
            if let Err(e) = rt.delete(&Call::bounded(ROLLBACK_LIMIT), &self.id, true).await {
                log::warn!("container {}: rollback: runtime delete: {e}", self.id);
            }
        }
        // After the delete: the container's processes no longer hold the rootfs.
        if let Some(rootfs) = self.mounted.clone() {
            if let Err(e) = unmount_off_reactor(rootfs.clone()).await {
                log::warn!("container {}: rollback: unmount {}: {e}", self.id, rootfs.display());
            }
        }
        log::info!("container {}: failed create rolled back", self.id);
        drop(reservation);
    }
}

/// Mount the Create request's rootfs. Mounts run on the blocking pool: a FUSE helper or a deep
/// idmapped overlay takes its time, and every other RPC is served from the reactor meanwhile.
async fn mount_rootfs(req: &CreateRequest) -> Result<Option<PathBuf>> {
    if req.rootfs.is_empty() {
        return Ok(None);
    }
    let rootfs = req.bundle.join("rootfs");
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
    let target = rootfs.clone();
    tokio::task::spawn_blocking(move || mount::mount_all(&specs, &target))
        .await
        .map_err(|e| Error::Other(format!("mount task: {e}")))??;
    Ok(Some(rootfs))
}

/// `mount::unmount_all` on the blocking pool (see `mount_rootfs`).
async fn unmount_off_reactor(rootfs: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || mount::unmount_all(&rootfs))
        .await
        .map_err(|e| Error::Other(format!("unmount task: {e}")))?
}

impl Supervisor {
    pub(super) async fn create_task(&self, call: &Call, req: CreateRequest) -> Result<u32> {
        let reservation = self.reserve(&req.id)?;
        // Before the runtime runs: init may be gone before its pid file is read.
        let ticket = self.begin_start();
        let mut undo = Rollback { id: req.id.clone(), ..Default::default() };
        let built = self.build(call, &req, &mut undo).await;
        let (mut c, spawned) = match built {
            Ok(b) => b,
            Err(e) => {
                log::error!("create {}: {e}", req.id);
                drop(ticket);
                tokio::spawn(undo.run(reservation));
                return Err(e);
            }
        };
        let mut g = self.lock();
        if let Some((pid, io)) = spawned {
            self.learn_pid(&ticket, &mut c.init, pid, c.shared_pid_ns);
            c.init.io = Some(Arc::new(io));
        }
        // TaskCreate is queued next: from here init's exit may be told.
        c.init.report = c.init.report.end_start(true, false, c.shared_pid_ns);
        let pid = c.init.pid;
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
        self.watch_cgroup(&mut c);
        self.settle(&mut c);
        log::info!("container {} created, init pid {pid}", req.id);
        g.containers.insert(req.id.clone(), c);
        drop(g);
        // Both take the locks themselves.
        drop(ticket);
        drop(reservation);
        Ok(pid)
    }

    /// Everything a create does outside the map: bundle files, rootfs, stdio, `runc create`.
    async fn build(
        &self,
        call: &Call,
        req: &CreateRequest,
        undo: &mut Rollback,
    ) -> Result<(Container, Option<(u32, ProcessIo)>)> {
        let bundle = &req.bundle;
        let shared_pid_ns = bundle::pid_namespace_is_shared(bundle)?;
        req.options.persist(bundle)?;
        let runtime = self.runtimes.runtime(RuntimeConfig {
            binary: req.options.binary().to_string(),
            root: Path::new(req.options.root()).join(&self.namespace),
            systemd_cgroup: req.options.systemd_cgroup,
            criu_path: Some(req.options.criu_path.clone()).filter(|p| !p.is_empty()),
            log: bundle.join("log.json"),
        });
        undo.mounted = mount_rootfs(req).await?;
        let restore = (!req.checkpoint.is_empty()).then(|| CriuOpts {
            image_path: PathBuf::from(&req.checkpoint),
            work_path: criu_work_path(bundle, &req.options),
            parent_path: Some(PathBuf::from(&req.parent_checkpoint)).filter(|p| !p.as_os_str().is_empty()),
            ..Default::default()
        });
        // Restoring from a checkpoint happens at Start (runc restore), as in the Go shim.
        let spawned = match restore {
            Some(_) => None,
            None => {
                undo.runtime = Some(runtime.clone());
                Some(self.spawn_init(call, &req.id, bundle, &*runtime, &req.options, &req.stdio, None).await?)
            }
        };
        let mut init = Process::new(req.stdio.clone());
        init.report = Report::Starting;
        let c = Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            init,
            execs: HashMap::new(),
            runtime,
            shared_pid_ns,
            mounted_rootfs: undo.mounted.clone(),
            deleting: false,
            options: req.options.clone(),
            restore,
            cgroup: None,
            oom_watch: None,
            kill_rest: None,
        };
        Ok((c, spawned))
    }

    fn io_context<'a>(&'a self, id: &'a str, options: &ShimOptions) -> IoContext<'a> {
        IoContext {
            container_id: id,
            namespace: &self.namespace,
            reaper: &self.reaper,
            uid: options.io_uid,
            gid: options.io_gid,
        }
    }

    /// Set up init's IO and run `runc create`, or `runc restore` from a checkpoint. On error the
    /// IO (and a logger it started) is dropped, which closes and kills it.
    #[allow(clippy::too_many_arguments)]
    async fn spawn_init(
        &self,
        call: &Call,
        id: &str,
        bundle: &Path,
        runtime: &dyn OciRuntime,
        options: &ShimOptions,
        stdio: &StdioPaths,
        restore: Option<&CriuOpts>,
    ) -> Result<(u32, ProcessIo)> {
        let mut io = PendingIo::prepare(stdio, &self.io_context(id, options)).await?;
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
            Some(criu) => runtime.restore(call, id, &opts, criu, runtime_stdio).await?,
            None => runtime.create(call, id, &opts, runtime_stdio).await?,
        };
        Ok((pid as u32, io.start()?))
    }

    pub(super) async fn start_init_task(&self, call: &Call, id: &str) -> Result<u32> {
        let (runtime, restore, bundle, options, stdio) = {
            let mut g = self.lock();
            let c = g.container(id)?;
            if c.deleting {
                return Err(Error::FailedPrecondition(format!("container {id} is being deleted")));
            }
            c.init.state().apply(Transition::Start)?;
            c.init.report = c.init.report.begin_start()?;
            (c.runtime.clone(), c.restore.take(), c.bundle.clone(), c.options.clone(), c.init.stdio.clone())
        };
        let ticket = self.begin_start(); // a restored init's pid is unknown until runc writes it
        let result = match &restore {
            None => runtime.start(call, id).await.map(|()| None),
            Some(criu) => self.spawn_init(call, id, &bundle, &*runtime, &options, &stdio, Some(criu)).await.map(Some),
        };
        let mut g = self.lock();
        // Delete refuses a container whose init is starting: it is still there.
        let c = g.container(id)?;
        let shared = c.shared_pid_ns;
        match result {
            Ok(spawned) => {
                if let Some((pid, io)) = spawned {
                    self.learn_pid(&ticket, &mut c.init, pid, shared);
                    c.init.io = Some(Arc::new(io));
                    self.watch_cgroup(c);
                }
                let _ = c.init.transition(Transition::Start);
                c.init.report = c.init.report.end_start(true, true, shared);
                self.publisher.publish(Event::Start(ev::TaskStart {
                    container_id: id.to_string(),
                    pid: c.init.pid,
                    ..Default::default()
                }));
                log::info!("container {id} started, pid {}", c.init.pid);
                self.settle(c);
                Ok(c.init.pid)
            }
            Err(e) => {
                // TaskCreate announced init: it still owes its TaskExit whenever it exits.
                c.init.report = c.init.report.end_start(false, true, shared);
                c.restore = restore;
                self.settle(c);
                log::error!("container {id}: start: {e}");
                Err(e)
            }
        }
    }

    pub(super) async fn start_exec_task(&self, call: &Call, id: &str, exec_id: &str) -> Result<u32> {
        let (runtime, bundle, spec, stdio, options) = {
            let mut g = self.lock();
            let c = g.container(id)?;
            if c.init.has_exited() || c.deleting {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} has stopped: cannot start exec {exec_id}"
                )));
            }
            let (runtime, bundle, options) = (c.runtime.clone(), c.bundle.clone(), c.options.clone());
            let p = c.process_mut(exec_id)?;
            p.state().apply(Transition::Start)?;
            p.report = p.report.begin_start()?;
            let spec = p.spec.take().unwrap_or_default();
            (runtime, bundle, spec, p.stdio.clone(), options)
        };
        let ticket = self.begin_start();
        let process_json = bundle.join(format!("{exec_id}.process.json"));
        let pid_file = bundle.join(format!("{exec_id}.pid"));
        let result = async {
            bundle::write_atomic(&process_json, &spec)?;
            let mut io = PendingIo::prepare(&stdio, &self.io_context(id, &options)).await?;
            let stdio = io.take_runtime_stdio();
            let opts = ExecOpts {
                bundle: &bundle,
                process_json: &process_json,
                pid_file: &pid_file,
                console_socket: io.console_socket.as_ref().map(|s| s.path()),
            };
            let pid = runtime.exec(call, id, &opts, stdio).await?;
            Ok::<_, Error>((pid as u32, io.start()?))
        }
        .await;
        let _ = std::fs::remove_file(&process_json);
        let mut g = self.lock();
        // Neither the exec nor its container can be deleted while the exec is starting.
        let c = g.container(id)?;
        let p = c.process_mut(exec_id)?;
        match result {
            Ok((pid, io)) => {
                self.learn_pid(&ticket, p, pid, false);
                p.io = Some(Arc::new(io));
                let _ = p.transition(Transition::Start);
                // TaskExecStarted is queued next: from here its exit may be told.
                p.report = p.report.end_start(true, false, false);
                self.publisher.publish(Event::ExecStarted(ev::TaskExecStarted {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    pid,
                    ..Default::default()
                }));
                log::info!("container {id} exec {exec_id} started, pid {pid}");
                self.settle(c);
                Ok(pid)
            }
            Err(e) => {
                // Unblock its Wait; it never started, so no TaskExit is told for it.
                p.fail_start(false);
                self.settle(c);
                log::error!("container {id} exec {exec_id} failed to start: {e}");
                Err(e)
            }
        }
    }

    pub(super) async fn delete_init_task(&self, call: &Call, id: &str) -> Result<(u32, u32, SystemTime)> {
        let (io, runtime, mounted, never_started, force) = {
            let mut g = self.lock();
            let c = g.container(id)?;
            if c.deleting {
                return Err(Error::FailedPrecondition(format!("container {id} is being deleted")));
            }
            if let Some((eid, _)) = std::iter::once(("", &c.init))
                .chain(c.execs.iter().map(|(k, p)| (k.as_str(), p)))
                .find(|(_, p)| matches!(p.report, Report::Starting | Report::StartingExited(_)))
            {
                let what = if eid.is_empty() { "init".to_string() } else { format!("exec {eid}") };
                return Err(Error::FailedPrecondition(format!("container {id}: {what} is starting")));
            }
            let never_started = c.init.state() == State::Created && !c.init.has_exited();
            if !never_started && !c.init.has_exited() {
                c.init.state().apply(Transition::Delete)?; // the typed refusal for running/paused
            }
            c.deleting = true;
            // A shared pid namespace whose kill is still running may hold processes: force.
            let force = never_started || matches!(c.init.report, Report::KillingRest(_));
            (c.init.io.clone(), c.runtime.clone(), c.mounted_rootfs.clone(), never_started, force)
        };
        if let Some(io) = &io {
            io.drain(DRAIN_LIMIT).await;
        }
        if let Err(e) = runtime.delete(call, id, force).await {
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
        if let Some(rootfs) = mounted {
            if let Err(e) = unmount_off_reactor(rootfs.clone()).await {
                log::warn!("container {id}: unmount {}: {e}", rootfs.display());
            }
        }
        let mut c = {
            let mut g = self.lock();
            g.containers
                .remove(id)
                .ok_or_else(|| Error::NotFound(format!("container {id:?} not created")))?
        };
        for w in [&c.oom_watch, &c.kill_rest].into_iter().flatten() {
            w.abort();
        }
        self.changed.notify_one();
        // Exits seen and not yet told go out before TaskDelete, execs first.
        for e in c.all_pending_exits() {
            self.publisher.publish(e);
        }
        let kept = bundle::read_persisted_exit(&c.bundle).unwrap_or_else(|e| {
            log::warn!("container {id}: {e}");
            None
        });
        let (status, at) = c.init.exit().or(kept).unwrap_or((0, SystemTime::now()));
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

    pub(super) async fn delete_exec_task(&self, id: &str, exec_id: &str) -> Result<(u32, u32, SystemTime)> {
        let p = {
            let mut g = self.lock();
            let c = g.container(id)?;
            let p = c.process(exec_id)?;
            if matches!(p.report, Report::Starting | Report::StartingExited(_)) {
                return Err(Error::FailedPrecondition(format!("exec {exec_id} is starting")));
            }
            if !p.has_exited() {
                p.state().apply(Transition::Delete)?;
            }
            let mut p = c.execs.remove(exec_id).unwrap();
            if let Some(e) = p.tell_exit() {
                // Never lost behind the delete (it is told at once in practice).
                self.publisher.publish(crate::container::exit_event(id, exec_id, p.pid, e));
            }
            // It no longer holds init's exit.
            self.settle(c);
            let _ = std::fs::remove_file(c.bundle.join(format!("{exec_id}.pid")));
            p
        };
        if let Some(io) = &p.io {
            io.drain(DRAIN_LIMIT).await;
        }
        let (status, at) = p.exit().unwrap_or((0, SystemTime::now()));
        Ok((p.pid, status, at))
    }
}
