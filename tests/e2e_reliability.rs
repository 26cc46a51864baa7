//! Reliability tests (issue 7): faults and load the shim must survive, run in
//! minutes. Each test starts its own private containerd (tests/common).
//!
//! 1. `containerd_sigkill_under_load`: SIGKILL containerd with N containers and
//!    execs in flight; exits while it is down are reported once it is back, and
//!    no output is lost.
//! 2. `shim_sigkill_cleanup`: SIGKILL shims; containerd's cleanup (`delete`
//!    action) leaves no mount, socket or process and reports the real status.
//! 3. `exec_storm`: many short execs; every exit code right, no zombies, the
//!    shim's fds, threads and RSS unchanged.
//! 4. `exit_before_start_containers` / `_execs`: /bin/true many times; TaskExit
//!    always after TaskStart / TaskExecStarted, Wait always returns.
//! 5. `bad_frames_and_live_fuzz`, `bad_requests`: malformed ttrpc frames,
//!    mutated frames and invalid requests sent straight to a shim's socket;
//!    the shim must answer with the right code and keep serving (also while
//!    a runtime, a logger or a path blocks).
//! 6. `security_socket_and_fds`, `symlinked_bundle_report`.
//!
//! Figures and findings: docs/reliability.md.
//!
//! Sizes come from the environment (scripts/soak.sh raises them):
//!   RUSTSHIM_REL_CRASH_CONTAINERS (20), RUSTSHIM_REL_CRASH_EXECS (5),
//!   RUSTSHIM_REL_EXEC_STORM (500), RUSTSHIM_REL_EXEC_CONCURRENCY (16),
//!   RUSTSHIM_REL_EXIT_CONTAINERS (100), RUSTSHIM_REL_EXIT_EXECS (200),
//!   RUSTSHIM_REL_FUZZ_FRAMES (2000), RUSTSHIM_REL_RSS_SLACK_KIB (512).
//! Figures are printed as `RELIABILITY: ...` lines on stderr (not captured)
//! and appended to $RUSTSHIM_RELIABILITY_REPORT when set.
//!
//! Run: cargo test --test e2e_reliability -- --test-threads=2
//! Against the Go shim: RUSTSHIM_TEST_RUNTIME=io.containerd.runc.v2 cargo test --test e2e_reliability
mod common;

use common::*;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const V2: &str = "containerd.task.v2.Task";

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// `RUSTSHIM_REL_<NAME>` or the CI default.
fn size(name: &str, default: usize) -> usize {
    std::env::var(format!("RUSTSHIM_REL_{name}"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Runs `f(i)` for i in 0..n on `workers` threads; results in index order.
fn parallel<T: Send>(n: usize, workers: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..workers.max(1).min(n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                out.lock().unwrap()[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .unwrap()
        .into_iter()
        .map(|x| x.expect("worker died"))
        .collect()
}

fn out_str(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a process holds: open fds, threads, resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let st = proc_status(pid).unwrap_or_default();
    let field = |k: &str| -> u64 {
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        fds,
        threads: field("Threads:") as usize,
        rss_kib: field("VmRSS:"),
    }
}

/// Open fd numbers of a process with their targets.
fn fd_table(pid: u32) -> BTreeMap<u32, String> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                let t = fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                m.insert(n, t);
            }
        }
    }
    m
}

/// Pids whose argv is exactly `argv`.
fn pids_with_argv(argv: &[&str]) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| {
            proc_cmdline(*p)
                .map(|a| a.iter().map(|s| s.as_str()).eq(argv.iter().copied()))
                .unwrap_or(false)
                && pid_alive(*p)
        })
        .collect()
}

