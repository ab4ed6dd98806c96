//! Skiff's scheduler: watches pods without a node and binds each to the best node,
//! through the `pods/binding` subresource, like kube-scheduler.
//!
//! One task owns the cache and the queue, so scheduling needs no locks: it takes watch
//! events, pops a pod, filters and scores every node with the plugins, *assumes* the pod
//! onto the chosen node in the cache and hands the binding to a background task. The
//! next pod is scheduled at once against the updated cache; a failed binding takes the
//! assumption back and retries the pod after backoff.

pub mod cache;
pub mod metrics;
pub mod plugins;
pub mod queue;
pub mod resources;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use skiff_client::Recorder;
use skiff_client::events::EventType;
use tokio::sync::mpsc;

use cache::{Cache, PlacedPod, PodKey, pod_key};
use plugins::{Plugin, PodContext, default_plugins};
use queue::Queue;

/// Scheduler names this scheduler answers for.
pub const SCHEDULER_NAMES: &[&str] = &["default-scheduler", "skiff-scheduler"];
/// Bindings in flight at once.
const BIND_CONCURRENCY: usize = 256;

/// Where a pod went, or why it went nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Node(String),
    /// The message users see ("0/3 nodes are available: 2 Insufficient memory, …").
    Unschedulable(String),
}

/// Chooses a node for one pod. Pure: reads the cache, changes nothing.
pub fn decide(plugins: &[Box<dyn Plugin>], cache: &Cache, pod: &Pod, tie_break: u64) -> Decision {
    let ctx = PodContext::new(pod, cache);
    let states: Vec<_> = plugins.iter().map(|p| p.prepare(&ctx, cache)).collect();
    let mut feasible = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    // In a big cluster, stop once enough feasible nodes are found; start at a random node
    // so every node gets its turn. A pod that fits nowhere is still checked everywhere.
    let wanted = feasible_nodes_to_find(cache.nodes.len());
    let start = (tie_break >> 17) as usize % cache.nodes.len().max(1);
    for node in cache.nodes.values().cycle().skip(start).take(cache.nodes.len()) {
        if feasible.len() >= wanted {
            break;
        }
        match plugins.iter().zip(&states).try_for_each(|(p, s)| p.filter(&ctx, node, s)) {
            Ok(()) => feasible.push(node),
            Err(rs) => {
                for r in rs {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Decision::Unschedulable(unschedulable_message(cache.nodes.len(), &reasons));
    }
    let mut totals = vec![0i64; feasible.len()];
    for (p, s) in plugins.iter().zip(&states).filter(|(p, _)| p.weight() > 0) {
        let raw: Vec<i64> = feasible.iter().map(|n| p.score(&ctx, n, s)).collect();
        let (lo, hi) = (raw.iter().copied().min().unwrap_or(0), raw.iter().copied().max().unwrap_or(0));
        for (t, r) in totals.iter_mut().zip(&raw) {
            let score = if !p.normalize() {
                *r
            } else if hi == lo {
                0
            } else {
                (r - lo) * 100 / (hi - lo)
            };
            *t += p.weight() * score;
        }
    }
    let best = totals.iter().copied().max().unwrap_or(0);
    let ties: Vec<usize> = (0..feasible.len()).filter(|&i| totals[i] == best).collect();
    let chosen = ties[(tie_break % ties.len() as u64) as usize];
    Decision::Node(feasible[chosen].name.clone())
}

/// How many feasible nodes to find before scoring, as kube-scheduler's adaptive
/// `percentageOfNodesToScore`: every node of a cluster under 100; above, 50% falling one
/// point per 125 nodes down to 5%, and never fewer than 100 nodes.
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(100)
}

/// Kubernetes' FitError message: reasons counted over nodes, sorted.
pub fn unschedulable_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "0/0 nodes are available: no nodes available to schedule pods.".into();
    }
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

enum BindOutcome {
    Bound,
    /// The pod is gone or was bound by someone else.
    Gone,
    Failed(String),
}

struct Scheduler {
    client: Client,
    recorder: Recorder,
    plugins: Vec<Box<dyn Plugin>>,
    cache: Cache,
    queue: Queue,
    in_flight: usize,
    binds: mpsc::UnboundedSender<(PodKey, BindOutcome)>,
    rng: u64,
    pods_synced: bool,
    nodes_synced: bool,
    relist_pods: Option<HashSet<PodKey>>,
    relist_nodes: Option<HashSet<String>>,
}

/// True when this scheduler should place `pod`.
fn wants_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    spec.node_name.as_deref().is_none_or(str::is_empty)
        && SCHEDULER_NAMES.contains(&spec.scheduler_name.as_deref().unwrap_or("default-scheduler"))
        && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
        && pod.metadata.deletion_timestamp.is_none()
        && !skiff_client::pods::is_terminal(pod)
}

