//! Checkpoint/restore through CRI (issue 15), kubelet-style: CheckpointContainer (kubelet's
//! forensic checkpointing) must write the archive kubelet expects, and containerd 2.x's CRI
//! restore (CreateContainer whose image is that archive, then StartContainer) must run the
//! container again, its memory intact. On containerd 1.6/1.7 CheckpointContainer is not
//! implemented by the CRI plugin; the test then checks that it says so.
//!
//!   RUSTSHIM_CONTAINERD_BIN_DIR=/var/cache/rustshim/containerd-sid/usr/bin \
//!       cargo test --test e2e_cri_checkpoint -- --nocapture
//!
//! The CRIU is the one scripts/install-criu.sh builds: rustshim finds it through
//! RUSTSHIM_CRIU_PATH, the Go shim through PATH, both in containerd's environment.

#[path = "../../common/mod.rs"]
mod common;
mod cri;

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

const TEST: &str = "cri_checkpoint_and_restore";
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

type Rt = RuntimeServiceClient<Channel>;

async fn call<T, F>(what: &str, fut: F) -> Result<T, tonic::Status>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(r) => r.map(|r| r.into_inner()),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!("{what} timed out"))),
    }
}



fn describe_out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        .trim()
        .to_string()
}

/// A read-only OCI distribution endpoint on 127.0.0.1 serving containerd's own content store.
/// containerd 2.1's CRI restore pulls the checkpoint's base image by its repo digest even when
/// the image is already in its store (later containerd looks locally first), and the machines
/// have no registry; containerd's default resolver speaks plain HTTP to localhost, so an image
/// named localhost:PORT/... is pulled from here, from the same blobs it already has.
struct LocalRegistry {
    port: u16,
}

impl LocalRegistry {
    fn start(blobs: PathBuf) -> LocalRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the local registry");
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let blobs = blobs.clone();
                std::thread::spawn(move || serve_registry(conn, &blobs));
            }
        });
        LocalRegistry { port }
    }
}

