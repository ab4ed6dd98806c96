//! Filter and score plugins, in the style of the Kubernetes scheduler framework. Each
//! plugin answers for one concern; the scheduling loop knows none of their details. A
//! filter rejects a node with reasons (they roll up into the message users see on an
//! unschedulable pod); a score ranks the nodes that passed every filter.

use std::any::Any;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use k8s_openapi::api::node::v1::RuntimeClass;

use crate::cache::{Cache, HostPort, NodeInfo, PodKey, host_ports, pod_key, tolerations};
use crate::resources::{Resources, pod_requests, pod_scoring_requests};

mod affinity;
mod inter_pod;
mod node_state;
mod ports;
mod resources_fit;
mod spread;
mod taints;

/// A pod being scheduled, with what plugins read of it worked out once.
pub struct PodContext<'a> {
    pub pod: &'a Pod,
    pub key: PodKey,
    pub namespace: String,
    pub requests: Resources,
    pub scoring: (i64, i64),
    pub host_ports: Vec<HostPort>,
    /// The pod's RuntimeClass: `Err(name)` when it names one that does not exist.
    pub runtime_class: Result<Option<Arc<RuntimeClass>>, String>,
    pub tolerations: Vec<Toleration>,
}

impl<'a> PodContext<'a> {
    pub fn new(pod: &'a Pod, cache: &Cache) -> Self {
        let class_name = pod.spec.as_ref().and_then(|s| s.runtime_class_name.clone());
        let runtime_class = match class_name {
            None => Ok(None),
            Some(n) => cache.runtime_classes.get(&n).cloned().map(Some).ok_or(n),
        };
        let tolerations = tolerations(pod, runtime_class.as_ref().ok().and_then(|c| c.as_deref())).into_iter().cloned().collect();
        PodContext {
            pod,
            key: pod_key(pod),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            requests: pod_requests(pod),
            scoring: pod_scoring_requests(pod),
            host_ports: host_ports(pod),
            runtime_class,
            tolerations,
        }
    }

    pub fn labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.pod.metadata.labels.as_ref()
    }
}

/// Per-pod state a plugin works out in `prepare` and reads back for every node.
pub type State = Option<Box<dyn Any + Send + Sync>>;

/// One scheduling concern.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// Work done once per pod before any node is looked at.
    fn prepare(&self, _pod: &PodContext, _cache: &Cache) -> State {
        None
    }

    /// `Err(reasons)` when the pod cannot go on `node`.
    fn filter(&self, _pod: &PodContext, _node: &NodeInfo, _state: &State) -> Result<(), Vec<String>> {
        Ok(())
    }

    /// How much this plugin's score counts; 0 for filter-only plugins.
    fn weight(&self) -> i64 {
        0
    }

    /// A raw score, higher is better. Scores of a plugin with `normalize` true are scaled
    /// so the best node gets 100; otherwise the plugin scores in 0..=100 itself.
    fn score(&self, _pod: &PodContext, _node: &NodeInfo, _state: &State) -> i64 {
        0
    }

    fn normalize(&self) -> bool {
        false
    }
}

/// The default plugin set.
pub fn default_plugins() -> Vec<Box<dyn Plugin>> {
    vec![
        Box::new(node_state::NodeUnschedulable),
        Box::new(node_state::NodeReady),
        Box::new(affinity::NodeAffinity),
        Box::new(taints::TaintToleration),
        Box::new(resources_fit::NodeResourcesFit),
        Box::new(resources_fit::BalancedAllocation),
        Box::new(ports::NodePorts),
        Box::new(inter_pod::InterPodAffinity),
        Box::new(spread::PodTopologySpread),
        Box::new(node_state::ImageLocality),
    ]
}

/// True when `tolerations` include one for a taint with this key and effect (value is
/// ignored, as for the node condition taints).
pub fn tolerates(tolerations: &[Toleration], key: &str, effect: &str) -> bool {
    let taint = k8s_openapi::api::core::v1::Taint { key: key.into(), effect: effect.into(), value: None, time_added: None };
    tolerations.iter().any(|t| taints::tolerates(t, &taint))
}
