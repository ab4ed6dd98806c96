//! Hollow nodes: N simulated nodes in one process, sharing one pod watch. Each registers
//! a Node and renews its Lease like a real agent; pods bound to it are reported running
//! and ready at once, without running anything. Pods that are meant to finish
//! (`restartPolicy` `OnFailure` or `Never`) succeed after `skiff.dev/hollow-run-seconds`
//! (default 1) with exit code `skiff.dev/hollow-exit-code` (default 0), so Jobs complete.
//! Deleted pods are finished off at once. Stopping the process stops the leases, as a
//! node that dies would.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Semaphore;

use crate::node::{LEASE_RENEW_INTERVAL, NodeRegistration, WASM_RUNTIME_LABEL, renew_lease};

pub const RUN_SECONDS_ANNOTATION: &str = "skiff.dev/hollow-run-seconds";
pub const EXIT_CODE_ANNOTATION: &str = "skiff.dev/hollow-exit-code";
/// Status writes in flight at once.
const CONCURRENCY: usize = 64;
/// Lease renewals in flight at once (5,000 nodes renew 500 a second).
const LEASE_CONCURRENCY: usize = 16;

/// How to make the hollow nodes.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// Nodes are named `{prefix}-{i}`.
    pub prefix: String,
    pub count: usize,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// Extra labels for every node.
    pub labels: BTreeMap<String, String>,
}

impl Default for HollowConfig {
    fn default() -> Self {
        HollowConfig { prefix: "hollow".into(), count: 1, cpu: "4".into(), memory: "16Gi".into(), pods: 110, labels: BTreeMap::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HollowError {
    #[error("registering node {node}: {source}")]
    Register { node: String, source: kube::Error },
}

/// What hollow node `i` registers: the standard and runtime labels, the configured
/// capacity and a made-up address.
pub fn registration(config: &HollowConfig, i: usize) -> NodeRegistration {
    let name = format!("{}-{i}", config.prefix);
    let mut labels = NodeRegistration::standard_labels(&name);
    labels.insert(WASM_RUNTIME_LABEL.into(), "true".into());
    labels.insert("skiff.dev/hollow".into(), "true".into());
    labels.extend(config.labels.clone());
    NodeRegistration {
        capacity: BTreeMap::from([
            ("cpu".to_string(), config.cpu.clone()),
            ("memory".to_string(), config.memory.clone()),
            ("ephemeral-storage".to_string(), "100Gi".to_string()),
            ("pods".to_string(), config.pods.to_string()),
        ]),
        internal_ip: format!("10.200.{}.{}", (i / 250) % 250, i % 250 + 1),
        kernel_version: "hollow".into(),
        os_image: "Skiff hollow node".into(),
        runtime_version: crate::node::WASM_RUNTIME_VERSION.into(),
        agent_port: None,
        pressure: Default::default(),
        network: None,
        taints: vec![],
        labels,
        name,
    }
}

/// Registers the nodes, then keeps their leases and pods until the future is dropped.
pub async fn run(client: Client, config: HollowConfig) -> Result<(), HollowError> {
    let regs: Vec<NodeRegistration> = (0..config.count).map(|i| registration(&config, i)).collect();
    let registered: Vec<Node> = futures::stream::iter(regs.iter())
        .map(|r| {
            let client = client.clone();
            async move { r.register(&client).await.map_err(|source| HollowError::Register { node: r.name.clone(), source }) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let names: Arc<HashSet<String>> = Arc::new(regs.iter().map(|r| r.name.clone()).collect());
    let ips: Arc<HashMap<String, String>> = Arc::new(regs.iter().map(|r| (r.name.clone(), r.internal_ip.clone())).collect());
    // Bounds on writes in flight for the whole process: a slow API server makes the
    // nodes' writes queue here, not pile up as thousands of connections. Leases have a
    // bound of their own, so a burst of pod status writes never makes a lease lapse.
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let lease_limit = Arc::new(Semaphore::new(LEASE_CONCURRENCY));
    tokio::select! {
        _ = keep_leases(client.clone(), registered, lease_limit) => Ok(()),
        _ = keep_ready(client.clone(), regs) => Ok(()),
        _ = run_pods(client, names, ips, limit) => Ok(()),
    }
}

/// Renews every node's lease once per interval, spread over the interval (later when the
/// API server is slow to answer).
async fn keep_leases(client: Client, nodes: Vec<Node>, limit: Arc<Semaphore>) {
    let gap = LEASE_RENEW_INTERVAL / (nodes.len().max(1) as u32);
    loop {
        let started = tokio::time::Instant::now();
        for (i, node) in nodes.iter().enumerate() {
            tokio::time::sleep_until(started + gap * i as u32).await;
            let Ok(permit) = limit.clone().acquire_owned().await else { return };
            let client = client.clone();
            let node = node.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = renew_lease(&client, &node).await {
                    tracing::debug!(node = %node.name_any(), error = %e, "renewing lease");
                }
            });
        }
        tokio::time::sleep_until(started + LEASE_RENEW_INTERVAL).await;
    }
}

/// Reports a node's status again whenever it shows anything but `Ready=True` (the node
/// controller marks a node unknown when its lease lapses), as a kubelet would on its
/// next status update.
async fn keep_ready(client: Client, regs: Vec<NodeRegistration>) {
    let by_name: HashMap<String, NodeRegistration> = regs.into_iter().map(|r| (r.name.clone(), r)).collect();
    let api: Api<Node> = Api::all(client.clone());
    let mut events = watcher(api, watcher::Config::default().labels("skiff.dev/hollow=true")).default_backoff().touched_objects().boxed();
    while let Some(ev) = events.next().await {
        let Ok(node) = ev else { continue };
        let Some(reg) = by_name.get(&node.name_any()) else { continue };
        if skiff_client::nodes::ready_status(&node) != Some("True") && let Err(e) = reg.report_status(&client).await {
            tracing::debug!(node = %reg.name, error = %e, "reporting node status");
        }
    }
}

/// What this process already did to a pod, so repeated events do not repeat writes:
/// started pods by uid and the resource version that was seen, deleted pods by uid.
#[derive(Default)]
struct Done {
    started: HashMap<String, String>,
    deleting: HashSet<String>,
}

async fn run_pods(client: Client, names: Arc<HashSet<String>>, ips: Arc<HashMap<String, String>>, limit: Arc<Semaphore>) {
    let api: Api<Pod> = Api::all(client.clone());
    let done = Arc::new(Mutex::new(Done::default()));
    let next_ip = Arc::new(std::sync::atomic::AtomicU32::new(1));
    let mut events = watcher(api, watcher::Config::default().fields("spec.nodeName!=")).default_backoff().modify(skiff_client::without_managed_fields).boxed();
    while let Some(ev) = events.next().await {
        let pod = match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(watcher::Event::Delete(p)) => {
                let uid = p.uid().unwrap_or_default();
                let mut d = done.lock().unwrap();
                d.started.remove(&uid);
                d.deleting.remove(&uid);
                continue;
            }
            _ => continue,
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| names.contains(n)) else { continue };
        let uid = pod.uid().unwrap_or_default();
        let phase = skiff_client::pods::phase(&pod).to_string();
        let action = {
            let mut d = done.lock().unwrap();
            if pod.metadata.deletion_timestamp.is_some() {
                d.deleting.insert(uid.clone()).then_some(Action::Delete)
            } else if (phase == "Pending" && !d.started.contains_key(&uid))
                || (phase == "Running" && !skiff_client::pods::is_ready(&pod) && d.started.get(&uid) != pod.metadata.resource_version.as_ref())
            {
                // New, or marked not ready while its node was unreachable: (re)start it. A
                // pending pod is started once: another update before our Running report
                // lands must not start it again, or a late second Running report could
                // follow its Succeeded one.
                d.started.insert(uid.clone(), pod.metadata.resource_version.clone().unwrap_or_default());
                Some(Action::Start)
            } else {
                None
            }
        };
        let Some(action) = action else { continue };
        let permit = limit.clone().acquire_owned().await.expect("semaphore is never closed");
        let (client, ip) = (client.clone(), ips.get(&node).cloned().unwrap_or_default());
        let n = next_ip.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pod_ip = format!("10.42.{}.{}", (n / 250) % 250, n % 250 + 1);
        tokio::spawn(async move {
            let result = match action {
                Action::Delete => finish_deletion(&client, &pod).await,
                Action::Start => start(&client, &pod, &ip, &pod_ip).await,
            };
            drop(permit);
            if let Err(e) = result {
                tracing::warn!(pod = %pod.name_any(), error = %e, "hollow pod update");
            }
        });
    }
}

enum Action {
    Start,
    Delete,
}

async fn finish_deletion(client: &Client, pod: &Pod) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn container_statuses(pod: &Pod, state: serde_json::Value, ready: bool) -> Vec<serde_json::Value> {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    containers
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "image": c.image, "imageID": c.image, "ready": ready, "started": ready,
                "restartCount": 0, "containerID": format!("hollow://{}-{}", pod.uid().unwrap_or_default(), c.name),
                "state": state,
            })
        })
        .collect()
}

