//! Checkpoint and restore end to end (issue 15): a private containerd, real runc 1.1.5 and the
//! CRIU that scripts/install-criu.sh builds (bookworm's criu 3.17 cannot dump on this kernel).
//!
//! How each shim finds that CRIU without replacing the system's: rustshim through
//! RUSTSHIM_CRIU_PATH in containerd's environment (CriuPath is gone from containerd 2.x's runc
//! options, and ctr has no flag for it); the Go shim through containerd's PATH, which is all
//! runc looks at when no CriuPath is given.
//!
//!   cargo test --test e2e_checkpoint
//!   RUSTSHIM_TEST_RUNTIME=io.containerd.runc.v2 cargo test --test e2e_checkpoint
//!
//! Routes: `ctr container checkpoint --task` (containerd pauses the task, checkpoints it leaving
//! it running, resumes it) and `ctr container restore --live`; `ctr task checkpoint` with and
//! without `--image-path` and `--exit` (1.6's client sends rustshim the legacy
//! containerd.linux.runc.CheckpointOptions there). Calls ctr has no route for (a checkpoint of
//! a stopped task, one with no image path) go straight to the shim over ttrpc.
mod common;

use common::*;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}


/// Err(reason) when the CRIU is missing or `criu check` fails on this kernel.
fn criu_usable(criu: &Path) -> Result<(), String> {
    let o = run_with_timeout(
        Command::new(criu).arg("check"),
        None,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    if o.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error"))
        .map(|l| l.split_once("): ").map(|x| x.1).unwrap_or(l).trim())
        .collect();
    Err(format!(
        "{} check failed: {}",
        criu.display(),
        if errors.is_empty() { text.trim().to_string() } else { errors.join("; ") }
    ))
}

/// A private containerd whose shims use the built CRIU; None after SKIPPED.
fn start(name: &str) -> Option<Containerd> {
    if let Err(reason) = prerequisites() {
        skip_or_fail(name, &reason);
        return None;
    }
    let criu = match criu_binary().and_then(|c| criu_usable(&c).map(|_| c)) {
        Ok(c) => c,
        Err(reason) => {
            skip_or_fail(name, &reason);
            return None;
        }
    };
    let criu_s = criu.display().to_string();
    let c = if is_rustshim() {
        Containerd::start_with_env(name, &[("RUSTSHIM_CRIU_PATH", &criu_s)])?
    } else {
        let shim_dir = Path::new(SHIM_BIN).parent().unwrap().display().to_string();
        let path = format!(
            "{}:{shim_dir}:{}",
            criu.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Containerd::start_with_env(name, &[("PATH", &path)])?
    };
    c.import_image();
    Some(c)
}

/// A shell loop counting in memory, one step per line written to the FIFO /tmp/f in its rootfs;
/// each number goes to stdout and to /tmp/n. Driven by steps rather than by time, so a test can
/// say exactly which value a restored process must continue from.
/// Beside it, a timed loop counts in /tmp/j, for timers in a restored process.
const COUNTER: &str = "mkfifo /tmp/f; (j=0; while true; do j=$((j+1)); echo $j > /tmp/j; sleep 0.1; done) & i=0; while true; do echo n=$i; echo $i > /tmp/n; i=$((i+1)); read x <> /tmp/f; done";

fn read_counter(c: &Containerd, id: &str, exec_id: &str) -> u64 {
    read_number(c, id, exec_id, "/tmp/n")
}

fn read_number(c: &Containerd, id: &str, exec_id: &str, file: &str) -> u64 {
    // The loops rewrite their files in place: a read can meet one empty for a moment.
    let mut last = String::new();
    for k in 0..50 {
        let o = c.exec(&[], id, &format!("{exec_id}-{k}"), &["cat", file]);
        c.check_ok(&["exec", exec_id], &o);
        last = stdout(&o);
        if let Ok(n) = last.trim().parse() {
            return n;
        }
    }
    panic!("{file} of {id} holds {last:?}")
}

/// One step of the counter: returns the new value once the loop has taken it.
fn step(c: &Containerd, id: &str) -> u64 {
    let before = read_counter(c, id, &format!("r{}", random_suffix(8)));
    let o = c.exec(&[], id, &format!("t{}", random_suffix(8)), &["sh", "-c", "echo t > /tmp/f"]);
    c.check_ok(&["exec tick"], &o);
    let mut last = before;
    let ok = wait_until(T, || {
        last = read_counter(c, id, &format!("r{}", random_suffix(8)));
        last > before
    });
    assert!(ok, "counter of {id} stuck at {last}");
    assert_eq!(last, before + 1, "one step moved the counter from {before} to {last}");
    last
}

/// Steps until the counter is past `n`.
fn wait_counter(c: &Containerd, id: &str, n: u64, _tag: &str) -> u64 {
    loop {
        let v = step(c, id);
        if v > n {
            return v;
        }
    }
}

fn numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("n=")?.parse().ok())
        .collect()
}