impl Scheduler {
    fn on_pod(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        if let Some(seen) = self.relist_pods.as_mut() {
            seen.insert(key.clone());
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        match node {
            Some(node) => {
                self.queue.remove(&key);
                if skiff_client::pods::is_terminal(&pod) {
                    if self.cache.unplace(&key).is_some() {
                        self.queue.cluster_changed();
                    }
                } else {
                    self.cache.place(key, &node, PlacedPod::of(&pod, false));
                }
            }
            None => {
                if self.cache.placement(&key).is_some_and(|(_, assumed)| assumed) {
                    return; // our binding is in flight; this is an older state
                }
                if wants_scheduling(&pod) {
                    self.queue.upsert(key, Arc::new(pod));
                } else {
                    self.queue.remove(&key);
                }
            }
        }
    }

    fn on_pod_deleted(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        self.queue.remove(&key);
        if self.cache.unplace(&key).is_some() {
            self.queue.cluster_changed();
        }
    }

    fn on_pod_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relist_pods = Some(HashSet::new()),
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => self.on_pod(p),
            watcher::Event::Delete(p) => self.on_pod_deleted(&p),
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist_pods.take() {
                    let gone: Vec<PodKey> = self.cache.placed_keys().filter(|k| !seen.contains(*k)).cloned().collect();
                    for k in gone {
                        if !self.cache.placement(&k).is_some_and(|(_, assumed)| assumed) {
                            self.cache.unplace(&k);
                        }
                    }
                }
                self.pods_synced = true;
            }
        }
    }

    fn on_node_event(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Init => self.relist_nodes = Some(HashSet::new()),
            watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                if let Some(seen) = self.relist_nodes.as_mut() {
                    seen.insert(n.name_any());
                }
                self.cache.set_node(Arc::new(n));
                self.queue.cluster_changed();
            }
            watcher::Event::Delete(n) => self.cache.remove_node(&n.name_any()),
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist_nodes.take() {
                    let gone: Vec<String> = self.cache.nodes.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                    for n in gone {
                        self.cache.remove_node(&n);
                    }
                }
                self.nodes_synced = true;
            }
        }
    }

    fn on_class_event(&mut self, event: watcher::Event<RuntimeClass>) {
        match event {
            watcher::Event::InitApply(c) | watcher::Event::Apply(c) => {
                self.cache.runtime_classes.insert(c.name_any(), Arc::new(c));
                self.queue.cluster_changed();
            }
            watcher::Event::Delete(c) => {
                self.cache.runtime_classes.remove(&c.name_any());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    fn can_schedule(&self) -> bool {
        self.pods_synced && self.nodes_synced && self.in_flight < BIND_CONCURRENCY && self.queue.has_active()
    }

    fn schedule_one(&mut self) {
        let Some(pod) = self.queue.pop() else { return };
        // xorshift: cheap randomness to spread ties.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let key = pod_key(&pod);
        let since = Instant::now();
        match decide(&self.plugins, &self.cache, &pod, self.rng) {
            Decision::Node(node) => {
                self.cache.place(key.clone(), &node, PlacedPod::of(&pod, true));
                self.in_flight += 1;
                tokio::spawn(bind(self.client.clone(), self.recorder.clone(), pod, node, self.binds.clone(), since));
            }
            Decision::Unschedulable(message) => {
                metrics::attempted("unschedulable", since);
                self.queue.unschedulable(&key);
                tokio::spawn(report_unschedulable(self.client.clone(), self.recorder.clone(), pod, message));
            }
        }
    }

    fn on_bound(&mut self, key: PodKey, outcome: BindOutcome) {
        self.in_flight -= 1;
        match outcome {
            BindOutcome::Bound => self.queue.remove(&key),
            BindOutcome::Gone => {
                self.cache.unplace(&key);
                self.queue.remove(&key);
            }
            BindOutcome::Failed(e) => {
                tracing::debug!(pod = %key, error = %e, "binding failed; retrying after backoff");
                self.cache.unplace(&key);
                self.queue.backoff(&key);
            }
        }
    }
}

/// Binds `pod` to `node`: the end of a scheduling attempt begun at `since`.
async fn bind(client: Client, recorder: Recorder, pod: Arc<Pod>, node: String, done: mpsc::UnboundedSender<(PodKey, BindOutcome)>, since: Instant) {
    let key = pod_key(&pod);
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let binding = serde_json::json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let outcome = match api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding).await {
        Ok(_) => {
            recorder.record(pod.as_ref(), EventType::Normal, "Scheduled", format!("Successfully assigned {ns}/{name} to {node}"));
            BindOutcome::Bound
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => BindOutcome::Gone,
        Err(e) => BindOutcome::Failed(e.to_string()),
    };
    metrics::attempted(if matches!(outcome, BindOutcome::Bound) { "scheduled" } else { "error" }, since);
    let _ = done.send((key, outcome));
}

/// Sets `PodScheduled=False` with the reason (once per distinct message) and records a
/// `FailedScheduling` event.
async fn report_unschedulable(client: Client, recorder: Recorder, pod: Arc<Pod>, message: String) {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.message.clone());
    recorder.record(pod.as_ref(), EventType::Warning, "FailedScheduling", message.clone());
    if current.as_deref() == Some(message.as_str()) {
        return;
    }
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastTransitionTime": skiff_client::now(), "lastProbeTime": null,
    }]}});
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
    if let Err(e) = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await {
        tracing::debug!(error = %e, "setting PodScheduled=False");
    }
}

