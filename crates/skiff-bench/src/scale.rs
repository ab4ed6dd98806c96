//! The `scale` bench: the Kubernetes scalability envelope on one machine. A `skiff
//! server` process (API server, scheduler, controllers) and a `skiff agent --hollow N`
//! process (N simulated nodes sharing one watch) run beside the bench. The bench creates
//! Deployments at a steady pod rate until the target pod count exists, and measures what
//! Kubernetes' SLOs measure:
//! - mutating API call latency: a probe client creates, patches and deletes a ConfigMap
//!   every 50 ms throughout, and the bench's own Deployment creates count too (SLO: p99
//!   ≤ 1 s);
//! - pod startup latency: from a pod's creation seen by a watch to it seen Running and
//!   Ready (SLO: p99 ≤ 5 s, images excluded; hollow nodes have none);
//! - the control plane's peak RSS (VmHWM).
//!
//! If the pods stop coming up (no progress for 120 s) or the control plane passes
//! `--max-rss-gib`, the bench stops and reports how far it got.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::registry::{free_port, skiff_binary, spawn_skiff};
use crate::report::{Row, percentile, thousands};

pub struct Options {
    pub quick: bool,
    pub nodes: usize,
    pub pods: usize,
    pub per_deployment: usize,
    /// Pods per second the Deployments are created at.
    pub rate: f64,
    pub max_rss_gib: f64,
    pub max_minutes: f64,
    pub binary: Option<PathBuf>,
}

/// When each pod was first seen, and when it was first seen running and ready; how many
/// were deleted (evicted or scaled away) and which nodes were ever seen not ready, since a
/// lapsed node's pods are replaced and muddle the figures.
#[derive(Default)]
struct PodTimes {
    seen: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
    deleted: usize,
    lapsed_nodes: HashSet<String>,
}

fn deployment(i: usize, replicas: usize) -> anyhow::Result<Deployment> {
    let name = format!("scale-{i}");
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "scale:1", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
    }))?)
}

fn peak_rss(pid: u32) -> u64 {
    skiff_agent::node::proc_bytes(&format!("/proc/{pid}/status"), "VmHWM:").unwrap_or(0)
}

/// Creates, patches and deletes a ConfigMap every 50 ms; records each call's latency.
async fn probe_mutations(client: kube::Client, latencies: Arc<Mutex<Vec<Duration>>>) {
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0u64.. {
        tick.tick().await;
        let name = format!("probe-{i}");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": {"n": i.to_string()}})).expect("a ConfigMap");
        let timed = |t: Instant, ok: bool| if ok { latencies.lock().unwrap().push(t.elapsed()) };
        let t = Instant::now();
        timed(t, api.create(&PostParams::default(), &cm).await.is_ok());
        let t = Instant::now();
        timed(t, api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"data": {"patched": "yes"}}))).await.is_ok());
        let t = Instant::now();
        timed(t, api.delete(&name, &DeleteParams::default()).await.is_ok());
    }
}

/// Follows every pod: when it appears, when it is running and ready.
async fn watch_pods(client: kube::Client, times: Arc<Mutex<PodTimes>>) {
    let api: Api<Pod> = Api::namespaced(client, "default");
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(watcher::Event::Delete(_)) => {
                times.lock().unwrap().deleted += 1;
                continue;
            }
            _ => continue,
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = Instant::now();
        let mut t = times.lock().unwrap();
        t.seen.entry(name.clone()).or_insert(now);
        if skiff_client::pods::is_ready(&pod) {
            t.running.entry(name).or_insert(now);
        }
    }
}

/// Notes every hollow node seen with its Ready condition other than True.
async fn watch_nodes(client: kube::Client, times: Arc<Mutex<PodTimes>>) {
    let api: Api<Node> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default().labels("skiff.dev/hollow")).touched_objects().boxed();
    while let Some(event) = events.next().await {
        let Ok(node) = event else { continue };
        if skiff_client::nodes::ready_status(&node) != Some("True") {
            times.lock().unwrap().lapsed_nodes.insert(node.metadata.name.clone().unwrap_or_default());
        }
    }
}

