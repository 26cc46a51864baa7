//! End-to-end test of the CRI path, kubelet-style: a private containerd with
//! the CRI plugin and the `rustshim` runtime handler, driven over CRI
//! runtime.v1 gRPC (k8s-cri + tonic on the unix socket), like kubelet does.
//!
//!   cargo test --test e2e_cri -- --nocapture
//!   RUSTSHIM_CONTAINERD_BIN_DIR=/var/cache/rustshim/containerd-sid/usr/bin \
//!       cargo test --test e2e_cri -- --nocapture
//!
//! One pod (host network) with the project's pause image and three busybox
//! containers must be served by exactly ONE rustshim process (grouping by the
//! `io.kubernetes.cri.sandbox-id` annotation), which must exit after
//! RemovePodSandbox. See cri/mod.rs beside this file for the environment knobs.

#[path = "../../common/mod.rs"]
mod common;
mod cri;

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs;
use std::time::{Duration, Instant};

use cri::*;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

const TEST: &str = "e2e_cri";
const MEMORY_LIMIT: i64 = 96 * 1024 * 1024;

type Rt = RuntimeServiceClient<Channel>;

/// Failures collected along the flow: the test keeps going after a
/// non-fatal check fails, so one run reports everything that is wrong.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        let what = what.into();
        if ok {
            println!("  ok   {what}");
        } else {
            println!("  FAIL {what}");
            self.failures.push(what);
        }
        ok
    }
    fn fail(&mut self, what: impl Into<String>) {
        self.check(false, what);
    }
}

#[test]
fn cri_pod_lifecycle() {
    let cd = match CriContainerd::start(TEST) {
        Ok(c) => c,
        Err(reason) => return skip_or_fail(TEST, &reason),
    };
    println!(
        "containerd: {} ({}), runtime handler {:?}, dir {}",
        cd.version_line,
        cd.bin_dir.display(),
        handler(),
        cd.dir.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut checks = Checks::default();
    let result = rt.block_on(flow(&cd, &mut checks));
    if let Err(e) = &result {
        checks.fail(format!("aborted: {e}"));
    }
    println!("CRI flow took {:?}", started.elapsed());
    if !checks.failures.is_empty() {
        cd.failed.store(true, std::sync::atomic::Ordering::Relaxed);
        let saved = cd.save_log();
        panic!(
            "[{TEST}] containerd {}: {} check(s) failed:\n  - {}\n\
             --- containerd.log: warning and error lines, the shim's included (last 60) ---\n{}\n\
             --- containerd.log tail ---\n{}\n(full log: {})",
            cd.version_line,
            checks.failures.len(),
            checks.failures.join("\n  - "),
            cd.interesting_log(60),
            tail(&cd.log(), 30),
            saved.map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
}

struct Ctr {
    name: &'static str,
    id: String,
}

async fn container_status(rt: &mut Rt, id: &str) -> Result<api::ContainerStatusResponse, String> {
    call(
        "ContainerStatus",
        rt.container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        }),
    )
    .await
}

/// Polls ContainerStatus until `pred` holds (or `timeout`); returns the last status.
async fn wait_status(
    rt: &mut Rt,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&api::ContainerStatus) -> bool,
) -> Result<(bool, api::ContainerStatusResponse), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = container_status(rt, id).await?;
        if r.status.as_ref().map(&pred).unwrap_or(false) {
            return Ok((true, r));
        }
        if Instant::now() >= deadline {
            return Ok((false, r));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_name(s: i32) -> String {
    api::ContainerState::try_from(s)
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|_| format!("state {s}"))
}

fn brief<T: Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    if s.len() > 400 {
        format!("{}...", &s[..400])
    } else {
        s
    }
}