/// Runs the scheduler until `shutdown` completes. Watches restart on their own after errors.
pub async fn run(client: Client, shutdown: impl std::future::Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    let mut pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff().modify(skiff_client::without_managed_fields).boxed();
    let mut nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff().boxed();
    let mut classes = watcher(Api::<RuntimeClass>::all(client.clone()), watcher::Config::default()).default_backoff().boxed();
    let (binds, mut bound) = mpsc::unbounded_channel();
    let mut s = Scheduler {
        recorder: Recorder::new(client.clone(), "default-scheduler"),
        client,
        plugins: default_plugins(),
        cache: Cache::default(),
        queue: Queue::default(),
        in_flight: 0,
        binds,
        rng: 0x2545_F491_4F6C_DD1D,
        pods_synced: false,
        nodes_synced: false,
        relist_pods: None,
        relist_nodes: None,
    };
    let mut next_flush = Instant::now();
    loop {
        let can_schedule = s.can_schedule();
        tokio::select! {
            _ = &mut shutdown => return,
            Some(ev) = pods.next() => match ev {
                Ok(ev) => s.on_pod_event(ev),
                Err(e) => tracing::debug!(error = %e, "pod watch error"),
            },
            Some(ev) = nodes.next() => match ev {
                Ok(ev) => s.on_node_event(ev),
                Err(e) => tracing::debug!(error = %e, "node watch error"),
            },
            Some(ev) = classes.next() => match ev {
                Ok(ev) => s.on_class_event(ev),
                Err(e) => tracing::debug!(error = %e, "runtimeclass watch error"),
            },
            Some((key, outcome)) = bound.recv() => s.on_bound(key, outcome),
            _ = tokio::time::sleep_until(next_flush.into()) => {
                next_flush = s.queue.flush(Instant::now()).unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
                metrics::pending(s.queue.pending());
            }
            _ = std::future::ready(()), if can_schedule => {
                // A batch per turn keeps throughput up while events still get their turn.
                for _ in 0..16 {
                    if !s.can_schedule() { break; }
                    s.schedule_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str, labels: serde_json::Value, taints: serde_json::Value) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "10"}, "conditions": [{"type": "Ready", "status": "True"}]}})).unwrap())
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d", "labels": {"app": "x"}}, "spec": spec})).unwrap()
    }

    fn cache() -> Cache {
        let mut c = Cache::default();
        c.set_node(node("small", "1", json!({"skiff.dev/runtime-wasm": "true", "zone": "a"}), json!([])));
        c.set_node(node("big", "8", json!({"zone": "b"}), json!([])));
        c.set_node(node("tainted", "8", json!({"zone": "c"}), json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])));
        c.runtime_classes.insert("wasmtime".into(), Arc::new(serde_json::from_value(json!({"metadata": {"name": "wasmtime"}, "handler": "wasmtime",
            "scheduling": {"nodeSelector": {"skiff.dev/runtime-wasm": "true"}}})).unwrap()));
        c
    }

    #[test]
    fn big_clusters_score_a_share_of_their_nodes() {
        assert_eq!(feasible_nodes_to_find(0), 0);
        assert_eq!(feasible_nodes_to_find(50), 50);
        assert_eq!(feasible_nodes_to_find(100), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(20000), 1000);
    }

    #[test]
    fn decisions() {
        let plugins = default_plugins();
        let c = cache();
        let cases = [
            // Too big for `small`; `tainted` is not tolerated.
            (json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}), Decision::Node("big".into())),
            // Wasm pods go where the runtime is.
            (json!({"runtimeClassName": "wasmtime", "containers": [{"name": "c"}]}), Decision::Node("small".into())),
            // A toleration and a selector pick the tainted node.
            (json!({"nodeSelector": {"zone": "c"}, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}], "containers": [{"name": "c"}]}), Decision::Node("tainted".into())),
            (json!({"runtimeClassName": "gvisor", "containers": [{"name": "c"}]}), Decision::Unschedulable("0/3 nodes are available: 3 RuntimeClass \"gvisor\" not found.".into())),
            (json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "16"}}}]}),
             Decision::Unschedulable("0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}.".into())),
            (json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a", "b"]}]}]}}},
                    "containers": [{"name": "c"}]}),
             Decision::Unschedulable("0/3 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}.".into())),
        ];
        for (spec, want) in cases {
            assert_eq!(decide(&plugins, &c, &pod(spec.clone()), 0), want, "{spec}");
        }
    }

    #[test]
    fn assumed_pods_count_and_anti_affinity_spreads() {
        let plugins = default_plugins();
        let mut c = cache();
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "zone"}]}}, "containers": [{"name": "c"}]});
        let mut placed = Vec::new();
        for i in 0..2 {
            let mut p = pod(anti.clone());
            p.metadata.name = Some(format!("p{i}"));
            let Decision::Node(n) = decide(&plugins, &c, &p, 0) else { panic!("pod {i} must fit") };
            c.place(pod_key(&p), &n, PlacedPod::of(&p, true));
            placed.push(n);
        }
        placed.sort();
        assert_eq!(placed, ["big", "small"]);
        let mut third = pod(anti);
        third.metadata.name = Some("p2".into());
        assert!(matches!(decide(&plugins, &c, &third, 0), Decision::Unschedulable(m) if m.contains("2 node(s) didn't match pod anti-affinity rules")));
    }
}