/// containerd's log lines about this shim's errors, for failure messages.
fn log_tail(c: &Containerd) -> String {
    let log = c.log();
    let v: Vec<&str> = log.lines().collect();
    v[v.len().saturating_sub(30)..].join("\n")
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// `ctr container checkpoint --task` leaves the task running; `ctr container restore --live`
/// brings the process back with its memory (the counter goes on from where it was), its stdout
/// on the restoring ctr's new FIFOs, and exec works in it.
#[test]
fn checkpoint_leave_running_and_restore() {
    let Some(c) = start("checkpoint_leave_running_and_restore") else {
        return;
    };
    let ev = EventStream::start(&c);
    let id = "ck-live";
    c.run_detached(&[], id, &["sh", "-c", COUNTER]);
    let at_checkpoint = wait_counter(&c, id, 3, "a");
    let reference = format!("checkpoint/{id}:1");
    let o = c.ctr(&["container", "checkpoint", "--task", "--rw", id, &reference]);
    assert!(o.status.success(), "ctr container checkpoint: {}\n{}", describe(&o), log_tail(&c));
    // containerd paused the task around the checkpoint and resumed it: it runs on
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));
    assert_eq!(read_counter(&c, id, "b1"), at_checkpoint);
    let later = wait_counter(&c, id, at_checkpoint + 2, "c");
    assert!(
        c.ctr_ok(&["images", "ls", "-q"]).lines().any(|l| l.trim() == reference),
        "no checkpoint image {reference}"
    );
    // the checkpointed task is gone for good; its checkpoint brings it back
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    ev.wait_exit(id, id, T);
    c.ctr_ok(&["task", "delete", id]);
    c.ctr_ok(&["container", "delete", id]);
    // Without a TTY, ctr 1.6-2.1's restore returns once the task has started (it does not
    // stay attached): its FIFOs stay, and `ctr task attach` reads them.
    let o = c.ctr(&["container", "restore", "--live", "--rw", id, &reference]);
    assert!(o.status.success(), "ctr container restore: {}\n{}", describe(&o), log_tail(&c));
    c.wait_status(id, "RUNNING", T);
    let mut attach = Background::spawn(c.ctr_cmd(&["task", "attach", id]));
    // memory intact: the restored process is where the checkpoint left it (not where the
    // original went on to, nor a fresh start), and it steps on
    assert_eq!(read_counter(&c, id, "d1"), at_checkpoint, "restored rootfs/counter (the original reached {later})");
    let s1 = step(&c, id);
    let s2 = step(&c, id);
    assert_eq!((s1, s2), (at_checkpoint + 1, at_checkpoint + 2));
    // its stdout is wired to the restoring ctr's new FIFOs
    let ok = wait_until(T, || numbers(&attach.output()).contains(&s2));
    assert!(ok, "restored task's output missing from its FIFOs (ctr task attach): {:?}", attach.output());
    let printed = numbers(&attach.output());
    assert!(printed.contains(&s1) && !printed.contains(&0), "attach printed {printed:?}");
    // exec into the restored container
    let o = c.exec(&[], id, "d2", &["sh", "-c", "echo exec-ok; exit 7"]);
    assert_eq!(exit_code(&o.status), 7, "exec in the restored container: {}", describe(&o));
    assert!(stdout(&o).contains("exec-ok"));
    let restored_pid = c.task_pid(id).unwrap();
    assert!(restored_pid > 0 && pid_alive(restored_pid));
    // timers fire in the restored processes as well: the timed loop goes on
    let j0 = read_number(&c, id, "j0", "/tmp/j");
    let mut j = j0;
    let ok = wait_until(T, || {
        j = read_number(&c, id, &format!("j{}", random_suffix(8)), "/tmp/j");
        j >= j0 + 3
    });
    assert!(ok, "the restored timed loop is stuck at {j}");
    // and it ends like any task: attach returns with its exit status
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    ev.wait_exit(id, id, T);
    let st = attach.wait_timeout(T).expect("attach did not return after the task was killed");
    assert_eq!(exit_code(&st), 137, "ctr task attach: {}", attach.output());
    c.remove(id);
    assert!(c.mounts().is_empty(), "mounts left: {:?}", c.mounts());
}

