//! The Task API (`containerd.task.v2.Task`, and the same service as v3): validate, delegate to
//! the supervisor, shape the reply. No OS calls here; errors become ttrpc codes in error.rs.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::shim_async::Task;
use ttrpc::r#async::TtrpcContext;

use crate::call::Call;
use crate::error::{Error, Result};
use crate::events::timestamp;
use crate::options;
use crate::process::State;
use crate::stdio::StdioPaths;
use crate::supervisor::{CreateRequest, Supervisor};

pub struct TaskService {
    sup: Arc<Supervisor>,
}

impl TaskService {
    pub fn new(sup: Arc<Supervisor>) -> Self {
        TaskService { sup }
    }

    /// Every RPC starts here: it is logged, and it counts as containerd calling (for the
    /// leaked-shim check).
    fn rpc(&self, method: &'static str, id: &str, exec_id: &str) -> RpcLog {
        self.sup.touch();
        RpcLog::new(method, id, exec_id)
    }
}

/// containerd's identifier rule (alphanumerics separated by single `.`, `_` or `-`, at most 76
/// characters): ids become paths and runc arguments, so nothing else may pass.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id.split(['.', '_', '-']).all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} {id:?} is invalid: must be 1-76 alphanumerics separated by '.', '_' or '-'"
        )))
    }
}

fn check(id: &str, exec_id: &str) -> Result<()> {
    check_id("container id", id)?;
    if !exec_id.is_empty() {
        check_id("exec id", exec_id)?;
    }
    Ok(())
}

fn status_of(state: State, container_paused: bool) -> Status {
    match state {
        State::Created => Status::CREATED,
        State::Running if container_paused => Status::PAUSED,
        State::Running => Status::RUNNING,
        State::Paused => Status::PAUSED,
        State::Stopped { .. } | State::Deleted => Status::STOPPED,
    }
}

use crate::protos::bare_type_url as bare_type;

type R<T> = ttrpc::Result<T>;

/// One line per RPC at debug (method, ids, duration, ttrpc code); a failed one at warn, with its
/// cause. A request whose future is dropped before it answers (its caller went away or its
/// deadline passed) says so when dropped.
struct RpcLog {
    method: &'static str,
    id: String,
    exec_id: String,
    start: std::time::Instant,
    done: bool,
}

impl RpcLog {
    fn new(method: &'static str, id: &str, exec_id: &str) -> RpcLog {
        RpcLog { method, id: id.to_string(), exec_id: exec_id.to_string(), start: std::time::Instant::now(), done: false }
    }

    fn finish<T>(mut self, r: R<T>) -> R<T> {
        self.done = true;
        let took = self.start.elapsed();
        match &r {
            Ok(_) => log::debug!("rpc {} id={} exec_id={} took={took:?} code=OK", self.method, self.id, self.exec_id),
            Err(ttrpc::Error::RpcStatus(st)) => log::warn!(
                "rpc {} id={} exec_id={} took={took:?} code={:?}: {}",
                self.method,
                self.id,
                self.exec_id,
                st.code(),
                st.message
            ),
            Err(e) => log::warn!("rpc {} id={} exec_id={} took={took:?}: {e}", self.method, self.id, self.exec_id),
        }
        r
    }
}

impl Drop for RpcLog {
    fn drop(&mut self) {
        if !self.done {
            log::info!(
                "rpc {} id={} exec_id={} dropped after {:?}: the caller went away or its deadline passed",
                self.method,
                self.id,
                self.exec_id,
                self.start.elapsed()
            );
        }
    }
}

/// The caller's deadline (ttrpc's `timeout_nano`, which containerd's client fills from its
/// context) for the work this request starts.
fn call_of(ctx: &TtrpcContext) -> Call {
    Call::with_timeout((ctx.timeout_nano > 0).then(|| std::time::Duration::from_nanos(ctx.timeout_nano as u64)))
}

#[async_trait]
impl Task for TaskService {
    async fn create(&self, ctx: &TtrpcContext, req: api::CreateTaskRequest) -> R<api::CreateTaskResponse> {
        let rpc = self.rpc("Create", &req.id, "");
        rpc.finish(async {
            check(&req.id, "")?;
            let bundle = std::path::PathBuf::from(&req.bundle);
            if !bundle.is_absolute() {
                return Err(Error::InvalidArgument(format!("bundle {:?} is not an absolute path", req.bundle)).into());
            }
            let options = options::decode(req.options.as_ref())?;
            let pid = self
                .sup
                .create(call_of(ctx), CreateRequest {
                    id: req.id.clone(),
                    bundle,
                    checkpoint: req.checkpoint.clone(),
                    parent_checkpoint: req.parent_checkpoint.clone(),
                    rootfs: req.rootfs.clone(),
                    stdio: StdioPaths {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                    },
                    options,
                })
                .await?;
            Ok(api::CreateTaskResponse { pid, ..Default::default() })
        }
        .await)
    }

