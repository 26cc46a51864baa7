//! End-to-end tests: a private containerd per test drives the shim under test
//! through `ctr` with a busybox image (so rootfs mounts go through Create).
//!
//! Run against the Go reference shim to check the tests themselves:
//!   RUSTSHIM_TEST_RUNTIME=io.containerd.runc.v2 cargo test --test e2e_core -- --test-threads=2
mod common;

use common::*;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn ctr_is_1_6() -> bool {
    let out = Command::new(containerd_tool("ctr")).arg("--version").output().expect("ctr --version");
    String::from_utf8_lossy(&out.stdout).contains(" 1.6.")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Index of the first event matching `pred` (panics with the list if none).
fn index_of(evs: &[Event], what: &str, pred: impl Fn(&Event) -> bool) -> usize {
    evs.iter()
        .position(pred)
        .unwrap_or_else(|| panic!("event {what} not found in:\n{}", lines(evs)))
}

fn lines(evs: &[Event]) -> String {
    evs.iter()
        .map(|e| e.line.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a shell command line under `script` so that ctr gets a pty.
fn in_pty(cmdline: &str, timeout: Duration) -> Output {
    run_with_timeout(
        Command::new("script").args(["-q", "-e", "-c", cmdline, "/dev/null"]),
        None,
        Duration::ZERO,
        timeout,
    )
}

/// Shell snippet: print the tty name, wait (up to 5 s) until the window size
/// set by ctr's resize arrives (busybox `stty size` fails while it is 0x0), print it.
const WAIT_SIZE: &str = "tty; i=0; while s=$(stty size 2>/dev/null); [ -z \"$s\" -o \"$s\" = \"0 0\" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; stty size";

/// Largest N in "line N" lines of `s`.
fn max_line_number(s: &str) -> Option<u64> {
    s.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("line ")
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .max()
}

// a. output, exit status of attached and detached runs
#[test]
fn run_output_and_exit_status() {
    let Some(c) = Containerd::start("run_output_and_exit_status") else {
        return;
    };
    c.import_image();
    let ev = EventStream::start(&c);
    let rt = runtime();

    // stdout and stderr arrive, separately
    let o = c.run(
        &["--rm"],
        "a-echo",
        &["sh", "-c", "echo hello from container; echo to-stderr >&2"],
    );
    c.check_ok(&["run a-echo"], &o);
    assert_eq!(stdout(&o), "hello from container\n", "{}", describe(&o));
    assert!(stderr(&o).contains("to-stderr"), "{}", describe(&o));

    // ctr run exits with the container's code
    let o = c.run(&["--rm"], "a-exit", &["sh", "-c", "exit 3"]);
    assert_eq!(exit_code(&o.status), 3, "{}", describe(&o));

    // detached: exit status in the events, STOPPED in task ls, kept until delete
    c.run_detached(&[], "a-det", &["sh", "-c", "echo bye; exit 3"]);
    let e = ev.wait_exit("a-det", "a-det", T);
    assert_eq!(e.exit_status(), 3, "{}", e.line);
    c.wait_status("a-det", "STOPPED", T);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(c.task_status("a-det").as_deref(), Some("STOPPED"));
    c.ctr_ok(&["task", "delete", "a-det"]);
    let d = ev.wait_delete("a-det", T);
    assert_eq!(d.exit_status(), 3, "{}", d.line);
    assert_eq!(d.pid(), e.pid(), "delete pid != exit pid");
    c.ctr_ok(&["container", "delete", "a-det"]);

    // create and start separately: `ctr task start` exits with the code
    // (ctr 1.6's `container create` takes `-c` as its own --config flag unless `--` comes
    // first; ctr 1.7+ passes a `--` on to the container as its command)
    let mut create = vec!["container", "create", "--runtime", &rt, IMAGE, "a-start"];
    if ctr_is_1_6() {
        create.push("--");
    }
    create.extend(["sh", "-c", "echo started; exit 7"]);
    c.ctr_ok(&create);
    let o = c.ctr(&["task", "start", "--fifo-dir", &c.fifo_dir(), "a-start"]);
    assert_eq!(exit_code(&o.status), 7, "{}", describe(&o));
    assert!(stdout(&o).contains("started"), "{}", describe(&o));
    let _ = c.ctr(&["task", "delete", "a-start"]);
    c.ctr_ok(&["container", "delete", "a-start"]);

    assert!(c.task_status("a-det").is_none());
}

// b. a process that exits at once, repeatedly; event order per container
#[test]
fn true_repeatedly_event_order() {
    let Some(c) = Containerd::start("true_repeatedly_event_order") else {
        return;
    };
    c.import_image();
    let ev = EventStream::start(&c);
    const N: usize = 10;
    for i in 0..N {
        let id = format!("b-true-{i}");
        let o = c.run(&["--rm"], &id, &["/bin/true"]);
        c.check_ok(&["run", &id], &o);
        assert_eq!(stdout(&o), "", "{}", describe(&o));
    }
    for i in 0..N {
        let id = format!("b-true-{i}");
        ev.wait_delete(&id, T);
    }
    // give late duplicates a chance to show up
    thread::sleep(Duration::from_millis(500));
    for i in 0..N {
        let id = format!("b-true-{i}");
        let evs = ev.task_events(&id);
        let topics: Vec<&str> = evs.iter().map(|e| e.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete"
            ],
            "container {id}: wrong task events:\n{}",
            lines(&evs)
        );
        let start_pid = evs[1].pid();
        assert!(
            start_pid.unwrap_or(0) > 0,
            "start without pid: {}",
            evs[1].line
        );
        assert_eq!(evs[2].pid(), start_pid, "exit pid != start pid");
        assert_eq!(
            evs[2].id().as_deref(),
            Some(id.as_str()),
            "init exit must carry id = container id"
        );
        assert_eq!(evs[2].exit_status(), 0, "{}", evs[2].line);
        assert_eq!(evs[3].exit_status(), 0, "{}", evs[3].line);
        assert!(
            evs[2].field("exited_at").is_some(),
            "exit without exited_at: {}",
            evs[2].line
        );
    }
}

// c. detached run, exec, kill (TERM/KILL/--all/--exec-id), ps, delete, exec events
#[test]
fn detached_exec_kill_ps_delete() {
    let Some(c) = Containerd::start("detached_exec_kill_ps_delete") else {
        return;
    };
    c.import_image();
    let ev = EventStream::start(&c);
    let trap = "trap 'exit 42' TERM; while true; do sleep 0.1; done";

    // SIGTERM (default signal of ctr task kill) reaches the init
    c.run_detached(&[], "c-term", &["sh", "-c", trap]);
    c.wait_status("c-term", "RUNNING", T);
    let pid = c.task_pid("c-term").unwrap();
    assert!(
        wait_until(T, || catches_signal(pid, 15)),
        "init never installed its TERM trap"
    );
    c.ctr_ok(&["task", "kill", "c-term"]);
    let e = ev.wait_exit("c-term", "c-term", T);
    assert_eq!(e.exit_status(), 42, "{}", e.line);
    c.wait_status("c-term", "STOPPED", T);
    // no exec into a stopped container
    let o = c.exec(&[], "c-term", "late", &["true"]);
    assert!(
        !o.status.success(),
        "exec into a stopped task succeeded\n{}",
        describe(&o)
    );
    c.ctr_ok(&["task", "delete", "c-term"]);
    c.ctr_ok(&["container", "delete", "c-term"]);

    // main container
    c.run_detached(&[], "c-main", &["sleep", "1000"]);
    let init_pid = c.task_pid("c-main").expect("c-main in task ls");
    assert!(init_pid > 0);
    assert_eq!(c.task_status("c-main").as_deref(), Some("RUNNING"));

    // attached exec: output and exit code
    let o = c.exec(
        &[],
        "c-main",
        "e1",
        &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"],
    );
    assert_eq!(exit_code(&o.status), 5, "{}", describe(&o));
    assert_eq!(stdout(&o), "exec-out\n", "{}", describe(&o));
    assert!(stderr(&o).contains("exec-err"), "{}", describe(&o));
    let x = ev.wait_exit("c-main", "e1", T);
    assert_eq!(x.exit_status(), 5, "{}", x.line);
    let evs = ev.task_events("c-main");
    let added = index_of(&evs, "exec-added e1", |e| {
        e.topic == "/tasks/exec-added" && e.exec_id().as_deref() == Some("e1")
    });
    let started = index_of(&evs, "exec-started e1", |e| {
        e.topic == "/tasks/exec-started" && e.exec_id().as_deref() == Some("e1")
    });
    let exited = index_of(&evs, "exit e1", |e| {
        e.topic == "/tasks/exit" && e.id().as_deref() == Some("e1")
    });
    assert!(
        added < started && started < exited,
        "exec events out of order:\n{}",
        lines(&evs)
    );
    assert_eq!(
        evs[started].pid(),
        evs[exited].pid(),
        "exec-started pid != exit pid"
    );
    assert_eq!(
        evs.iter()
            .filter(|e| e.topic == "/tasks/exit" && e.id().as_deref() == Some("e1"))
            .count(),
        1,
        "duplicate exit for e1:\n{}",
        lines(&evs)
    );

    // detached exec, duplicate exec id refused
    let o = c.exec(&["-d"], "c-main", "e2", &["sleep", "1000"]);
    c.check_ok(&["task exec -d e2"], &o);
    let evs = ev.wait_for("exec-started e2", T, |evs| {
        evs.iter()
            .any(|e| e.topic == "/tasks/exec-started" && e.exec_id().as_deref() == Some("e2"))
    });
    let e2_pid = evs
        .iter()
        .find(|e| e.topic == "/tasks/exec-started" && e.exec_id().as_deref() == Some("e2"))
        .and_then(|e| e.pid())
        .expect("e2 pid");
    let o = c.exec(&["-d"], "c-main", "e2", &["true"]);
    assert!(
        !o.status.success(),
        "duplicate exec id accepted\n{}",
        describe(&o)
    );

    // ps lists init and exec
    let ps = c.ctr_ok(&["task", "ps", "c-main"]);
    let pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        pids.contains(&init_pid),
        "init pid {init_pid} missing from ps:\n{ps}"
    );
    assert!(
        pids.contains(&e2_pid),
        "exec pid {e2_pid} missing from ps:\n{ps}"
    );
    assert!(ps.contains("e2"), "ps does not name exec e2:\n{ps}");

    // kill one exec by id
    c.ctr_ok(&[
        "task",
        "exec",
        "--fifo-dir",
        &c.fifo_dir(),
        "-d",
        "--exec-id",
        "e3",
        "c-main",
        "sleep",
        "1000",
    ]);
    ev.wait_for("exec-started e3", T, |evs| {
        evs.iter()
            .any(|e| e.topic == "/tasks/exec-started" && e.exec_id().as_deref() == Some("e3"))
    });
    c.ctr_ok(&["task", "kill", "--exec-id", "e3", "-s", "SIGKILL", "c-main"]);
    let x = ev.wait_exit("c-main", "e3", T);
    assert_eq!(x.exit_status(), 137, "{}", x.line);
    assert_eq!(
        c.task_status("c-main").as_deref(),
        Some("RUNNING"),
        "killing an exec stopped the init"
    );

    // a running task cannot be deleted without --force
    let o = c.ctr(&["task", "delete", "c-main"]);
    assert!(
        !o.status.success(),
        "deleting a running task succeeded\n{}",
        describe(&o)
    );

    // SIGKILL the init while e2 runs: e2's exit is published before the init's
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "c-main"]);
    let init_exit = ev.wait_exit("c-main", "c-main", T);
    assert_eq!(init_exit.exit_status(), 137, "{}", init_exit.line);
    let e2_exit = ev.wait_exit("c-main", "e2", T);
    assert_eq!(e2_exit.exit_status(), 137, "{}", e2_exit.line);
    let evs = ev.task_events("c-main");
    let i_e2 = index_of(&evs, "exit e2", |e| {
        e.topic == "/tasks/exit" && e.id().as_deref() == Some("e2")
    });
    let i_init = index_of(&evs, "exit init", |e| {
        e.topic == "/tasks/exit" && e.id().as_deref() == Some("c-main")
    });
    assert!(
        i_e2 < i_init,
        "exec exit must come before init exit:\n{}",
        lines(&evs)
    );
    c.wait_status("c-main", "STOPPED", T);
    c.ctr_ok(&["task", "delete", "c-main"]);
    let d = ev.wait_delete("c-main", T);
    assert_eq!(d.exit_status(), 137, "{}", d.line);
    let evs = ev.task_events("c-main");
    assert_eq!(
        evs.iter()
            .filter(|e| e.topic == "/tasks/exit" && e.id().as_deref() == Some("c-main"))
            .count(),
        1,
        "duplicate init exit:\n{}",
        lines(&evs)
    );
    c.ctr_ok(&["container", "delete", "c-main"]);

    // kill --all: every process in the container gets the signal
    c.run_detached(&[], "c-all", &["sh", "-c", trap]);
    c.ctr_ok(&[
        "task",
        "exec",
        "--fifo-dir",
        &c.fifo_dir(),
        "-d",
        "--exec-id",
        "e4",
        "c-all",
        "sleep",
        "1000",
    ]);
    ev.wait_for("exec-started e4", T, |evs| {
        evs.iter()
            .any(|e| e.topic == "/tasks/exec-started" && e.exec_id().as_deref() == Some("e4"))
    });
    let pid = c.task_pid("c-all").unwrap();
    assert!(
        wait_until(T, || catches_signal(pid, 15)),
        "init never installed its TERM trap"
    );
    c.ctr_ok(&["task", "kill", "--all", "-s", "SIGTERM", "c-all"]);
    let x4 = ev.wait_exit("c-all", "e4", T);
    assert_eq!(x4.exit_status(), 143, "{}", x4.line);
    let xi = ev.wait_exit("c-all", "c-all", T);
    assert_eq!(xi.exit_status(), 42, "{}", xi.line);
    let evs = ev.task_events("c-all");
    let i4 = index_of(&evs, "exit e4", |e| {
        e.topic == "/tasks/exit" && e.id().as_deref() == Some("e4")
    });
    let ii = index_of(&evs, "exit init", |e| {
        e.topic == "/tasks/exit" && e.id().as_deref() == Some("c-all")
    });
    assert!(
        i4 < ii,
        "exec exit must come before init exit:\n{}",
        lines(&evs)
    );
    c.ctr_ok(&["task", "delete", "c-all"]);
    c.ctr_ok(&["container", "delete", "c-all"]);

    // delete --force on a running task
    c.run_detached(&[], "c-force", &["sleep", "1000"]);
    c.ctr_ok(&["task", "delete", "--force", "c-force"]);
    let x = ev.wait_exit("c-force", "c-force", T);
    assert_eq!(x.exit_status(), 137, "{}", x.line);
    ev.wait_delete("c-force", T);
    assert!(c.task_status("c-force").is_none());
    c.ctr_ok(&["container", "delete", "c-force"]);
}

