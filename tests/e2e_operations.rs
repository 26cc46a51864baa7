//! What an operator sees of a shim (issue 12), end to end against a real containerd: the log
//! lines per RPC and per runtime call, the SIGUSR1 state dump, the versions, and the exit of a
//! shim containerd lost track of (and that it never exits while a process lives).
//!
//! These are rustshim's own features: against the Go shim they print SKIPPED.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// Shim log lines (as containerd copied them) of this test's containers.
fn shim_lines(c: &Containerd) -> Vec<String> {
    c.log().lines().filter(|l| l.contains("runtime=io.containerd.rustshim.v2")).map(str::to_string).collect()
}

fn only_rustshim(test: &str) -> bool {
    if is_rustshim() {
        return true;
    }
    if prerequisites().is_ok() {
        print_skip(test, "rustshim's own log lines, dump and self-exit");
    }
    false
}

fn wait_for_line(c: &Containerd, what: &str, f: impl Fn(&str) -> bool) -> String {
    let mut found = None;
    wait_until(T, || {
        found = shim_lines(c).into_iter().find(|l| f(l));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("[{}] no shim log line {what}:\n{}", c.name, shim_lines(c).join("\n")))
}

#[test]
fn rpc_and_runtime_calls_are_logged() {
    const NAME: &str = "rpc_and_runtime_calls_are_logged";
    if !only_rustshim(NAME) {
        return;
    }
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    c.run_detached(&[], "l1", &["sleep", "1000"]);
    c.wait_status("l1", "RUNNING", T);
    let out = c.exec(&[], "l1", "bad1", &["/no/such/binary"]);
    assert!(!out.status.success());
    // debug: one line per RPC with method, ids, duration and code
    let l = wait_for_line(&c, "for Create", |l| l.contains("rpc Create id=l1 ") && l.contains("code=OK"));
    assert!(l.contains("took="), "{l}");
    wait_for_line(&c, "for Start of init", |l| l.contains("rpc Start id=l1 exec_id= ") && l.contains("code=OK"));
    // debug: one line per runtime call with verb, id, argv, duration and status
    let l = wait_for_line(&c, "for runc create", |l| l.contains("runtime create id=l1 ") && l.contains("status=0"));
    assert!(l.contains("--log") && l.contains("--bundle") && l.contains("took="), "{l}");
    wait_for_line(&c, "for runc start", |l| l.contains("runtime start id=l1 ") && l.contains("status=0"));
    // warn: the failed exec start with its cause, and the failed runtime call with log.json's error
    let l = wait_for_line(&c, "for the failed exec start", |l| {
        l.contains("level=warning") && l.contains("rpc Start id=l1 exec_id=bad1") && l.contains("code=")
    });
    assert!(l.contains("no/such/binary"), "the cause is missing: {l}");
    wait_for_line(&c, "for the failed runc exec", |l| l.contains("runtime exec id=l1 ") && l.contains("failed:"));
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "l1"]);
    c.wait_status("l1", "STOPPED", T);
    c.remove("l1");
}

#[test]
fn sigusr1_dumps_the_state_and_the_shim_keeps_serving() {
    const NAME: &str = "sigusr1_dumps_the_state_and_the_shim_keeps_serving";
    if !only_rustshim(NAME) {
        return;
    }
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    c.run_detached(&[], "d1", &["sleep", "1000"]);
    c.wait_status("d1", "RUNNING", T);
    let out = c.exec(&["-d"], "d1", "x1", &["sleep", "1000"]);
    c.check_ok(&["task", "exec", "x1"], &out);
    let shim = c.shim_pid("d1");
    assert!(send_signal(shim, "SIGUSR1"));
    let head = wait_for_line(&c, "state dump", |l| l.contains("state dump: 1 containers"));
    for part in ["starts in flight", "unmatched exits", "queued events", "last call"] {
        assert!(head.contains(part), "dump head lacks {part:?}: {head}");
    }
    let l = wait_for_line(&c, "for d1", |l| l.contains("container d1: bundle="));
    assert!(l.contains("state=Running") && l.contains("report=Announced"), "{l}");
    let l = wait_for_line(&c, "for exec x1", |l| l.contains("exec x1: pid="));
    assert!(l.contains("state=Running"), "{l}");
    let l = wait_for_line(&c, "process facts", |l| l.contains("process: fds"));
    assert!(l.contains("rss") && l.contains("threads"), "{l}");
    // undisturbed: same shim, and it still serves
    assert!(pid_alive(shim));
    let out = c.exec(&[], "d1", "x2", &["sh", "-c", "echo still"]);
    c.check_ok(&["task", "exec", "x2"], &out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "d1"]);
    c.wait_status("d1", "STOPPED", T);
    c.remove("d1");
}

#[test]
fn versions_name_revision_and_build() {
    const NAME: &str = "versions_name_revision_and_build";
    if !only_rustshim(NAME) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_containerd-shim-rustshim-v2");
    let out = std::process::Command::new(bin).arg("-v").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    for k in ["Version:", "Revision:", "Build:"] {
        assert!(v.contains(k), "-v lacks {k}: {v}");
    }
    let rev = v.lines().find_map(|l| l.trim().strip_prefix("Revision:")).unwrap().trim().to_string();
    assert!(rev.len() >= 7, "no git revision in -v: {v}");
    // -info: RuntimeInfo with version and revision
    let out = std::process::Command::new(bin).arg("-info").stdin(std::process::Stdio::null()).output().unwrap();
    assert!(out.status.success(), "-info: {}", describe(&out));
    use containerd_shim_protos::protobuf::Message as _;
    let info = containerd_shim_protos::types::introspection::RuntimeInfo::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(info.version.revision, rev);
    assert!(info.annotations.get("io.containerd.rustshim.build").is_some_and(|b| !b.is_empty()));
    // the daemon's first line
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    c.run_detached(&[], "v1", &["sleep", "1000"]);
    let l = wait_for_line(&c, "the first line", |l| l.contains("rustshim 0.") && l.contains("starting"));
    assert!(l.contains(&format!("git {rev}")), "{l}");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "v1"]);
    c.wait_status("v1", "STOPPED", T);
    c.remove("v1");
}