fn serve_registry(mut conn: std::net::TcpStream, blobs: &Path) {
    use std::io::{BufRead, BufReader, Write};
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // skip the headers
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let digest = path.rsplit('/').next().unwrap_or("");
        let found = (path.contains("/manifests/") || path.contains("/blobs/"))
            .then(|| digest.strip_prefix("sha256:"))
            .flatten()
            .filter(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .and_then(|hex| fs::read(blobs.join(hex)).ok());
        let (status, body, ctype) = match (path, found) {
            ("/v2/" | "/v2", _) => ("200 OK", b"{}".to_vec(), "application/json".to_string()),
            (p, Some(body)) => {
                let ctype = if p.contains("/manifests/") {
                    String::from_utf8_lossy(&body)
                        .split("\"mediaType\":\"")
                        .nth(1)
                        .and_then(|m| m.split('"').next())
                        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                        .to_string()
                } else {
                    "application/octet-stream".to_string()
                };
                ("200 OK", body, ctype)
            }
            _ => ("404 Not Found", b"{}".to_vec(), "application/json".to_string()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nDocker-Content-Digest: {digest}\r\nDocker-Distribution-Api-Version: registry/2.0\r\n\r\n",
            body.len()
        );
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method != "HEAD" && conn.write_all(&body).is_err() {
            return;
        }
    }
}

/// Names in a tar archive (plain ustar/GNU/PAX headers; enough for CRI's archive).
fn tar_names(path: &Path) -> Vec<String> {
    let data = fs::read(path).unwrap_or_default();
    let mut names = Vec::new();
    let mut off = 0;
    let mut long_name: Option<String> = None;
    while off + 512 <= data.len() {
        let h = &data[off..off + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let field = |a: usize, b: usize| String::from_utf8_lossy(&h[a..b]).trim_end_matches('\0').to_string();
        let size = usize::from_str_radix(field(124, 136).trim(), 8).unwrap_or(0);
        let kind = h[156];
        let body = off + 512;
        let mut name = field(0, 100);
        let prefix = field(345, 500);
        if &h[257..262] == b"ustar" && !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        match kind {
            b'L' => long_name = Some(String::from_utf8_lossy(&data[body..body + size]).trim_end_matches('\0').to_string()),
            b'x' | b'g' => {
                let pax = String::from_utf8_lossy(&data[body..(body + size).min(data.len())]).to_string();
                if let Some(p) = pax.lines().find_map(|l| l.split_once(" path=").map(|x| x.1.to_string())) {
                    long_name = Some(p);
                }
            }
            _ => names.push(long_name.take().unwrap_or(name).trim_start_matches("./").to_string()),
        }
        off = body + size.div_ceil(512) * 512;
    }
    names
}

fn container_config(name: &str, image: &str, cmd: &[&str], log_path: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.into(),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Node as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn read_counter(rt: &mut Rt, id: &str) -> Result<u64, String> {
    // The loop rewrites /tmp/n in place: a read can meet it empty for a moment.
    let mut last = String::new();
    for _ in 0..50 {
        let r = call(
            "ExecSync cat",
            rt.exec_sync(api::ExecSyncRequest { container_id: id.into(), cmd: vec!["cat".into(), "/tmp/n".into()], timeout: 30 }),
        )
        .await
        .map_err(|s| format!("ExecSync in {id}: {s:?}"))?;
        last = String::from_utf8_lossy(&r.stdout).trim().to_string();
        if let Ok(n) = last.parse() {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("/tmp/n in {id} holds {last:?}"))
}

async fn wait_counter_past(rt: &mut Rt, id: &str, n: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = read_counter(rt, id).await?;
        if v > n {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("counter of {id} stuck at {v} (wanted > {n})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn state_of(rt: &mut Rt, id: &str) -> Result<i32, String> {
    let r = call("ContainerStatus", rt.container_status(api::ContainerStatusRequest { container_id: id.into(), verbose: false }))
        .await
        .map_err(|s| format!("ContainerStatus {id}: {s:?}"))?;
    Ok(r.status.map(|s| s.state).unwrap_or(-1))
}

/// tests/common's CRIU, if `criu check` passes with it.
fn checked_criu() -> Result<PathBuf, String> {
    let criu = common::criu_binary()?;
    let o = cri::run_with_timeout(std::process::Command::new(&criu).arg("check"), Duration::from_secs(60));
    if !o.status.success() {
        return Err(format!("{} check failed: {}", criu.display(), describe_out(&o)));
    }
    Ok(criu)
}

#[test]
fn cri_checkpoint_and_restore() {
    let criu = match checked_criu() {
        Ok(c) => c,
        Err(reason) => return cri::skip_or_fail(TEST, &reason),
    };
    // containerd (and so the shims) inherit the test's environment; set it before starting.
    std::env::set_var("RUSTSHIM_CRIU_PATH", &criu);
    let path = format!("{}:{}", criu.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    std::env::set_var("PATH", path);
    let cd = match cri::CriContainerd::start(TEST) {
        Ok(c) => c,
        Err(reason) => return cri::skip_or_fail(TEST, &reason),
    };
    println!("containerd: {} handler {:?}", cd.version_line, cri::handler());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    if let Err(e) = rt.block_on(flow(&cd)) {
        cd.failed.store(true, std::sync::atomic::Ordering::Relaxed);
        let saved = cd.save_log();
        panic!(
            "[{TEST}] containerd {}: {e}\n--- containerd.log: warnings and errors ---\n{}\n(full log: {})",
            cd.version_line,
            cd.interesting_log(40),
            saved.map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
}

async fn flow(cd: &cri::CriContainerd) -> Result<(), String> {
    let (pause_tar, app_tar) = cri::build_images()?;
    cd.import(&pause_tar);
    cd.import(&app_tar);
    let channel = cri::connect(&cd.sock).await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut img = ImageServiceClient::new(channel);
    for image in [cri::PAUSE_IMAGE, cri::APP_IMAGE] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = call(
                "ImageStatus",
                img.image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
                    verbose: false,
                }),
            )
            .await
            .map_err(|s| format!("ImageStatus: {s:?}"))?;
            if r.image.is_some() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("CRI does not see the imported image {image}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The container's image is named as if pulled from a registry on localhost (see
    // LocalRegistry): CheckpointContainer records NAME@DIGEST, which 2.1's restore pulls.
    let registry = LocalRegistry::start(cd.dir.join("root/io.containerd.content.v1.content/blobs/sha256"));
    let listing = cd.ctr_ok(&["images", "ls"]);
    let digest = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cri::APP_IMAGE))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .ok_or_else(|| format!("no digest for {} in {listing}", cri::APP_IMAGE))?
        .to_string();
    let app_image = format!("localhost:{}/rsbox:latest", registry.port);
    let by_digest = format!("localhost:{}/rsbox@{digest}", registry.port);
    cd.ctr_ok(&["images", "tag", cri::APP_IMAGE, &app_image]);
    cd.ctr_ok(&["images", "tag", cri::APP_IMAGE, &by_digest]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(
            "ImageStatus",
            img.image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec { image: app_image.clone(), ..Default::default() }),
                verbose: false,
            }),
        )
        .await
        .map_err(|s| format!("ImageStatus: {s:?}"))?;
        if r.image.as_ref().is_some_and(|i| i.repo_digests.iter().any(|d| d == &by_digest)) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("CRI shows no repo digest {by_digest}: {r:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pod_config = cri::host_network_pod_config(cd, "rustshim-ckpt", TEST);
    let pod_id = call(
        "RunPodSandbox",
        rt.run_pod_sandbox(api::RunPodSandboxRequest { config: Some(pod_config.clone()), runtime_handler: cri::handler().into() }),
    )
    .await
    .map_err(|s| format!("RunPodSandbox: {s:?}"))?
    .pod_sandbox_id;
    cd.remember_id(&pod_id);
    let result = pod_flow(cd, &mut rt, &pod_id, &pod_config, &app_image).await;
    let _ = call("StopPodSandbox", rt.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() })).await;
    let _ = call("RemovePodSandbox", rt.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: pod_id.clone() })).await;
    result
}

async fn pod_flow(
    cd: &cri::CriContainerd,
    rt: &mut Rt,
    pod_id: &str,
    pod_config: &api::PodSandboxConfig,
    app_image: &str,
) -> Result<(), String> {
    let counter = ["sh", "-c", "i=0; while true; do echo $i; echo $i > /tmp/n; i=$((i+1)); sleep 0.1; done"];
    let id = call(
        "CreateContainer",
        rt.create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(container_config("counter", app_image, &counter, "counter.log")),
            sandbox_config: Some(pod_config.clone()),
        }),
    )
    .await
    .map_err(|s| format!("CreateContainer: {s:?}"))?
    .container_id;
    cd.remember_id(&id);
    call("StartContainer", rt.start_container(api::StartContainerRequest { container_id: id.clone() }))
        .await
        .map_err(|s| format!("StartContainer: {s:?}"))?;
    // far enough that a fresh start (0, 1, 2...) cannot be mistaken for a continuation
    let before = wait_counter_past(rt, &id, 20).await?;
    let archive = cd.dir.join("checkpoint-counter.tar");
    let r = call(
        "CheckpointContainer",
        rt.checkpoint_container(api::CheckpointContainerRequest {
            container_id: id.clone(),
            location: archive.display().to_string(),
            timeout: 60,
        }),
    )
    .await;
    if cd.version.0 < 2 {
        // containerd 1.6/1.7's CRI plugin has no CheckpointContainer
        let s = r.err().ok_or("CheckpointContainer succeeded on containerd < 2.0")?;
        println!("NOTE: containerd {} CheckpointContainer: {:?} {:?}", cd.version_line, s.code(), s.message());
        if s.code() != tonic::Code::Unimplemented {
            return Err(format!("CheckpointContainer on containerd < 2.0: {s:?}"));
        }
        return Ok(());
    }
    r.map_err(|s| format!("CheckpointContainer: {s:?}"))?;
    // the archive kubelet expects (checkpointctl's layout): CRIU images under checkpoint/,
    // the container's config and spec, the rootfs diff
    let names = tar_names(&archive);
    println!("checkpoint archive {} entries: {:?}", names.len(), names.iter().take(40).collect::<Vec<_>>());
    for want in ["checkpoint/inventory.img", "config.dump", "spec.dump"] {
        if !names.iter().any(|n| n == want) {
            return Err(format!("checkpoint archive lacks {want}: {names:?}"));
        }
    }
    if !names.iter().any(|n| n.starts_with("checkpoint/pages-")) {
        return Err(format!("checkpoint archive holds no memory pages: {names:?}"));
    }
    // the checkpointed container runs on
    if state_of(rt, &id).await? != api::ContainerState::ContainerRunning as i32 {
        return Err("the checkpointed container is not running".into());
    }
    let at_checkpoint = read_counter(rt, &id).await?;
    wait_counter_past(rt, &id, at_checkpoint).await?;
    // restore: a new container whose image is the archive (containerd 2.x's CRI restore)
    let _ = call("StopContainer", rt.stop_container(api::StopContainerRequest { container_id: id.clone(), timeout: 5 })).await;
    call("RemoveContainer", rt.remove_container(api::RemoveContainerRequest { container_id: id.clone() }))
        .await
        .map_err(|s| format!("RemoveContainer: {s:?}"))?;
    let restored = match call(
        "CreateContainer (restore)",
        rt.create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(container_config("counter", &archive.display().to_string(), &counter, "restored.log")),
            sandbox_config: Some(pod_config.clone()),
        }),
    )
    .await
    {
        Ok(r) => r.container_id,
        Err(s) => {
            return Err(format!(
                "CreateContainer with the checkpoint archive as image (CRI restore) refused: {:?} {:?}",
                s.code(),
                s.message()
            ))
        }
    };
    cd.remember_id(&restored);
    call("StartContainer (restore)", rt.start_container(api::StartContainerRequest { container_id: restored.clone() }))
        .await
        .map_err(|s| format!("StartContainer of the restored container refused: {:?} {:?}", s.code(), s.message()))?;
    if state_of(rt, &restored).await? != api::ContainerState::ContainerRunning as i32 {
        return Err("the restored container is not running".into());
    }
    // memory intact: it counts on from the checkpoint. The rootfs diff brings back /tmp/n as it
    // was; a process started afresh would overwrite it with 0, 1, 2... within 0.1 s, so every
    // value read must stay at or above it and rise.
    let first = read_counter(rt, &restored).await?;
    let mut seen = vec![first];
    let deadline = Instant::now() + Duration::from_secs(60);
    while *seen.last().unwrap() < first + 3 {
        if Instant::now() > deadline {
            return Err(format!("restored counter does not go on: {seen:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen.push(read_counter(rt, &restored).await?);
    }
    println!("counter: {before} before, checkpoint at {at_checkpoint}, restored: {seen:?}");
    if first < before || seen.windows(2).any(|w| w[1] < w[0]) {
        return Err(format!("restored counter restarted: {seen:?} after the checkpoint at {at_checkpoint}"));
    }
    let _ = call("StopContainer", rt.stop_container(api::StopContainerRequest { container_id: restored.clone(), timeout: 5 })).await;
    let _ = call("RemoveContainer", rt.remove_container(api::RemoveContainerRequest { container_id: restored })).await;
    Ok(())
}