/// Protobuf wire bytes of (field, string) and (field, bool) pairs: the legacy
/// `containerd.linux.runc.CheckpointOptions` has no generated type in the crate.
fn wire(strings: &[(u32, &str)], bools: &[(u32, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in strings {
        out.push((n << 3 | 2) as u8);
        let mut len = v.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(v.as_bytes());
    }
    for (n, v) in bools {
        out.push((n << 3) as u8);
        out.push(*v as u8);
    }
    out
}

fn checkpoint_with(id: &str, path: &str, type_url: &str, value: Vec<u8>) -> api::CheckpointTaskRequest {
    let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
    any.type_url = type_url.into();
    any.value = value;
    api::CheckpointTaskRequest {
        id: id.into(),
        path: path.into(),
        options: Some(any).into(),
        ..Default::default()
    }
}

fn assert_criu_image(dir: &Path) {
    let files = files_in(dir);
    assert!(files.iter().any(|f| f == "inventory.img"), "no CRIU image in {}: {files:?}", dir.display());
    assert!(files.iter().any(|f| f.starts_with("pages-")), "no memory pages in {}: {files:?}", dir.display());
}

/// `ctr task checkpoint` into the content store; then what ctr cannot route to a runtime not
/// named io.containerd.runc.* (its `--image-path`, `--work-path` and `--exit` are only filled
/// in for runc names, see cmd/ctr/commands/tasks/checkpoint.go), sent to the shim as
/// containerd forwards it: the image path in runc v2 options, the legacy options of 1.6's
/// client (`WithCheckpointImagePath` for other runtime names), and `exit`, which stops the task.
#[test]
fn task_checkpoint_image_path_legacy_options_and_exit() {
    let Some(c) = start("task_checkpoint_image_path_legacy_options_and_exit") else {
        return;
    };
    let ev = EventStream::start(&c);
    let id = "ck-task";
    c.run_detached(&[], id, &["sh", "-c", COUNTER]);
    let n0 = wait_counter(&c, id, 2, "a");
    let o = c.ctr(&["task", "checkpoint", id]);
    assert!(o.status.success(), "ctr task checkpoint: {}\n{}", describe(&o), log_tail(&c));
    let name = stdout(&o).trim().to_string();
    assert!(!name.is_empty(), "ctr printed no checkpoint name");
    assert!(c.ctr_ok(&["images", "ls", "-q"]).lines().any(|l| l.trim() == name), "no image {name}");
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));
    let n1 = wait_counter(&c, id, n0, "b");
    let sock = c.shim_socket(id).expect("shim socket");
    // runc v2 options: the image path from the options (containerd's `path` left empty)
    let dir1 = c.dir.join("ckpt-v2");
    let mut v2 = containerd_shim_protos::shim::oci::CheckpointOptions::new();
    v2.image_path = dir1.display().to_string();
    let r = shim_call::<_, api::Empty>(
        &c,
        &sock,
        "Checkpoint",
        &checkpoint_with(id, "", "containerd.runc.v1.CheckpointOptions", v2.write_to_bytes().unwrap()),
    );
    if is_rustshim() {
        r.unwrap_or_else(|e| panic!("checkpoint with runc v2 options: {e:?}"));
        assert_criu_image(&dir1);
    } else {
        let _ = writeln!(std::io::stderr(), "NOTE: the Go shim, image path only in the options: {r:?}");
    }
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));
    let n2 = wait_counter(&c, id, n1, "c");
    // containerd 1.6's legacy options: work_path is field 8, image_path field 9
    let dir2 = c.dir.join("ckpt-legacy");
    let work2 = c.dir.join("work-legacy");
    let legacy = wire(&[(8, &work2.display().to_string()), (9, &dir2.display().to_string())], &[]);
    let r = shim_call::<_, api::Empty>(
        &c,
        &sock,
        "Checkpoint",
        &checkpoint_with(id, &dir2.display().to_string(), "containerd.linux.runc.CheckpointOptions", legacy),
    );
    if is_rustshim() {
        r.unwrap_or_else(|e| panic!("checkpoint with the legacy options: {e:?}"));
        assert_criu_image(&dir2);
        assert!(work2.join("dump.log").exists(), "no dump.log in the legacy work path {}", work2.display());
    } else {
        let _ = writeln!(std::io::stderr(), "NOTE: the Go shim, legacy CheckpointOptions: {r:?}");
    }
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));
    wait_counter(&c, id, n2, "d");
    // exit: the checkpoint stops the task
    let dir3 = c.dir.join("ckpt-exit");
    let mut ex = containerd_shim_protos::shim::oci::CheckpointOptions::new();
    ex.exit = true;
    let r = shim_call::<_, api::Empty>(
        &c,
        &sock,
        "Checkpoint",
        &checkpoint_with(id, &dir3.display().to_string(), "containerd.runc.v1.CheckpointOptions", ex.write_to_bytes().unwrap()),
    );
    r.unwrap_or_else(|e| panic!("checkpoint with exit: {e:?}"));
    assert_criu_image(&dir3);
    ev.wait_exit(id, id, T);
    c.wait_status(id, "STOPPED", T);
    c.remove(id);
    assert!(c.mounts().is_empty(), "mounts left: {:?}", c.mounts());
}