/// Reads a pid file (e.g. `<bundle>/<exec>.pid`).
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Parses "line N" lines; returns the numbers in order (incomplete or
/// malformed lines are skipped and counted).
fn line_numbers(text: &str) -> (Vec<u64>, usize) {
    let mut v = Vec::new();
    let mut bad = 0;
    for l in text.lines() {
        match l.strip_prefix("line ").and_then(|n| n.trim().parse().ok()) {
            Some(n) => v.push(n),
            None => bad += 1,
        }
    }
    (v, bad)
}

/// First index where numbers stop being consecutive.
fn first_gap(v: &[u64]) -> Option<(usize, u64, u64)> {
    v.windows(2)
        .position(|w| w[1] != w[0] + 1)
        .map(|i| (i, v[i], v[i + 1]))
}

// ---------------------------------------------------------------------------
// a ttrpc client speaking straight to a shim
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum CallErr {
    Status(ttrpc::Code, String),
    Transport(String),
}

impl CallErr {
    fn code(&self) -> Option<ttrpc::Code> {
        match self {
            CallErr::Status(c, _) => Some(*c),
            CallErr::Transport(_) => None,
        }
    }
    fn message(&self) -> String {
        match self {
            CallErr::Status(_, m) | CallErr::Transport(m) => m.clone(),
        }
    }
}

struct ShimClient {
    client: ttrpc::Client,
    ns: String,
}

impl ShimClient {
    fn connect(sock: &Path, ns: &str) -> ShimClient {
        let client = ttrpc::Client::connect(&format!("unix://{}", sock.display()))
            .unwrap_or_else(|e| panic!("connect to shim socket {}: {e:?}", sock.display()));
        ShimClient {
            client,
            ns: ns.to_string(),
        }
    }

    /// One `containerd.task.v2.Task` call (both shims serve v2), with
    /// containerd's namespace header (the Go shim needs it for Create).
    fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallErr> {
        let mut r = ttrpc::Request::new();
        r.service = V2.into();
        r.method = method.into();
        r.payload = req.write_to_bytes().unwrap();
        r.timeout_nano = timeout.as_nanos() as i64;
        let mut kv = ttrpc::proto::KeyValue::new();
        kv.key = "containerd-namespace-ttrpc".into();
        kv.value = self.ns.clone();
        r.metadata.push(kv);
        match self.client.request(r) {
            Ok(resp) => Resp::parse_from_bytes(&resp.payload)
                .map_err(|e| CallErr::Transport(format!("decode reply: {e}"))),
            Err(ttrpc::Error::RpcStatus(s)) => Err(CallErr::Status(s.code(), s.message)),
            Err(e) => Err(CallErr::Transport(format!("{e:?}"))),
        }
    }

    fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, CallErr> {
        let req = api::StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.call("State", &req, Duration::from_secs(10))
    }
}

/// A `containerd.runc.v1.Options` Any naming the runtime binary.
fn runc_options(binary: &str) -> MessageField<Any> {
    let o = RuncOptions {
        binary_name: binary.into(),
        ..Default::default()
    };
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = o.write_to_bytes().unwrap();
    MessageField::some(any)
}

/// A bundle directory with a valid, non-terminal config.json (from `runc
/// spec`) running `args` in `rootfs` (relative to the bundle or absolute).
fn make_bundle(dir: &Path, rootfs: &str, args: &[&str]) {
    fs::create_dir_all(dir).unwrap();
    let o = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(dir)
        .output()
        .expect("runc spec");
    assert!(o.status.success(), "runc spec: {}", describe(&o));
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    v["process"]["terminal"] = serde_json::Value::Bool(false);
    v["process"]["args"] = serde_json::json!(args);
    v["root"]["path"] = serde_json::Value::String(rootfs.into());
    v["root"]["readonly"] = serde_json::Value::Bool(false);
    fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// A minimal rootfs: static busybox and a few applets.
fn make_rootfs(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy /bin/busybox");
    for a in ["sh", "true", "sleep", "ls", "cat"] {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(a));
    }
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
}

// ---------------------------------------------------------------------------
// 1. containerd crash under load
// ---------------------------------------------------------------------------

/// A relay from `front` (the ttrpc address the shims were started with) to
/// `back` (where the restarted containerd serves ttrpc). Until it is opened
/// nothing listens at `front`, so the shims' event publishing fails and is
/// retried. This makes "events are retried until containerd is back"
/// observable without racing the shims' retry timers: the test subscribes
/// to events first, then opens the gate.
struct Gate {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    accepted: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Gate {
    fn open(front: &Path, back: &Path) -> Gate {
        let _ = fs::remove_file(front);
        let l = std::os::unix::net::UnixListener::bind(front).expect("bind gate");
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (st, cs, acc, back) = (
            stop.clone(),
            conns.clone(),
            accepted.clone(),
            back.to_path_buf(),
        );
        let thread = thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let Ok(b) = UnixStream::connect(&back) else {
                            continue;
                        };
                        acc.fetch_add(1, Ordering::Relaxed);
                        for (mut from, mut to) in [
                            (c.try_clone().unwrap(), b.try_clone().unwrap()),
                            (b.try_clone().unwrap(), c.try_clone().unwrap()),
                        ] {
                            thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Write);
                            });
                        }
                        let mut g = cs.lock().unwrap();
                        g.push(c);
                        g.push(b);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Gate {
            stop,
            conns,
            accepted,
            thread: Some(thread),
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().iter() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn exiter_status(i: usize) -> u32 {
    10 + (i as u32 % 50)
}

#[test]
fn containerd_sigkill_under_load() {
    const NAME: &str = "containerd_sigkill_under_load";
    let Some(mut c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    let n = size("CRASH_CONTAINERS", 20).max(4);
    let n_execs = size("CRASH_EXECS", 5).max(1);
    let t0 = Instant::now();
    let ev = EventStream::start(&c);

    // Containers wait on a trigger file that is created while containerd is down.
    let trig = c.dir.join("trigger");
    fs::create_dir_all(&trig).unwrap();
    let mnt = format!(
        "type=bind,src={},dst=/trigger,options=rbind:rw",
        trig.display()
    );
    let wait_trigger = "while [ ! -e /trigger/go ]; do sleep 0.1; done";
    let is_exiter = |i: usize| i % 4 == 1;
    let ids: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    parallel(n, 4, |i| {
        let script = format!("{wait_trigger}; exit {}", exiter_status(i));
        let cmd: Vec<&str> = if is_exiter(i) {
            vec!["sh", "-c", &script]
        } else {
            vec!["sleep", "100000"]
        };
        c.run_detached(&["--mount", &mnt], &ids[i], &cmd);
    });
    let exiters: Vec<usize> = (0..n).filter(|i| is_exiter(*i)).collect();
    let sleepers: Vec<usize> = (0..n).filter(|i| !is_exiter(*i)).collect();

    // A printer whose stdout goes to a file (log URI): no line may be lost.
    let log_file = c.dir.join("kp.log");
    let log_uri = format!("file://{}", log_file.display());
    let printer = "i=0; while true; do echo line $i; i=$((i+1)); if [ $((i % 200)) -eq 0 ]; then sleep 0.02; fi; done";
    c.run_detached(&["--log-uri", &log_uri], "kp", &["sh", "-c", printer]);
    // A printer read through FIFOs by an attached client that crashes too.
    let fifo_printer = "i=0; while true; do echo line $i; i=$((i+1)); done";
    let args = c.run_args(&[], "kf", &["sh", "-c", fifo_printer]);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut attached = Background::spawn(c.ctr_cmd(&a));
    assert!(
        wait_until(T, || attached.output_len() > 200_000),
        "FIFO printer produced too little output"
    );

    // Execs in flight: attached clients, processes waiting on the trigger.
    let exec_target = |j: usize| ids[sleepers[j % sleepers.len()]].clone();
    let mut exec_clients = Vec::new();
    for j in 0..n_execs {
        let script = format!("{wait_trigger}; exit {}", 20 + j);
        let args = c.exec_args(
            &[],
            &exec_target(j),
            &format!("x{j}"),
            &["sh", "-c", &script],
        );
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        exec_clients.push(Background::spawn(c.ctr_cmd(&a)));
    }
    for j in 0..n_execs {
        let t = exec_target(j);
        let x = format!("x{j}");
        ev.wait_for(&format!("exec-started {t}/{x}"), T, |evs| {
            evs.iter().any(|e| {
                e.topic == "/tasks/exec-started"
                    && e.container_id().as_deref() == Some(t.as_str())
                    && e.exec_id().as_deref() == Some(x.as_str())
            })
        });
    }
    let tasks = c.tasks();
    let pid_of: HashMap<String, u32> = tasks.iter().map(|t| (t.0.clone(), t.1)).collect();
    for id in ids
        .iter()
        .chain(["kp".to_string(), "kf".to_string()].iter())
    {
        let st = tasks.iter().find(|t| &t.0 == id).map(|t| t.2.as_str());
        assert_eq!(
            st,
            Some("RUNNING"),
            "{id} not running before the crash: {tasks:?}"
        );
    }
    let shims_before: HashMap<String, u32> = ids
        .iter()
        .chain(["kp".to_string(), "kf".to_string()].iter())
        .map(|id| (id.clone(), c.shim_pid(id)))
        .collect();
    let exec_pids: Vec<u32> = (0..n_execs)
        .map(|j| {
            let f = c.bundle(&exec_target(j)).join(format!("x{j}.pid"));
            let mut p = None;
            wait_until(Duration::from_secs(5), || {
                p = read_pid(&f);
                p.is_some()
            });
            p.unwrap_or_else(|| panic!("no pid file {}", f.display()))
        })
        .collect();
    drop(ev);
    let setup = t0.elapsed();

    // Execs racing with the crash (outcome not asserted, only harmlessness).
    let mut racing = Vec::new();
    for j in 0..n_execs {
        let args = c.exec_args(
            &[],
            &exec_target(j + 1),
            &format!("r{j}"),
            &["sh", "-c", "sleep 1; exit 7"],
        );
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        racing.push(Background::spawn(c.ctr_cmd(&a)));
        // staggered, so the crash hits them at different stages
        thread::sleep(Duration::from_millis(15));
    }

    // --- the crash: the attached client and containerd die together
    attached.kill();
    let before_max_fifo = line_numbers(&attached.output())
        .0
        .into_iter()
        .max()
        .unwrap_or(0);
    c.stop("SIGKILL");
    let down_at = Instant::now();
    let log_len_at_crash = fs::metadata(&log_file).map(|m| m.len()).unwrap_or(0);
    // The restarted containerd serves ttrpc elsewhere; the address the shims
    // know stays dead until the gate opens (see Gate).
    let front = PathBuf::from(format!("{}.ttrpc", c.sock.display()));
    let back = c.dir.join("real.ttrpc");
    let _ = fs::remove_file(&front);
    let mut cfg = fs::read_to_string(c.dir.join("config.toml")).unwrap();
    cfg.push_str(&format!("\n[ttrpc]\n  address = \"{}\"\n", back.display()));
    fs::write(c.dir.join("config.toml"), cfg).unwrap();
    // exits while containerd is down
    fs::write(trig.join("go"), b"").unwrap();
    let mut exited_while_down = true;
    for i in &exiters {
        let pid = pid_of[&ids[*i]];
        exited_while_down &= wait_until(Duration::from_secs(10), || !pid_alive(pid));
    }
    for p in &exec_pids {
        exited_while_down &= wait_until(Duration::from_secs(10), || !pid_alive(*p));
    }
    assert!(exited_while_down, "triggered processes did not exit");
    // stay down long enough that the shims' first publish attempts fail
    thread::sleep(Duration::from_secs(3));
    for (id, shim) in &shims_before {
        assert!(
            pid_alive(*shim),
            "shim of {id} died while containerd was down"
        );
    }
    for i in &sleepers {
        assert!(
            pid_alive(pid_of[&ids[*i]]),
            "{} died while containerd was down",
            ids[*i]
        );
    }
    assert!(
        pid_alive(pid_of["kf"]),
        "FIFO printer died while nobody read (SIGPIPE?)"
    );
    let log_len_before_restart = fs::metadata(&log_file).map(|m| m.len()).unwrap_or(0);
    assert!(
        log_len_before_restart > log_len_at_crash,
        "log-uri file did not grow while containerd was down ({log_len_at_crash} -> {log_len_before_restart})"
    );
    let downtime = down_at.elapsed();
    for r in racing.iter_mut() {
        r.kill();
    }
    for x in exec_clients.iter_mut() {
        x.kill();
    }

    // --- containerd comes back; events stay blocked until we listen
    c.start_again();
    let ev2 = EventStream::start(&c);
    thread::sleep(Duration::from_secs(2));
    let tasks_while_gated = c.tasks();
    let gate = Gate::open(&front, &back);
    let back_at = Instant::now();

    // every exit that happened while it was down is reported, once, with its status
    let want: Vec<(String, String, u32)> = exiters
        .iter()
        .map(|i| (ids[*i].clone(), ids[*i].clone(), exiter_status(*i)))
        .chain((0..n_execs).map(|j| (exec_target(j), format!("x{j}"), 20 + j as u32)))
        .collect();
    let evs = ev2.wait_for(
        "exits that happened while containerd was down",
        Duration::from_secs(60),
        |evs| {
            want.iter().all(|(cid, id, _)| {
                evs.iter().any(|e| {
                    e.topic == "/tasks/exit"
                        && e.container_id().as_deref() == Some(cid.as_str())
                        && e.id().as_deref() == Some(id.as_str())
                })
            })
        },
    );
    let delivered_after = back_at.elapsed();
    let gate_conns = gate.accepted.load(Ordering::Relaxed);
    for (cid, id, status) in &want {
        let exits: Vec<&Event> = evs
            .iter()
            .filter(|e| {
                e.topic == "/tasks/exit"
                    && e.container_id().as_deref() == Some(cid.as_str())
                    && e.id().as_deref() == Some(id.as_str())
            })
            .collect();
        assert_eq!(
            exits.len(),
            1,
            "{cid}/{id}: expected one /tasks/exit, got {exits:#?}"
        );
        assert_eq!(
            exits[0].exit_status(),
            *status,
            "{cid}/{id}: {}",
            exits[0].line
        );
    }

    // containers survived: same pids, same shims (and the state was right even
    // before any event got through)
    for i in &exiters {
        let id = &ids[*i];
        if let Some(t) = tasks_while_gated.iter().find(|t| &t.0 == id) {
            assert_eq!(
                t.2, "STOPPED",
                "{id} before its exit event was delivered: {tasks_while_gated:?}"
            );
        }
    }
    let tasks = c.tasks();
    for i in &sleepers {
        let id = &ids[*i];
        let t = tasks
            .iter()
            .find(|t| &t.0 == id)
            .unwrap_or_else(|| panic!("{id} missing: {tasks:?}"));
        assert_eq!(
            (t.1, t.2.as_str()),
            (pid_of[id], "RUNNING"),
            "{id} after restart"
        );
    }
    for id in ["kp", "kf"] {
        let t = tasks
            .iter()
            .find(|t| t.0 == id)
            .unwrap_or_else(|| panic!("{id} missing: {tasks:?}"));
        assert_eq!(
            (t.1, t.2.as_str()),
            (pid_of[id], "RUNNING"),
            "{id} after restart"
        );
    }
    // Stopped tasks are kept (STOPPED) by containerd 1.6 and 2.x; containerd
    // 1.7 deletes them while loading ("cleaning leaked shim process": Pids is
    // empty), and the shim's Delete then reports the real status.
    let mut removed_at_restart = Vec::new();
    for i in &exiters {
        let id = &ids[*i];
        match tasks.iter().find(|t| &t.0 == id) {
            Some(t) => assert_eq!(t.2, "STOPPED", "{id} after restart: {tasks:?}"),
            None => {
                let d = ev2.wait_delete(id, T);
                assert_eq!(
                    d.exit_status(),
                    exiter_status(*i),
                    "{id} removed at restart: {}",
                    d.line
                );
                removed_at_restart.push(id.clone());
            }
        }
    }
    for (id, shim) in &shims_before {
        if removed_at_restart.contains(id) {
            continue;
        }
        assert_eq!(c.shim_pids(id), vec![*shim], "shim of {id} replaced");
    }

    // Wait through containerd: `ctr task attach` returns the exit code of a stopped task
    for i in exiters
        .iter()
        .filter(|i| !removed_at_restart.contains(&ids[**i]))
        .take(3)
    {
        let o = c.ctr(&["task", "attach", &ids[*i]]);
        assert_eq!(
            exit_code(&o.status) as u32,
            exiter_status(*i),
            "Wait (ctr task attach) on {}: {}",
            ids[*i],
            describe(&o)
        );
    }

    // re-attach to the FIFO printer: numbers continue without a gap
    let mut att = Background::spawn(c.ctr_cmd(&["task", "attach", "kf"]));
    assert!(
        wait_until(T, || line_numbers(&att.output()).0.len() > 50_000),
        "no output after re-attach: {:?}",
        att.output().chars().take(500).collect::<String>()
    );
    // detach: SIGKILL to ctr only (a TERM would be forwarded to the task)
    att.kill();
    let (nums, _) = line_numbers(&att.output());
    // the first line may be cut: the FIFO resumes where the dead client stopped reading
    let nums = &nums[1..];
    if let Some((at, a, b)) = first_gap(nums) {
        panic!("FIFO output after re-attach has a gap at {at}: {a} -> {b}");
    }
    let first_after = nums[0];
    assert!(
        first_after > before_max_fifo && first_after <= before_max_fifo + 8000,
        "FIFO output resumed at line {first_after}, last line the crashed client printed was {before_max_fifo}"
    );

    // the log-uri file: every line from 0, none lost or repeated
    thread::sleep(Duration::from_millis(200));
    let text = fs::read_to_string(&log_file).unwrap();
    let complete = &text[..text.rfind('\n').map(|p| p + 1).unwrap_or(0)];
    let (nums, bad) = line_numbers(complete);
    assert_eq!(bad, 0, "malformed lines in {}", log_file.display());
    assert_eq!(nums.first(), Some(&0));
    if let Some((at, a, b)) = first_gap(&nums) {
        panic!("log-uri output has a gap at line index {at}: {a} -> {b}");
    }

    // the execs' exits are kept by the shim too: Wait straight on the shim
    for j in 0..n_execs {
        let t = exec_target(j);
        let cl = ShimClient::connect(&c.shim_socket(&t).unwrap(), &c.ns);
        let w = api::WaitRequest {
            id: t.clone(),
            exec_id: format!("x{j}"),
            ..Default::default()
        };
        let r = cl.call::<_, api::WaitResponse>("Wait", &w, Duration::from_secs(5));
        assert_eq!(
            r.map(|w| w.exit_status).ok(),
            Some(20 + j as u32),
            "Wait on {t}/x{j} after restart"
        );
    }

    // racing execs: those that reached the shim and started must have their
    // exit reported; the others must have left nothing running
    let mut racing = Vec::new();
    for j in 0..n_execs {
        let (t, x) = (exec_target(j + 1), format!("r{j}"));
        let cl = ShimClient::connect(&c.shim_socket(&t).unwrap(), &c.ns);
        let fate = match cl.state(&t, &x) {
            Err(CallErr::Status(ttrpc::Code::NOT_FOUND, _)) => "never reached the shim".to_string(),
            Err(e) => panic!("State {t}/{x}: {e:?}"),
            Ok(st) if st.pid == 0 => format!("added, never started ({:?})", st.status),
            Ok(st) => {
                let evs = ev2.wait_for(&format!("exit of racing exec {t}/{x}"), T, |evs| {
                    evs.iter()
                        .any(|e| e.topic == "/tasks/exit" && e.id().as_deref() == Some(x.as_str()))
                });
                let e = evs
                    .iter()
                    .find(|e| e.topic == "/tasks/exit" && e.id().as_deref() == Some(x.as_str()))
                    .unwrap();
                assert_eq!(e.exit_status(), 7, "{}", e.line);
                assert_eq!(st.exit_status, 7, "State of {t}/{x}");
                "started, exit 7 reported".to_string()
            }
        };
        racing.push(format!("{x}: {fate}"));
    }
    thread::sleep(Duration::from_millis(1500));
    for (id, shim) in &shims_before {
        if removed_at_restart.contains(id) {
            continue;
        }
        assert!(
            wait_until(Duration::from_secs(5), || zombies_of(*shim).is_empty()),
            "zombies under the shim of {id}: {:?}",
            zombies_of(*shim)
        );
    }
    // and serve new work
    for i in sleepers.iter().take(3) {
        let o = c.exec(&[], &ids[*i], "after", &["sh", "-c", "echo ok; exit 4"]);
        assert_eq!(exit_code(&o.status), 4, "{}", describe(&o));
        assert_eq!(out_str(&o), "ok\n");
    }

    report(
        NAME,
        &format!(
            "{n} containers + 2 printers, {n_execs} execs in flight, {} exits while down; setup {:.1}s, containerd down {:.1}s \
             (+2s with events blocked after restart); all exits reported {:.1}s after events could flow again ({gate_conns} shim connections), \
             each once with its status; FIFO resumed at line {first_after} \
             (crashed client saw {before_max_fifo}), log-uri file {} lines gap-free; racing execs: {racing:?}; \
             stopped tasks containerd removed at restart: {}",
            want.len(),
            setup.as_secs_f64(),
            downtime.as_secs_f64(),
            delivered_after.as_secs_f64(),
            nums.len(),
            removed_at_restart.len()
        ),
    );

    // everything deletes and every shim goes away
    let all: Vec<String> = ids
        .iter()
        .cloned()
        .chain(["kp".into(), "kf".into()])
        .collect();
    parallel(all.len(), 4, |i| c.remove(&all[i]));
    assert!(
        wait_until(Duration::from_secs(20), || c.all_shim_pids().is_empty()),
        "shims left after deleting everything: {:?}",
        c.all_shim_pids()
    );
}

// ---------------------------------------------------------------------------
// 2. shim crash
// ---------------------------------------------------------------------------

#[test]
fn shim_sigkill_cleanup() {
    const NAME: &str = "shim_sigkill_cleanup";
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    let ev = EventStream::start(&c);

    c.run_detached(&[], "se", &["sh", "-c", "exit 3"]);
    let x = ev.wait_exit("se", "se", T);
    assert_eq!(x.exit_status(), 3);
    c.wait_status("se", "STOPPED", T);
    c.run_detached(&[], "sr", &["sleep", "100000"]);
    c.wait_status("sr", "RUNNING", T);
    c.ctr_ok(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "sx",
        "sr",
        "sleep",
        "100000",
    ]);

    struct Info {
        id: &'static str,
        shim: u32,
        sock: PathBuf,
        bundle: PathBuf,
        pid: u32,
        runc_state: PathBuf,
    }
    let infos: Vec<Info> = ["se", "sr"]
        .into_iter()
        .map(|id| Info {
            id,
            shim: c.shim_pid(id),
            sock: c.shim_socket(id).expect("address file"),
            bundle: c.bundle(id),
            pid: c.task_pid(id).unwrap(),
            runc_state: PathBuf::from(format!("/run/containerd/runc/{}/{id}", c.ns)),
        })
        .collect();
    let exec_pid = read_pid(&c.bundle("sr").join("sx.pid")).expect("sx.pid");
    assert!(pid_alive(exec_pid));
    for i in &infos {
        assert!(i.sock.exists(), "{}: socket missing before the crash", i.id);
    }
    let mark = ev.lines().len();

    for i in &infos {
        send_signal(i.shim, "KILL");
    }
    let t0 = Instant::now();
    // containerd notices, runs `<shim> delete`, publishes exit + delete
    ev.wait_for("exit and delete after the shim crash", T, |evs| {
        ["se", "sr"].iter().all(|id| {
            evs.iter()
                .any(|e| e.topic == "/tasks/delete" && e.container_id().as_deref() == Some(id))
        })
    });
    let cleaned_in = t0.elapsed();
    // the events that arrived after the crash
    let tail: HashSet<String> = ev.lines()[mark..].iter().cloned().collect();
    let after_crash: Vec<Event> = ev
        .events()
        .into_iter()
        .filter(|e| tail.contains(&e.line))
        .collect();
    let exit_of = |id: &str| {
        after_crash
            .iter()
            .find(|e| e.topic == "/tasks/exit" && e.container_id().as_deref() == Some(id))
            .map(|e| e.exit_status())
    };
    let delete_of = |id: &str| {
        after_crash
            .iter()
            .find(|e| e.topic == "/tasks/delete" && e.container_id().as_deref() == Some(id))
            .map(|e| e.exit_status())
    };
    let (se_exit, se_del) = (exit_of("se"), delete_of("se"));
    let (sr_exit, sr_del) = (exit_of("sr"), delete_of("sr"));
    report(
        NAME,
        &format!(
            "after SIGKILL of the shims: exited container (real status 3) reported exit={se_exit:?} delete={se_del:?}; \
             running container reported exit={sr_exit:?} delete={sr_del:?}; cleanup seen after {:.1}s",
            cleaned_in.as_secs_f64()
        ),
    );
    if is_rustshim() {
        assert_eq!(
            se_del,
            Some(3),
            "the real exit status must survive a shim crash (exit-status file)"
        );
        if let Some(s) = se_exit {
            assert_eq!(s, 3, "exit event after shim crash");
        }
    }
    assert_eq!(sr_del, Some(137), "running container killed by cleanup");

    // nothing left: processes, mounts, sockets, runc state, bundles, tasks
    let mut leftovers = Vec::new();
    let gone = wait_until(Duration::from_secs(10), || {
        leftovers.clear();
        for i in &infos {
            if pid_alive(i.shim) {
                leftovers.push(format!("{}: shim {} alive", i.id, i.shim));
            }
            if pid_alive(i.pid) {
                leftovers.push(format!("{}: container pid {} alive", i.id, i.pid));
            }
            let m = mounts_under(&i.bundle);
            if !m.is_empty() {
                leftovers.push(format!("{}: mounts {m:?}", i.id));
            }
            if i.runc_state.exists() {
                leftovers.push(format!("{}: runc state {}", i.id, i.runc_state.display()));
            }
            if i.bundle.exists() {
                leftovers.push(format!("{}: bundle {}", i.id, i.bundle.display()));
            }
        }
        if pid_alive(exec_pid) {
            leftovers.push(format!("exec pid {exec_pid} alive"));
        }
        leftovers.is_empty()
    });
    assert!(gone, "left behind after the shim crash: {leftovers:#?}");
    let sockets_left: Vec<String> = infos
        .iter()
        .filter(|i| i.sock.exists())
        .map(|i| format!("{}: {}", i.id, i.sock.display()))
        .collect();
    report(
        NAME,
        &format!("shim sockets left after crash cleanup: {sockets_left:?}"),
    );
    let tasks = c.tasks();
    assert!(
        !tasks.iter().any(|t| t.0 == "se" || t.0 == "sr"),
        "tasks still listed after the crash: {tasks:?}"
    );
    let mut delete_procs = Vec::new();
    for pid in all_pids() {
        if let Some(a) = proc_cmdline(pid) {
            if a.last().map(|s| s == "delete").unwrap_or(false)
                && a[0].contains("containerd-shim")
                && a.iter().any(|x| x.contains(&c.ns))
            {
                delete_procs.push(pid);
            }
        }
    }
    assert!(
        delete_procs.is_empty(),
        "`delete` processes left: {delete_procs:?}"
    );

    // the same container id gets a new task (and shim) on the same socket path
    c.ctr_ok(&["task", "start", "-d", "--fifo-dir", &c.fifo_dir(), "sr"]);
    c.wait_status("sr", "RUNNING", T);
    let o = c.exec(&[], "sr", "again", &["echo", "alive"]);
    c.check_ok(&["exec again"], &o);
    assert_eq!(out_str(&o), "alive\n");
    c.remove("sr");
    let _ = c.ctr(&["container", "delete", "se"]);
    // last, so everything above is checked too: the Go shim (and containerd
    // 1.6) leave the socket of a killed shim behind; rustshim's `delete` must not
    if is_rustshim() {
        assert!(
            sockets_left.is_empty(),
            "shim sockets left after containerd's cleanup of a crashed shim: {sockets_left:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. exec storm
// ---------------------------------------------------------------------------

#[test]
fn exec_storm() {
    const NAME: &str = "exec_storm";
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    let n = size("EXEC_STORM", 500);
    let conc = size("EXEC_CONCURRENCY", 16);
    let slack = size("RSS_SLACK_KIB", 512) as u64;
    let ev = EventStream::start(&c);
    c.run_detached(&[], "es", &["sleep", "100000"]);
    let shim = c.shim_pid("es");

    let run = |prefix: &str, i: usize| -> Result<(), String> {
        let eid = format!("{prefix}{i}");
        let script = format!("i={i}; exit $((i % 7))");
        let o = c.exec(&[], "es", &eid, &["sh", "-c", &script]);
        let code = exit_code(&o.status);
        if code != (i % 7) as i32 || !o.stdout.is_empty() {
            return Err(format!(
                "exec {eid}: want {} got {code}\n{}",
                i % 7,
                describe(&o)
            ));
        }
        Ok(())
    };
    // warm up (lazy allocations, thread pools), then settle
    let warm = conc.max(8) * 2;
    for r in parallel(warm, conc, |i| run("w", i)) {
        r.unwrap();
    }
    let settle = || {
        // Idle pool threads of tokio/Go and exited runc must be gone. A blocking-pool thread
        // (the rootfs mount's, say) lingers 10 s after its last job, longer than "unchanged for
        // 1 s": rustshim idles on one thread, so its figures count only once it is back to one.
        let mut last = usage(shim);
        let mut stable = 0;
        wait_until(Duration::from_secs(30), || {
            thread::sleep(Duration::from_millis(250));
            let u = usage(shim);
            if u == last && zombies_of(shim).is_empty() && (!is_rustshim() || u.threads == 1) {
                stable += 1;
            } else {
                stable = 0;
            }
            last = u;
            stable >= 4
        });
        last
    };
    let before = settle();
    let kids_before = children_of(shim).len();

    let t0 = Instant::now();
    let results = parallel(n, conc, |i| run("s", i));
    let took = t0.elapsed();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();

    let after = settle();
    let kids_after = children_of(shim).len();
    let zombies = zombies_of(shim);

    // containerd saw one exit per exec, with its status
    let evs = ev.wait_for("exit events of the storm", T, |evs| {
        evs.iter()
            .filter(|e| {
                e.topic == "/tasks/exit" && e.id().map(|x| x.starts_with('s')).unwrap_or(false)
            })
            .count()
            >= n
    });
    let mut per_exec: HashMap<String, Vec<u32>> = HashMap::new();
    for e in evs
        .iter()
        .filter(|e| e.topic == "/tasks/exit" && e.container_id().as_deref() == Some("es"))
    {
        if let Some(id) = e.id().filter(|x| x.starts_with('s')) {
            per_exec.entry(id).or_default().push(e.exit_status());
        }
    }
    let mut bad_events = Vec::new();
    for i in 0..n {
        let id = format!("s{i}");
        match per_exec.get(&id) {
            Some(v) if v == &vec![(i % 7) as u32] => {}
            other => bad_events.push(format!("{id}: {other:?}")),
        }
    }

    report(
        NAME,
        &format!(
            "{n} execs ({conc} concurrent) in {:.1}s ({:.0}/s): {} wrong exit codes, {} wrong exit events; \
             shim fds {} -> {}, threads {} -> {}, RSS {} KiB -> {} KiB ({:+} KiB); children {kids_before} -> {kids_after}, zombies {}",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            failures.len(),
            bad_events.len(),
            before.fds,
            after.fds,
            before.threads,
            after.threads,
            before.rss_kib,
            after.rss_kib,
            after.rss_kib as i64 - before.rss_kib as i64,
            zombies.len()
        ),
    );
    assert!(
        failures.is_empty(),
        "{} execs failed; first: {}",
        failures.len(),
        failures[0]
    );
    assert!(
        bad_events.is_empty(),
        "wrong /tasks/exit events: {:?}",
        &bad_events[..bad_events.len().min(10)]
    );
    assert!(
        zombies.is_empty(),
        "zombie children of the shim: {zombies:?}"
    );
    assert_eq!(
        kids_after,
        kids_before,
        "shim children: {:?}",
        children_of(shim)
    );
    // (the Go shim's runtime opens and keeps the odd fd and thread: its
    // figures are reported, not asserted)
    if is_rustshim() {
        assert_eq!(
            after.fds,
            before.fds,
            "shim fd count changed: {:?}",
            fd_table(shim)
        );
        assert_eq!(after.threads, before.threads, "shim thread count changed");
        assert!(
            after.rss_kib <= before.rss_kib + slack,
            "shim RSS grew {} KiB -> {} KiB (slack {slack} KiB)",
            before.rss_kib,
            after.rss_kib
        );
    }
    c.remove("es");
}

// ---------------------------------------------------------------------------
// 4. exit before start
// ---------------------------------------------------------------------------

#[test]
fn exit_before_start_containers() {
    const NAME: &str = "exit_before_start_containers";
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    let n = size("EXIT_CONTAINERS", 100);
    let ev = EventStream::start(&c);
    let t0 = Instant::now();
    let results = parallel(n, 4, |i| {
        let id = format!("t{i}");
        let o = c.run(&["--rm"], &id, &["/bin/true"]);
        if o.status.success() && o.stdout.is_empty() {
            Ok(())
        } else {
            Err(format!("{id}: {}", describe(&o)))
        }
    });
    let took = t0.elapsed();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} runs failed (Wait must return); first: {}",
        failures.len(),
        failures[0]
    );
    for i in 0..n {
        ev.wait_delete(&format!("t{i}"), T);
    }
    thread::sleep(Duration::from_millis(500));
    let mut bad = Vec::new();
    for i in 0..n {
        let id = format!("t{i}");
        let evs = ev.task_events(&id);
        let topics: Vec<&str> = evs.iter().map(|e| e.topic.as_str()).collect();
        if topics
            != [
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete",
            ]
        {
            bad.push(format!("{id}: {topics:?}"));
            continue;
        }
        if evs[2].pid() != evs[1].pid()
            || evs[1].pid().unwrap_or(0) == 0
            || evs[2].exit_status() != 0
        {
            bad.push(format!(
                "{id}: start {} / exit {}",
                evs[1].line, evs[2].line
            ));
        }
    }
    report(
        NAME,
        &format!(
            "{n} x `ctr run --rm /bin/true` (4 concurrent) in {:.1}s: all returned 0; {} with wrong event order",
            took.as_secs_f64(),
            bad.len()
        ),
    );
    assert!(bad.is_empty(), "wrong task events:\n{}", bad.join("\n"));
    assert!(
        wait_until(Duration::from_secs(10), || c.all_shim_pids().is_empty()),
        "shims left: {:?}",
        c.all_shim_pids()
    );
}

#[test]
fn exit_before_start_execs() {
    const NAME: &str = "exit_before_start_execs";
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    let n = size("EXIT_EXECS", 200);
    let ev = EventStream::start(&c);
    c.run_detached(&[], "eb", &["sleep", "100000"]);
    let t0 = Instant::now();
    let results = parallel(n, 8, |i| {
        let eid = format!("q{i}");
        let o = c.exec(&[], "eb", &eid, &["/bin/true"]);
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("{eid}: {}", describe(&o)))
        }
    });
    let took = t0.elapsed();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} execs failed (Wait must return); first: {}",
        failures.len(),
        failures[0]
    );
    ev.wait_for("all exec exits", T, |evs| {
        evs.iter()
            .filter(|e| {
                e.topic == "/tasks/exit" && e.id().map(|x| x.starts_with('q')).unwrap_or(false)
            })
            .count()
            >= n
    });
    thread::sleep(Duration::from_millis(500));
    let evs = ev.task_events("eb");
    let mut bad = Vec::new();
    for i in 0..n {
        let eid = format!("q{i}");
        let pos = |topic: &str| -> Vec<usize> {
            evs.iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.topic == topic
                        && (e.exec_id().as_deref() == Some(eid.as_str())
                            || (topic == "/tasks/exit" && e.id().as_deref() == Some(eid.as_str())))
                })
                .map(|(k, _)| k)
                .collect()
        };
        let (added, started, exit) = (
            pos("/tasks/exec-added"),
            pos("/tasks/exec-started"),
            pos("/tasks/exit"),
        );
        if added.len() != 1 || started.len() != 1 || exit.len() != 1 {
            bad.push(format!(
                "{eid}: added {added:?} started {started:?} exit {exit:?}"
            ));
        } else if !(added[0] < started[0] && started[0] < exit[0]) {
            bad.push(format!(
                "{eid}: order added {} started {} exit {}",
                added[0], started[0], exit[0]
            ));
        } else if evs[started[0]].pid() != evs[exit[0]].pid() || evs[exit[0]].exit_status() != 0 {
            bad.push(format!(
                "{eid}: {} / {}",
                evs[started[0]].line, evs[exit[0]].line
            ));
        }
    }
    report(
        NAME,
        &format!(
            "{n} x `ctr task exec /bin/true` (8 concurrent) in {:.1}s: all returned 0; {} with wrong event order",
            took.as_secs_f64(),
            bad.len()
        ),
    );
    assert!(bad.is_empty(), "wrong exec events:\n{}", bad.join("\n"));
    c.remove("eb");
}

