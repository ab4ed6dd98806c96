//! The `startup` bench: a whole node in this process — the API server (in process), the
//! scheduler and a real agent running Wasm — plus a real `docker-registry` on 127.0.0.1
//! holding the wasi-hello example. It reports:
//! 1. warm start: pod create → `Running` seen by a watch, one pod at a time, the image
//!    already pulled and compiled (Kubernetes' SLO: p99 ≤ 5 s; Skiff's goal p50 ≤ 20 ms,
//!    p99 ≤ 100 ms);
//! 2. cold start: the same, each pod with an image never seen (pull and compile); then a
//!    cold burst, many pods of one new image at once (one pull and compile shared);
//! 3. instantiate and run to exit of a trivial command, straight on the runtime;
//! 4. the process's RSS idle and with the warm pods (and more) sleeping.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::registry::{example_wasm, rss_of, start_registry};


/// The wasm with a custom section naming `variant`: a distinct image digest (and so a
/// cold pull and compile) for the same program.
fn variant(wasm: &[u8], variant: usize) -> Vec<u8> {
    let name = b"skiff-bench";
    let payload = variant.to_le_bytes();
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}


fn sleeping_pod(name: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"runtimeClassName": "wasmtime", "restartPolicy": "Never",
                 "containers": [{"name": "main", "image": image, "args": ["sleep", "3600"]}]}
    }))?)
}

/// Creates the pod and returns the time until a watch saw it Running.
pub(crate) async fn start_one(api: &Api<Pod>, pod: Pod) -> anyhow::Result<Duration> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config).applied_objects().boxed();
    // The watch is established before the clock starts.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
    let start = Instant::now();
    api.create(&PostParams::default(), &pod).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(120), events.next()).await {
            Ok(Some(Ok(p))) if skiff_client::pods::phase(&p) == "Running" => return Ok(start.elapsed()),
            Ok(Some(Ok(p))) if skiff_client::pods::is_terminal(&p) => anyhow::bail!("pod {name} ended: {:?}", p.status),
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the watch of {name} ended"),
            Err(_) => anyhow::bail!("pod {name} did not run within 120 s"),
        }
    }
}

