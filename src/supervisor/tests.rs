//! The supervisor's races, driven deterministically through a fake runtime: no root, no runc.
//!
//! Exits are injected with `on_exit` (what the reaper would call); a pid that must read as gone
//! is above PID_MAX_LIMIT, one that must read as alive is a real `sleep` child of the test.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use crate::process::Report;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{mpsc, Notify};

use super::*;
use crate::call::Call;
use crate::events::Event;
use crate::reaper::{Exit, ExitSink, Reaper};
use crate::runtime::{CreateOpts, ExecOpts, OciRuntime, ProcessStdio, RuntimeConfig, RuntimeFactory};

/// What the fake runtime does for one call of a verb.
enum Step {
    Pid(i32),
    Fail(&'static str),
    /// Park until the caller goes away (or its deadline passes), like a hung runc.
    Hang,
    /// Park until the test opens the gate, then succeed with this pid.
    Gate(Arc<Notify>, i32),
}

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    steps: Mutex<HashMap<&'static str, VecDeque<Step>>>,
    /// Notified each time a call parks (Hang or Gate).
    parked: Notify,
}

impl Fake {
    fn then(&self, verb: &'static str, step: Step) {
        self.steps.lock().unwrap().entry(verb).or_default().push_back(step);
    }

    fn called(&self, call: &str) -> bool {
        self.calls.lock().unwrap().iter().any(|c| c == call)
    }

    async fn run(&self, call: &Call, verb: &'static str, what: String) -> Result<i32> {
        self.calls.lock().unwrap().push(what);
        let step = self.steps.lock().unwrap().get_mut(verb).and_then(|q| q.pop_front());
        match step.unwrap_or(Step::Pid(0)) {
            Step::Pid(p) => Ok(p),
            Step::Fail(m) => Err(Error::Runtime { verb, message: m.into() }),
            Step::Hang => {
                self.parked.notify_one();
                tokio::select! {
                    _ = call.cancelled() => Err(Error::Cancelled(format!("fake {verb}: caller went away"))),
                    _ = call.expired() => Err(Error::DeadlineExceeded(format!("fake {verb}: deadline"))),
                }
            }
            Step::Gate(gate, p) => {
                self.parked.notify_one();
                gate.notified().await;
                Ok(p)
            }
        }
    }
}

#[async_trait]
impl OciRuntime for Fake {
    async fn create(&self, call: &Call, id: &str, _: &CreateOpts<'_>, _: ProcessStdio) -> Result<i32> {
        self.run(call, "create", format!("create {id}")).await
    }
    async fn restore(&self, call: &Call, id: &str, _: &CreateOpts<'_>, _: &CriuOpts, _: ProcessStdio) -> Result<i32> {
        self.run(call, "restore", format!("restore {id}")).await
    }
    async fn start(&self, call: &Call, id: &str) -> Result<()> {
        self.run(call, "start", format!("start {id}")).await.map(drop)
    }
    async fn exec(&self, call: &Call, id: &str, o: &ExecOpts<'_>, _: ProcessStdio) -> Result<i32> {
        let name = o.pid_file.file_stem().unwrap().to_string_lossy().to_string();
        self.run(call, "exec", format!("exec {id} {name}")).await
    }
    async fn kill(&self, call: &Call, id: &str, signal: u32, all: bool) -> Result<()> {
        self.run(call, "kill", format!("kill {id} {signal} all={all}")).await.map(drop)
    }
    async fn delete(&self, call: &Call, id: &str, force: bool) -> Result<()> {
        self.run(call, "delete", format!("delete {id} force={force}")).await.map(drop)
    }
    async fn pause(&self, call: &Call, id: &str) -> Result<()> {
        self.run(call, "pause", format!("pause {id}")).await.map(drop)
    }
    async fn resume(&self, call: &Call, id: &str) -> Result<()> {
        self.run(call, "resume", format!("resume {id}")).await.map(drop)
    }
    async fn ps(&self, call: &Call, id: &str) -> Result<Vec<u32>> {
        self.run(call, "ps", format!("ps {id}")).await.map(|_| Vec::new())
    }
    async fn update(&self, call: &Call, id: &str, _: Vec<u8>) -> Result<()> {
        self.run(call, "update", format!("update {id}")).await.map(drop)
    }
    async fn checkpoint(&self, call: &Call, id: &str, _: &CriuOpts, _: bool) -> Result<()> {
        self.run(call, "checkpoint", format!("checkpoint {id}")).await.map(drop)
    }
}