// ---------------------------------------------------------------------------
// 5a. malformed frames, straight to the shim socket
// ---------------------------------------------------------------------------

fn frame(stream: u32, typ: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + payload.len());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(&stream.to_be_bytes());
    v.push(typ);
    v.push(flags);
    v.extend_from_slice(payload);
    v
}

fn request_payload(method: &str, req: &impl Message) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = V2.into();
    r.method = method.into();
    r.payload = req.write_to_bytes().unwrap();
    r.write_to_bytes().unwrap()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Outcome {
    /// Replies (status codes) then the server closed the connection.
    Closed(Vec<i32>),
    /// Replies (status codes), then nothing more within the read timeout.
    Silent(Vec<i32>),
    Refused,
}

/// Sends `bytes` on a fresh connection, half-closes, and reads reply frames
/// until EOF or `wait` passes.
fn exchange(sock: &Path, bytes: &[u8], wait: Duration) -> Outcome {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return Outcome::Refused;
    };
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    read_replies(&mut s, wait)
}

/// Sends `bytes` on a fresh connection WITHOUT half-closing (as a real client
/// would), and reads until the first reply, EOF, or `wait`.
fn exchange_open(sock: &Path, bytes: &[u8], wait: Duration) -> Outcome {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return Outcome::Refused;
    };
    let _ = s.write_all(bytes);
    read_replies_until(&mut s, wait, true)
}