pub(crate) fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (crate::report::percentile(&v, 0.5), crate::report::percentile(&v, 0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(quick: bool, warm: usize, cold: usize, sleeping: usize, wasm: Option<PathBuf>) -> anyhow::Result<Vec<crate::report::Row>> {
    let (warm, cold, sleeping) = if quick { (10, 3, 20) } else { (warm, cold, sleeping.max(warm)) };
    let burst = if quick { 5 } else { 50 };
    let (wasm_path, wasm) = example_wasm(wasm)?;
    let dir = tempfile::tempdir()?;
    let registry = start_registry(dir.path()).await?;

    let (client, agent) = crate::registry::in_process_node(dir.path(), (sleeping as u32 + 100).max(1000)).await?;
    // The informers and the scheduler's caches settle before anything is measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_of("self");

    let auth = oci_client::secrets::RegistryAuth::Anonymous;
    let warm_image = format!("{}/hello:warm", registry.host);
    skiff_agent::images::push(&wasm_path, &warm_image, &auth, &Default::default()).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Cold: every pod's image is new to the node.
    let mut cold_times = Vec::new();
    for i in 0..cold {
        let file = dir.path().join(format!("cold-{i}.wasm"));
        std::fs::write(&file, variant(&wasm, i))?;
        let image = format!("{}/hello-cold-{i}:v1", registry.host);
        skiff_agent::images::push(&file, &image, &auth, &Default::default()).await?;
        cold_times.push(start_one(&api, sleeping_pod(&format!("cold-{i}"), &image)?).await?);
    }
    // A cold burst: a new Deployment's replicas, all at once, of an image the node has
    // never seen: one pull and one compile shared by all, timed from the first create until
    // every one runs, with the process's peak RSS over the burst.
    let burst_image = format!("{}/hello-burst:v1", registry.host);
    let burst_file = dir.path().join("burst.wasm");
    std::fs::write(&burst_file, variant(&wasm, cold + 1))?;
    skiff_agent::images::push(&burst_file, &burst_image, &auth, &Default::default()).await?;
    let before_burst = rss_of("self");
    // Resets the peak (VmHWM) to the current RSS, so the peak read after is the burst's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let burst_started = Instant::now();
    create_all(&api, (0..burst).map(|i| sleeping_pod(&format!("burst-{i}"), &burst_image))).await?;
    wait_running(&api, |p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with("burst-")), burst).await?;
    let burst_time = burst_started.elapsed();
    let burst_peak = skiff_agent::node::proc_bytes("/proc/self/status", "VmHWM:").unwrap_or(0);

    // Warm: the first pod pulls and compiles; the measured ones find both done.
    start_one(&api, sleeping_pod("warm-up", &warm_image)?).await?;
    let mut warm_times = Vec::new();
    for i in 0..warm {
        warm_times.push(start_one(&api, sleeping_pod(&format!("warm-{i}"), &warm_image)?).await?);
    }
    // More sleeping pods, created together, for the memory figure.
    let extra = sleeping.saturating_sub(warm + cold + burst + 1);
    create_all(&api, (0..extra).map(|i| sleeping_pod(&format!("extra-{i}"), &warm_image))).await?;
    let total = warm + cold + burst + 1 + extra;
    wait_running(&api, |_| true, total).await?;
    let busy_rss = rss_of("self");
    let instantiate = instantiate_times(&wasm, if quick { 50 } else { 2000 }, dir.path())?;

    let (warm_p50, warm_p99) = percentiles(warm_times);
    let (cold_p50, cold_p99) = percentiles(cold_times);
    let (inst_p50, inst_p99) = percentiles(instantiate);
    println!("startup: one node in process (API server, scheduler, agent), docker-registry on loopback");
    println!("{:<58} {:>10} {:>10}", "what", "p50", "p99");
    println!("{:<58} {:>10} {:>10}", format!("warm Wasm pod create → Running seen by watch ({warm} pods)"), ms(warm_p50), ms(warm_p99));
    println!("{:<58} {:>10} {:>10}", format!("cold (pull + compile) create → Running ({cold} pods)"), ms(cold_p50), ms(cold_p99));
    println!("{:<58} {:>10} {:>10}", "instantiate + run a command to exit (runtime alone)", format!("{:.0} µs", inst_p50.as_secs_f64() * 1e6), format!("{:.0} µs", inst_p99.as_secs_f64() * 1e6));
    println!("{:<58} {:>10}", format!("cold burst: {burst} pods of a new image at once → all Running"), ms(burst_time));
    println!("process RSS before the burst {:.1} MiB, peak during it {:.1} MiB", before_burst as f64 / 1048576.0, burst_peak as f64 / 1048576.0);
    println!("process RSS idle: {:.1} MiB; with {total} sleeping command pods: {:.1} MiB ({:.1} KiB per pod)",
        idle_rss as f64 / 1048576.0, busy_rss as f64 / 1048576.0, busy_rss.saturating_sub(idle_rss) as f64 / 1024.0 / total.max(1) as f64);
    anyhow::ensure!(warm_p50 > Duration::ZERO && cold_p50 > Duration::ZERO && busy_rss > 0, "the bench measured nothing");
    agent.abort();
    drop(registry);
    use crate::report::Row;
    Ok(vec![
        Row::new(format!("warm Wasm pod create → Running, p50 / p99 ({warm} pods)"), format!("{} / {}", ms(warm_p50), ms(warm_p99)),
            "goal p99 ≤ 100 ms; Kubernetes' pod startup SLO p99 ≤ 5 s", Some(5.0 / warm_p99.as_secs_f64())),
        Row::new(format!("cold (pull + compile) create → Running, p50 / p99 ({cold} pods)"), format!("{} / {}", ms(cold_p50), ms(cold_p99)),
            "Kubernetes' pod startup SLO p99 ≤ 5 s", Some(5.0 / cold_p99.as_secs_f64())),
        Row::new(format!("cold burst: {burst} pods of a new image at once → all Running (peak RSS)"),
            format!("{} ({:.0} MiB, from {:.0} MiB)", ms(burst_time), burst_peak as f64 / 1048576.0, before_burst as f64 / 1048576.0), "—", None),
        Row::new("instantiate + run a command to exit, p50", format!("{:.0} µs", inst_p50.as_secs_f64() * 1e6), "—", None),
    ])
}

/// Creates the pods, 32 requests at a time.
pub(crate) async fn create_all(api: &Api<Pod>, pods: impl Iterator<Item = anyhow::Result<Pod>>) -> anyhow::Result<()> {
    futures::stream::iter(pods)
        .map(|pod| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pod?).await.map_err(anyhow::Error::from) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

/// Waits until `count` of the pods `which` picks are Running (300 s at most).
pub(crate) async fn wait_running(api: &Api<Pod>, which: impl Fn(&Pod) -> bool, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let running = api.list(&Default::default()).await?.items.iter().filter(|p| which(p) && skiff_client::pods::phase(p) == "Running").count();
        if running >= count {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {running} of {count} pods running after 300 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Instantiates the example and runs it to exit (`exit 0`), straight on a runtime.
fn instantiate_times(wasm: &[u8], runs: usize, dir: &Path) -> anyhow::Result<Vec<Duration>> {
    use skiff_agent::runtime::wasm::command::{GuestSpec, Stdio};
    use skiff_agent::runtime::wasm::{WasmConfig, WasmRuntime};
    let runtime = WasmRuntime::new(&WasmConfig { max_instances: 16, max_memory_bytes: 1 << 30, cache_dir: dir.join("bench-cache"), threads: 1 })?;
    let (program, _) = runtime.compile(wasm).map_err(|e| anyhow::anyhow!(e.0))?;
    let log = skiff_agent::logs::LogSink::create(&dir.join("bench.log"))?;
    let rt = tokio::runtime::Handle::current();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let spec = GuestSpec { argv: vec!["hello".into(), "exit".into(), "0".into()], env: vec![], mounts: vec![], memory_limit: None, cpu_limit_milli: None, stdio: Stdio::Log(log.clone()), usage: Arc::default() };
        let start = Instant::now();
        let exit = tokio::task::block_in_place(|| rt.block_on(runtime.spawn(program.clone(), spec)))?.map_err(|e| anyhow::anyhow!(e.0))?;
        times.push(start.elapsed());
        anyhow::ensure!(exit.code == 0, "the command exited {}", exit.code);
    }
    Ok(times)
}