/// Reports the pod running and ready; if it is meant to finish, reports it succeeded
/// (or failed) after its run time.
async fn start(client: &Client, pod: &Pod, host_ip: &str, pod_ip: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let now = skiff_client::now();
    let condition = |t: &str, s: &str| serde_json::json!({"type": t, "status": s, "lastTransitionTime": now, "lastProbeTime": null});
    let running = serde_json::json!({"status": {
        "phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": now,
        "conditions": [condition("PodReadyToStartContainers", "True"), condition("Initialized", "True"), condition("Ready", "True"),
                       condition("ContainersReady", "True"), condition("PodScheduled", "True")],
        "containerStatuses": container_statuses(pod, serde_json::json!({"running": {"startedAt": now}}), true),
    }});
    api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&running)).await?;
    let restart = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    if restart == "Always" {
        return Ok(());
    }
    let annotation = |k: &str| pod.annotations().get(k).and_then(|v| v.parse::<u64>().ok());
    let seconds = annotation(RUN_SECONDS_ANNOTATION).unwrap_or(1);
    let code = annotation(EXIT_CODE_ANNOTATION).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let finished = skiff_client::now();
    let (phase, reason) = if code == 0 { ("Succeeded", "Completed") } else { ("Failed", "Error") };
    let terminated = serde_json::json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": finished}});
    let done = serde_json::json!({"status": {
        "phase": phase,
        "conditions": [condition("PodReadyToStartContainers", "False"), condition("Initialized", "True"), condition("Ready", "False"),
                       condition("ContainersReady", "False"), condition("PodScheduled", "True")],
        "containerStatuses": container_statuses(pod, terminated, false),
    }});
    match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&done)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