/// A paused container can be checkpointed (Checkpoint as containerd forwards it) and stays
/// paused.
#[test]
fn checkpoint_paused_container_stays_paused() {
    let Some(c) = start("checkpoint_paused_container_stays_paused") else {
        return;
    };
    let id = "ck-paused";
    c.run_detached(&[], id, &["sh", "-c", COUNTER]);
    let n0 = wait_counter(&c, id, 2, "a");
    c.ctr_ok(&["task", "pause", id]);
    c.wait_status(id, "PAUSED", T);
    let sock = c.shim_socket(id).expect("shim socket");
    let dir = c.dir.join("ckpt-paused");
    let r = shim_call::<_, api::Empty>(&c, &sock, "Checkpoint", &checkpoint_req(id, &dir.display().to_string()));
    r.unwrap_or_else(|e| panic!("checkpoint of a paused task with an image path: {e:?}"));
    assert_criu_image(&dir);
    assert_eq!(c.task_status(id).as_deref(), Some("PAUSED"));
    // ctr's routes pause the task first, and pausing a paused task is refused by both shims
    // ("cannot pause a paused container" from the Go shim): the checkpoint fails, the task
    // stays paused.
    let reference = format!("checkpoint/{id}:1");
    let o = c.ctr(&["container", "checkpoint", "--task", id, &reference]);
    assert!(!o.status.success(), "ctr checkpoint of a paused task passed the client's pause");
    assert!(String::from_utf8_lossy(&o.stderr).contains("paused"), "{}", describe(&o));
    assert_eq!(c.task_status(id).as_deref(), Some("PAUSED"));
    c.ctr_ok(&["task", "resume", id]);
    c.wait_status(id, "RUNNING", T);
    assert_eq!(read_counter(&c, id, "b1"), n0);
    wait_counter(&c, id, n0, "c");
    c.remove(id);
}

// ---------------------------------------------------------------------------
// failure paths
// ---------------------------------------------------------------------------

/// One `containerd.task.v2.Task` call straight to a shim (both shims serve v2).
fn shim_call<Req: Message, Resp: Message>(
    c: &Containerd,
    sock: &Path,
    method: &str,
    req: &Req,
) -> Result<Resp, (ttrpc::Code, String)> {
    let client = ttrpc::Client::connect(&format!("unix://{}", sock.display()))
        .unwrap_or_else(|e| panic!("connect to {}: {e:?}", sock.display()));
    let mut r = ttrpc::Request::new();
    r.service = "containerd.task.v2.Task".into();
    r.method = method.into();
    r.payload = req.write_to_bytes().unwrap();
    r.timeout_nano = T.as_nanos() as i64;
    let mut kv = ttrpc::proto::KeyValue::new();
    kv.key = "containerd-namespace-ttrpc".into();
    kv.value = c.ns.clone();
    r.metadata.push(kv);
    match client.request(r) {
        Ok(resp) => Ok(Resp::parse_from_bytes(&resp.payload).expect("decode reply")),
        Err(ttrpc::Error::RpcStatus(s)) => Err((s.code(), s.message)),
        Err(e) => panic!("{method}: transport error {e:?}"),
    }
}