// d. stdin is forwarded and closed (CloseIO) on EOF
#[test]
fn stdin_forwarding_and_close() {
    let Some(c) = Containerd::start("stdin_forwarding_and_close") else {
        return;
    };
    c.import_image();
    let hold = Duration::from_secs(1);

    let args = c.run_args(&["--rm"], "d-cat", &["cat"]);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = c.ctr_stdin(&a, b"hello\n", hold);
    c.check_ok(&a, &o);
    assert_eq!(stdout(&o), "hello\n", "{}", describe(&o));

    // a bigger stream
    let data = vec![b'x'; 200_000];
    let args = c.run_args(&["--rm"], "d-wc", &["wc", "-c"]);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = c.ctr_stdin(&a, &data, hold);
    c.check_ok(&a, &o);
    assert_eq!(stdout(&o).trim(), "200000", "{}", describe(&o));

    // exec stdin
    c.run_detached(&[], "d-main", &["sleep", "1000"]);
    let args = c.exec_args(&[], "d-main", "s1", &["cat"]);
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = c.ctr_stdin(&a, b"via exec\n", hold);
    c.check_ok(&a, &o);
    assert_eq!(stdout(&o), "via exec\n", "{}", describe(&o));
    c.remove("d-main");
}

// e. terminals: ctr run -t and ctr task exec -t
#[test]
fn tty_run_and_exec() {
    let Some(c) = Containerd::start("tty_run_and_exec") else {
        return;
    };
    if !require_tool("tty_run_and_exec", "script") {
        return;
    }
    c.import_image();
    let rt = runtime();
    let p = c.ctr_prefix();
    let fifo = c.fifo_dir();

    let cmd = format!(
        "stty rows 24 cols 80; {p} run -t --rm --runtime {rt} --fifo-dir {fifo} {IMAGE} e-tty \
         sh -c '{WAIT_SIZE}; exit 4'"
    );
    let o = in_pty(&cmd, Duration::from_secs(60));
    let out = stdout(&o);
    assert!(
        out.contains("/dev/pts/"),
        "tty did not print a /dev/pts path\n{}",
        describe(&o)
    );
    assert!(
        out.contains("24 80"),
        "window size not propagated (ResizePty)\n{}",
        describe(&o)
    );
    assert_eq!(exit_code(&o.status), 4, "{}", describe(&o));

    // detached tty container, exec -t into it
    let cmd = format!(
        "stty rows 24 cols 80; {p} run -d -t --runtime {rt} --fifo-dir {fifo} {IMAGE} e-det sh -c 'sleep 1000'"
    );
    let o = in_pty(&cmd, Duration::from_secs(60));
    assert!(o.status.success(), "{}", describe(&o));
    c.wait_status("e-det", "RUNNING", T);
    let cmd = format!(
        "stty rows 30 cols 100; {p} task exec -t --fifo-dir {fifo} --exec-id x1 e-det \
         sh -c '{WAIT_SIZE}; exit 6'"
    );
    let o = in_pty(&cmd, Duration::from_secs(60));
    let out = stdout(&o);
    assert!(
        out.contains("/dev/pts/"),
        "exec -t: no /dev/pts path\n{}",
        describe(&o)
    );
    assert!(
        out.contains("30 100"),
        "exec -t: window size not propagated\n{}",
        describe(&o)
    );
    assert_eq!(exit_code(&o.status), 6, "{}", describe(&o));

    // plain exec into a tty container
    let o = c.exec(&[], "e-det", "x2", &["sh", "-c", "echo plain; tty || true"]);
    c.check_ok(&["exec x2"], &o);
    assert!(stdout(&o).starts_with("plain\n"), "{}", describe(&o));
    assert!(
        !stdout(&o).contains("/dev/pts/"),
        "non-tty exec got a tty\n{}",
        describe(&o)
    );
    c.remove("e-det");
}