    async fn start(&self, ctx: &TtrpcContext, req: api::StartRequest) -> R<api::StartResponse> {
        let rpc = self.rpc("Start", &req.id, &req.exec_id);
        rpc.finish(async {
            check(&req.id, &req.exec_id)?;
            let pid = self.sup.start(call_of(ctx), &req.id, &req.exec_id).await?;
            Ok(api::StartResponse { pid, ..Default::default() })
        }
        .await)
    }

    async fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> R<api::StateResponse> {
        let rpc = self.rpc("State", &req.id, &req.exec_id);
        rpc.finish(async {
            check(&req.id, &req.exec_id)?;
            let s = self.sup.state(&req.id, &req.exec_id)?;
            let (exit_status, exited_at) = match s.exit {
                Some((st, at)) => (st, timestamp(at)),
                None => (0, MessageField::none()),
            };
            Ok(api::StateResponse {
                id: s.id,
                bundle: s.bundle,
                pid: s.pid,
                status: EnumOrUnknown::new(status_of(s.status, s.container_paused)),
                stdin: s.stdio.stdin,
                stdout: s.stdio.stdout,
                stderr: s.stdio.stderr,
                terminal: s.stdio.terminal,
                exit_status,
                exited_at,
                exec_id: req.exec_id,
                ..Default::default()
            })
        }
        .await)
    }

    async fn delete(&self, ctx: &TtrpcContext, req: api::DeleteRequest) -> R<api::DeleteResponse> {
        let rpc = self.rpc("Delete", &req.id, &req.exec_id);
        rpc.finish(async {
            check(&req.id, &req.exec_id)?;
            let (pid, exit_status, at) = self.sup.delete(call_of(ctx), &req.id, &req.exec_id).await?;
            Ok(api::DeleteResponse { pid, exit_status, exited_at: timestamp(at), ..Default::default() })
        }
        .await)
    }

    async fn pids(&self, ctx: &TtrpcContext, req: api::PidsRequest) -> R<api::PidsResponse> {
        let rpc = self.rpc("Pids", &req.id, "");
        rpc.finish(async {
            check(&req.id, "")?;
            let processes = self
                .sup
                .pids(call_of(ctx), &req.id)
                .await?
                .into_iter()
                .map(|(pid, exec)| {
                    let info = exec.map(|exec_id| {
                        let d = ProcessDetails { exec_id, ..Default::default() };
                        let mut any = Any::new();
                        any.type_url = "containerd.runc.v1.ProcessDetails".into();
                        any.value = d.write_to_bytes().unwrap_or_default();
                        any
                    });
                    api::ProcessInfo { pid, info: info.into(), ..Default::default() }
                })
                .collect();
            Ok(api::PidsResponse { processes, ..Default::default() })
        }
        .await)
    }

    async fn pause(&self, ctx: &TtrpcContext, req: api::PauseRequest) -> R<Empty> {
        let rpc = self.rpc("Pause", &req.id, "");
        rpc.finish(async {
            check(&req.id, "")?;
            self.sup.pause(call_of(ctx), &req.id, true).await?;
            Ok(Empty::new())
        }
        .await)
    }

    async fn resume(&self, ctx: &TtrpcContext, req: api::ResumeRequest) -> R<Empty> {
        let rpc = self.rpc("Resume", &req.id, "");
        rpc.finish(async {
            check(&req.id, "")?;
            self.sup.pause(call_of(ctx), &req.id, false).await?;
            Ok(Empty::new())
        }
        .await)
    }

