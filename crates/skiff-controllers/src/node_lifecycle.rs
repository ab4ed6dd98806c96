//! Node lifecycle: a node whose Lease in `kube-node-lease` has not been renewed within
//! the grace period becomes `Ready=Unknown` and is tainted `node.kubernetes.io/unreachable`
//! (NoSchedule and NoExecute); a node reporting `Ready=False` is tainted `not-ready`; the
//! taints go when it is ready again. Pods on nodes with NoExecute taints they do not
//! tolerate are evicted at once, or after their `tolerationSeconds`; pods bound to
//! nodes that no longer exist are deleted (pod garbage collection).

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::Recorder;
use skiff_client::events::EventType;
use skiff_client::nodes::{ready_status, tolerates};

use crate::children::ignore_gone;
use crate::Error;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// What a node's taints should be given its Ready condition.
pub fn wanted_condition_taints(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        Some("True") => None,
        Some("False") => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    }
}

/// When pod `tolerations` let it stay on a node with these NoExecute `taints`:
/// `None` = evict now, `Some(None)` = forever, `Some(Some(s))` = for `s` seconds from
/// the taint's `timeAdded`.
pub fn eviction_after(taints: &[&Taint], tolerations: &[Toleration]) -> Option<Option<i64>> {
    let mut least: Option<i64> = None;
    for taint in taints {
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return None;
        }
        // Several tolerations of one taint: the longest wins (none means forever).
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let longest = matching.iter().filter_map(|t| t.toleration_seconds).max().unwrap_or(0);
        let from = taint.time_added.as_ref().map(|t| t.0.as_second()).unwrap_or_else(|| jiff::Timestamp::now().as_second());
        let until = from + longest.max(0);
        least = Some(least.map_or(until, |l| l.min(until)));
    }
    Some(least)
}

/// Runs the node monitor until the process ends.
pub async fn run(client: Client, nodes: Store<Node>, pods: Store<Pod>, grace: Duration) {
    let recorder = Recorder::new(client.clone(), "node-controller");
    let period = (grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let started = jiff::Timestamp::now().as_second();
    let _ = nodes.wait_until_ready().await;
    let _ = pods.wait_until_ready().await;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(e) = crate::metrics::pass("nodelifecycle", monitor(&client, &nodes, &pods, grace, started, &recorder)).await {
            tracing::debug!(error = %e, "node monitor pass failed");
        }
    }
}

async fn monitor(client: &Client, nodes: &Store<Node>, pods: &Store<Pod>, grace: Duration, started: i64, recorder: &Recorder) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed: HashMap<String, i64> = leases
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|l| Some((l.name_any(), l.spec?.renew_time?.0.as_second())))
        .collect();
    let now = jiff::Timestamp::now().as_second();
    let napi: Api<Node> = Api::all(client.clone());
    let node_list = nodes.state();
    for node in &node_list {
        let name = node.name_any();
        // A node is judged by its lease; the controller's own start counts as a renewal so
        // a restarted control plane gives every node a full grace period.
        let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(now);
        let last = renewed.get(&name).copied().unwrap_or(created).max(started);
        let mut ready = ready_status(node).map(str::to_string);
        if now - last > grace.as_secs() as i64 && ready.as_deref() != Some("Unknown") {
            let conditions: Vec<_> = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    if c.status != "Unknown" {
                        c.last_transition_time = Some(skiff_client::now());
                    }
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c
                })
                .collect();
            ignore_gone(napi.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": conditions}}))).await)?;
            recorder.record(node.as_ref(), EventType::Normal, "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
            mark_pods_not_ready(client, pods, &name).await?;
            ready = Some("Unknown".into());
        }
        sync_taints(&napi, node, wanted_condition_taints(ready.as_deref())).await?;
    }
    evict(client, &node_list, pods, recorder).await
}

/// Puts the condition taint `wanted` (NoSchedule and NoExecute) on the node and takes
/// the other condition taints off.
async fn sync_taints(api: &Api<Node>, node: &Node, wanted: Option<&str>) -> Result<(), Error> {
    let current: Vec<Taint> = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let mut next: Vec<Taint> = current.iter().filter(|t| !((t.key == UNREACHABLE || t.key == NOT_READY) && Some(t.key.as_str()) != wanted)).cloned().collect();
    if let Some(key) = wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint { key: key.into(), effect: effect.into(), value: None, time_added: Some(skiff_client::now()) });
            }
        }
    }
    if next == current {
        return Ok(());
    }
    let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": next}});
    ignore_gone(api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await)?;
    Ok(())
}

/// Pods on a lost node stop being ready, so Services and controllers stop counting them.
async fn mark_pods_not_ready(client: &Client, pods: &Store<Pod>, node: &str) -> Result<(), Error> {
    for pod in pods.state().iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node) && skiff_client::pods::is_ready(p)) {
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "NodeLost", "lastTransitionTime": skiff_client::now()}]}});
        ignore_gone(api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await)?;
    }
    Ok(())
}

/// Evicts pods from nodes whose NoExecute taints they do not tolerate (or no longer,
/// after `tolerationSeconds`), and deletes pods bound to nodes that are gone.
async fn evict(client: &Client, nodes: &[std::sync::Arc<Node>], pods: &Store<Pod>, recorder: &Recorder) -> Result<(), Error> {
    let by_name: HashMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
    let now = jiff::Timestamp::now().as_second();
    for pod in pods.state() {
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) else { continue };
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let exact = |grace: Option<i64>| DeleteParams { grace_period_seconds: grace.map(|g| g as u32), preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
        let Some(node) = by_name.get(&node_name) else {
            // Pod garbage collection: its node is gone, so nothing will ever stop it.
            ignore_gone(api.delete(&pod.name_any(), &exact(Some(0))).await)?;
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() || skiff_client::pods::is_terminal(&pod) {
            continue;
        }
        let taints: Vec<&Taint> = node.spec.as_ref().and_then(|s| s.taints.as_ref()).into_iter().flatten().filter(|t| t.effect == "NoExecute").collect();
        if taints.is_empty() {
            continue;
        }
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
        let due = match eviction_after(&taints, &tolerations) {
            None => true,
            Some(None) => false,
            Some(Some(until)) => now >= until,
        };
        if due {
            recorder.record(pod.as_ref(), EventType::Normal, "TaintManagerEviction", format!("Marking for deletion Pod {}/{}", pod.namespace().unwrap_or_default(), pod.name_any()));
            ignore_gone(api.delete(&pod.name_any(), &exact(None)).await)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, added: i64) -> Taint {
        Taint { key: key.into(), effect: "NoExecute".into(), value: None, time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::from_second(added).unwrap())) }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration { key: Some(key.into()), operator: Some("Exists".into()), effect: Some("NoExecute".into()), toleration_seconds: seconds, value: None }
    }

    #[test]
    fn eviction_times() {
        let t = taint(UNREACHABLE, 1000);
        assert_eq!(eviction_after(&[&t], &[]), None);
        assert_eq!(eviction_after(&[&t], &[toleration(UNREACHABLE, Some(300))]), Some(Some(1300)));
        assert_eq!(eviction_after(&[&t], &[toleration(UNREACHABLE, None)]), Some(None));
        assert_eq!(eviction_after(&[&t], &[toleration(NOT_READY, Some(300))]), None);
        assert_eq!(wanted_condition_taints(Some("True")), None);
        assert_eq!(wanted_condition_taints(Some("Unknown")), Some(UNREACHABLE));
        assert_eq!(wanted_condition_taints(Some("False")), Some(NOT_READY));
    }
}
