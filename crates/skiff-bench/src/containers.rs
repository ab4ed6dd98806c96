//! The `containers` bench: OCI container pods on a real agent in this process (crun or
//! runc, the CNI plugins, overlayfs), images built here from Debian's static busybox and
//! pushed to a real docker-registry on 127.0.0.1. It reports, each beside its reference
//! measured in the same run:
//! 1. container pod create → Running (image present), one pod at a time, against the
//!    runtime's own `run` of `/bin/true` in a bundle over the same layers, and against
//!    `podman run --rm` of the same image (where podman is installed);
//! 2. pull + unpack of a multi-layer image (4 layers, ≥ 100 MB unpacked) against
//!    `skopeo copy` to an OCI layout and then untarring its layers one at a time, as
//!    containerd and podman unpack;
//! 3. the agent's RSS per idle container pod (the containers' own processes aside).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use oci_client::client::{Config, ImageLayer};
use serde_json::json;

use crate::registry::{rss_of, start_registry};
use crate::report::Row;

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A gzip'd layer of `files` (path, bytes, mode; a `None` body is a symlink to busybox).
fn layer(files: &[(String, Option<Vec<u8>>, u32)]) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, body, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match body {
            Some(bytes) => {
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, path, bytes.as_slice())?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, path, "busybox")?;
            }
        }
    }
    Ok(tar.into_inner()?.finish()?)
}

/// A busybox userland as one layer: the binary and the applets the bench runs.
fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let busybox = std::fs::read("/usr/bin/busybox").map_err(|e| anyhow::anyhow!("/usr/bin/busybox: {e} (Debian's busybox-static)"))?;
    let mut files = vec![("bin/busybox".to_string(), Some(busybox), 0o755), ("etc/passwd".into(), Some(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()), 0o644)];
    files.extend(["sh", "sleep", "true"].map(|a| (format!("bin/{a}"), None, 0o777)));
    layer(&files)
}

/// A layer of `mib` MiB in 64 KiB files of text that compresses as real files do (about
/// 2:1), different per `seed`.
fn bulk_layer(seed: u64, mib: usize) -> anyhow::Result<Vec<u8>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let files: Vec<_> = (0..mib * 16)
        .map(|i| {
            let body: Vec<u8> = (0..64 * 1024)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b"abcdefghijklmnop"[(state & 15) as usize]
                })
                .collect();
            (format!("data/{seed}/{:03}/{i}.txt", i / 256), Some(body), 0o644)
        })
        .collect();
    layer(&files)
}

async fn push(host: &str, repo: &str, layers: Vec<Vec<u8>>, cmd: &[&str]) -> anyhow::Result<String> {
    let reference = format!("{host}/{repo}:v1");
    let arch = skiff_agent::runtime::oci::image_config::node_architecture();
    let config = json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Cmd": cmd, "Env": ["PATH=/bin"]}});
    let config = Config::new(serde_json::to_vec(&config)?, oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE.into(), None);
    let layers: Vec<ImageLayer> = layers.into_iter().map(|l| ImageLayer::new(l, GZIP_LAYER.into(), None)).collect();
    let client = oci_client::Client::new(oci_client::client::ClientConfig { protocol: oci_client::client::ClientProtocol::Http, ..Default::default() });
    client.push(&reference.parse()?, &layers, config, &oci_client::secrets::RegistryAuth::Anonymous, None).await?;
    Ok(reference)
}

fn sleeping_pod(name: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}]}
    }))?)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program).args(args).output().map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    anyhow::ensure!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The runtime's own `run` of `/bin/true` in a bundle whose root is an overlay of the
/// image's unpacked layers, as the agent mounts it: `runs` times.
fn bare_runtime_runs(binary: &str, layers: &[PathBuf], dir: &Path, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let bundle = dir.join("bare");
    let (rootfs, upper, work) = (bundle.join("rootfs"), bundle.join("upper"), bundle.join("work"));
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d)?;
    }
    let lower: Vec<String> = layers.iter().rev().map(|p| p.display().to_string()).collect();
    run("mount", &["-t", "overlay", "overlay", "-o", &format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display()), rootfs.to_str().unwrap_or_default()])?;
    run(binary, &["spec", "--bundle", bundle.to_str().unwrap_or_default()]).or_else(|_| run(binary, &["spec", "-b", bundle.to_str().unwrap_or_default()]))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["/bin/true"]);
    spec["root"]["path"] = json!(rootfs);
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let id = format!("skiff-bench-bare-{}-{i}", std::process::id());
        let started = Instant::now();
        run(binary, &["run", "--bundle", bundle.to_str().unwrap_or_default(), &id])?;
        times.push(started.elapsed());
    }
    run("umount", &[rootfs.to_str().unwrap_or_default()])?;
    Ok(times)
}