/// The init pid CRI reports in the verbose ContainerStatus info.
fn info_pid(r: &api::ContainerStatusResponse) -> Option<u32> {
    let info = r.info.get("info")?;
    let key = "\"pid\":";
    let at = info.find(key)? + key.len();
    info[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

async fn flow(cd: &CriContainerd, checks: &mut Checks) -> Result<(), String> {
    // ---- images --------------------------------------------------------------
    let (pause_tar, app_tar) = build_images()?;
    cd.import(&pause_tar);
    cd.import(&app_tar);

    let channel = cri::connect(&cd.sock).await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut img = ImageServiceClient::new(channel);

    let v = cri_version(cd, &mut rt).await?;
    println!(
        "CRI: {} {} (CRI API {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    wait_for_images(&mut img, &[PAUSE_IMAGE, APP_IMAGE]).await?;

    // ---- pod -----------------------------------------------------------------
    let pod_config = host_network_pod_config(cd, "rustshim-cri", TEST);
    let pod_id = call(
        "RunPodSandbox",
        rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: handler().into(),
        }),
    )
    .await?
    .pod_sandbox_id;
    cd.remember_id(&pod_id);
    println!("pod sandbox {pod_id}");

    let result = pod_flow(cd, checks, &mut rt, &pod_id, &pod_config).await;
    if let Err(e) = &result {
        checks.fail(format!("aborted: {e}"));
    }

    // ---- teardown (always attempted) -----------------------------------------
    let shims_before = cd.shims();
    match call(
        "StopPodSandbox",
        rt.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        }),
    )
    .await
    {
        Ok(_) => checks.check(true, "StopPodSandbox"),
        Err(e) => checks.check(false, e),
    };
    match call(
        "RemovePodSandbox",
        rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        }),
    )
    .await
    {
        Ok(_) => checks.check(true, "RemovePodSandbox"),
        Err(e) => checks.check(false, e),
    };
    let pods = call(
        "ListPodSandbox",
        rt.list_pod_sandbox(api::ListPodSandboxRequest::default()),
    )
    .await?;
    checks.check(
        pods.items.iter().all(|p| p.id != pod_id),
        format!(
            "pod gone from ListPodSandbox ({} pods listed)",
            pods.items.len()
        ),
    );

    // the pod's shim must exit once the pod is removed
    let t0 = Instant::now();
    let mut left = shims_before.clone();
    while t0.elapsed() < Duration::from_secs(10) {
        left.retain(|s| pid_alive(s.pid));
        if left.is_empty() && cd.shims().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let remaining = cd.shims();
    checks.check(
        remaining.is_empty(),
        format!(
            "shim process(es) {:?} exited after RemovePodSandbox (waited {:?}; still running: {:?})",
            shims_before.iter().map(|s| s.pid).collect::<Vec<_>>(),
            t0.elapsed(),
            remaining.iter().map(|s| s.pid).collect::<Vec<_>>()
        ),
    );
    let task_dir = cd.dir.join("state/io.containerd.runtime.v2.task");
    let leftover_mounts = mounts_under(&task_dir);
    checks.check(
        leftover_mounts.is_empty(),
        format!("no rootfs mounts left under the task state dir ({leftover_mounts:?})"),
    );
    let bundles: Vec<String> = fs::read_dir(task_dir.join(K8S_NS))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    checks.check(
        bundles.is_empty(),
        format!("no bundles left in k8s.io ({bundles:?})"),
    );
    Ok(())
}

