//! Node selection: `nodeSelector`, the RuntimeClass's node selector (a Wasm pod goes only
//! where the Wasm runtime is), required node affinity as a filter and preferred node
//! affinity as a score.

use skiff_client::nodes::{matches_node_selection, term_matches};

use super::{Plugin, PodContext, State};
use crate::cache::NodeInfo;

pub struct NodeAffinity;

const MISMATCH: &str = "node(s) didn't match Pod's node affinity/selector";

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> Result<(), Vec<String>> {
        let class = match &pod.runtime_class {
            Ok(c) => c,
            Err(name) => return Err(vec![format!("RuntimeClass {name:?} not found")]),
        };
        let class_selector = class.as_ref().and_then(|c| c.scheduling.as_ref()).and_then(|s| s.node_selector.as_ref());
        let class_ok = class_selector.is_none_or(|sel| sel.iter().all(|(k, v)| node.labels.get(k) == Some(v)));
        let pod_ok = pod.pod.spec.as_ref().is_none_or(|s| matches_node_selection(s, &node.name, &node.labels));
        if class_ok && pod_ok { Ok(()) } else { Err(vec![MISMATCH.into()]) }
    }

    fn weight(&self) -> i64 {
        2
    }

    fn normalize(&self) -> bool {
        true
    }

    fn score(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> i64 {
        let preferred = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref());
        preferred.into_iter().flatten().filter(|p| term_matches(&p.preference, &node.name, &node.labels)).map(|p| i64::from(p.weight)).sum()
    }
}