fn read_replies(s: &mut UnixStream, wait: Duration) -> Outcome {
    read_replies_until(s, wait, false)
}

fn read_replies_until(s: &mut UnixStream, wait: Duration, first_only: bool) -> Outcome {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut codes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Silent(codes);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => return Outcome::Closed(codes),
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                while buf.len() >= 10 {
                    let len = u32::from_be_bytes(buf[0..4].try_into().unwrap()) as usize;
                    if buf.len() < 10 + len {
                        break;
                    }
                    let body: Vec<u8> = buf[10..10 + len].to_vec();
                    buf.drain(..10 + len);
                    let code = ttrpc::Response::parse_from_bytes(&body)
                        .ok()
                        .and_then(|r| r.status.into_option())
                        .map(|st| st.code.value())
                        .unwrap_or(-1);
                    codes.push(code);
                }
                if first_only && !codes.is_empty() {
                    return Outcome::Silent(codes);
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Outcome::Silent(codes)
            }
            Err(_) => return Outcome::Closed(codes),
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutated frame sequence from harmless, valid requests.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut f = seeds[rng.below(seeds.len())].clone();
    match rng.below(8) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        1 => f.truncate(rng.below(f.len())),
        2 => {
            let v: u32 = match rng.below(4) {
                0 => 0,
                1 => rng.next() as u32,
                2 => (f.len() as u32).saturating_sub(10) + 1 + rng.below(64) as u32,
                _ => 4 << 20 | rng.below(4096) as u32,
            };
            f[0..4].copy_from_slice(&v.to_be_bytes());
        }
        3 => {
            f = (0..1 + rng.below(300)).map(|_| rng.next() as u8).collect();
        }
        4 => {
            let at = 10 + rng.below(f.len() - 10);
            let ins: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            f.splice(at..at, ins);
        }
        5 => {
            f[8] = rng.next() as u8; // message type
            f[9] = rng.next() as u8; // flags
        }
        6 => {
            f[4..8].copy_from_slice(&(rng.next() as u32).to_be_bytes()); // stream id
        }
        _ => {
            // pipelined: a valid frame, a mutated one, a valid one
            let mut g = seeds[rng.below(seeds.len())].clone();
            let i = 10 + rng.below(g.len() - 10);
            g[i] ^= 1 << rng.below(8);
            let mut all = f.clone();
            all.extend_from_slice(&g);
            all.extend_from_slice(&seeds[0]);
            f = all;
        }
    }
    f
}

