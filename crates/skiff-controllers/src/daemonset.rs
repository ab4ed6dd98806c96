//! DaemonSet: one pod on every eligible node (its nodeSelector, required node affinity
//! and the node's NoSchedule/NoExecute taints decide), placed by the scheduler through a
//! node-name affinity; nodes that come get a pod, pods of nodes that go or stop fitting
//! are removed; templates roll out node by node within `maxUnavailable`.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::nodes::{first_untolerated, matches_node_selection};
use skiff_client::pods::{self, Availability};
use skiff_client::{Expectations, Recorder, owners};

use crate::children::{self, ignore_gone};
use crate::revisions::{self, REVISION_LABEL};
use crate::{Error, selector_of};

pub struct Ctx {
    pub client: Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub revisions: Store<ControllerRevision>,
    pub recorder: Recorder,
    pub expectations: Expectations,
}

/// Tolerations every daemon pod gets, as Kubernetes adds them: daemons keep running on
/// nodes that are unready, unreachable, under pressure or cordoned.
pub fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration { key: Some(key.into()), operator: Some("Exists".into()), effect: Some(effect.into()), value: None, toleration_seconds: None };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// True when a pod of this DaemonSet belongs on `node`.
pub fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    let name = node.name_any();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let spec = ds.spec.template.spec.as_ref();
    if !spec.is_none_or(|s| matches_node_selection(s, &name, &labels)) {
        return false;
    }
    let tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default().into_iter().chain(daemon_tolerations()).collect::<Vec<_>>();
    let taints: &[Taint] = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    first_untolerated(taints, &tolerations).is_none()
}

/// The node a daemon pod is for: its node name, else its node-name affinity.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find(|f| f.key == "metadata.name" && f.operator == "In").and_then(|f| f.values.as_ref()?.first().cloned())
}

/// A daemon pod for `node`: the template, the revision label, a required affinity to
/// that node name (the scheduler binds it) and the daemon tolerations.
fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = &ds.spec;
    let mut pod = pods::from_template(&spec.template, &ds.namespace().unwrap_or_default(), owners::controller_ref(ds), None, &pods::generate_name_prefix(&ds.name_any()));
    pod.metadata.labels.get_or_insert_with(Default::default).insert(REVISION_LABEL.into(), hash.into());
    if let Some(ps) = pod.spec.as_mut() {
        let field = NodeSelectorRequirement { key: "metadata.name".into(), operator: "In".into(), values: Some(vec![node.into()]) };
        let affinity = ps.affinity.get_or_insert_with(Affinity::default);
        let na = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
        let req = na.required_during_scheduling_ignored_during_execution.get_or_insert_with(|| NodeSelector { node_selector_terms: vec![] });
        if req.node_selector_terms.is_empty() {
            req.node_selector_terms.push(NodeSelectorTerm::default());
        }
        for term in &mut req.node_selector_terms {
            term.match_fields = Some(vec![field.clone()]);
        }
        let tolerations = ps.tolerations.get_or_insert_with(Vec::new);
        for t in daemon_tolerations() {
            if !tolerations.contains(&t) {
                tolerations.push(t);
            }
        }
    }
    pod
}

/// The controller: DaemonSets, woken by their pods, and every one of them when a node
/// comes, goes or changes.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Ctx {
        client: client.clone(),
        pods: i.pods.store(),
        nodes: i.nodes.store(),
        revisions: i.revisions.store(),
        recorder: Recorder::new(client.clone(), "daemonset-controller"),
        expectations: Expectations::new(),
    };
    Controller::for_shared_stream(i.daemon_sets.subscribe(), i.daemon_sets.store())
        .owns_shared_stream(i.pods.changes())
        .reconcile_all_on(i.nodes.subscribe().map(|_| ()))
        .run(crate::metrics::metered("daemonset", reconcile), retry, Arc::new(ctx))
        .for_each(|_| async {})
}

pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let spec = &ds.spec;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let key = format!("{ns}/{}", ds.name_any());
    let uid = ds.uid().unwrap_or_default();
    let selector = selector_of(Some(&spec.selector))?;
    // Expectations before the pods, as in the ReplicaSet controller.
    let synced = ctx.expectations.satisfied(&key, |n| children::seen(&ctx.pods, &ns, n));
    let owned = children::claim(&ctx.client, &*ds, &ctx.pods, &selector, &ns, &ctx.recorder, |p: &Pod| pods::is_active(p)).await?;
    let revs = revisions::owned(&ctx.revisions, &uid, &ns);
    let hash = revisions::ensure(&ctx.client, &*ds, &spec.template, &revs).await?;
    revisions::trim(&ctx.client, &revs, &[&hash], spec.revision_history_limit.unwrap_or(10).max(0) as usize).await?;

    let nodes = ctx.nodes.state();
    let mut by_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    for p in owned.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let now = jiff::Timestamp::now().as_second();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut create_on = Vec::new();
    let mut delete = Vec::new();
    let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) = (0, 0, 0, 0, 0, 0);
    let mut old_pods: Vec<&Pod> = Vec::new();
    let mut unavailable = 0;
    for node in &nodes {
        let name = node.name_any();
        let here = by_node.remove(&name).unwrap_or_default();
        // Failed daemon pods are replaced.
        let (failed, live): (Vec<&Pod>, Vec<&Pod>) = here.into_iter().partition(|p| pods::phase(p) == "Failed");
        delete.extend(failed.iter().map(|p| p.name_any()));
        if should_run(&ds, node) {
            desired += 1;
            match live.as_slice() {
                [] => {
                    create_on.push(name);
                    unavailable += 1;
                }
                [first, extra @ ..] => {
                    current += 1;
                    delete.extend(extra.iter().map(|p| p.name_any()));
                    let is_new = first.labels().get(REVISION_LABEL) == Some(&hash);
                    if is_new {
                        updated += 1;
                    } else {
                        old_pods.push(first);
                    }
                    if pods::is_ready(first) {
                        ready += 1;
                    }
                    if pods::availability(first, min_ready, now) == Availability::Available {
                        available += 1;
                    } else {
                        unavailable += 1;
                    }
                }
            }
        } else if !live.is_empty() {
            misscheduled += 1;
            delete.extend(live.iter().map(|p| p.name_any()));
        }
    }
    // Pods of nodes that no longer exist.
    delete.extend(by_node.values().flatten().map(|p| p.name_any()));

    // Rolling update: replace old pods while within maxUnavailable, unready ones first.
    let strategy = spec.update_strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate" {
        let max_unavailable = crate::int_or_percent(strategy.and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.max_unavailable.as_ref()), 0, desired, false).max(1);
        let mut budget = max_unavailable - unavailable;
        old_pods.sort_by_key(|p| pods::availability(p, min_ready, now) == Availability::Available);
        for p in old_pods {
            let counts = pods::availability(p, min_ready, now) == Availability::Available;
            if counts && budget <= 0 {
                break;
            }
            delete.push(p.name_any());
            if counts {
                budget -= 1;
            }
        }
    }

    if synced {
        let mut made = Vec::new();
        for node in &create_on {
            if let Some(name) = children::create_pod(&ctx.client, &*ds, &pod_for(&ds, node, &hash), &ctx.recorder).await {
                made.push(name);
            }
        }
        ctx.expectations.created(&key, made);
        let gone = children::delete_pods(&ctx.client, &*ds, &ns, &delete, &ctx.recorder).await;
        ctx.expectations.deleted(&key, gone);
    }
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        updated_number_scheduled: Some(updated),
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
    };
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        ignore_gone(api.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await)?;
    }
    Ok(Action::requeue(Duration::from_secs(if min_ready > 0 { 5 } else { 300 })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})).unwrap()
    }

    #[test]
    fn eligibility_follows_selector_and_taints() {
        let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"selector": {}, "template": {"spec": {"containers": [], "nodeSelector": {"role": "edge"}}}}})).unwrap();
        assert!(should_run(&ds, &node("a", json!({"role": "edge"}), json!([]))));
        assert!(!should_run(&ds, &node("b", json!({"role": "core"}), json!([]))));
        // The control-plane taint keeps daemons out unless tolerated.
        assert!(!should_run(&ds, &node("c", json!({"role": "edge"}), json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]))));
        // Condition taints are tolerated by every daemon.
        assert!(should_run(&ds, &node("d", json!({"role": "edge"}), json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]))));
        let p = pod_for(&ds, "a", "h");
        assert_eq!(target_node(&p).as_deref(), Some("a"));
    }
}
