//! The `schedule` bench: an in-process API server with simulated nodes (hollow nodes'
//! Node objects, registered and ready, with no agent behind them), then
//! 1. throughput: N pending pods exist, the scheduler starts, and the time until every
//!    one is bound gives pods/s (kube-scheduler's own benchmark minimum is 680 pods/s
//!    on 5,000 nodes);
//! 2. latency: with controllers and scheduler running, a ReplicaSet of R replicas is
//!    created and each pod's time from that moment to being bound is recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use skiff_agent::hollow::{self, HollowConfig};
use skiff_store::{RedbStore, Store, StoreOptions};

struct Cluster {
    client: kube::Client,
    /// The scheduler's and controllers' own identities, as `skiff up` runs them.
    scheduler: kube::Client,
    controllers: kube::Client,
    _dir: tempfile::TempDir,
}

async fn cluster(nodes: usize) -> anyhow::Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("db"), StoreOptions::default())?);
    let server = skiff_apiserver::ApiServer::new(store, skiff_apiserver::Config::new("bench-token".into()));
    server.bootstrap(([127, 0, 0, 1], 6443).into()).await.map_err(|e| anyhow::anyhow!(e.message))?;
    let router = skiff_apiserver::router(server);
    let as_user = |user, component| skiff_apiserver::in_process_client(router.clone(), user, component);
    use skiff_apiserver::authz::UserInfo;
    let (client, scheduler, controllers) =
        (as_user(UserInfo::admin(), "skiff-bench"), as_user(UserInfo::scheduler(), "skiff-scheduler"), as_user(UserInfo::controllers(), "skiff-controllers"));
    let config = HollowConfig { prefix: "sim".into(), count: nodes, cpu: "32".into(), memory: "128Gi".into(), pods: 250, ..Default::default() };
    let config = &config;
    futures::stream::iter(0..nodes)
        .map(|i| {
            let client = client.clone();
            async move { hollow::registration(config, i).register(&client).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Cluster { client, scheduler, controllers, _dir: dir })
}

fn pod_spec() -> serde_json::Value {
    json!({"containers": [{"name": "c", "image": "bench:1", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]})
}

/// Waits until `count` pods (matching `labels`, if given) are bound; returns when each one
/// was first seen bound.
async fn watch_bound(client: kube::Client, count: usize, labels: Option<&str>) -> HashMap<String, Instant> {
    let api: Api<Pod> = Api::namespaced(client, "default");
    let config = labels.map_or_else(watcher::Config::default, |l| watcher::Config::default().labels(l));
    let mut events = watcher(api, config).touched_objects().boxed();
    let mut bound = HashMap::new();
    while bound.len() < count {
        match events.next().await {
            Some(Ok(p)) => {
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    bound.entry(p.metadata.name.clone().unwrap_or_default()).or_insert_with(Instant::now);
                }
            }
            Some(Err(_)) => {}
            None => break,
        }
    }
    bound
}

async fn throughput(nodes: usize, pods: usize) -> anyhow::Result<(f64, Duration)> {
    let c = cluster(nodes).await?;
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("p-{i}")}, "spec": pod_spec()}))?;
                api.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let watching = tokio::spawn(watch_bound(c.client.clone(), pods, None));
    let start = Instant::now();
    let scheduler = tokio::spawn(skiff_scheduler::run(c.scheduler.clone(), std::future::pending()));
    let bound = watching.await?;
    let elapsed = bound.values().max().map(|t| t.duration_since(start)).unwrap_or_default();
    scheduler.abort();
    anyhow::ensure!(bound.len() == pods, "only {} of {pods} pods were bound", bound.len());
    Ok((pods as f64 / elapsed.as_secs_f64(), elapsed))
}

fn replica_set(name: &str, replicas: usize) -> anyhow::Result<ReplicaSet> {
    Ok(serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec()}}}))?)
}

async fn scale_up(nodes: usize, replicas: usize) -> anyhow::Result<(Duration, Duration, Duration)> {
    let c = cluster(nodes).await?;
    let scheduler = tokio::spawn(skiff_scheduler::run(c.scheduler.clone(), std::future::pending()));
    let controllers = tokio::spawn(skiff_controllers::run(c.controllers.clone(), skiff_controllers::Options::default(), std::future::pending()));
    let api = Api::<ReplicaSet>::namespaced(c.client.clone(), "default");
    // The clock starts once a ReplicaSet of one has its pod bound (the controllers and the
    // scheduler have listed everything and are at work; a fixed pause alone would measure
    // their start-up on a slow machine), and a second more has passed for the start-up
    // work on 5,000 nodes to settle, as in a cluster that has been up a while.
    let warm = tokio::spawn(watch_bound(c.client.clone(), 1, Some("app=warm-up")));
    api.create(&PostParams::default(), &replica_set("warm-up", 1)?).await?;
    warm.await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let watching = tokio::spawn(watch_bound(c.client.clone(), replicas, Some("app=scale")));
    let start = Instant::now();
    api.create(&PostParams::default(), &replica_set("scale", replicas)?).await?;
    let bound = watching.await?;
    scheduler.abort();
    controllers.abort();
    let mut lat: Vec<Duration> = bound.values().map(|t| t.duration_since(start)).collect();
    lat.sort();
    let pick = |p: f64| crate::report::percentile(&lat, p);
    Ok((pick(0.5), pick(0.99), lat.last().copied().unwrap_or_default()))
}

pub async fn run(quick: bool, pods: usize, replicas: usize) -> anyhow::Result<Vec<crate::report::Row>> {
    let (pods, replicas) = if quick { (200, 100) } else { (pods, replicas) };
    let node_counts: &[usize] = if quick { &[10] } else { &[100, 1000, 5000] };
    println!("schedule bench ({} CPUs): simulated nodes, in-process API server", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("| nodes | pending pods | pods bound/s | all bound after s |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for &n in node_counts {
        let (rate, elapsed) = throughput(n, pods).await?;
        println!("| {n} | {pods} | {rate:.0} | {:.2} |", elapsed.as_secs_f64());
        rows.push(crate::report::Row::new(format!("pods bound/s, {n} nodes, {pods} pending"), format!("{}/s", crate::report::thousands(rate)),
            "kube-scheduler's benchmark minimum: 680/s at 5,000 nodes (published)", Some(rate / 680.0)));
    }
    let n = *node_counts.last().unwrap_or(&10);
    let (p50, p99, all) = scale_up(n, replicas).await?;
    println!();
    println!("| nodes | ReplicaSet replicas | scale-up to bound p50 ms | p99 ms | all bound ms |");
    println!("|---|---|---|---|---|");
    println!("| {n} | {replicas} | {:.0} | {:.0} | {:.0} |", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3, all.as_secs_f64() * 1e3);
    rows.push(crate::report::Row::new(format!("ReplicaSet of {replicas} to bound, p50 / p99, {n} nodes"),
        format!("{:.0} / {:.0} ms", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3), "—", None));
    Ok(rows)
}