pub async fn run(o: Options) -> anyhow::Result<Vec<Row>> {
    let (nodes, pods, per_deployment) = if o.quick { (20, 200, 20) } else { (o.nodes, o.pods, o.per_deployment) };
    let binary = skiff_binary(o.binary)?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    // A /24 per node from a /10: room for 16,384 nodes, clear of the service range.
    let server = spawn_skiff(&binary, &["server", "--listen", &format!("127.0.0.1:{port}"), "--cluster-cidr", "100.64.0.0/10", "--node-cidr-mask-size", "24", "--data-dir"], &dir.path().join("cp"))?;
    let kubeconfig = crate::registry::wait_for_kubeconfig(&dir.path().join("cp")).await?;
    let client = crate::registry::client_for(&kubeconfig).await?;
    let started = Instant::now();
    let hollow = spawn_skiff(&binary, &["agent", "--kubeconfig", &kubeconfig.to_string_lossy(), "--hollow", &nodes.to_string(), "--hollow-prefix", "scale", "--data-dir"], &dir.path().join("hollow"))?;
    let node_api: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let ready = node_api.list(&ListParams::default().labels("skiff.dev/hollow")).await?.items.iter().filter(|n| skiff_client::nodes::ready_status(n) == Some("True")).count();
        if ready >= nodes {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {ready} of {nodes} hollow nodes ready after 900 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let nodes_up = started.elapsed();

    let mutations = Arc::new(Mutex::new(Vec::new()));
    let times = Arc::new(Mutex::new(PodTimes::default()));
    let probe = tokio::spawn(probe_mutations(client.clone(), mutations.clone()));
    let watch = tokio::spawn(watch_pods(client.clone(), times.clone()));
    let node_watch = tokio::spawn(watch_nodes(client.clone(), times.clone()));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let count = pods.div_ceil(per_deployment);
    let pace = Duration::from_secs_f64(per_deployment as f64 / o.rate.max(1.0));
    let created_from = Instant::now();
    let mut stopped = None;
    let time_limit = Duration::from_secs_f64(o.max_minutes.max(0.0) * 60.0);
    // A line every 30 s, so a long run shows how it goes before it reports.
    let mut next_progress = Instant::now() + Duration::from_secs(30);
    let mut progress = |deployments: usize| {
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(30);
            let t = times.lock().unwrap();
            println!("  {:>5.0} s: {deployments} Deployments, {} of {} pods running, {} deleted, {} nodes seen not ready, control plane {:.2} GiB",
                created_from.elapsed().as_secs_f64(), t.running.len(), t.seen.len(), t.deleted, t.lapsed_nodes.len(), peak_rss(server.0.id()) as f64 / (1u64 << 30) as f64);
        }
    };
    let mut created = 0;
    for i in 0..count {
        let replicas = per_deployment.min(pods - i * per_deployment);
        let t = Instant::now();
        deployments.create(&PostParams::default(), &deployment(i, replicas)?).await?;
        mutations.lock().unwrap().push(t.elapsed());
        created = i + 1;
        if peak_rss(server.0.id()) as f64 > o.max_rss_gib * (1u64 << 30) as f64 {
            stopped = Some(format!("the control plane passed {} GiB after {} Deployments", o.max_rss_gib, i + 1));
            break;
        }
        if created_from.elapsed() > time_limit {
            stopped = Some(format!("{} minutes passed after {} Deployments", o.max_minutes, i + 1));
            break;
        }
        progress(created);
        tokio::time::sleep_until((created_from + pace * (i as u32 + 1)).into()).await;
    }
    // Wait for every pod to run, or for progress to stop.
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let running = times.lock().unwrap().running.len();
        if running >= pods || stopped.is_some() && running == times.lock().unwrap().seen.len() {
            break;
        }
        if running != last {
            (last, last_change) = (running, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(120) {
            stopped.get_or_insert_with(|| format!("no pod came up for 120 s at {running} running"));
            break;
        }
        if created_from.elapsed() > time_limit {
            stopped.get_or_insert_with(|| format!("{} minutes passed at {running} running", o.max_minutes));
            break;
        }
        progress(created);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_running = created_from.elapsed();
    probe.abort();
    watch.abort();
    node_watch.abort();
    let (server_peak, hollow_peak) = (peak_rss(server.0.id()), peak_rss(hollow.0.id()));
    anyhow::ensure!(server_peak > 0, "the control plane process ended");
    let mut mutation_latencies = mutations.lock().unwrap().clone();
    mutation_latencies.sort();
    let t = times.lock().unwrap();
    let mut startup: Vec<Duration> = t.running.iter().filter_map(|(name, at)| t.seen.get(name).map(|s| at.saturating_duration_since(*s))).collect();
    startup.sort();
    let (mutate_p99, startup_p50, startup_p99) = (percentile(&mutation_latencies, 0.99), percentile(&startup, 0.5), percentile(&startup, 0.99));
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
    println!("scale: {nodes} hollow nodes (ready after {:.0} s), Deployments of {per_deployment} at {} pods/s ({})", nodes_up.as_secs_f64(), o.rate, crate::report::machine());
    println!("  pods running: {} of {} created ({} targeted), all within {:.0} s of the first Deployment", t.running.len(), t.seen.len(), pods, all_running.as_secs_f64());
    println!("  pods deleted during the run: {}; hollow nodes ever seen not ready: {}", t.deleted, t.lapsed_nodes.len());
    println!("  mutating API calls: {} timed, p50 {} p99 {} (SLO p99 ≤ 1 s)", mutation_latencies.len(), ms(percentile(&mutation_latencies, 0.5)), ms(mutate_p99));
    println!("  pod startup (created → Running, seen by watch): p50 {} p99 {} (SLO p99 ≤ 5 s)", ms(startup_p50), ms(startup_p99));
    println!("  peak RSS: control plane {}, hollow nodes {}", gib(server_peak), gib(hollow_peak));
    if let Some(why) = &stopped {
        println!("  stopped early: {why}");
    }
    let scope = format!("{} nodes, {} of {} pods running", thousands(nodes as f64), thousands(t.running.len() as f64), thousands(pods as f64));
    Ok(vec![
        Row::new(format!("mutating API call p99 ({scope})"), ms(mutate_p99), "Kubernetes SLO: p99 ≤ 1 s", Some(1.0 / mutate_p99.as_secs_f64().max(1e-6))),
        Row::new(format!("pod startup p50 / p99 ({scope})"), format!("{} / {}", ms(startup_p50), ms(startup_p99)), "Kubernetes SLO: p99 ≤ 5 s", Some(5.0 / startup_p99.as_secs_f64().max(1e-6))),
        Row::new(format!("control plane peak RSS ({scope})"), gib(server_peak), stopped.unwrap_or_else(|| "—".into()), None),
    ])
}