/// `podman run --rm` of the image, `runs` times, once podman has pulled it; `None` where
/// podman is not installed.
fn podman_runs(image: &str, runs: usize) -> anyhow::Result<Option<Vec<Duration>>> {
    if std::process::Command::new("podman").arg("--version").output().is_err() {
        return Ok(None);
    }
    run("podman", &["pull", "-q", "--tls-verify=false", image])?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        // Where the host caps open files and processes below podman's defaults (1048576),
        // crun cannot raise them: podman gets limits any host allows.
        run("podman", &["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", image, "/bin/true"])?;
        times.push(started.elapsed());
    }
    let _ = run("podman", &["rmi", "-f", image]);
    Ok(Some(times))
}

/// `skopeo copy` of the image to an OCI layout, then its layers untarred one at a time.
fn skopeo_and_serial_untar(image: &str, dir: &Path) -> anyhow::Result<Duration> {
    let layout = dir.join("skopeo-layout");
    let root = dir.join("skopeo-root");
    std::fs::create_dir_all(&root)?;
    let started = Instant::now();
    run("skopeo", &["copy", "-q", "--src-tls-verify=false", &format!("docker://{image}"), &format!("oci:{}:img", layout.display())])?;
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap_or_default()))?)?;
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        run("tar", &["-xzf", blob(layer["digest"].as_str().unwrap_or_default()).to_str().unwrap_or_default(), "-C", root.to_str().unwrap_or_default()])?;
    }
    Ok(started.elapsed())
}