/// containerd loses its state (SIGKILLed, its state directory wiped): a shim with nothing
/// left to serve exits by itself; one whose container still runs never does.
#[test]
fn a_leaked_shim_exits_but_never_with_a_live_process() {
    const NAME: &str = "a_leaked_shim_exits_but_never_with_a_live_process";
    if !only_rustshim(NAME) {
        return;
    }
    let limit = 2;
    let Some(mut c) = Containerd::start_with_env(NAME, &[("RUSTSHIM_IDLE_EXIT_SECS", &limit.to_string())]) else {
        return;
    };
    c.import_image();
    c.run_detached(&[], "gone", &["sh", "-c", "exit 0"]);
    c.wait_status("gone", "STOPPED", T);
    c.run_detached(&[], "alive", &["sleep", "100000"]);
    c.wait_status("alive", "RUNNING", T);
    let (gone_shim, alive_shim) = (c.shim_pid("gone"), c.shim_pid("alive"));
    let alive_pid = c.task_pid("alive").unwrap();
    // containerd dies and its state goes with it (a wiped /run, a reinstall)
    c.stop("SIGKILL");
    for id in ["gone", "alive"] {
        let b = c.bundle(id);
        // the container keeps its root through its own mount namespace
        let _ = std::process::Command::new("umount").arg("-l").arg(b.join("rootfs")).status();
        fs::remove_dir_all(&b).unwrap();
    }
    let t0 = std::time::Instant::now();
    assert!(
        wait_until(T, || !pid_alive(gone_shim) || proc_stat(gone_shim).is_some_and(|(s, _)| s == 'Z')),
        "[{NAME}] the shim with nothing left never exited"
    );
    let took = t0.elapsed();
    // many times its limit later, the shim of the live container is still there
    std::thread::sleep(Duration::from_secs(limit * 4));
    assert!(pid_alive(alive_shim), "[{NAME}] the shim exited while its container's process lived");
    assert!(pid_alive(alive_pid), "[{NAME}] the container's process is gone");
    report(NAME, &format!("idle limit {limit}s: the leaked shim exited after {took:.1?}; the live one stayed {}s", limit * 4));
    // Its process ends (we started it; we kill it). Its TaskExit cannot be delivered while
    // containerd is away, and an undelivered exit keeps the shim; containerd comes back
    // without the lost state, takes the event, and then the shim goes too.
    send_signal(alive_pid, "SIGKILL");
    std::thread::sleep(Duration::from_secs(limit * 2));
    assert!(pid_alive(alive_shim), "[{NAME}] the shim exited with its TaskExit undelivered");
    c.start_again();
    assert!(
        wait_until(T, || !pid_alive(alive_shim) || proc_stat(alive_shim).is_some_and(|(s, _)| s == 'Z')),
        "[{NAME}] the shim did not exit once its exit was delivered and nothing was left"
    );
}

/// The OOM line says which limit was hit: the container's own, or its parent's (the pod's).
#[test]
fn oom_log_says_which_limit() {
    const NAME: &str = "oom_log_says_which_limit";
    if !only_rustshim(NAME) {
        return;
    }
    let Some(c) = Containerd::start(NAME) else {
        return;
    };
    c.import_image();
    let hog = ["sh", "-c", "sleep 0.3; dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?"];
    // 1. its own limit: 64 MiB buffer under a 20 MiB limit
    let out = c.run(&["--rm", "--memory-limit", "20971520"], "oom-own", &hog);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dd=137", "[{NAME}] {}", describe(&out));
    let l = wait_for_line(&c, "for the own limit", |l| l.contains("container oom-own: OOM kill"));
    assert!(l.contains("own memory limit (20971520 bytes)"), "{l}");
    // 2. a parent's limit: the container has none, its parent cgroup (a pod's) has 20 MiB
    let parent = format!("rs-pod-{}", random_suffix(6));
    let v1 = Path::new("/sys/fs/cgroup/memory").is_dir();
    let pdir = if v1 {
        PathBuf::from("/sys/fs/cgroup/memory").join(&parent)
    } else {
        PathBuf::from("/sys/fs/cgroup").join(&parent)
    };
    fs::create_dir(&pdir).unwrap();
    if v1 {
        fs::write(pdir.join("memory.limit_in_bytes"), "20971520").unwrap();
    } else {
        let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
        fs::write(pdir.join("memory.max"), "20971520").unwrap();
        fs::write(pdir.join("cgroup.subtree_control"), "+memory").unwrap();
    }
    let cgroup = format!("/{parent}/oom-parent");
    let out = c.run(&["--rm", "--cgroup", &cgroup], "oom-parent", &hog);
    let line = wait_for_line(&c, "for the parent's limit", |l| l.contains("container oom-parent: OOM kill"));
    // remove the parent in every hierarchy runc created it in (it made the child's there too)
    for root in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let d = root.path().join(&parent);
        if d.is_dir() {
            let _ = fs::remove_dir(d.join("oom-parent"));
            let _ = fs::remove_dir(&d);
        }
    }
    let _ = fs::remove_dir(PathBuf::from("/sys/fs/cgroup/unified").join(&parent));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dd=137", "[{NAME}] {}", describe(&out));
    assert!(line.contains("parent's memory limit (20971520 bytes") && line.contains(&parent), "{line}");
}