    async fn checkpoint(&self, ctx: &TtrpcContext, req: api::CheckpointTaskRequest) -> R<Empty> {
        let rpc = self.rpc("Checkpoint", &req.id, "");
        rpc.finish(async {
            check(&req.id, "")?;
            let r = options::decode_checkpoint(req.options.as_ref(), &req.path)?;
            self.sup.checkpoint(call_of(ctx), &req.id, r.criu, r.exit).await?;
            Ok(Empty::new())
        }
        .await)
    }

    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> R<Empty> {
        let rpc = self.rpc("Kill", &req.id, &req.exec_id);
        rpc.finish(async {
            check(&req.id, &req.exec_id)?;
            self.sup.kill(call_of(ctx), &req.id, &req.exec_id, req.signal, req.all).await?;
            Ok(Empty::new())
        }
        .await)
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> R<Empty> {
        let rpc = self.rpc("Exec", &req.id, &req.exec_id);
        rpc.finish(async {
            check(&req.id, &req.exec_id)?;
            if req.exec_id.is_empty() {
                return Err(Error::InvalidArgument("exec id must not be empty".into()).into());
            }
            let spec = req
                .spec
                .as_ref()
                .ok_or_else(|| Error::InvalidArgument(format!("exec {}: no process spec", req.exec_id)))?;
            let stdio = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            self.sup.add_exec(&req.id, &req.exec_id, stdio, spec.value.clone())?;
            Ok(Empty::new())
        }
        .await)
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> R<Empty> {
        let rpc = self.rpc("ResizePty", &req.id, &req.exec_id);
        rpc.finish(async {
            check(&req.id, &req.exec_id)?;
            self.sup.resize_pty(&req.id, &req.exec_id, req.width, req.height)?;
            Ok(Empty::new())
        }
        .await)
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> R<Empty> {
        let rpc = self.rpc("CloseIO", &req.id, &req.exec_id);
        rpc.finish(async {
            check(&req.id, &req.exec_id)?;
            if req.stdin {
                self.sup.close_io(&req.id, &req.exec_id)?;
            }
            Ok(Empty::new())
        }
        .await)
    }

    async fn update(&self, ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> R<Empty> {
        let rpc = self.rpc("Update", &req.id, "");
        rpc.finish(async {
            check(&req.id, "")?;
            let res = req
                .resources
                .as_ref()
                .ok_or_else(|| Error::InvalidArgument("update: no resources".into()))?;
            let t = bare_type(&res.type_url);
            if t != "LinuxResources" {
                return Err(Error::InvalidArgument(format!("update: unsupported resources type {:?}", res.type_url)).into());
            }
            serde_json::from_slice::<serde_json::Value>(&res.value)
                .map_err(|e| Error::InvalidArgument(format!("update: invalid resources JSON: {e}")))?;
            self.sup.update(call_of(ctx), &req.id, res.value.clone()).await?;
            Ok(Empty::new())
        }
        .await)
    }

    async fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> R<api::WaitResponse> {
        let rpc = self.rpc("Wait", &req.id, &req.exec_id);
        rpc.finish(async {
            check(&req.id, &req.exec_id)?;
            let (exit_status, at): (u32, SystemTime) = self.sup.wait(&req.id, &req.exec_id).await?;
            Ok(api::WaitResponse { exit_status, exited_at: timestamp(at), ..Default::default() })
        }
        .await)
    }

    async fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> R<api::StatsResponse> {
        let rpc = self.rpc("Stats", &req.id, "");
        rpc.finish(async {
            check(&req.id, "")?;
            let stats = self.sup.stats(&req.id)?;
            Ok(api::StatsResponse { stats: MessageField::some(stats), ..Default::default() })
        }
        .await)
    }

    async fn connect(&self, _: &TtrpcContext, req: api::ConnectRequest) -> R<api::ConnectResponse> {
        let rpc = self.rpc("Connect", &req.id, "");
        rpc.finish(async {
            Ok(api::ConnectResponse {
                shim_pid: std::process::id(),
                task_pid: self.sup.init_pid(&req.id),
                ..Default::default()
            })
        }
        .await)
    }

    async fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> R<Empty> {
        let rpc = self.rpc("Shutdown", &req.id, "");
        rpc.finish(async {
            self.sup.request_shutdown();
            Ok(Empty::new())
        }
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["c1", "a.b-c_d", "0123456789abcdef", &"a".repeat(76)] {
            assert!(check_id("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "..", "../x", "a..b", "-a", "a-", "a b", &"a".repeat(77), "a\0"] {
            let e = check_id("exec id", bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)));
            assert!(e.to_string().contains("exec id"));
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of(State::Running, true), Status::PAUSED);
        assert_eq!(status_of(State::Created, false), Status::CREATED);
        assert_eq!(status_of(State::Stopped { status: 0, at: SystemTime::now() }, false), Status::STOPPED);
    }
}