fn checkpoint_req(id: &str, path: &str) -> api::CheckpointTaskRequest {
    api::CheckpointTaskRequest {
        id: id.into(),
        path: path.into(),
        ..Default::default()
    }
}

/// A checkpoint of a stopped task, and one with no image path, are refused with a message that
/// says so; the shim serves on.
#[test]
fn checkpoint_refused_stopped_and_no_image_path() {
    let Some(c) = start("checkpoint_refused_stopped_and_no_image_path") else {
        return;
    };
    let ev = EventStream::start(&c);
    let id = "ck-refuse";
    c.run_detached(&[], id, &["sleep", "1000"]);
    let sock = c.shim_socket(id).expect("shim socket");
    // no image path in the request nor in the options
    let r = shim_call::<_, api::Empty>(&c, &sock, "Checkpoint", &checkpoint_req(id, ""));
    if is_rustshim() {
        let (code, msg) = r.expect_err("checkpoint without an image path succeeded");
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains("no image path"), "{msg}");
    } else {
        // The Go shim hands runc `--image-path ""`, and runc picks a directory of its own.
        let _ = writeln!(std::io::stderr(), "NOTE: the Go shim answers a checkpoint without an image path with {r:?}");
    }
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));
    // stopped
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    ev.wait_exit(id, id, T);
    let dir = c.dir.join("ckpt-stopped").display().to_string();
    let r = shim_call::<_, api::Empty>(&c, &sock, "Checkpoint", &checkpoint_req(id, &dir));
    let (code, msg) = r.expect_err("checkpoint of a stopped task succeeded");
    assert!(msg.contains("stopped") || msg.contains("not running"), "{msg}");
    if is_rustshim() {
        assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    }
    // and through ctr: containerd's pause before the checkpoint already refuses
    let o = c.ctr(&["task", "checkpoint", "--image-path", &dir, id]);
    assert!(!o.status.success(), "ctr checkpoint of a stopped task succeeded");
    c.remove(id);
    assert!(c.mounts().is_empty(), "mounts left: {:?}", c.mounts());
}

/// CRIU refuses to dump an established TCP connection unless told to: rustshim's error names
/// CRIU's reason (from its dump.log, kept in the bundle), and the task runs on, unpaused.
#[test]
fn checkpoint_criu_failure_names_the_cause() {
    let Some(c) = start("checkpoint_criu_failure_names_the_cause") else {
        return;
    };
    let id = "ck-tcp";
    // a loopback TCP connection kept open by both ends (host network: ctr brings up no
    // loopback in a netns of its own)
    let port = 20000 + (std::process::id() % 20000);
    let script = format!(
        "busybox nc -l -p {port} -e sleep 1000 & sleep 0.5; sleep 1000 | busybox nc 127.0.0.1 {port}"
    );
    c.run_detached(&["--net-host"], id, &["sh", "-c", &script]);
    let ok = wait_until(T, || {
        let o = c.exec(&[], id, &format!("ns{}", random_suffix(6)), &["cat", "/proc/net/tcp", "/proc/net/tcp6"]);
        // st 01 = ESTABLISHED, on our port (busybox nc listens dual-stack: tcp6)
        let hex = format!(":{port:04X}");
        stdout(&o).lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && (f[1].ends_with(&hex) || f[2].ends_with(&hex))
        })
    });
    assert!(
        ok,
        "no established TCP connection in the container: {}\n{:?}",
        describe(&c.exec(&[], id, "diag1", &["cat", "/proc/net/tcp", "/proc/net/tcp6"])),
        c.task_status(id)
    );
    let dir = c.dir.join("ckpt-tcp").display().to_string();
    let o = c.ctr(&["task", "checkpoint", "--image-path", &dir, id]);
    assert!(!o.status.success(), "checkpoint with an established TCP connection succeeded");
    let err = describe(&o);
    if is_rustshim() {
        assert!(err.contains("tcp-established"), "CRIU's reason missing from the error: {err}");
        assert!(err.contains("criu-dump.log"), "the kept log is not named: {err}");
    } else {
        // The Go shim names only the log (criu-dump.log in the bundle).
        assert!(err.contains("criu"), "{err}");
    }
    // containerd resumes the task after the failed checkpoint: it runs on
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"), "{err}");
    let o = c.exec(&[], id, "after", &["true"]);
    c.check_ok(&["exec after"], &o);
    c.remove(id);
    assert!(c.mounts().is_empty(), "mounts left: {:?}", c.mounts());
}

