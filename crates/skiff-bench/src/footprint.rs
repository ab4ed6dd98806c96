//! The `footprint` bench: what a whole `skiff up` costs a small machine. It starts the
//! `skiff` binary built beside this bench as a separate process. It measures that
//! process's resident memory and CPU over an idle window twice: once with nothing
//! deployed, and once with 10 Deployments of a sleeping Wasm command (from a real
//! docker-registry on loopback). It also reports the binary's size.
//!
//! Published anchors (k3s's own resource profiling): a k3s server uses about 1.6 GB of RAM
//! with a workload, an agent about 275 MB, and the k3s binary is under 100 MB.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::registry::{example_wasm, free_port, rss_of, skiff_binary, spawn_skiff, start_registry, wait_for_node};

/// CPU time (user + system) a process has used, from /proc (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// RSS at the end of an idle window and the share of one core used over it.
async fn idle_window(pid: u32, window: Duration) -> (u64, f64) {
    let (cpu0, t0) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(window).await;
    let used = cpu_time(pid).saturating_sub(cpu0);
    (rss_of(&pid.to_string()), used.as_secs_f64() / t0.elapsed().as_secs_f64())
}

pub async fn run(quick: bool, idle_seconds: u64, binary: Option<PathBuf>, wasm: Option<PathBuf>) -> anyhow::Result<Vec<crate::report::Row>> {
    let window = Duration::from_secs(if quick { 2 } else { idle_seconds });
    let binary = skiff_binary(binary)?;
    let (wasm_path, _) = example_wasm(wasm)?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let cluster = spawn_skiff(&binary, &["up", "--listen", &format!("127.0.0.1:{port}"), "--agent-port", "0", "--node-name", "footprint", "--node-ip", "127.0.0.1", "--data-dir"], &dir.path().join("cluster"))?;
    let pid = cluster.0.id();
    let client = wait_for_node(&dir.path().join("cluster/kubeconfig"), "footprint").await?;
    let (empty_rss, empty_cpu) = idle_window(pid, window).await;

    let registry = start_registry(dir.path()).await?;
    let image = format!("{}/hello:v1", registry.host);
    skiff_agent::images::push(&wasm_path, &image, &oci_client::secrets::RegistryAuth::Anonymous, &Default::default()).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    for i in 0..10 {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": format!("d{i}")},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": format!("d{i}")}},
                     "template": {"metadata": {"labels": {"app": format!("d{i}")}},
                                  "spec": {"runtimeClassName": "wasmtime",
                                           "containers": [{"name": "main", "image": image, "args": ["sleep", "100000"]}]}}}
        }))?;
        deployments.create(&PostParams::default(), &d).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let available = deployments.list(&Default::default()).await?.items.iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.available_replicas) == Some(1)).count();
        if available == 10 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {available} of 10 Deployments became available");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (busy_rss, busy_cpu) = idle_window(pid, window).await;
    let size = std::fs::metadata(&binary)?.len();

    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    println!("footprint: `skiff up` ({}) as its own process, idle window {} s", binary.display(), window.as_secs());
    println!("{:<44} {:>12} {:>10}  reference", "what", "RSS", "CPU");
    println!("{:<44} {:>12} {:>9.1}%  goal ≤ 50 MB RSS", "skiff up, nothing deployed", mib(empty_rss), empty_cpu * 100.0);
    println!("{:<44} {:>12} {:>9.1}%  k3s server ≈ 1.6 GB with a workload", "skiff up, 10 Deployments of Wasm pods", mib(busy_rss), busy_cpu * 100.0);
    println!("{:<44} {:>12}             k3s binary < 100 MB", "skiff binary size", mib(size));
    anyhow::ensure!(empty_rss > 0 && busy_rss > 0 && size > 0, "the bench measured nothing");
    drop(registry);
    drop(cluster);
    use crate::report::Row;
    Ok(vec![
        Row::new("skiff up idle, nothing deployed: RSS / CPU", format!("{} / {:.1}%", mib(empty_rss), empty_cpu * 100.0), "goal ≤ 50 MB", Some(50e6 / empty_rss as f64)),
        Row::new("skiff up, 10 Deployments of Wasm pods: RSS / CPU", format!("{} / {:.1}%", mib(busy_rss), busy_cpu * 100.0),
            "k3s server ≈ 1.6 GB with a workload (published)", Some(1.6e9 / busy_rss as f64)),
        Row::new("release binary size", mib(size), "k3s binary < 100 MB (published)", Some(100e6 / size as f64)),
    ])
}