// f. containerd restart with running containers.
// `client_crashes`: the attached `ctr run` of the printing container is
// SIGKILLed before containerd stops (its FIFOs stay, so we can re-attach after
// the restart); otherwise it loses its connection when containerd stops and
// exits by itself (unlinking its FIFOs).
fn restart_case(name: &str, signal: &str, client_crashes: bool) {
    let Some(mut c) = Containerd::start(name) else {
        return;
    };
    if !require_tool(name, "script") {
        return;
    }
    c.import_image();
    let rt = runtime();
    let p = c.ctr_prefix();
    let fifo = c.fifo_dir();

    // a tty container
    let cmd = format!("stty rows 24 cols 80; {p} run -d -t --runtime {rt} --fifo-dir {fifo} {IMAGE} f-tty sleep 100000");
    let o = in_pty(&cmd, Duration::from_secs(60));
    assert!(o.status.success(), "{}", describe(&o));

    // a container printing without pause, read by an attached ctr
    let args = c.run_args(
        &[],
        "f-print",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); done",
        ],
    );
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let mut printer = Background::spawn(c.ctr_cmd(&a));
    assert!(
        wait_until(T, || printer.output_len() > 100_000),
        "printing container produced too little output: {:?}",
        printer.output().chars().take(2000).collect::<String>()
    );
    c.wait_status("f-print", "RUNNING", T);
    c.wait_status("f-tty", "RUNNING", T);
    let print_pid = c.task_pid("f-print").unwrap();
    let tty_pid = c.task_pid("f-tty").unwrap();
    let shim_print = c.shim_pid("f-print");
    let shim_tty = c.shim_pid("f-tty");

    if client_crashes {
        // the attached client crashes, then containerd goes down
        printer.kill();
        thread::sleep(Duration::from_millis(500));
        c.stop(signal);
    } else {
        // containerd goes down under the attached client, which then exits
        c.stop(signal);
        if printer.wait_timeout(Duration::from_secs(15)).is_none() {
            panic!("attached `ctr run` did not exit after containerd stopped");
        }
    }
    let before = max_line_number(&printer.output()).expect("no 'line N' output before restart");
    drop(printer);
    // nobody reads the output now: the container must block, not die of SIGPIPE
    thread::sleep(Duration::from_secs(2));
    assert!(
        pid_alive(print_pid),
        "printing container died while containerd was down (SIGPIPE?)"
    );
    assert!(
        pid_alive(tty_pid),
        "tty container died while containerd was down"
    );
    assert!(
        pid_alive(shim_print) && pid_alive(shim_tty),
        "a shim died with containerd"
    );

    c.start_again();
    let ev = EventStream::start(&c);
    let tasks = c.tasks();
    for (id, pid) in [("f-print", print_pid), ("f-tty", tty_pid)] {
        let t = tasks
            .iter()
            .find(|t| t.0 == id)
            .unwrap_or_else(|| panic!("{id} missing after restart: {tasks:?}"));
        assert_eq!(t.2, "RUNNING", "{id} not RUNNING after restart: {tasks:?}");
        assert_eq!(t.1, pid, "{id} pid changed after restart");
    }
    assert_eq!(
        c.shim_pids("f-print"),
        vec![shim_print],
        "shim of f-print replaced"
    );
    assert_eq!(
        c.shim_pids("f-tty"),
        vec![shim_tty],
        "shim of f-tty replaced"
    );

    if client_crashes {
        // re-attach to the FIFOs left behind: the output resumes
        let mut att = Background::spawn(c.ctr_cmd(&["task", "attach", "f-print"]));
        assert!(
            wait_until(T, || max_line_number(&att.output())
                .map(|n| n > before + 1000)
                .unwrap_or(false)),
            "no new output after re-attach (last before restart: {before}); got: {:?}",
            att.output().chars().take(2000).collect::<String>()
        );
        assert!(
            att.try_wait().is_none(),
            "ctr task attach exited early: {}",
            att.output()
        );
        // detach again (SIGKILL: ctr would forward a TERM, and it may delete the
        // task once it exits)
        drop(att);
    }

    // exec works in both
    let o = c.exec(&[], "f-print", "x1", &["echo", "exec-after-restart"]);
    c.check_ok(&["exec x1"], &o);
    assert_eq!(stdout(&o), "exec-after-restart\n");
    let o = c.exec(&[], "f-tty", "x2", &["echo", "exec-tty-after-restart"]);
    c.check_ok(&["exec x2"], &o);
    assert_eq!(stdout(&o), "exec-tty-after-restart\n");

    // kill: exit status is the signal's (137), not SIGPIPE's (141)
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "f-print"]);
    let x = ev.wait_exit("f-print", "f-print", T);
    assert_eq!(x.exit_status(), 137, "{}", x.line);
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "f-tty"]);
    let x = ev.wait_exit("f-tty", "f-tty", T);
    assert_eq!(x.exit_status(), 137, "{}", x.line);
    c.wait_status("f-print", "STOPPED", T);
    c.wait_status("f-tty", "STOPPED", T);

    for id in ["f-print", "f-tty"] {
        c.ctr_ok(&["task", "delete", id]);
        let d = ev.wait_delete(id, T);
        assert_eq!(d.exit_status(), 137, "{}", d.line);
        c.ctr_ok(&["container", "delete", id]);
    }
    assert!(
        wait_until(Duration::from_secs(10), || c.all_shim_pids().is_empty()),
        "shims left after delete: {:?}",
        c.all_shim_pids()
    );
}