/// Overwrite the data of `member` inside a tar archive (headers intact), so it still unpacks
/// but CRIU reads garbage.
fn corrupt_tar_member(tar: &Path, member: &str) -> bool {
    let mut data = fs::read(tar).unwrap();
    let mut off = 0;
    while off + 512 <= data.len() {
        let h = &data[off..off + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let name = String::from_utf8_lossy(&h[..100]).trim_end_matches('\0').to_string();
        let size_field = String::from_utf8_lossy(&h[124..136]).trim_matches(|c| c == '\0' || c == ' ').to_string();
        let size = usize::from_str_radix(&size_field, 8).unwrap_or(0);
        let body = off + 512;
        if name.trim_start_matches("./") == member && size > 0 {
            data[body..body + size].iter_mut().for_each(|b| *b = 0xa5);
            fs::write(tar, &data).unwrap();
            return true;
        }
        off = body + size.div_ceil(512) * 512;
    }
    false
}

/// A restore whose CRIU image is corrupt fails with CRIU's reason; nothing is left running or
/// mounted, and the same id can be used again.
#[test]
fn restore_corrupt_image_fails_cleanly() {
    let Some(c) = start("restore_corrupt_image_fails_cleanly") else {
        return;
    };
    let ev = EventStream::start(&c);
    let id = "ck-bad";
    c.run_detached(&[], id, &["sh", "-c", COUNTER]);
    wait_counter(&c, id, 2, "a");
    let reference = format!("checkpoint/{id}:1");
    c.ctr_ok(&["container", "checkpoint", "--task", id, &reference]);
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    ev.wait_exit(id, id, T);
    c.ctr_ok(&["task", "delete", id]);
    c.ctr_ok(&["container", "delete", id]);
    // find the CRIU tarball of the checkpoint in the content store and damage it
    let index = c.ctr_ok(&["images", "ls"]);
    let digest = index
        .lines()
        .find(|l| l.starts_with(&reference))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .unwrap_or_else(|| panic!("no digest for {reference} in {index}"))
        .to_string();
    let blobs = c.dir.join("root/io.containerd.content.v1.content/blobs/sha256");
    let index_json = fs::read_to_string(blobs.join(digest.trim_start_matches("sha256:"))).unwrap();
    let criu_digest = index_json
        .split("{")
        .find(|m| m.contains("criu.checkpoint.criu.tar"))
        .and_then(|m| m.split("\"digest\":\"sha256:").nth(1))
        .and_then(|d| d.split('"').next())
        .unwrap_or_else(|| panic!("no CRIU tarball in the checkpoint index {index_json}"))
        .to_string();
    let tar = blobs.join(&criu_digest);
    assert!(corrupt_tar_member(&tar, "inventory.img"), "no inventory.img in {}", tar.display());
    let before_pids = all_pids();
    let o = c.ctr(&["container", "restore", "--live", id, &reference]);
    assert!(!o.status.success(), "restore of a corrupt image succeeded: {}", describe(&o));
    let err = describe(&o);
    if is_rustshim() {
        assert!(err.contains("criu"), "the error does not name CRIU's failure: {err}");
    }
    // nothing of the container left running: the task can be deleted, nothing is mounted
    let _ = c.ctr(&["task", "delete", id]);
    assert!(c.task_status(id).is_none(), "task left: {:?}", c.task_status(id));
    let _ = wait_until(T, || c.mounts().is_empty());
    assert!(c.mounts().is_empty(), "mounts left: {:?}", c.mounts());
    let leftover: Vec<(u32, Vec<String>)> = all_pids()
        .into_iter()
        .filter(|p| !before_pids.contains(p))
        .filter_map(|p| Some((p, proc_cmdline(p)?)))
        // this test's own: the other tests run beside it
        .filter(|(_, cmd)| cmd.iter().any(|a| a.contains(&c.ns) || a.contains(&*c.dir.to_string_lossy())))
        .collect();
    assert!(leftover.is_empty(), "processes left: {leftover:?}");
    // the id is free again
    let _ = c.ctr(&["container", "delete", id]);
    c.run_detached(&[], id, &["sleep", "1000"]);
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));
    c.remove(id);
    let _ = std::io::stderr().flush();
}
