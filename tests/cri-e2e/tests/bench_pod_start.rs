//! Benchmark, not a test: how long CRI takes to start a pod with one container
//! (RunPodSandbox + CreateContainer + StartContainer, kubelet's calls) through
//! rustshim and through containerd's Go shim, in ONE private containerd that has
//! both handlers (`rustshim`, `runc`).
//!
//! It measures rather than checks, so it is `#[ignore]`d (a plain `cargo test`
//! lists it as ignored) and not named `e2e_*` (scripts/matrix.sh, and with it
//! scripts/test.sh and .ci/run, never picks it up). scripts/bench runs it as
//! its "CRI pod start" step (knob BENCH_POD):
//!
//!   cargo test -p rustshim-cri-e2e --test bench_pod_start -- \
//!       --ignored --exact --nocapture cri_pod_start
//!
//! Samples alternate rust, go, rust, go... so both see the same machine noise;
//! the first 2 per handler warm caches up and are discarded. Each sample is a
//! fresh host-network pod running one busybox `sleep`; after the clock stops the
//! pod is stopped and removed and its shim must have exited before the next.
//!
//! Environment:
//! - `BENCH_POD_N` [20]: samples per handler.
//! - `BENCH_POD_JSON`: write `{"rust": [ms...], "go": [ms...], "containerd": "<version line>", ...}` there.
//! - `RUSTSHIM_CRI_SHIM_DIR`: the rustshim to measure (scripts/bench: its release copy; by
//!   default the debug build cargo made, which says little about speed).
//! - `RUSTSHIM_CONTAINERD_BIN_DIR`: the containerd (and Go shim) under test; see cri/mod.rs.

#[path = "../../common/mod.rs"]
mod common;
mod cri;
use std::fs;
use std::time::{Duration, Instant};

use cri::*;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

const TEST: &str = "bench_pod_start";
/// Samples per handler run first and thrown away (image and page caches, CRI's first pod).
const WARMUP: usize = 2;
/// How long a removed pod's shim may take to exit.
const SHIM_EXIT: Duration = Duration::from_secs(15);

type Rt = RuntimeServiceClient<Channel>;

/// One side of the comparison: JSON key, CRI handler (see cri_config), shim binary name.
struct Side {
    key: &'static str,
    handler: &'static str,
    shim: &'static str,
}

const SIDES: [Side; 2] = [
    Side {
        key: "rust",
        handler: HANDLER,
        shim: RUST_SHIM_NAME,
    },
    Side {
        key: "go",
        handler: "runc",
        shim: GO_SHIM_NAME,
    },
];