struct FakeFactory(Arc<Fake>);

impl RuntimeFactory for FakeFactory {
    fn runtime(&self, _: RuntimeConfig) -> Arc<dyn OciRuntime> {
        self.0.clone()
    }
}

/// A real process that reads as alive until dropped (then killed and waited for by pid: unit
/// tests never run a waitpid(-1)).
struct Alive(std::process::Child);

impl Alive {
    fn new() -> Alive {
        Alive(std::process::Command::new("sleep").arg("60").spawn().unwrap())
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const GONE: i32 = crate::PID_NEVER_USED as i32;

struct World {
    sup: Arc<Supervisor>,
    fake: Arc<Fake>,
    publisher: Publisher,
    events: mpsc::UnboundedReceiver<Event>,
    dir: PathBuf,
}

impl World {
    fn new(name: &str) -> World {
        let dir = std::env::temp_dir().join(format!("rs-sup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (publisher, events) = Publisher::recording();
        let fake = Arc::new(Fake::default());
        let sup = Supervisor::new(
            publisher.clone(),
            Arc::new(Reaper::default()),
            Arc::new(FakeFactory(fake.clone())),
            "ns".into(),
        );
        World { sup, fake, publisher, events, dir }
    }

    /// A bundle with its own pid namespace, or sharing the host's.
    fn bundle(&self, id: &str, shared_pid_ns: bool) -> PathBuf {
        let b = self.dir.join(id);
        std::fs::create_dir_all(&b).unwrap();
        let ns = if shared_pid_ns { "[]" } else { r#"[{"type":"pid"}]"# };
        std::fs::write(b.join("config.json"), format!(r#"{{"linux":{{"namespaces":{ns}}}}}"#)).unwrap();
        b
    }

    fn request(&self, id: &str, shared_pid_ns: bool) -> CreateRequest {
        CreateRequest {
            id: id.into(),
            bundle: self.bundle(id, shared_pid_ns),
            checkpoint: String::new(),
            parent_checkpoint: String::new(),
            rootfs: Vec::new(),
            stdio: StdioPaths::default(),
            options: ShimOptions::default(),
        }
    }

    /// Every event published so far, in order, as "topic id".
    async fn events(&mut self) -> Vec<String> {
        assert!(self.publisher.flush(Duration::from_secs(5)).await);
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(describe(&e));
        }
        out
    }

    fn exit(&self, pid: i32, status: u32) {
        self.sup.on_exit(Exit { pid, status, at: SystemTime::now() });
    }

    /// A created and started container whose init is `pid`.
    async fn running(&mut self, id: &str, pid: i32, shared_pid_ns: bool) {
        self.fake.then("create", Step::Pid(pid));
        self.sup.create(Call::background(), self.request(id, shared_pid_ns)).await.unwrap();
        self.sup.start(Call::background(), id, "").await.unwrap();
    }

    fn add_exec(&self, id: &str, exec_id: &str) {
        self.sup.add_exec(id, exec_id, StdioPaths::default(), br#"{"args":["/bin/true"]}"#.to_vec()).unwrap();
    }

    /// A running container (init `init`) with a started exec `e1` (pid `exec`).
    async fn with_exec(&mut self, id: &str, init: i32, exec: i32, shared_pid_ns: bool) {
        self.running(id, init, shared_pid_ns).await;
        self.add_exec(id, "e1");
        self.fake.then("exec", Step::Pid(exec));
        self.sup.start(Call::background(), id, "e1").await.unwrap();
    }

    /// Wait (bounded, without a clock race: the work is all on this thread) until `f` holds.
    async fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if f() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never happened: {what}");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn describe(e: &Event) -> String {
    match e {
        Event::Create(x) => format!("create {}", x.container_id),
        Event::Start(x) => format!("start {}", x.container_id),
        Event::Exit(x) => format!("exit {} {}", x.id, x.exit_status),
        Event::Delete(x) => format!("delete {}", x.container_id),
        Event::ExecAdded(x) => format!("exec-added {}", x.exec_id),
        Event::ExecStarted(x) => format!("exec-started {}", x.exec_id),
        Event::Paused(x) => format!("paused {}", x.container_id),
        Event::Resumed(x) => format!("resumed {}", x.container_id),
        Event::Oom(x) => format!("oom {}", x.container_id),
    }
}

/// Poll `fut` until the fake runtime parks in it, then drop it: what ttrpc does to a handler
/// whose caller went away.
async fn drop_while_parked<F: Future>(fake: &Fake, fut: F) {
    let mut fut = Box::pin(fut);
    let parked = fake.parked.notified();
    tokio::pin!(parked);
    std::future::poll_fn(|cx| {
        if Pin::new(&mut fut).poll(cx).is_ready() {
            panic!("the call finished instead of parking");
        }
        parked.as_mut().poll(cx).map(|_| ())
    })
    .await;
    drop(fut);
}

#[tokio::test(flavor = "current_thread")]
async fn a_create_dropped_while_the_runtime_runs_is_rolled_back() {
    let mut w = World::new("dropcreate");
    w.fake.then("create", Step::Hang);
    drop_while_parked(&w.fake, w.sup.create(Call::background(), w.request("k1", false))).await;
    // the runtime call saw the cancel, the create failed, and the rollback deleted k1 in runc
    w.until("rollback", || w.fake.called("delete k1 force=true")).await;
    w.until("id released", || w.sup.lock().reserved.is_empty()).await;
    assert!(w.sup.state("k1", "").is_err(), "no container left behind");
    assert!(w.events().await.is_empty(), "no TaskCreate for a create that never finished");
    // and k1 can be created again
    let alive = Alive::new();
    w.fake.then("create", Step::Pid(alive.pid()));
    assert_eq!(w.sup.create(Call::background(), w.request("k1", false)).await.unwrap(), alive.pid() as u32);
    assert_eq!(w.events().await, ["create k1"]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_create_past_its_deadline_answers_deadline_exceeded_then_rolls_back() {
    let mut w = World::new("deadline");
    w.fake.then("create", Step::Hang);
    // the delete of the rollback parks too: the answer must not wait for it
    let gate = Arc::new(Notify::new());
    w.fake.then("delete", Step::Gate(gate.clone(), 0));
    let r = w.sup.create(Call::with_timeout(Some(Duration::from_millis(200))), w.request("k1", false)).await;
    assert!(matches!(&r, Err(Error::DeadlineExceeded(m)) if m.contains("create")), "{:?}", r.err());
    // rollback in flight: the id is still held, so a retry cannot race it
    w.until("rollback started", || w.fake.called("delete k1 force=true")).await;
    let again = w.sup.create(Call::background(), w.request("k1", false)).await;
    assert!(matches!(again, Err(Error::AlreadyExists(_))));
    // Shutdown now: the shim must end once the rollback is done, not stay forever
    w.sup.request_shutdown();
    let ended = w.sup.shutdown.notified();
    gate.notify_one();
    tokio::time::timeout(Duration::from_secs(5), ended).await.expect("shutdown after the rollback");
    assert!(w.events().await.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_create_frees_its_id_and_says_why() {
    let w = World::new("failcreate");
    w.fake.then("create", Step::Fail("exec: \"nope\": executable file not found in $PATH"));
    let e = w.sup.create(Call::background(), w.request("k1", false)).await.unwrap_err();
    assert_eq!(e.code(), ttrpc::Code::UNKNOWN, "not NotFound: containerd would read it as gone");
    w.until("id released", || w.sup.lock().reserved.is_empty()).await;
    let alive = Alive::new();
    w.fake.then("create", Step::Pid(alive.pid()));
    w.sup.create(Call::background(), w.request("k1", false)).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn an_exec_start_dropped_while_the_runtime_runs_fails_cleanly() {
    let mut w = World::new("dropexec");
    let init = Alive::new();
    w.running("c1", init.pid(), false).await;
    w.add_exec("c1", "e1");
    w.fake.then("exec", Step::Hang);
    drop_while_parked(&w.fake, w.sup.start(Call::background(), "c1", "e1")).await;
    w.until("exec start ended", || w.sup.state("c1", "e1").is_ok_and(|s| s.exit.is_some())).await;
    // Wait returns 255, no TaskExecStarted and no TaskExit were told for it
    assert_eq!(w.sup.wait("c1", "e1").await.unwrap().0, 255);
    assert_eq!(w.sup.router().in_flight(), 0, "the start's ticket is gone");
    // it holds nothing: init's exit goes out at once
    w.exit(init.pid(), 0);
    assert_eq!(w.events().await, ["create c1", "start c1", "exec-added e1", "exit c1 0"]);
    // and the exec can be deleted
    w.sup.delete(Call::background(), "c1", "e1").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn an_exit_reaped_before_its_pid_is_known_follows_the_start_event() {
    let mut w = World::new("early");
    let init = Alive::new();
    w.running("c1", init.pid(), false).await;
    w.add_exec("c1", "e1");
    let gate = Arc::new(Notify::new());
    w.fake.then("exec", Step::Gate(gate.clone(), GONE));
    let start = tokio::spawn({
        let sup = w.sup.clone();
        async move { sup.start(Call::background(), "c1", "e1").await }
    });
    w.fake.parked.notified().await;
    // runc exec is still running when its process is reaped: nobody knows the pid yet
    w.exit(GONE, 7);
    assert!(w.sup.state("c1", "e1").unwrap().exit.is_none());
    gate.notify_one();
    assert_eq!(start.await.unwrap().unwrap(), GONE as u32);
    assert_eq!(w.sup.wait("c1", "e1").await.unwrap().0, 7);
    assert_eq!(w.events().await, ["create c1", "start c1", "exec-added e1", "exec-started e1", "exit e1 7"]);
    assert_eq!(w.sup.router().kept(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_recycled_pid_is_never_matched_to_a_later_exec() {
    let mut w = World::new("recycled");
    let init = Alive::new();
    w.running("c1", init.pid(), false).await;
    // another start is in flight (c2's create), so exits of unknown pids are kept
    let gate = Arc::new(Notify::new());
    w.fake.then("create", Step::Gate(gate.clone(), init.pid()));
    let c2 = tokio::spawn({
        let (sup, req) = (w.sup.clone(), w.request("c2", false));
        async move { sup.create(Call::background(), req).await }
    });
    w.fake.parked.notified().await;
    // an orphan with pid P dies while c2's create runs ...
    let recycled = Alive::new();
    w.exit(recycled.pid(), 9);
    // ... and P is reused by e1's process, which is alive
    w.add_exec("c1", "e1");
    w.fake.then("exec", Step::Pid(recycled.pid()));
    w.sup.start(Call::background(), "c1", "e1").await.unwrap();
    assert_eq!(w.sup.state("c1", "e1").unwrap().status, State::Running, "the old exit must not be matched");
    // an exit of a live pid reaped during the exec's own start is not matched either (an
    // earlier process with that pid, untracked, died just before the pid was reused)
    let other = Alive::new();
    w.add_exec("c1", "e2");
    let gate2 = Arc::new(Notify::new());
    w.fake.then("exec", Step::Gate(gate2.clone(), other.pid()));
    let e2 = tokio::spawn({
        let sup = w.sup.clone();
        async move { sup.start(Call::background(), "c1", "e2").await }
    });
    w.fake.parked.notified().await;
    w.exit(other.pid(), 9);
    gate2.notify_one();
    e2.await.unwrap().unwrap();
    assert_eq!(w.sup.state("c1", "e2").unwrap().status, State::Running);
    gate.notify_one();
    c2.await.unwrap().unwrap();
    let ev = w.events().await;
    assert!(!ev.iter().any(|e| e.starts_with("exit")), "{ev:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn state_and_wait_do_not_see_init_stopped_before_its_exit_may_be_told() {
    let mut w = World::new("held");
    let init = Alive::new();
    let exec = Alive::new();
    w.with_exec("c1", init.pid(), exec.pid(), false).await;
    w.exit(init.pid(), 137);
    let s = w.sup.state("c1", "").unwrap();
    assert_eq!((s.status, s.exit), (State::Running, None), "init's exit is held behind e1");
    let waiting = tokio::spawn({
        let sup = w.sup.clone();
        async move { sup.wait("c1", "").await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    w.exit(exec.pid(), 137);
    assert_eq!(waiting.await.unwrap().unwrap().0, 137);
    let ev = w.events().await;
    assert_eq!(&ev[ev.len() - 2..], ["exit e1 137", "exit c1 137"], "execs' exits before init's");
}

#[tokio::test(flavor = "current_thread")]
async fn delete_while_init_exit_is_held_tells_it_before_task_delete() {
    let mut w = World::new("delheld");
    let init = Alive::new();
    let exec = Alive::new();
    w.with_exec("c1", init.pid(), exec.pid(), false).await;
    // containerd restarting deletes a task whose processes it found gone (production.md §2)
    w.exit(init.pid(), 3);
    let (_, status, _) = w.sup.delete(Call::background(), "c1", "").await.unwrap();
    assert_eq!(status, 3);
    let ev = w.events().await;
    assert_eq!(&ev[ev.len() - 2..], ["exit c1 3", "delete c1"], "a held TaskExit is never dropped: {ev:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn shared_pid_namespace_kills_the_rest_before_reporting_init() {
    let mut w = World::new("sharedpid");
    let init = Alive::new();
    let exec = Alive::new();
    w.with_exec("c1", init.pid(), exec.pid(), true).await;
    let gate = Arc::new(Notify::new());
    w.fake.then("kill", Step::Gate(gate.clone(), 0));
    w.exit(init.pid(), 0);
    w.fake.parked.notified().await;
    assert!(w.fake.called("kill c1 9 all=true"));
    assert_eq!(w.sup.state("c1", "").unwrap().status, State::Running, "not reported while the kill runs");
    gate.notify_one();
    w.until("kill done", || !matches!(w.sup.lock().containers["c1"].init.report, Report::KillingRest(_))).await;
    w.exit(exec.pid(), 137); // killed by the kill
    w.until("init told", || w.sup.state("c1", "").unwrap().exit.is_some()).await;
    let ev = w.events().await;
    assert_eq!(&ev[ev.len() - 2..], ["exit e1 137", "exit c1 0"]);
}

#[tokio::test(flavor = "current_thread")]
async fn init_exit_during_start_waits_for_task_start() {
    let mut w = World::new("initstart");
    let init = Alive::new();
    w.fake.then("create", Step::Pid(init.pid()));
    w.sup.create(Call::background(), w.request("c1", false)).await.unwrap();
    let gate = Arc::new(Notify::new());
    w.fake.then("start", Step::Gate(gate.clone(), 0));
    let start = tokio::spawn({
        let sup = w.sup.clone();
        async move { sup.start(Call::background(), "c1", "").await }
    });
    w.fake.parked.notified().await;
    w.exit(init.pid(), 1);
    gate.notify_one();
    start.await.unwrap().unwrap();
    assert_eq!(w.events().await, ["create c1", "start c1", "exit c1 1"]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_pid_gone_at_create_is_reported_with_its_exit() {
    let mut w = World::new("gonecreate");
    let gate = Arc::new(Notify::new());
    w.fake.then("create", Step::Gate(gate.clone(), GONE + 1));
    let create = tokio::spawn({
        let (sup, req) = (w.sup.clone(), w.request("c1", false));
        async move { sup.create(Call::background(), req).await }
    });
    w.fake.parked.notified().await;
    w.exit(GONE + 1, 2);
    gate.notify_one();
    create.await.unwrap().unwrap();
    assert_eq!(w.events().await, ["create c1", "exit c1 2"]);
}
