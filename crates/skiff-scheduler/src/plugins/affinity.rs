//! Node selection: `nodeSelector`, the RuntimeClass's node selector (a Wasm pod goes only
//! where the Wasm runtime is), required node affinity as a filter and preferred node
//! affinity as a score.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

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
        let spec = pod.pod.spec.as_ref();
        let selectors = spec
            .and_then(|s| s.node_selector.as_ref())
            .into_iter()
            .chain(class.as_ref().and_then(|c| c.scheduling.as_ref()).and_then(|s| s.node_selector.as_ref()));
        for selector in selectors {
            if !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
                return Err(vec![MISMATCH.into()]);
            }
        }
        let required = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
        if let Some(req) = required
            && !req.node_selector_terms.iter().any(|t| term_matches(t, node))
        {
            return Err(vec![MISMATCH.into()]);
        }
        Ok(())
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
        preferred.into_iter().flatten().filter(|p| term_matches(&p.preference, node)).map(|p| i64::from(p.weight)).sum()
    }
}

/// A term matches when all its label expressions and field expressions hold; a term
/// with neither matches nothing, as in Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&node.name)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x),
        "Lt" => matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x),
        _ => false,
    }
}