#[test]
fn bad_frames_and_live_fuzz() {
    const NAME: &str = "bad_frames_and_live_fuzz";
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    c.run_detached(&[], "bf", &["sleep", "100000"]);
    let init_pid = c.task_pid("bf").unwrap();
    let sock = c.shim_socket("bf").expect("address file");
    let shim = c.shim_pid("bf");
    let serving = |what: &str| {
        let cl = ShimClient::connect(&sock, &c.ns);
        let st = cl
            .state("bf", "")
            .unwrap_or_else(|e| panic!("shim stopped serving after {what}: {e:?}"));
        assert_eq!(st.pid, init_pid, "after {what}");
        assert_eq!(
            st.status.value(),
            api::Status::RUNNING as i32,
            "after {what}"
        );
    };
    serving("nothing");
    // settle the shim's own fd use before measuring
    thread::sleep(Duration::from_millis(300));
    let fds_before = usage(shim).fds;
    let state_req = api::StateRequest {
        id: "bf".into(),
        ..Default::default()
    };
    let good = frame(1, 1, 0, &request_payload("State", &state_req));
    let mut outcomes: Vec<(String, Outcome)> = Vec::new();

    // fixed malformed inputs
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("all 0xff header", vec![0xff; 10]),
        ("all 0xff, 64 bytes", vec![0xff; 64]),
        ("zero header", vec![0; 10]),
        ("5-byte header", good[..5].to_vec()),
        ("truncated body", good[..good.len() - 3].to_vec()),
        ("unknown message type 7", frame(1, 7, 0, b"abc")),
        ("response type sent to server", frame(1, 2, 0, &[])),
        ("data frame on unknown stream", frame(3, 3, 0, b"xyz")),
        (
            "even stream id 0",
            frame(0, 1, 0, &request_payload("State", &state_req)),
        ),
        (
            "payload not a Request",
            frame(1, 1, 0, b"\xff\xff\xff\xff\xff"),
        ),
        ("unknown service", {
            let mut r = ttrpc::Request::new();
            r.service = "no.such.Service".into();
            r.method = "State".into();
            frame(1, 1, 0, &r.write_to_bytes().unwrap())
        }),
        (
            "unknown method",
            frame(1, 1, 0, &request_payload("NoSuchMethod", &state_req)),
        ),
        ("State with undecodable body", {
            let mut r = ttrpc::Request::new();
            r.service = V2.into();
            r.method = "State".into();
            r.payload = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
            frame(1, 1, 0, &r.write_to_bytes().unwrap())
        }),
        ("length 4 MiB + 1, no body", {
            let mut f = frame(1, 1, 0, &[]);
            f[0..4].copy_from_slice(&((4u32 << 20) + 1).to_be_bytes());
            f
        }),
        ("length 100 MiB, 64 KiB of body", {
            let mut f = frame(1, 1, 0, &[]);
            f[0..4].copy_from_slice(&(100u32 << 20).to_be_bytes());
            f.extend(std::iter::repeat(0x41).take(65536));
            f
        }),
        ("good then garbage", {
            let mut f = good.clone();
            f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, 9, 9, 1, 2]);
            f
        }),
    ];
    for (what, bytes) in &cases {
        let o = exchange_open(&sock, bytes, Duration::from_millis(800));
        assert!(pid_alive(shim), "shim died on {what}");
        serving(what);
        outcomes.push((what.to_string(), o));
    }

    // stalled connections: a header announcing 100 MiB, a truncated frame, and
    // 200 idle connections, all held open while others are served
    let mut big = UnixStream::connect(&sock).unwrap();
    let mut h = frame(1, 1, 0, &[]);
    h[0..4].copy_from_slice(&(100u32 << 20).to_be_bytes());
    big.write_all(&h).unwrap();
    let _ = big.write_all(&vec![0x42; 1 << 20]);
    let mut trunc = UnixStream::connect(&sock).unwrap();
    trunc.write_all(&good[..good.len() - 4]).unwrap();
    let idle: Vec<UnixStream> = (0..200)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    let t0 = Instant::now();
    serving("stalled connections");
    let served_in = t0.elapsed();
    assert!(
        served_in < Duration::from_secs(5),
        "State took {served_in:?} with stalled connections open"
    );
    let big_o = read_replies(&mut big, Duration::from_millis(500));
    let trunc_o = read_replies(&mut trunc, Duration::from_millis(500));
    outcomes.push(("100 MiB header held open".into(), big_o));
    outcomes.push(("truncated frame held open".into(), trunc_o));
    let n_idle = idle.len();
    drop(idle);
    drop(big);
    drop(trunc);

    // live fuzz: mutated frames of harmless requests
    let seeds: Vec<Vec<u8>> = vec![
        good.clone(),
        frame(
            1,
            1,
            0,
            &request_payload(
                "State",
                &api::StateRequest {
                    id: "bf".into(),
                    exec_id: "nope".into(),
                    ..Default::default()
                },
            ),
        ),
        frame(
            1,
            1,
            0,
            &request_payload(
                "Connect",
                &api::ConnectRequest {
                    id: "bf".into(),
                    ..Default::default()
                },
            ),
        ),
        frame(
            1,
            1,
            0,
            &request_payload(
                "Stats",
                &api::StatsRequest {
                    id: "bf".into(),
                    ..Default::default()
                },
            ),
        ),
        frame(
            1,
            1,
            0,
            &request_payload(
                "ResizePty",
                &api::ResizePtyRequest {
                    id: "bf".into(),
                    width: 80,
                    height: 24,
                    ..Default::default()
                },
            ),
        ),
        frame(
            1,
            1,
            0,
            &request_payload(
                "State",
                &api::StateRequest {
                    id: "nosuch".into(),
                    ..Default::default()
                },
            ),
        ),
    ];
    // the Go shim keeps connections with garbage open (each case then waits
    // for the 2 s read timeout): fewer cases there
    let n_fuzz = size("FUZZ_FRAMES", if is_rustshim() { 2000 } else { 200 });
    let hist: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    let t0 = Instant::now();
    let workers = 4;
    parallel(workers, workers, |w| {
        let mut rng =
            Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for k in 0..n_fuzz / workers {
            let bytes = mutate(&mut rng, &seeds);
            let o = exchange(&sock, &bytes, Duration::from_secs(2));
            let key = match &o {
                Outcome::Closed(v) if v.is_empty() => "closed, no reply".to_string(),
                Outcome::Closed(v) => {
                    format!("reply {:?} then closed", v.iter().collect::<HashSet<_>>())
                }
                Outcome::Silent(v) => {
                    format!("reply {:?}, then silent", v.iter().collect::<HashSet<_>>())
                }
                Outcome::Refused => "connect refused".into(),
            };
            *hist.lock().unwrap().entry(key).or_default() += 1;
            if k % 100 == 0 {
                assert!(pid_alive(shim), "shim died during the live fuzz");
            }
        }
    });
    let fuzz_took = t0.elapsed();
    assert!(pid_alive(shim), "shim died during the live fuzz");
    serving("the live fuzz");
    // connections closed: the shim's fds come back down
    let mut fds_after = 0;
    let fds_ok = wait_until(Duration::from_secs(10), || {
        fds_after = usage(shim).fds;
        fds_after <= fds_before
    });
    let hist = hist.into_inner().unwrap();
    let refused = hist.get("connect refused").copied().unwrap_or(0);

    let mut lines = String::new();
    for (what, o) in &outcomes {
        lines.push_str(&format!("\n    {what}: {o:?}"));
    }
    report(
        NAME,
        &format!("fixed malformed inputs (shim kept serving after each):{lines}"),
    );
    report(
        NAME,
        &format!(
            "State answered in {:.0} ms with a 100 MiB header, a truncated frame and {n_idle} idle connections held open",
            served_in.as_secs_f64() * 1000.0
        ),
    );
    report(
        NAME,
        &format!(
            "live fuzz: {} mutated frame sequences in {:.1}s, shim alive and serving; outcomes {hist:?}; shim fds {fds_before} -> {fds_after}",
            n_fuzz / workers * workers,
            fuzz_took.as_secs_f64()
        ),
    );
    assert_eq!(refused, 0, "connections refused during the fuzz");
    if is_rustshim() {
        assert!(
            fds_ok,
            "shim fds did not return to {fds_before} after closing connections: {fds_after}: {:?}",
            fd_table(shim).into_iter().take(60).collect::<Vec<_>>()
        );
    }
    // the container is untouched
    assert_eq!(c.task_status("bf").as_deref(), Some("RUNNING"));
    assert_eq!(c.task_pid("bf"), Some(init_pid));
    c.remove("bf");
}

