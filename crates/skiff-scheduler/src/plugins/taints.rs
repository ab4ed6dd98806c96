//! Taints and tolerations: a node's `NoSchedule` and `NoExecute` taints keep out pods
//! that do not tolerate them; `PreferNoSchedule` taints only lower the node's score.

pub use skiff_client::nodes::tolerates;
use skiff_client::nodes::first_untolerated;

use super::{Plugin, PodContext, State};
use crate::cache::NodeInfo;

pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> Result<(), Vec<String>> {
        match first_untolerated(node.taints(), &pod.tolerations) {
            Some(t) => Err(vec![format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or_default())]),
            None => Ok(()),
        }
    }

    fn weight(&self) -> i64 {
        3
    }

    fn score(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> i64 {
        let intolerable = node
            .taints()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !pod.tolerations.iter().any(|tol| tolerates(tol, t)))
            .count() as i64;
        (100 - intolerable * 25).max(0)
    }
}