fn du(path: &Path) -> u64 {
    let out = std::process::Command::new("du").args(["-sb"]).arg(path).output().ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

pub async fn run_bench(quick: bool, pods: usize, idle: usize, layer_mib: usize) -> anyhow::Result<Vec<Row>> {
    let (pods, idle, layer_mib) = if quick { (3, 3, 4) } else { (pods, idle, layer_mib) };
    let dir = tempfile::tempdir()?;
    let registry = start_registry(dir.path()).await?;
    let image = push(&registry.host, "busybox", vec![busybox_layer()?], &["sleep", "3600"]).await?;
    let bulk: Vec<Vec<u8>> = (0..4).map(|i| bulk_layer(i, layer_mib)).collect::<anyhow::Result<_>>()?;
    let compressed: usize = bulk.iter().map(Vec::len).sum();
    let big = push(&registry.host, "bulk", bulk, &["true"]).await?;

    // Pull + unpack, through the agent's own code, against skopeo + serial tar.
    let pull_dir = dir.path().join("pull");
    let images = skiff_agent::images::ImageStore::open(pull_dir.join("images"), Default::default())?;
    let oci = std::sync::Arc::new(skiff_agent::runtime::oci::OciRuntime::detect(&pull_dir.join("oci")).map_err(anyhow::Error::msg)?);
    images.set_layer_sink(oci.clone());
    let started = Instant::now();
    let local = images.ensure(&big, skiff_agent::images::PullPolicy::Always, async || Ok(oci_client::secrets::RegistryAuth::Anonymous)).await?;
    let pulled = started.elapsed();
    oci.prepare(&images, &local).await.map_err(|e| anyhow::anyhow!(e.0))?;
    let skiff_pull = started.elapsed();
    println!("pull {} then unpack {}", ms(pulled), ms(skiff_pull - pulled));
    let unpacked = du(&pull_dir.join("oci/layers"));
    let reference_pull = skopeo_and_serial_untar(&big, dir.path())?;
    let _ = std::fs::remove_dir_all(&pull_dir);

    // Container pods on a whole node in this process.
    let (client, agent) = crate::registry::in_process_node(dir.path(), 1000).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    crate::startup::start_one(&api, sleeping_pod("warm-up", &image)?).await?;
    let idle_rss = rss_of("self");
    let mut times = Vec::new();
    for i in 0..pods {
        times.push(crate::startup::start_one(&api, sleeping_pod(&format!("c-{i}"), &image)?).await?);
    }
    // A burst: the rest of the idle pods created at once, timed until all run.
    let extra = idle.saturating_sub(pods);
    let burst_started = Instant::now();
    crate::startup::create_all(&api, (0..extra).map(|i| sleeping_pod(&format!("idle-{i}"), &image))).await?;
    crate::startup::wait_running(&api, |_| true, pods + extra + 1).await?;
    let burst = burst_started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_pod = rss_of("self").saturating_sub(idle_rss) / (pods + extra).max(1) as u64;
    let shims = shim_memory(dir.path());
    agent.abort();
    let agent_dir = dir.path().join("agent");
    tokio::task::spawn_blocking(move || skiff_agent::stop_containers(&agent_dir)).await?;

    let layers_dir = dir.path().join("agent/oci/layers");
    let layers: Vec<PathBuf> = std::fs::read_dir(&layers_dir)?.flatten().map(|e| e.path()).collect();
    let binary = std::fs::read_to_string(dir.path().join("agent/oci/runtime"))?;
    let bare = bare_runtime_runs(&binary, &layers, dir.path(), pods)?;
    let podman = podman_runs(&image, pods)?;

    let (p50, p99) = crate::startup::percentiles(times);
    let (bare_p50, bare_p99) = crate::startup::percentiles(bare);
    println!("containers: one node in process ({binary}, CNI bridge, overlayfs), docker-registry on loopback");
    println!("{:<64} {:>10} {:>10}", "what", "p50", "p99");
    println!("{:<64} {:>10} {:>10}", format!("container pod create → Running seen by watch ({pods} pods)"), ms(p50), ms(p99));
    println!("{:<64} {:>10} {:>10}", format!("bare `{binary} run` of /bin/true on the same layers"), ms(bare_p50), ms(bare_p99));
    let podman_row = match podman {
        Some(t) => {
            let (pp50, pp99) = crate::startup::percentiles(t);
            println!("{:<64} {:>10} {:>10}", "`podman run --rm` of the same image, /bin/true", ms(pp50), ms(pp99));
            Row::new("container pod create → Running against `podman run --rm`, p50", format!("{} / {}", ms(p50), ms(pp50)), "podman 4.3 (Debian), same image", Some(pp50.as_secs_f64() / p50.as_secs_f64()))
        }
        None => Row::new("container pod create → Running against `podman run --rm`, p50", ms(p50), "podman not installed: not measured", None),
    };
    println!("pull + unpack of 4 layers ({:.0} MB compressed, {:.0} MB unpacked): Skiff {}, skopeo copy + serial untar {}",
        compressed as f64 / 1e6, unpacked as f64 / 1e6, ms(skiff_pull), ms(reference_pull));
    println!("burst: {extra} container pods created at once → all Running: {}", ms(burst));
    println!("agent RSS per idle container pod: {:.1} KiB ({} pods)", per_pod as f64 / 1024.0, pods + extra);
    println!("container shims: {} running, each {:.0} KiB private (RssAnon), {:.0} KiB RSS with the pages shared with the agent's binary",
        shims.count, shims.anon_per_shim as f64 / 1024.0, shims.rss_per_shim as f64 / 1024.0);
    drop(registry);
    Ok(vec![
        Row::new(format!("container pod create → Running, p50 / p99 ({pods} pods, image present)"), format!("{} / {}", ms(p50), ms(p99)),
            format!("bare `{binary} run` of /bin/true: {} / {} (goal ≤ 1.5×)", ms(bare_p50), ms(bare_p99)), Some(bare_p50.as_secs_f64() / p50.as_secs_f64())),
        podman_row,
        Row::new(format!("burst: {extra} container pods created at once → all Running"), ms(burst), "—", None),
        Row::new(format!("pull + unpack, 4 layers, {:.0} MB unpacked", unpacked as f64 / 1e6), ms(skiff_pull),
            format!("skopeo copy + serial untar: {} (goal ≥ 2×)", ms(reference_pull)), Some(reference_pull.as_secs_f64() / skiff_pull.as_secs_f64())),
        Row::new("agent RSS per idle container pod", format!("{:.0} KiB", per_pod as f64 / 1024.0), "—", None),
        Row::new("container shim per container, private memory (RssAnon)", format!("{:.0} KiB", shims.anon_per_shim as f64 / 1024.0),
            format!("{:.0} KiB RSS counting pages shared with the binary", shims.rss_per_shim as f64 / 1024.0), None),
    ])
}

/// The memory of the container shims running under `dir` (one process per container run).
struct ShimMemory {
    count: usize,
    anon_per_shim: u64,
    rss_per_shim: u64,
}

fn shim_memory(dir: &Path) -> ShimMemory {
    let dir = dir.display().to_string();
    let shims: Vec<String> = std::fs::read_dir("/proc").into_iter().flatten().flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.get(1) == Some(&skiff_agent::runtime::oci::shim::SUBCOMMAND.as_bytes()) && args.iter().any(|a| a.starts_with(dir.as_bytes()))
        }))
        .collect();
    let sum = |field: &str| shims.iter().map(|pid| skiff_agent::node::proc_bytes(&format!("/proc/{pid}/status"), field).unwrap_or(0)).sum::<u64>();
    let count = shims.len();
    ShimMemory { count, anon_per_shim: sum("RssAnon:") / count.max(1) as u64, rss_per_shim: sum("VmRSS:") / count.max(1) as u64 }
}
