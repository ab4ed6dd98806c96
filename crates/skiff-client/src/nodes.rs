//! Matching pods to nodes the way the scheduler, the DaemonSet controller and the taint
//! manager all must agree on: node selector terms and taint tolerations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration};

/// The status of the node's `Ready` condition (`True`, `False`, `Unknown`), if it has one.
pub fn ready_status(node: &Node) -> Option<&str> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.as_str())
}

/// The node's share of the cluster's pod range (`spec.podCIDR`), if it has a valid one.
pub fn pod_cidr(node: &Node) -> Option<skiff_core::Cidr> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

/// True when the pod's `nodeSelector` and required node affinity accept the node.
pub fn matches_node_selection(spec: &PodSpec, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
    if let Some(selector) = spec.node_selector.as_ref()
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    required.is_none_or(|req| req.node_selector_terms.iter().any(|t| term_matches(t, node_name, labels)))
}

/// The first `NoSchedule` or `NoExecute` taint none of the tolerations tolerate.
pub fn first_untolerated<'a, 'b>(taints: &'a [Taint], tolerations: impl IntoIterator<Item = &'b Toleration> + Clone) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerations.clone().into_iter().any(|tol| tolerates(tol, t)))
}

/// A node selector term matches when all its label and field expressions hold; a term
/// with neither matches nothing, as in Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node_name)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_and_tolerations() {
        let term: NodeSelectorTerm = serde_json::from_value(serde_json::json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["3"]}],
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]})).unwrap();
        let labels = BTreeMap::from([("cores".to_string(), "4".to_string())]);
        assert!(term_matches(&term, "n1", &labels));
        assert!(!term_matches(&term, "n2", &labels));
        assert!(!term_matches(&NodeSelectorTerm::default(), "n1", &labels));
        let taint = Taint { key: "k".into(), value: Some("v".into()), effect: "NoSchedule".into(), time_added: None };
        let eq = Toleration { key: Some("k".into()), value: Some("v".into()), operator: None, effect: None, toleration_seconds: None };
        let all = Toleration { operator: Some("Exists".into()), ..Default::default() };
        let other = Toleration { key: Some("k".into()), value: Some("w".into()), ..Default::default() };
        assert!(tolerates(&eq, &taint) && tolerates(&all, &taint) && !tolerates(&other, &taint));
    }
}
