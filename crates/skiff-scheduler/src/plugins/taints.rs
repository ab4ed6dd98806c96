//! Taints and tolerations: a node's `NoSchedule` and `NoExecute` taints keep out pods
//! that do not tolerate them; `PreferNoSchedule` taints only lower the node's score.

use k8s_openapi::api::core::v1::{Taint, Toleration};

use super::{Plugin, PodContext, State};
use crate::cache::NodeInfo;

pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> Result<(), Vec<String>> {
        let untolerated = node
            .taints()
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .find(|t| !pod.tolerations.iter().any(|tol| tolerates(tol, t)));
        match untolerated {
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

/// Kubernetes' `Toleration.ToleratesTaint`: an empty effect matches every effect; an
/// empty key with `Exists` matches every taint.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = tol.key.as_deref().unwrap_or_default();
    if !effect_ok || (!key.is_empty() && key != taint.key) {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => !key.is_empty() && tol.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
        _ => false,
    }
}