// ---------------------------------------------------------------------------
// 5b. invalid requests, straight to the shim socket
// ---------------------------------------------------------------------------

/// Checks an error: code (rustshim only; other shims are reported) and that
/// the message contains `needle`.
fn expect_err<T: std::fmt::Debug>(
    log: &mut Vec<String>,
    what: &str,
    r: Result<T, CallErr>,
    want: &[ttrpc::Code],
    needle: &str,
) {
    let e = match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => e,
    };
    log.push(format!("{what}: {:?} {:?}", e.code(), e.message()));
    if let CallErr::Transport(m) = &e {
        panic!("{what}: transport error (shim crashed or hung?): {m}");
    }
    if is_rustshim() {
        assert!(
            e.code().map(|c| want.contains(&c)).unwrap_or(false),
            "{what}: code {:?}, want one of {want:?}; message {:?}",
            e.code(),
            e.message()
        );
        assert!(
            e.message().contains(needle),
            "{what}: message {:?} does not name {needle:?}",
            e.message()
        );
    }
}

#[test]
fn bad_requests() {
    use ttrpc::Code;
    const NAME: &str = "bad_requests";
    // the shim's runtime-call timeout, lowered for the "runtime hangs" case
    let Some(c) = Containerd::start_with_env(NAME, &[("RUSTSHIM_RUNTIME_TIMEOUT_SECS", "3")])
    else {
        return;
    };
    c.import_image();
    c.run_detached(&[], "bv", &["sleep", "100000"]);
    let init_pid = c.task_pid("bv").unwrap();
    let sock = c.shim_socket("bv").expect("address file");
    let shim = c.shim_pid("bv");
    let cl = ShimClient::connect(&sock, &c.ns);
    let mut log = Vec::new();
    let serving = |cl: &ShimClient, what: &str| {
        let st = cl
            .state("bv", "")
            .unwrap_or_else(|e| panic!("shim stopped serving after {what}: {e:?}"));
        assert_eq!(st.pid, init_pid, "after {what}");
        assert_eq!(
            st.status.value(),
            api::Status::RUNNING as i32,
            "after {what}"
        );
    };
    serving(&cl, "nothing");
    let short = Duration::from_secs(10);

    // ids
    for (what, id, exec) in [
        ("empty container id", "", ""),
        ("container id with /", "a/b", ""),
        ("container id ..", "..", ""),
        ("container id ../bv", "../bv", ""),
        ("exec id with /", "bv", "x/y"),
        ("exec id ..", "bv", ".."),
        ("exec id ../../etc", "bv", "../../etc"),
    ] {
        let needle = if exec.is_empty() { id } else { exec };
        let needle = if needle.is_empty() { "id" } else { needle };
        expect_err(
            &mut log,
            &format!("State: {what}"),
            cl.state(id, exec),
            &[Code::INVALID_ARGUMENT],
            needle,
        );
        let k = api::KillRequest {
            id: id.into(),
            exec_id: exec.into(),
            signal: 9,
            ..Default::default()
        };
        expect_err(
            &mut log,
            &format!("Kill: {what}"),
            cl.call::<_, Empty>("Kill", &k, short),
            &[Code::INVALID_ARGUMENT],
            needle,
        );
        let d = api::DeleteRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        expect_err(
            &mut log,
            &format!("Delete: {what}"),
            cl.call::<_, api::DeleteResponse>("Delete", &d, short),
            &[Code::INVALID_ARGUMENT],
            needle,
        );
        let w = api::WaitRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        expect_err(
            &mut log,
            &format!("Wait: {what}"),
            cl.call::<_, api::WaitResponse>("Wait", &w, short),
            &[Code::INVALID_ARGUMENT],
            needle,
        );
    }
    serving(&cl, "bad ids");

    // unknown container / exec
    expect_err(
        &mut log,
        "State: unknown container",
        cl.state("nosuch", ""),
        &[Code::NOT_FOUND],
        "nosuch",
    );
    let k = api::KillRequest {
        id: "nosuch".into(),
        signal: 9,
        ..Default::default()
    };
    expect_err(
        &mut log,
        "Kill: unknown container",
        cl.call::<_, Empty>("Kill", &k, short),
        &[Code::NOT_FOUND],
        "nosuch",
    );
    let w = api::WaitRequest {
        id: "nosuch".into(),
        ..Default::default()
    };
    expect_err(
        &mut log,
        "Wait: unknown container",
        cl.call::<_, api::WaitResponse>("Wait", &w, short),
        &[Code::NOT_FOUND],
        "nosuch",
    );
    expect_err(
        &mut log,
        "State: unknown exec",
        cl.state("bv", "nox"),
        &[Code::NOT_FOUND],
        "nox",
    );
    let s = api::StartRequest {
        id: "bv".into(),
        exec_id: "nox".into(),
        ..Default::default()
    };
    expect_err(
        &mut log,
        "Start: unknown exec",
        cl.call::<_, api::StartResponse>("Start", &s, short),
        &[Code::NOT_FOUND],
        "nox",
    );
    let k = api::KillRequest {
        id: "bv".into(),
        exec_id: "nox".into(),
        signal: 9,
        ..Default::default()
    };
    expect_err(
        &mut log,
        "Kill: unknown exec",
        cl.call::<_, Empty>("Kill", &k, short),
        &[Code::NOT_FOUND],
        "nox",
    );
    let w = api::WaitRequest {
        id: "bv".into(),
        exec_id: "nox".into(),
        ..Default::default()
    };
    expect_err(
        &mut log,
        "Wait: unknown exec",
        cl.call::<_, api::WaitResponse>("Wait", &w, short),
        &[Code::NOT_FOUND],
        "nox",
    );
    let d = api::DeleteRequest {
        id: "bv".into(),
        exec_id: "nox".into(),
        ..Default::default()
    };
    expect_err(
        &mut log,
        "Delete: unknown exec",
        cl.call::<_, api::DeleteResponse>("Delete", &d, short),
        &[Code::NOT_FOUND],
        "nox",
    );
    // exec with a spec that is not JSON
    let mut spec = Any::new();
    spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    spec.value = b"{not json".to_vec();
    let e = api::ExecProcessRequest {
        id: "bv".into(),
        exec_id: "badspec".into(),
        spec: MessageField::some(spec),
        ..Default::default()
    };
    expect_err(
        &mut log,
        "Exec: invalid process spec",
        cl.call::<_, Empty>("Exec", &e, short),
        &[Code::INVALID_ARGUMENT],
        "spec",
    );
    serving(&cl, "unknown ids");

    // Create with broken bundles / runtimes / stdio
    let bundles = c.dir.join("bundles");
    let bin = c.dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let rootfs = c.dir.join("rootfs");
    make_rootfs(&rootfs);
    let rootfs_s = rootfs.display().to_string();
    // like runc: the error goes to the --log file as JSON (stderr is the container's)
    let fail_rt = bin.join("fail-runtime");
    write_script(
        &fail_rt,
        r#"log=""
while [ $# -gt 0 ]; do [ "$1" = "--log" ] && log="$2"; shift; done
[ -n "$log" ] && echo '{"level":"error","msg":"fake-runtime: refusing to run","time":"2026-01-01T00:00:00Z"}' >>"$log"
exit 3"#,
    );
    let fail_quiet_rt = bin.join("fail-quiet-runtime");
    write_script(&fail_quiet_rt, "exit 3");
    let hang_rt = bin.join("hang-runtime");
    write_script(&hang_rt, "exec /bin/sleep 3172");
    let hang_logger = bin.join("hang-logger");
    write_script(&hang_logger, "exec /bin/sleep 3173");
    let create =
        |id: &str, bundle: &Path, f: &dyn Fn(&mut api::CreateTaskRequest), timeout: Duration| {
            let mut r = api::CreateTaskRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                ..Default::default()
            };
            f(&mut r);
            let t0 = Instant::now();
            let res = cl.call::<_, api::CreateTaskResponse>("Create", &r, timeout);
            (res, t0.elapsed())
        };
    let none = |_: &mut api::CreateTaskRequest| {};

    let b = bundles.join("nocfg");
    fs::create_dir_all(&b).unwrap();
    for round in 0..2 {
        let (r, _) = create("nocfg", &b, &none, short);
        expect_err(
            &mut log,
            &format!("Create: bundle without config.json (try {round})"),
            r,
            &[Code::INVALID_ARGUMENT],
            "config.json",
        );
    }
    let b = bundles.join("badcfg");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("config.json"), "{not json").unwrap();
    let (r, _) = create("badcfg", &b, &none, short);
    expect_err(
        &mut log,
        "Create: config.json not JSON",
        r,
        &[Code::INVALID_ARGUMENT],
        "config.json",
    );
    fs::write(b.join("config.json"), "[1,2,3]").unwrap();
    let (r, _) = create("badcfg", &b, &none, short);
    expect_err(
        &mut log,
        "Create: config.json not a spec",
        r,
        &[Code::INVALID_ARGUMENT],
        "config.json",
    );
    let (r, _) = create("nobundle", &bundles.join("does-not-exist"), &none, short);
    expect_err(
        &mut log,
        "Create: bundle dir missing",
        r,
        &[Code::INVALID_ARGUMENT, Code::NOT_FOUND],
        "does-not-exist",
    );
    let (r, _) = create("relbundle", Path::new("relative/bundle"), &none, short);
    expect_err(
        &mut log,
        "Create: relative bundle path",
        r,
        &[Code::INVALID_ARGUMENT],
        "relative/bundle",
    );
    serving(&cl, "bad bundles");

    let b = bundles.join("rt");
    make_bundle(&b, &rootfs_s, &["/bin/sleep", "100"]);
    let (r, _) = create(
        "rtmissing",
        &b,
        &|r| r.options = runc_options("/nonexistent/runc-nope"),
        short,
    );
    expect_err(
        &mut log,
        "Create: runtime binary missing",
        r,
        &[
            Code::INVALID_ARGUMENT,
            Code::NOT_FOUND,
            Code::FAILED_PRECONDITION,
            Code::UNKNOWN,
        ],
        "/nonexistent/runc-nope",
    );
    let (r, _) = create(
        "rtfail",
        &b,
        &|r| r.options = runc_options(&fail_rt.display().to_string()),
        short,
    );
    expect_err(
        &mut log,
        "Create: runtime fails (error in its log)",
        r,
        &[Code::UNKNOWN, Code::INTERNAL],
        "fake-runtime: refusing to run",
    );
    let (r, _) = create(
        "rtquiet",
        &b,
        &|r| r.options = runc_options(&fail_quiet_rt.display().to_string()),
        short,
    );
    expect_err(
        &mut log,
        "Create: runtime exits 3 silently",
        r,
        &[Code::UNKNOWN, Code::INTERNAL],
        "fail-quiet-runtime",
    );
    assert!(
        cl.state("rtfail", "").is_err(),
        "a failed create left container rtfail registered"
    );
    serving(&cl, "failing runtimes");

    // Creates during which the shim stopped answering others (checked last)
    let mut frozen: Vec<String> = Vec::new();
    // a hanging runtime (shim timeout RUSTSHIM_RUNTIME_TIMEOUT_SECS=3); the
    // Go shim has no such timeout: only the caller's deadline bounds it
    if is_rustshim() {
        let (r, took) = create(
            "rthang",
            &b,
            &|r| r.options = runc_options(&hang_rt.display().to_string()),
            Duration::from_secs(40),
        );
        log.push(format!(
            "Create: hanging runtime answered after {:.1}s",
            took.as_secs_f64()
        ));
        expect_err(
            &mut log,
            "Create: runtime hangs",
            r,
            &[Code::DEADLINE_EXCEEDED],
            "hang-runtime",
        );
        assert!(
            took < Duration::from_secs(20),
            "hanging runtime: answer took {took:?} (RUSTSHIM_RUNTIME_TIMEOUT_SECS=3)"
        );
        assert!(
            wait_until(Duration::from_secs(10), || pids_with_argv(&[
                "/bin/sleep",
                "3172"
            ])
            .is_empty()),
            "hanging runtime process not killed: {:?}",
            pids_with_argv(&["/bin/sleep", "3172"])
        );
        serving(&cl, "a hanging runtime");

        // a binary:// logger that never closes fd 5 (bounded at 10 s)
        let uri = format!("binary://{}", hang_logger.display());
        let (r, took) = create(
            "hanglog",
            &b,
            &|r| {
                r.stdout = uri.clone();
                r.stderr = uri.clone();
            },
            Duration::from_secs(40),
        );
        log.push(format!(
            "Create: hanging logger answered after {:.1}s",
            took.as_secs_f64()
        ));
        expect_err(
            &mut log,
            "Create: logger never ready",
            r,
            &[Code::DEADLINE_EXCEEDED],
            "hang-logger",
        );
        assert!(
            took < Duration::from_secs(20),
            "logger timeout took {took:?}"
        );
        assert!(
            wait_until(Duration::from_secs(10), || pids_with_argv(&[
                "/bin/sleep",
                "3173"
            ])
            .is_empty()),
            "hanging logger not killed"
        );
        serving(&cl, "a hanging logger");

        // Create inputs that make a naive open/read block forever: CRI's
        // runtimeoptions.v1.Options naming a ConfigPath that is a FIFO nobody
        // writes, and a file:// stdout that is a FIFO nobody reads. The shim
        // may fail or take long, but must keep serving its other containers.
        let mut blocked = Vec::new();
        for case in ["options ConfigPath is a FIFO", "stdout file:// is a FIFO"] {
            let fifo = c.dir.join(format!("block-{}.fifo", blocked.len()));
            let o = Command::new("mkfifo").arg(&fifo).output().expect("mkfifo");
            assert!(o.status.success());
            let path = fifo.display().to_string();
            let mut r = api::CreateTaskRequest {
                id: format!("blk{}", blocked.len()),
                bundle: b.display().to_string(),
                ..Default::default()
            };
            if case.starts_with("options") {
                let mut value = vec![0x12, path.len() as u8];
                value.extend_from_slice(path.as_bytes());
                let mut any = Any::new();
                any.type_url = "runtimeoptions.v1.Options".into();
                any.value = value;
                r.options = MessageField::some(any);
            } else {
                r.stdout = format!("file://{path}");
            }
            let (sock2, ns2, id) = (sock.clone(), c.ns.clone(), r.id.clone());
            let pending = thread::spawn(move || {
                let cl2 = ShimClient::connect(&sock2, &ns2);
                let t0 = Instant::now();
                let res =
                    cl2.call::<_, api::CreateTaskResponse>("Create", &r, Duration::from_secs(60));
                (res.map(|_| ()), t0.elapsed())
            });
            thread::sleep(Duration::from_millis(500));
            let t0 = Instant::now();
            let probe = ShimClient::connect(&sock, &c.ns)
                .call::<_, api::StateResponse>(
                    "State",
                    &api::StateRequest {
                        id: "bv".into(),
                        ..Default::default()
                    },
                    Duration::from_secs(5),
                )
                .map(|s| s.pid);
            let probe_took = t0.elapsed();
            // unblock the shim whatever it did: open the FIFO read-write
            // (never blocks on Linux; a reader and a writer for the shim's
            // open), closed once the Create returned (EOF for a reader)
            let other_end = fs::OpenOptions::new().read(true).write(true).open(&fifo);
            thread::sleep(Duration::from_millis(300));
            drop(other_end);
            let (res, took) = pending.join().unwrap();
            let kill = api::KillRequest {
                id: id.clone(),
                signal: 9,
                ..Default::default()
            };
            let _ = cl.call::<_, Empty>("Kill", &kill, short);
            thread::sleep(Duration::from_millis(200));
            let _ = cl.call::<_, api::DeleteResponse>(
                "Delete",
                &api::DeleteRequest {
                    id,
                    ..Default::default()
                },
                short,
            );
            let line = format!(
                "Create ({case}): {:?} after {:.1}s; State of another container meanwhile: {:?} in {:.1}s",
                res.as_ref().map_err(|e| (e.code(), e.message())),
                took.as_secs_f64(),
                probe.as_ref().map_err(|e| e.message()),
                probe_took.as_secs_f64()
            );
            log.push(line.clone());
            blocked.push((matches!(probe, Ok(p) if p == init_pid), line));
            serving(&cl, case);
        }
        frozen.extend(blocked.into_iter().filter(|(ok, _)| !ok).map(|(_, l)| l));
    }

    // stdout FIFO that does not exist
    let missing = c.dir.join("fifo/no-such-fifo");
    let m = missing.display().to_string();
    let (r, _) = create("nofifo", &b, &|r| r.stdout = m.clone(), short);
    expect_err(
        &mut log,
        "Create: stdout FIFO missing",
        r,
        &[Code::NOT_FOUND, Code::INVALID_ARGUMENT],
        &m,
    );
    assert!(
        cl.state("nofifo", "").is_err(),
        "a failed create left container nofifo registered"
    );
    // ... and for an exec: Start fails naming it, its Wait returns, Delete works
    let mut spec = Any::new();
    spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    spec.value = br#"{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec();
    let e = api::ExecProcessRequest {
        id: "bv".into(),
        exec_id: "xm".into(),
        stdout: m.clone(),
        spec: MessageField::some(spec),
        ..Default::default()
    };
    cl.call::<_, Empty>("Exec", &e, short).expect("Exec xm");
    let s = api::StartRequest {
        id: "bv".into(),
        exec_id: "xm".into(),
        ..Default::default()
    };
    expect_err(
        &mut log,
        "Start exec: stdout FIFO missing",
        cl.call::<_, api::StartResponse>("Start", &s, short),
        &[Code::NOT_FOUND, Code::INVALID_ARGUMENT],
        &m,
    );
    let w = api::WaitRequest {
        id: "bv".into(),
        exec_id: "xm".into(),
        ..Default::default()
    };
    let wr = cl.call::<_, api::WaitResponse>("Wait", &w, Duration::from_secs(5));
    log.push(format!(
        "Wait on the failed exec: {:?}",
        wr.as_ref().map(|w| w.exit_status)
    ));
    // (containerd 1.6's Go shim leaves this Wait blocked)
    if is_rustshim() {
        assert!(
            wr.is_ok(),
            "Wait on an exec whose start failed must return: {wr:?}"
        );
    }
    let d = api::DeleteRequest {
        id: "bv".into(),
        exec_id: "xm".into(),
        ..Default::default()
    };
    let dr = cl.call::<_, api::DeleteResponse>("Delete", &d, short);
    log.push(format!(
        "Delete of the failed exec: {:?}",
        dr.as_ref().map(|d| d.exit_status)
    ));
    if is_rustshim() {
        assert!(dr.is_ok(), "Delete of a failed exec: {dr:?}");
    }
    serving(&cl, "missing FIFOs");

    // the generated client (task.v3 names) works as well
    if is_rustshim() {
        let tc = containerd_shim_protos::shim_sync::TaskClient::new(
            ttrpc::Client::connect(&format!("unix://{}", sock.display())).unwrap(),
        );
        let st = tc
            .state(
                ttrpc::context::with_duration(Duration::from_secs(5)),
                &api::StateRequest {
                    id: "bv".into(),
                    ..Default::default()
                },
            )
            .expect("task.v3 State");
        assert_eq!(st.pid, init_pid);
    }

    // nothing leaked; the container and containerd's view are intact
    assert!(pid_alive(shim), "shim died");
    assert_eq!(c.shim_pid("bv"), shim);
    // A runtime or logger killed when its request's deadline passed is reaped a moment later:
    // wait for that (bounded), rather than read one instant; a real leak still fails.
    let others = || -> Vec<u32> {
        children_of(shim).into_iter().map(|(p, _)| p).filter(|p| *p != init_pid).collect()
    };
    assert!(
        wait_until(T, || zombies_of(shim).is_empty()),
        "zombies: {:?}",
        zombies_of(shim)
    );
    if is_rustshim() {
        wait_until(T, || others().is_empty());
    }
    let leaked = others();
    let leaked_cmd: Vec<_> = leaked.iter().map(|p| proc_cmdline(*p)).collect();
    log.push(format!(
        "shim children besides the init after all failures: {leaked:?} {leaked_cmd:?}"
    ));
    if is_rustshim() {
        assert!(
            leaked.is_empty(),
            "shim children besides the init: {leaked:?} {leaked_cmd:?}"
        );
    } else {
        for p in &leaked {
            send_signal(*p, "KILL");
        }
    }
    for b in ["rt", "nocfg", "badcfg"] {
        assert!(
            mounts_under(&bundles.join(b)).is_empty(),
            "mounts left in bundle {b}"
        );
    }
    let o = c.exec(&[], "bv", "final", &["echo", "fine"]);
    c.check_ok(&["exec final"], &o);
    assert_eq!(out_str(&o), "fine\n");
    report(
        NAME,
        &format!(
            "{} bad requests answered:\n    {}",
            log.len(),
            log.join("\n    ")
        ),
    );
    drop(cl);
    c.remove("bv");
    assert!(
        frozen.is_empty(),
        "the shim stopped serving while one Create blocked (blocking open/read on the shim's only thread?):\n{}",
        frozen.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 6. security
// ---------------------------------------------------------------------------

#[test]
fn security_socket_and_fds() {
    const NAME: &str = "security_socket_and_fds";
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    c.run_detached(&[], "sf", &["sleep", "100000"]);
    let sock = c.shim_socket("sf").expect("address file");
    let md = fs::metadata(&sock).unwrap();
    let mode = md.mode() & 0o7777;
    let dir = sock.parent().unwrap();
    let dmd = fs::metadata(dir).unwrap();
    let dmode = dmd.mode() & 0o7777;
    report(
        NAME,
        &format!(
            "shim socket {} mode {mode:o} uid {}; {} mode {dmode:o} uid {}",
            sock.display(),
            md.uid(),
            dir.display(),
            dmd.uid()
        ),
    );
    assert_eq!(mode, 0o600, "shim socket mode");
    assert_eq!(md.uid(), 0, "shim socket owner");
    assert_eq!(
        dmode & 0o002,
        0,
        "{} is world-writable ({dmode:o})",
        dir.display()
    );
    assert_eq!(dmd.uid(), 0);

    // no shim fd reaches the container: init and an exec hold 0, 1, 2 only
    let init = c.task_pid("sf").unwrap();
    c.ctr_ok(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "xf",
        "sf",
        "sleep",
        "100000",
    ]);
    let pidf = c.bundle("sf").join("xf.pid");
    assert!(wait_until(T, || read_pid(&pidf).is_some()), "no xf.pid");
    let exec = read_pid(&pidf).unwrap();
    let mut tables = vec![
        ("init", init, fd_table(init)),
        ("exec", exec, fd_table(exec)),
    ];
    // and a tty exec (pty) when `script` is available
    let mut tty_bg = None;
    if which("script").is_some() {
        let cmd = format!(
            "{} task exec -t --fifo-dir {} --exec-id xt sf sleep 100000",
            c.ctr_prefix(),
            c.fifo_dir()
        );
        tty_bg = Some(Background::spawn({
            let mut k = Command::new("script");
            k.args(["-q", "-e", "-c", &cmd, "/dev/null"]);
            k
        }));
        let pidt = c.bundle("sf").join("xt.pid");
        assert!(wait_until(T, || read_pid(&pidt).is_some()), "no xt.pid");
        let p = read_pid(&pidt).unwrap();
        tables.push(("tty exec", p, fd_table(p)));
    }
    let shim = c.shim_pid("sf");
    report(NAME, &format!("shim fds: {:?}", fd_table(shim)));
    for (what, pid, t) in &tables {
        report(NAME, &format!("{what} pid {pid} fds: {t:?}"));
        let fds: Vec<u32> = t.keys().copied().collect();
        assert_eq!(
            fds,
            vec![0, 1, 2],
            "{what} (pid {pid}) holds more than stdio: {t:?}"
        );
        for (fd, target) in t {
            assert!(
                !target.starts_with("socket:")
                    && !target.contains("/run/containerd")
                    && !target.contains(&c.dir.display().to_string()),
                "{what} fd {fd} points to {target}: a shim resource leaked into the container"
            );
        }
    }
    drop(tty_bg);
    c.remove("sf");
}