#[test]
fn restart_containerd_sigterm() {
    restart_case("restart_containerd_sigterm", "SIGTERM", false);
}

#[test]
fn restart_containerd_sigterm_client_crashed() {
    restart_case("restart_containerd_sigterm_client_crashed", "SIGTERM", true);
}

#[test]
fn restart_containerd_sigkill() {
    restart_case("restart_containerd_sigkill", "SIGKILL", true);
}

// g. the shim's log reaches containerd's log
#[test]
fn shim_log_reaches_containerd() {
    let Some(c) = Containerd::start("shim_log_reaches_containerd") else {
        return;
    };
    c.import_image();
    let o = c.run(&["--rm"], "g-log", &["echo", "logged"]);
    c.check_ok(&["run g-log"], &o);
    // rustshim promises `runtime=io.containerd.rustshim.v2` on its lines; the
    // Go shim writes `runtime=io.containerd.runc.v2` the same way.
    let needle = format!("runtime={}", runtime());
    assert!(
        wait_until(Duration::from_secs(5), || c.log().contains(&needle)),
        "containerd.log has no shim line containing {needle:?}\n--- log tail ---\n{}",
        c.log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // the shim is started with -debug because containerd logs at debug level
    if is_rustshim() {
        let log = c.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
        assert!(
            lines.iter().any(|l| l.contains("g-log")),
            "no shim log line names the container id g-log:\n{}",
            lines.join("\n")
        );
    }
}

// h. the shim exits after its last container is deleted
#[test]
fn shim_exits_after_delete() {
    let Some(c) = Containerd::start("shim_exits_after_delete") else {
        return;
    };
    c.import_image();
    let ev = EventStream::start(&c);

    c.run_detached(&[], "h-one", &["sleep", "1000"]);
    let shim = c.shim_pid("h-one");
    if is_rustshim() {
        let argv0 = proc_cmdline(shim).map(|a| a[0].clone()).unwrap_or_default();
        assert_eq!(
            argv0, SHIM_BIN,
            "containerd did not run the shim binary under test"
        );
    }
    let sock = c.shim_socket("h-one").expect("bundle has no address file");
    assert!(sock.exists(), "shim socket {} missing", sock.display());
    assert!(
        sock.starts_with("/run/containerd/s/"),
        "unexpected socket path {}",
        sock.display()
    );
    assert!(
        !c.mounts().is_empty(),
        "rootfs not mounted under the private state dir"
    );

    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "h-one"]);
    ev.wait_exit("h-one", "h-one", T);
    assert!(
        wait_until(Duration::from_secs(5), || zombies_of(shim).is_empty()),
        "zombie children of the shim: {:?}",
        zombies_of(shim)
    );
    assert!(pid_alive(shim), "shim exited before delete");
    c.ctr_ok(&["task", "delete", "h-one"]);
    c.ctr_ok(&["container", "delete", "h-one"]);

    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(shim)),
        "shim {shim} still alive 10s after the last delete: {:?}",
        proc_cmdline(shim)
    );
    assert!(
        wait_until(Duration::from_secs(10), || !sock.exists()),
        "shim socket {} left behind",
        sock.display()
    );
    assert!(
        wait_until(Duration::from_secs(5), || c.mounts().is_empty()),
        "mounts left under {}: {:?}",
        c.dir.display(),
        c.mounts()
    );
    assert!(!c.bundle("h-one").exists(), "bundle left behind");

    // same for ctr run --rm
    let o = c.run(&["--rm"], "h-rm", &["true"]);
    c.check_ok(&["run h-rm"], &o);
    assert!(
        wait_until(Duration::from_secs(10), || c.all_shim_pids().is_empty()),
        "shims left after run --rm: {:?}",
        c.all_shim_pids()
    );
    assert!(c.mounts().is_empty(), "mounts left: {:?}", c.mounts());
}