/// Everything between RunPodSandbox and StopPodSandbox. An Err aborts the
/// rest (the caller still tears the pod down).
async fn pod_flow(
    cd: &CriContainerd,
    checks: &mut Checks,
    rt: &mut Rt,
    pod_id: &str,
    pod_config: &api::PodSandboxConfig,
) -> Result<(), String> {
    let ps = call(
        "PodSandboxStatus",
        rt.pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        }),
    )
    .await?;
    let pod_state = ps.status.as_ref().map(|s| s.state).unwrap_or(-1);
    checks.check(
        pod_state == api::PodSandboxState::SandboxReady as i32,
        format!("pod sandbox is READY (state {pod_state})"),
    );

    // ---- three containers --------------------------------------------------
    let specs: [(&'static str, Vec<&str>, &str); 3] = [
        (
            "hello",
            vec![
                "sh",
                "-c",
                "trap 'echo got-term; exit 0' TERM; echo hello-cri; sleep 1000 & wait",
            ],
            "hello.log",
        ),
        ("sleeper", vec!["sleep", "1000"], "sleeper.log"),
        ("exiter", vec!["sh", "-c", "echo bye; exit 7"], "exiter.log"),
    ];
    let mut ctrs: Vec<Ctr> = Vec::new();
    for (name, cmd, log) in &specs {
        let id = call(
            &format!("CreateContainer {name}"),
            rt.create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(container_config(name, cmd, log)),
                sandbox_config: Some(pod_config.clone()),
            }),
        )
        .await?
        .container_id;
        cd.remember_id(&id);
        ctrs.push(Ctr { name, id });
    }
    for c in &ctrs {
        let r = container_status(rt, &c.id).await?;
        let st = r.status.as_ref().map(|s| s.state).unwrap_or(-1);
        checks.check(
            st == api::ContainerState::ContainerCreated as i32,
            format!(
                "{} is CREATED after CreateContainer ({})",
                c.name,
                state_name(st)
            ),
        );
    }
    // CRI creates the task (bundle, shim) in StartContainer; read each
    // bundle's `address` right after its start (CRI deletes the task of an
    // exited container, and with it the bundle)
    let mut addresses: Vec<(String, Option<String>)> =
        vec![("sandbox".to_string(), cd.bundle_address(pod_id))];
    for c in &ctrs {
        call(
            &format!("StartContainer {}", c.name),
            rt.start_container(api::StartContainerRequest {
                container_id: c.id.clone(),
            }),
        )
        .await?;
        addresses.push((c.name.to_string(), cd.bundle_address(&c.id)));
    }
    let first = addresses[0].1.clone();
    let same = first.is_some()
        && addresses.iter().all(|(name, a)| {
            *a == first || (name == "exiter" && a.is_none() && !cd.bundle(&ctrs[2].id).exists())
        });
    checks.check(
        same,
        format!("the bundles' `address` files all name the sandbox's shim socket ({addresses:?})"),
    );
    let (hello, sleeper, exiter) = (&ctrs[0], &ctrs[1], &ctrs[2]);

    // ---- ContainerStatus ----------------------------------------------------
    let running =
        |s: &api::ContainerStatus| s.state == api::ContainerState::ContainerRunning as i32;
    let exited = |s: &api::ContainerStatus| s.state == api::ContainerState::ContainerExited as i32;
    let mut pids = HashMap::new();
    for c in [hello, sleeper] {
        let (ok, r) = wait_status(rt, &c.id, Duration::from_secs(10), running).await?;
        let st = r.status.as_ref().map(|s| s.state).unwrap_or(-1);
        checks.check(ok, format!("{} is RUNNING ({})", c.name, state_name(st)));
        if let Some(p) = info_pid(&r) {
            pids.insert(c.name, p);
        }
    }
    let (ok, r) = wait_status(rt, &exiter.id, Duration::from_secs(10), exited).await?;
    let s = r.status.clone().unwrap_or_default();
    checks.check(
        ok && s.exit_code == 7,
        format!(
            "exiter is EXITED with exit_code 7 ({}, exit_code {}, reason {:?})",
            state_name(s.state),
            s.exit_code,
            s.reason
        ),
    );
    // (no ordering check against started_at: CRI stamps started_at after
    // task.Start returns, which can be after a fast process already exited)
    checks.check(
        s.finished_at > 0 && s.started_at > 0,
        format!(
            "exiter has started_at {} and finished_at {}",
            s.started_at, s.finished_at
        ),
    );

    // ---- exactly ONE shim serves the pod ------------------------------------
    let shims = cd.shims();
    let pod_shims: Vec<&ShimProc> = shims
        .iter()
        .filter(|s| s.flag("id").as_deref() == Some(pod_id))
        .collect();
    checks.check(
        shims.len() == 1 && pod_shims.len() == 1,
        format!(
            "pod (pause + 3 containers) is served by exactly one rustshim whose -id is the sandbox id \
             (this containerd's shims: {:?})",
            shims
                .iter()
                .map(|s| (s.pid, s.flag("id").unwrap_or_default()))
                .collect::<Vec<_>>()
        ),
    );
    for s in &pod_shims {
        match memory_of(s.pid) {
            Some((rss, pss, private, anon, threads)) => {
                println!(
                "SHIM MEMORY: pid {} serving 4 containers ({} build): RSS {rss} kB, PSS {pss} kB, \
                 private {private} kB (anonymous {anon} kB), {threads} thread(s)",
                s.pid,
                if cfg!(debug_assertions) { "debug" } else { "release" }
            )
            }
            None => println!("SHIM MEMORY: pid {}: /proc unreadable", s.pid),
        }
    }

    // ---- ExecSync -------------------------------------------------------------
    match call(
        "ExecSync echo",
        rt.exec_sync(api::ExecSyncRequest {
            container_id: hello.id.clone(),
            cmd: vec!["echo".into(), "exec-ok".into()],
            timeout: 20,
        }),
    )
    .await
    {
        Ok(r) => {
            checks.check(
                r.exit_code == 0 && String::from_utf8_lossy(&r.stdout) == "exec-ok\n",
                format!(
                    "ExecSync echo exec-ok: exit {} stdout {:?} stderr {:?}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                ),
            );
        }
        Err(e) => checks.fail(e),
    }
    match call(
        "ExecSync exit 3",
        rt.exec_sync(api::ExecSyncRequest {
            container_id: sleeper.id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo oops >&2; exit 3".into()],
            timeout: 20,
        }),
    )
    .await
    {
        Ok(r) => {
            checks.check(
                r.exit_code == 3 && String::from_utf8_lossy(&r.stderr) == "oops\n",
                format!(
                    "ExecSync exit code and stderr: exit {} stderr {:?}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stderr)
                ),
            );
        }
        Err(e) => checks.fail(e),
    }

    // ---- UpdateContainerResources --------------------------------------------
    match call(
        "UpdateContainerResources",
        rt.update_container_resources(api::UpdateContainerResourcesRequest {
            container_id: sleeper.id.clone(),
            linux: Some(api::LinuxContainerResources {
                memory_limit_in_bytes: MEMORY_LIMIT,
                cpu_shares: 256,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await
    {
        Ok(_) => {
            checks.check(
                true,
                "UpdateContainerResources (memory 96 MiB, cpu_shares 256)",
            );
            match pids.get("sleeper").and_then(|p| memory_cgroup_dir(*p)) {
                Some(cg) => {
                    let file = if cg.join("memory.limit_in_bytes").exists() {
                        cg.join("memory.limit_in_bytes")
                    } else {
                        cg.join("memory.max")
                    };
                    let got = fs::read_to_string(&file).unwrap_or_default();
                    checks.check(
                        got.trim() == MEMORY_LIMIT.to_string(),
                        format!("{} = {MEMORY_LIMIT} (got {:?})", file.display(), got.trim()),
                    );
                }
                None => checks.fail(format!(
                    "cannot find the sleeper's memory cgroup (pid {:?})",
                    pids.get("sleeper")
                )),
            }
            if let Ok(r) = container_status(rt, &sleeper.id).await {
                // CRI 1.7+ reports the (updated) resources in ContainerStatus
                if let Some(l) = r.status.and_then(|s| s.resources).and_then(|r| r.linux) {
                    checks.check(
                        l.memory_limit_in_bytes == MEMORY_LIMIT,
                        format!(
                            "ContainerStatus.resources reports memory {} ",
                            l.memory_limit_in_bytes
                        ),
                    );
                }
            }
        }
        Err(e) => checks.fail(e),
    }

    // ---- ContainerStats --------------------------------------------------------
    match call(
        "ContainerStats",
        rt.container_stats(api::ContainerStatsRequest {
            container_id: hello.id.clone(),
        }),
    )
    .await
    {
        Ok(r) => {
            let s = r.stats.unwrap_or_default();
            let mem = s
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .map(|v| v.value);
            let cpu = s
                .cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds.as_ref())
                .map(|v| v.value);
            checks.check(
                mem.unwrap_or(0) > 0 && cpu.is_some(),
                format!("ContainerStats: memory working set {mem:?} bytes, cpu {cpu:?} ns"),
            );
        }
        Err(e) => checks.fail(e),
    }
    match call(
        "ListContainerStats",
        rt.list_container_stats(api::ListContainerStatsRequest {
            filter: Some(api::ContainerStatsFilter {
                pod_sandbox_id: pod_id.into(),
                ..Default::default()
            }),
        }),
    )
    .await
    {
        Ok(r) => {
            let with_memory = r
                .stats
                .iter()
                .filter(|s| {
                    s.memory
                        .as_ref()
                        .and_then(|m| m.working_set_bytes.as_ref())
                        .map(|v| v.value > 0)
                        .unwrap_or(false)
                })
                .count();
            checks.check(
                with_memory >= 2,
                format!(
                    "ListContainerStats: {} entries, {with_memory} with a memory working set (want >= 2 running)",
                    r.stats.len()
                ),
            );
        }
        Err(e) => checks.fail(e),
    }

    // ---- ListContainers --------------------------------------------------------
    let list = call(
        "ListContainers",
        rt.list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod_id.into(),
                ..Default::default()
            }),
        }),
    )
    .await?;
    let mut listed: Vec<(String, String)> = list
        .containers
        .iter()
        .map(|c| {
            (
                c.metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default(),
                state_name(c.state),
            )
        })
        .collect();
    listed.sort();
    checks.check(
        listed
            == vec![
                ("exiter".to_string(), "ContainerExited".to_string()),
                ("hello".to_string(), "ContainerRunning".to_string()),
                ("sleeper".to_string(), "ContainerRunning".to_string()),
            ],
        format!("ListContainers: {listed:?}"),
    );

    // ---- CRI log file --------------------------------------------------------
    let log_file = cd.log_dir.join("hello.log");
    let mut content = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let is_hello = |l: &str| {
        let f: Vec<&str> = l.splitn(4, ' ').collect();
        f.len() == 4
            && f[0].len() >= 20
            && f[0].as_bytes()[4] == b'-'
            && f[0].contains('T')
            && f[1] == "stdout"
            && f[2] == "F"
            && f[3] == "hello-cri"
    };
    while Instant::now() < deadline {
        content = fs::read_to_string(&log_file).unwrap_or_default();
        if content.lines().any(is_hello) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checks.check(
        content.lines().any(is_hello),
        format!(
            "{} has a CRI log line `<RFC3339 time> stdout F hello-cri` (content: {content:?})",
            log_file.display()
        ),
    );
    let exiter_log = fs::read_to_string(cd.log_dir.join("exiter.log")).unwrap_or_default();
    checks.check(
        exiter_log.lines().any(|l| l.ends_with(" stdout F bye")),
        format!("exiter.log has `stdout F bye` ({exiter_log:?})"),
    );

    // ---- StopContainer / RemoveContainer --------------------------------------
    // hello traps SIGTERM and exits 0; sleeper (PID 1, no handler) ignores
    // SIGTERM, so CRI escalates to SIGKILL after the 2 s timeout: 137.
    for (c, timeout, want) in [(hello, 10, 0), (sleeper, 2, 137), (exiter, 2, 7)] {
        let t0 = Instant::now();
        match call(
            &format!("StopContainer {}", c.name),
            rt.stop_container(api::StopContainerRequest {
                container_id: c.id.clone(),
                timeout,
            }),
        )
        .await
        {
            Ok(_) => {
                let (ok, r) = wait_status(rt, &c.id, Duration::from_secs(5), exited).await?;
                let s = r.status.unwrap_or_default();
                checks.check(
                    ok && s.exit_code == want,
                    format!(
                        "StopContainer {} (timeout {timeout}s) -> {} exit_code {} (want {want}) in {:?}",
                        c.name,
                        state_name(s.state),
                        s.exit_code,
                        t0.elapsed()
                    ),
                );
            }
            Err(e) => checks.fail(e),
        }
    }
    // the log copy may trail the exit a little: poll
    let mut hello_log = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        hello_log = fs::read_to_string(&log_file).unwrap_or_default();
        if hello_log.lines().any(|l| l.ends_with(" stdout F got-term")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checks.check(
        hello_log.lines().any(|l| l.ends_with(" stdout F got-term")),
        format!("hello got SIGTERM on StopContainer (log: {hello_log:?})"),
    );
    for c in &ctrs {
        match call(
            &format!("RemoveContainer {}", c.name),
            rt.remove_container(api::RemoveContainerRequest {
                container_id: c.id.clone(),
            }),
        )
        .await
        {
            Ok(_) => {}
            Err(e) => checks.fail(e),
        }
    }
    let list = call(
        "ListContainers",
        rt.list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod_id.into(),
                ..Default::default()
            }),
        }),
    )
    .await?;
    checks.check(
        list.containers.is_empty(),
        format!(
            "no containers left after RemoveContainer ({})",
            brief(&list.containers)
        ),
    );
    // the pause container (and so the shim) must still be up
    let shims = cd.shims();
    checks.check(
        shims.len() == 1 && shims.iter().all(|s| pid_alive(s.pid)),
        format!(
            "the pod's shim still runs for the sandbox after its containers are removed ({:?})",
            shims.iter().map(|s| s.pid).collect::<Vec<_>>()
        ),
    );
    Ok(())
}