/// Bundles whose config.json or rootfs is a symlink out of the bundle: the
/// shim follows what containerd (the only writer of bundles) gives it; this
/// test records what happens, and asserts only that the shim survives.
#[test]
fn symlinked_bundle_report() {
    const NAME: &str = "symlinked_bundle_report";
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    c.run_detached(&[], "sl", &["sleep", "100000"]);
    let sock = c.shim_socket("sl").expect("address file");
    let shim = c.shim_pid("sl");
    let cl = ShimClient::connect(&sock, &c.ns);
    let outside = c.dir.join("outside");
    let rootfs = outside.join("rootfs");
    make_rootfs(&rootfs);
    make_bundle(
        &outside,
        &rootfs.display().to_string(),
        &["/bin/sh", "-c", "exit 5"],
    );
    let mut findings = Vec::new();

    let run = |id: &str, bundle: &Path, mounts: Vec<api::Mount>| -> String {
        let r = api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            rootfs: mounts,
            ..Default::default()
        };
        match cl.call::<_, api::CreateTaskResponse>("Create", &r, Duration::from_secs(30)) {
            Err(e) => format!("Create refused: {:?} {:?}", e.code(), e.message()),
            Ok(cr) => {
                let outside_mounts = mounts_under(&rootfs);
                let s = api::StartRequest {
                    id: id.into(),
                    ..Default::default()
                };
                let started =
                    cl.call::<_, api::StartResponse>("Start", &s, Duration::from_secs(30));
                let w = api::WaitRequest {
                    id: id.into(),
                    ..Default::default()
                };
                let waited = cl.call::<_, api::WaitResponse>("Wait", &w, Duration::from_secs(30));
                let d = api::DeleteRequest {
                    id: id.into(),
                    ..Default::default()
                };
                let deleted =
                    cl.call::<_, api::DeleteResponse>("Delete", &d, Duration::from_secs(30));
                format!(
                    "Create ok (pid {}); mounts at the symlink target while created: {outside_mounts:?}; start {}; wait {}; delete {}; mounts left: {:?}",
                    cr.pid,
                    started.map(|_| "ok".to_string()).unwrap_or_else(|e| format!("{e:?}")),
                    waited.map(|w| format!("exit {}", w.exit_status)).unwrap_or_else(|e| format!("{e:?}")),
                    deleted.map(|d| format!("exit {}", d.exit_status)).unwrap_or_else(|e| format!("{e:?}")),
                    mounts_under(&rootfs)
                )
            }
        }
    };

    // config.json is a symlink to a file outside the bundle
    let b1 = c.dir.join("bundles/cfglink");
    fs::create_dir_all(&b1).unwrap();
    std::os::unix::fs::symlink(outside.join("config.json"), b1.join("config.json")).unwrap();
    findings.push(format!(
        "config.json -> outside: {}",
        run("cfglink", &b1, vec![])
    ));

    // rootfs is a symlink out of the bundle (config says "rootfs")
    let b2 = c.dir.join("bundles/rootlink");
    fs::create_dir_all(&b2).unwrap();
    make_bundle(&b2, "rootfs", &["/bin/sh", "-c", "exit 5"]);
    std::os::unix::fs::symlink(&rootfs, b2.join("rootfs")).unwrap();
    findings.push(format!(
        "rootfs -> outside, no rootfs mounts: {}",
        run("rootlink", &b2, vec![])
    ));

    // the same, with a rootfs mount in the request: where does the mount land?
    let b3 = c.dir.join("bundles/rootlinkm");
    fs::create_dir_all(&b3).unwrap();
    make_bundle(&b3, "rootfs", &["/bin/sh", "-c", "exit 5"]);
    let target = c.dir.join("outside-target");
    fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, b3.join("rootfs")).unwrap();
    let m = api::Mount {
        type_: "bind".into(),
        source: rootfs.display().to_string(),
        options: vec!["rbind".into(), "rw".into()],
        ..Default::default()
    };
    let r = api::CreateTaskRequest {
        id: "rootlinkm".into(),
        bundle: b3.display().to_string(),
        rootfs: vec![m],
        ..Default::default()
    };
    let res = cl.call::<_, api::CreateTaskResponse>("Create", &r, Duration::from_secs(30));
    let landed = mounts_under(&target);
    let refused_symlinked_rootfs =
        matches!(&res, Err(CallErr::Status(ttrpc::Code::INVALID_ARGUMENT, _)));
    let f = match res {
        Err(e) => format!(
            "Create refused: {:?} {:?}; mounts at the outside target: {landed:?}",
            e.code(),
            e.message()
        ),
        Ok(cr) => {
            let k = api::KillRequest {
                id: "rootlinkm".into(),
                signal: 9,
                ..Default::default()
            };
            let _ = cl.call::<_, Empty>("Kill", &k, Duration::from_secs(10));
            let d = api::DeleteRequest {
                id: "rootlinkm".into(),
                ..Default::default()
            };
            let del = cl.call::<_, api::DeleteResponse>("Delete", &d, Duration::from_secs(30));
            format!(
                "Create ok (pid {}); the rootfs mount landed OUTSIDE the bundle at {landed:?}; delete {:?}; mounts left there: {:?}",
                cr.pid,
                del.map(|d| d.exit_status),
                mounts_under(&target)
            )
        }
    };
    findings.push(format!("rootfs -> outside, with a bind rootfs mount: {f}"));
    for f in &findings {
        report(NAME, f);
    }
    // no shim may mount a container's rootfs outside its bundle
    assert!(
        landed.is_empty(),
        "rootfs mounted through a symlink, outside the bundle: {landed:?}"
    );
    if is_rustshim() {
        // rustshim refuses symlinks in bundles outright
        assert!(
            findings[0].contains("Create refused: Some(INVALID_ARGUMENT)"),
            "{}",
            findings[0]
        );
        assert!(refused_symlinked_rootfs, "{}", findings[2]);
    }
    // whatever happened, the shim serves its real container
    assert!(pid_alive(shim));
    let st = cl.state("sl", "").expect("State sl");
    assert_eq!(st.status.value(), api::Status::RUNNING as i32);
    for t in [&target, &rootfs] {
        for mp in mounts_under(t) {
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
    }
    drop(cl);
    c.remove("sl");
}