// i. the shim reaps everything (runc children, execs, orphans reparented to it)
#[test]
fn reaping_no_zombies() {
    let Some(c) = Containerd::start("reaping_no_zombies") else {
        return;
    };
    c.import_image();
    let ev = EventStream::start(&c);

    // own pid namespace: many short execs (each spawns runc and children)
    c.run_detached(&[], "i-ns", &["sleep", "1000"]);
    let shim = c.shim_pid("i-ns");
    for k in 0..5 {
        let eid = format!("x{k}");
        let o = c.exec(
            &[],
            "i-ns",
            &eid,
            &[
                "sh",
                "-c",
                "sleep 0.2 >/dev/null & sleep 0.2 >/dev/null & echo $$",
            ],
        );
        c.check_ok(&["exec", &eid], &o);
    }
    for k in 0..3 {
        let eid = format!("d{k}");
        let o = c.exec(&["-d"], "i-ns", &eid, &["sh", "-c", "exit 0"]);
        c.check_ok(&["exec -d", &eid], &o);
    }
    for k in 0..3 {
        ev.wait_exit("i-ns", &format!("d{k}"), T);
    }
    assert!(
        wait_until(Duration::from_secs(5), || zombies_of(shim).is_empty()),
        "zombie children of shim {shim}: {:?}",
        zombies_of(shim)
    );

    // host pid namespace: orphans are reparented to the shim (child subreaper)
    c.run_detached(
        &["--with-ns", "pid:/proc/self/ns/pid"],
        "i-host",
        &[
            "sh",
            "-c",
            "sleep 1 >/dev/null & sleep 1 >/dev/null & exec sleep 4",
        ],
    );
    let shim2 = c.shim_pid("i-host");
    let o = c.exec(
        &["-d"],
        "i-host",
        "o1",
        &[
            "sh",
            "-c",
            "sleep 0.5 >/dev/null & sleep 0.5 >/dev/null & exec sleep 1.5",
        ],
    );
    c.check_ok(&["exec o1"], &o);
    let o = c.exec(
        &[],
        "i-host",
        "o2",
        &["sh", "-c", "sleep 2 >/dev/null 2>&1 & echo spawned"],
    );
    c.check_ok(&["exec o2"], &o);
    assert_eq!(stdout(&o), "spawned\n");
    // the orphaned `sleep 2` now has the shim as parent
    assert!(
        wait_until(Duration::from_secs(3), || {
            children_of(shim2).iter().any(|(p, _)| {
                proc_cmdline(*p)
                    .map(|a| a == ["sleep", "2"])
                    .unwrap_or(false)
            })
        }),
        "orphan was not reparented to shim {shim2} (PR_SET_CHILD_SUBREAPER?); children: {:?}",
        children_of(shim2)
    );
    ev.wait_exit("i-host", "o1", T);
    let x = ev.wait_exit("i-host", "i-host", T);
    assert_eq!(x.exit_status(), 0, "{}", x.line);
    thread::sleep(Duration::from_millis(500));
    assert!(
        wait_until(Duration::from_secs(5), || zombies_of(shim2).is_empty()),
        "zombie children of shim {shim2}: {:?}",
        zombies_of(shim2)
    );
    assert!(
        wait_until(Duration::from_secs(5), || zombies_of(shim).is_empty()),
        "zombie children of shim {shim}: {:?}",
        zombies_of(shim)
    );
    c.remove("i-host");
    c.remove("i-ns");
}
