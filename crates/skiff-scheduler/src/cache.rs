//! The scheduler's picture of the cluster: every node with the pods placed on it,
//! including pods the scheduler has *assumed* onto a node while their binding is still
//! in flight, so the next pod is scheduled against the right free capacity at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint, Toleration};
use k8s_openapi::api::node::v1::RuntimeClass;

use crate::resources::{Resources, pod_requests, pod_scoring_requests};

/// `namespace/name`.
pub type PodKey = String;

pub fn pod_key(pod: &Pod) -> PodKey {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default())
}

/// What the cache keeps of a pod placed on a node.
#[derive(Debug, Clone)]
pub struct PlacedPod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub scoring: (i64, i64),
    pub host_ports: Vec<HostPort>,
    /// Required anti-affinity terms, checked against incoming pods (symmetry).
    pub anti_affinity: Vec<PodAffinityTerm>,
    /// Still being bound by this scheduler.
    pub assumed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Two host ports clash on the same protocol and port when either binds all addresses.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.protocol == o.protocol && self.port == o.port && (self.ip == o.ip || any(&self.ip) || any(&o.ip))
    }
}

pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else { return vec![] };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")))
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&h| h > 0)?;
            Some(HostPort { protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip: p.host_ip.clone().unwrap_or_default(), port })
        })
        .collect()
}

impl PlacedPod {
    pub fn of(pod: &Pod, assumed: bool) -> Self {
        let anti_affinity = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.clone())
            .unwrap_or_default();
        PlacedPod {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests: pod_requests(pod),
            scoring: pod_scoring_requests(pod),
            host_ports: host_ports(pod),
            anti_affinity,
            assumed,
        }
    }
}

/// One node and what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    pub allocatable_pods: i64,
    pub requested: Resources,
    /// Sum of CPU and memory with non-zero defaults, for scoring.
    pub scoring_requested: (i64, i64),
    pub pods: HashMap<PodKey, PlacedPod>,
    /// How many of `pods` carry required anti-affinity terms: most nodes have none, and
    /// the symmetry check skips them without looking at their pods.
    pub anti_affinity_pods: usize,
    pub images: HashSet<String>,
    /// The `Ready` condition is `True`, read once per Node update rather than per pod
    /// scheduled.
    ready: bool,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> Self {
        let status = node.status.as_ref();
        let alloc = status.and_then(|s| s.allocatable.as_ref()).filter(|a| !a.is_empty()).or(status.and_then(|s| s.capacity.as_ref()));
        let allocatable_pods = alloc
            .and_then(|a| a.get("pods"))
            .and_then(|q| skiff_core::quantity::parse_units(&q.0).ok())
            .unwrap_or(110);
        let images = status
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|i| i.names.iter().flatten().cloned())
            .collect();
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable: Resources::from_list(alloc),
            allocatable_pods,
            requested: Resources::default(),
            scoring_requested: (0, 0),
            pods: HashMap::new(),
            anti_affinity_pods: 0,
            images,
            ready: skiff_client::nodes::ready_status(&node) == Some("True"),
            node,
        }
    }

    pub fn taints(&self) -> &[Taint] {
        self.node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default()
    }

    pub fn unschedulable(&self) -> bool {
        self.node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
    }

    /// The `Ready` condition is `True`.
    pub fn ready(&self) -> bool {
        self.ready
    }

    fn place(&mut self, key: PodKey, placed: PlacedPod) {
        self.remove(&key);
        self.requested.add(&placed.requests);
        self.scoring_requested.0 += placed.scoring.0;
        self.scoring_requested.1 += placed.scoring.1;
        self.anti_affinity_pods += usize::from(!placed.anti_affinity.is_empty());
        self.pods.insert(key, placed);
    }

    fn remove(&mut self, key: &str) -> Option<PlacedPod> {
        let old = self.pods.remove(key)?;
        self.requested.sub(&old.requests);
        self.scoring_requested.0 -= old.scoring.0;
        self.scoring_requested.1 -= old.scoring.1;
        self.anti_affinity_pods -= usize::from(!old.anti_affinity.is_empty());
        Some(old)
    }
}

/// Nodes, the pods on them, and RuntimeClasses.
#[derive(Default)]
pub struct Cache {
    pub nodes: HashMap<String, NodeInfo>,
    /// Which node each placed pod is on.
    placements: HashMap<PodKey, String>,
    /// Pods placed on nodes the cache does not know (yet), so that they count once the
    /// node appears.
    homeless: HashMap<PodKey, (String, PlacedPod)>,
    pub runtime_classes: HashMap<String, Arc<RuntimeClass>>,
}

impl Cache {
    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut info = NodeInfo::new(node);
        if let Some(old) = self.nodes.remove(&name) {
            for (k, p) in old.pods {
                info.place(k, p);
            }
        }
        let arrived: Vec<PodKey> = self.homeless.iter().filter(|(_, (n, _))| *n == name).map(|(k, _)| k.clone()).collect();
        for k in arrived {
            if let Some((_, p)) = self.homeless.remove(&k) {
                info.place(k, p);
            }
        }
        self.nodes.insert(name, info);
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.remove(name) {
            for (k, p) in info.pods {
                self.homeless.insert(k, (name.to_string(), p));
            }
        }
    }

    /// Places (or moves) a pod onto `node`.
    pub fn place(&mut self, key: PodKey, node: &str, placed: PlacedPod) {
        self.unplace(&key);
        self.placements.insert(key.clone(), node.to_string());
        match self.nodes.get_mut(node) {
            Some(info) => info.place(key, placed),
            None => {
                self.homeless.insert(key, (node.to_string(), placed));
            }
        }
    }

    /// Takes a pod off its node (deleted, finished, or its binding failed).
    pub fn unplace(&mut self, key: &str) -> Option<PlacedPod> {
        let node = self.placements.remove(key)?;
        self.homeless.remove(key);
        self.nodes.get_mut(&node).and_then(|n| n.remove(key))
    }

    /// The node a pod is placed on, and whether that is still only assumed.
    pub fn placement(&self, key: &str) -> Option<(&str, bool)> {
        let node = self.placements.get(key)?;
        let assumed = self.nodes.get(node).and_then(|n| n.pods.get(key)).map(|p| p.assumed).unwrap_or(false);
        Some((node.as_str(), assumed))
    }

    pub fn placed_keys(&self) -> impl Iterator<Item = &PodKey> {
        self.placements.keys()
    }
}

/// Tolerations of a pod together with those of its RuntimeClass.
pub fn tolerations<'a>(pod: &'a Pod, class: Option<&'a RuntimeClass>) -> Vec<&'a Toleration> {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .into_iter()
        .flatten()
        .chain(class.and_then(|c| c.scheduling.as_ref()).and_then(|s| s.tolerations.as_ref()).into_iter().flatten())
        .collect()
}