#[test]
#[ignore = "benchmark: scripts/bench runs it (BENCH_POD)"]
fn cri_pod_start() {
    let n: usize = match std::env::var("BENCH_POD_N") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().expect("BENCH_POD_N: a number"),
        _ => 20,
    };
    let n = n.max(1);
    let cd = match CriContainerd::start(TEST) {
        Ok(c) => c,
        Err(reason) => return skip_or_fail(TEST, &reason),
    };
    // The binaries containerd will run: a benchmark of the wrong shim is worse than none.
    let rust_shim = cd
        .resolve_shim(RUST_SHIM_NAME)
        .expect("no rustshim on containerd's PATH");
    let go_shim = cd
        .resolve_shim(GO_SHIM_NAME)
        .expect("no Go shim on containerd's PATH");
    let canon = |p: &std::path::Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    assert_eq!(
        canon(&rust_shim),
        canon(&rust_shim_bin()),
        "containerd would run another rustshim"
    );
    let own_go = cd.bin_dir.join(GO_SHIM_NAME);
    if own_go.exists() {
        assert_eq!(
            canon(&go_shim),
            canon(&own_go),
            "containerd would run a Go shim not from {}",
            cd.bin_dir.display()
        );
    }
    println!(
        "{TEST}: containerd {} ({}); rustshim {} -> {}; Go shim {} -> {}; {n} samples per handler + {WARMUP} warm-up",
        cd.version_line,
        cd.dir.display(),
        rust_shim.display(),
        canon(&rust_shim).display(),
        go_shim.display(),
        canon(&go_shim).display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let samples = match rt.block_on(bench(&cd, n)) {
        Ok(s) => s,
        Err(e) => {
            cd.failed.store(true, std::sync::atomic::Ordering::Relaxed);
            let saved = cd.save_log();
            panic!(
                "[{TEST}] containerd {}: {e}\n--- containerd.log: warning and error lines (last 40) ---\n{}\n(full log: {})",
                cd.version_line,
                cd.interesting_log(40),
                saved.map(|p| p.display().to_string()).unwrap_or_default()
            );
        }
    };
    let [rust, go] = samples;
    let (r50, r90, g50, g90) = (p50(&rust), p90(&rust), p50(&go), p90(&go));
    println!("{TEST}: rustshim p50 {r50:.1} ms, p90 {r90:.1} ms; Go shim p50 {g50:.1} ms, p90 {g90:.1} ms (n={n})");
    println!(
        "{TEST}: ratio rustshim/Go p50 {:.3}, p90 {:.3}",
        r50 / g50,
        r90 / g90
    );
    if let Ok(path) = std::env::var("BENCH_POD_JSON") {
        if !path.trim().is_empty() {
            let json = serde_json::json!({
                "rust": rust,
                "go": go,
                "containerd": cd.version_line,
                "rust_shim": canon(&rust_shim),
                "go_shim": canon(&go_shim),
                "warmup": WARMUP,
            });
            fs::write(path.trim(), json.to_string())
                .unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
    }
}

/// Wall-clock ms per sample, [rust, go].
async fn bench(cd: &CriContainerd, n: usize) -> Result<[Vec<f64>; 2], String> {
    let (pause_tar, app_tar) = build_images()?;
    cd.import(&pause_tar);
    cd.import(&app_tar);
    let channel = connect(&cd.sock).await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut img = ImageServiceClient::new(channel);
    let v = cri_version(cd, &mut rt).await?;
    println!(
        "{TEST}: CRI {} {} (CRI API {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );
    wait_for_images(&mut img, &[PAUSE_IMAGE, APP_IMAGE]).await?;

    let mut out = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..WARMUP + n {
        for (k, side) in SIDES.iter().enumerate() {
            let tag = if i < WARMUP {
                format!("w{i}")
            } else {
                format!("{}", i - WARMUP)
            };
            let ms = one_pod(cd, &mut rt, side, &format!("{}-{tag}", side.key)).await?;
            if i >= WARMUP {
                out[k].push(ms);
            }
        }
    }
    Ok(out)
}

/// One timed pod start; then (untimed) its teardown, until its shim has exited.
async fn one_pod(cd: &CriContainerd, rt: &mut Rt, side: &Side, tag: &str) -> Result<f64, String> {
    let pod_config = host_network_pod_config(cd, &format!("bench-{tag}"), TEST);
    let ctr_config = container_config("sleep", &["sleep", "100000"], &format!("{tag}.log"));
    let t0 = Instant::now();
    let pod_id = rpc(
        "RunPodSandbox",
        rt.run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: side.handler.into(),
        }),
    )
    .await?
    .pod_sandbox_id;
    cd.remember_id(&pod_id);
    let started = async {
        let id = rpc(
            "CreateContainer",
            rt.create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(ctr_config),
                sandbox_config: Some(pod_config),
            }),
        )
        .await?
        .container_id;
        cd.remember_id(&id);
        rpc(
            "StartContainer",
            rt.start_container(api::StartContainerRequest { container_id: id }),
        )
        .await
    }
    .await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;

    // The shim that served the pod must be the side's (the handler mapping is the benchmark).
    let shims = cd.all_shims();
    let wrong: Vec<_> = shims
        .iter()
        .filter(|s| std::path::Path::new(&s.args[0]).file_name() != Some(side.shim.as_ref()))
        .collect();
    let check = match (&started, shims.is_empty(), wrong.is_empty()) {
        (Err(e), _, _) => Err(format!("{tag}: {e}")),
        (_, true, _) => Err(format!(
            "{tag}: no shim of this containerd runs after StartContainer"
        )),
        (_, _, false) => Err(format!(
            "{tag}: handler {} is served by {:?}, not {}",
            side.handler, wrong, side.shim
        )),
        _ => Ok(ms),
    };
    rpc(
        "StopPodSandbox",
        rt.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        }),
    )
    .await?;
    rpc(
        "RemovePodSandbox",
        rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        }),
    )
    .await?;
    let t1 = Instant::now();
    while !(shims.iter().all(|s| !pid_alive(s.pid)) && cd.all_shims().is_empty()) {
        if t1.elapsed() > SHIM_EXIT {
            return Err(format!(
                "{tag}: shim(s) still running {SHIM_EXIT:?} after RemovePodSandbox: {:?}",
                cd.all_shims().iter().map(|s| s.pid).collect::<Vec<_>>()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check
}

/// Median (the mean of the middle two for an even count), as scripts/bench's p50.
fn p50(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

/// Nearest-rank 90th percentile, as scripts/bench's pct(xs, 90).
fn p90(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    s[((0.9 * s.len() as f64).ceil() as usize).max(1) - 1]
}
