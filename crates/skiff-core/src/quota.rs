//! What an object costs against a ResourceQuota, as Kubernetes' quota evaluators count
//! it: one of its kind (`count/PLURAL.GROUP`, and the older names such as `pods` and
//! `secrets`), and for a pod that is not finished its CPU and memory requests and limits
//! (`requests.cpu`, or `cpu`, summed over its containers, or an init container's if
//! larger). Amounts are integers: millicores for CPU, bytes or counts otherwise.
//! Shared by the API server's quota admission and the controller that recounts use.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity;

/// Resource name → amount.
pub type Usage = BTreeMap<String, i64>;

/// The compute resources a pod is charged for, and the container field each reads.
const COMPUTE: &[(&str, &str, &str)] = &[
    ("requests.cpu", "requests", "cpu"),
    ("cpu", "requests", "cpu"),
    ("limits.cpu", "limits", "cpu"),
    ("requests.memory", "requests", "memory"),
    ("memory", "requests", "memory"),
    ("limits.memory", "limits", "memory"),
    ("requests.ephemeral-storage", "requests", "ephemeral-storage"),
    ("limits.ephemeral-storage", "limits", "ephemeral-storage"),
];

/// The older, unqualified count names of core kinds.
const LEGACY_COUNTS: &[&str] = &["pods", "services", "configmaps", "secrets", "persistentvolumeclaims", "replicationcontrollers", "resourcequotas"];

/// Whether `resource` is counted in millicores.
fn is_cpu(resource: &str) -> bool {
    resource == "cpu" || resource.ends_with(".cpu")
}

/// A quantity in the units [`Usage`] keeps for `resource`.
pub fn parse(resource: &str, value: &str) -> Result<i64, quantity::QuantityError> {
    if is_cpu(resource) { quantity::parse_milli(value) } else { quantity::parse_units(value) }
}

/// An amount of `resource` as a quantity string (`500m`, `2`, `1Gi`, `3`).
pub fn format(resource: &str, amount: i64) -> String {
    if is_cpu(resource) {
        return if amount % 1000 == 0 { (amount / 1000).to_string() } else { format!("{amount}m") };
    }
    for (suffix, size) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if amount != 0 && amount % size == 0 && amount >= size {
            return format!("{}{suffix}", amount / size);
        }
    }
    amount.to_string()
}

/// The `count/` name of a kind: `count/pods`, `count/deployments.apps`.
pub fn count_name(group: &str, plural: &str) -> String {
    if group.is_empty() { format!("count/{plural}") } else { format!("count/{plural}.{group}") }
}

/// The kind (group, plural) whose objects a quota's resource name counts.
pub fn counted_kind(resource: &str) -> Option<(String, String)> {
    if let Some(rest) = resource.strip_prefix("count/") {
        let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
        return Some((group.to_string(), plural.to_string()));
    }
    if LEGACY_COUNTS.contains(&resource) {
        return Some((String::new(), resource.to_string()));
    }
    if resource.starts_with("services.") {
        return Some((String::new(), "services".into()));
    }
    COMPUTE.iter().any(|(r, _, _)| *r == resource).then(|| (String::new(), "pods".into()))
}

/// Whether a pod no longer holds its resources (Succeeded or Failed).
pub fn is_finished(pod: &Value) -> bool {
    matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

/// What `object` (of `group`/`plural`) uses. A finished pod uses nothing.
pub fn usage(group: &str, plural: &str, object: &Value) -> Usage {
    let mut used = Usage::new();
    if plural == "pods" && group.is_empty() && is_finished(object) {
        return used;
    }
    used.insert(count_name(group, plural), 1);
    if group.is_empty() && LEGACY_COUNTS.contains(&plural) {
        used.insert(plural.to_string(), 1);
    }
    if group.is_empty() && plural == "services" {
        match object.pointer("/spec/type").and_then(Value::as_str) {
            Some("NodePort") => {
                used.insert("services.nodeports".into(), object.pointer("/spec/ports").and_then(Value::as_array).map_or(0, |p| p.len() as i64));
            }
            Some("LoadBalancer") => {
                used.insert("services.loadbalancers".into(), 1);
            }
            _ => {}
        }
    }
    if group.is_empty() && plural == "pods" {
        for (resource, kind, field) in COMPUTE {
            let amount = |c: &Value| c.pointer(&format!("/resources/{kind}/{field}")).and_then(Value::as_str).and_then(|v| parse(resource, v).ok()).unwrap_or(0);
            let app: i64 = containers(object, "containers").map(amount).sum();
            let init = containers(object, "initContainers").map(amount).max().unwrap_or(0);
            let total = app.max(init);
            if total > 0 {
                used.insert(resource.to_string(), total);
            }
        }
    }
    used
}

fn containers<'a>(pod: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{field}")).and_then(Value::as_array).into_iter().flatten()
}

/// The containers of a pod that leave out a compute value a quota limits: for each
/// resource (in name order, as Kubernetes lists them), the names of those containers.
pub fn unspecified(pod: &Value, limited: &[&str]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (resource, kind, field) in COMPUTE {
        if !limited.contains(resource) {
            continue;
        }
        let missing: Vec<String> = containers(pod, "initContainers").chain(containers(pod, "containers"))
            .filter(|c| c.pointer(&format!("/resources/{kind}/{field}")).is_none())
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        if !missing.is_empty() {
            out.push((resource.to_string(), missing));
        }
    }
    out.sort();
    out
}

/// The scopes a quota may name, and whether each takes values (PriorityClass's names;
/// the rest match with `Exists` only).
pub const SCOPES: [(&str, bool); 6] = [
    ("Terminating", false), ("NotTerminating", false), ("BestEffort", false), ("NotBestEffort", false),
    ("PriorityClass", true), ("CrossNamespacePodAffinity", false),
];

/// Whether a quota's `spec.scopes` and `spec.scopeSelector` take in the object: only pods
/// are scoped, and every scope and expression must match; a scope it does not know takes
/// in nothing.
pub fn scopes_match(quota: &Value, group: &str, plural: &str, object: &Value) -> bool {
    let scopes: Vec<&str> = quota.pointer("/spec/scopes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let expressions: Vec<&Value> = quota.pointer("/spec/scopeSelector/matchExpressions").and_then(Value::as_array).into_iter().flatten().collect();
    if scopes.is_empty() && expressions.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    let strings = |e: &Value| e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect::<Vec<_>>();
    scopes.iter().all(|s| scope_matches(object, s, "Exists", &[]))
        && expressions.iter().all(|e| {
            let field = |f: &str| e.get(f).and_then(Value::as_str).unwrap_or_default();
            scope_matches(object, field("scopeName"), field("operator"), &strings(e))
        })
}

/// Whether pod `pod` is in `scope` as `operator` (In, NotIn, Exists, DoesNotExist) and
/// `values` say, as kube-apiserver's quota evaluator decides.
fn scope_matches(pod: &Value, scope: &str, operator: &str, values: &[String]) -> bool {
    let in_scope = match scope {
        "PriorityClass" => {
            let class = pod.pointer("/spec/priorityClassName").and_then(Value::as_str).filter(|c| !c.is_empty());
            return match operator {
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                "In" => class.is_some_and(|c| values.iter().any(|v| v == c)),
                "NotIn" => class.is_none_or(|c| !values.iter().any(|v| v == c)),
                _ => false,
            };
        }
        "BestEffort" => best_effort(pod),
        "NotBestEffort" => !best_effort(pod),
        "Terminating" => pod.pointer("/spec/activeDeadlineSeconds").is_some(),
        "NotTerminating" => pod.pointer("/spec/activeDeadlineSeconds").is_none(),
        "CrossNamespacePodAffinity" => cross_namespace_affinity(pod),
        _ => return false,
    };
    match operator {
        "Exists" => in_scope,
        "DoesNotExist" => !in_scope,
        _ => false,
    }
}

fn best_effort(pod: &Value) -> bool {
    !containers(pod, "containers").chain(containers(pod, "initContainers"))
        .any(|c| c.pointer("/resources/requests").and_then(Value::as_object).is_some_and(|m| !m.is_empty())
            || c.pointer("/resources/limits").and_then(Value::as_object).is_some_and(|m| !m.is_empty()))
}

/// Whether a pod (anti-)affinity term reaches other namespaces (names them, or selects them).
fn cross_namespace_affinity(pod: &Value) -> bool {
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(affinity) = pod.pointer(&format!("/spec/affinity/{kind}")) else { return false };
        let required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array).into_iter().flatten();
        let preferred = affinity.get("preferredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array).into_iter().flatten().filter_map(|w| w.get("podAffinityTerm"));
        required.chain(preferred).any(|term| {
            term.get("namespaces").and_then(Value::as_array).is_some_and(|n| !n.is_empty()) || term.get("namespaceSelector").is_some_and(|s| !s.is_null())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scope_selectors_match_as_kubernetes_does() {
        let quota = |exprs: Value| json!({"spec": {"scopeSelector": {"matchExpressions": exprs}}});
        let high = json!({"spec": {"priorityClassName": "high", "containers": [{"name": "a"}]}});
        let plain = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}}}]}});
        let in_high = quota(json!([{"scopeName": "PriorityClass", "operator": "In", "values": ["high", "top"]}]));
        assert!(scopes_match(&in_high, "", "pods", &high));
        assert!(!scopes_match(&in_high, "", "pods", &plain));
        assert!(!scopes_match(&in_high, "", "configmaps", &json!({})), "only pods are scoped");
        let not_in = quota(json!([{"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]}]));
        assert!(!scopes_match(&not_in, "", "pods", &high));
        assert!(scopes_match(&not_in, "", "pods", &plain), "a pod with no class is not in any");
        assert!(scopes_match(&quota(json!([{"scopeName": "PriorityClass", "operator": "Exists"}])), "", "pods", &high));
        assert!(scopes_match(&quota(json!([{"scopeName": "PriorityClass", "operator": "DoesNotExist"}])), "", "pods", &plain));
        // Both lists must match: scopes and expressions.
        let both = json!({"spec": {"scopes": ["BestEffort"], "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        assert!(scopes_match(&both, "", "pods", &high));
        assert!(!scopes_match(&both, "", "pods", &json!({"spec": {"priorityClassName": "high", "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}})));
        let best_effort = quota(json!([{"scopeName": "BestEffort", "operator": "Exists"}]));
        assert!(scopes_match(&best_effort, "", "pods", &high) && !scopes_match(&best_effort, "", "pods", &plain));
        let cross = quota(json!([{"scopeName": "CrossNamespacePodAffinity", "operator": "Exists"}]));
        let reaching = json!({"spec": {"containers": [], "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "h", "namespaceSelector": {}}]}}}});
        assert!(scopes_match(&cross, "", "pods", &reaching) && !scopes_match(&cross, "", "pods", &high));
    }

    #[test]
    fn a_pod_is_charged_its_count_and_its_containers_resources() {
        let pod = json!({"spec": {
            "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "2"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            ]}});
        let used = usage("", "pods", &pod);
        assert_eq!(used["pods"], 1);
        assert_eq!(used["count/pods"], 1);
        assert_eq!(used["requests.cpu"], 2000, "the init container asks more than the two together");
        assert_eq!(used["requests.memory"], 128 << 20);
        assert_eq!(used["limits.memory"], 128 << 20);
        assert!(!used.contains_key("limits.cpu"));
        assert!(usage("", "pods", &json!({"status": {"phase": "Succeeded"}})).is_empty());
        assert_eq!(usage("apps", "deployments", &json!({})), Usage::from([("count/deployments.apps".to_string(), 1)]));
        assert_eq!(unspecified(&pod, &["limits.cpu", "requests.cpu"]), vec![("limits.cpu".to_string(), vec!["init".to_string(), "a".to_string(), "b".to_string()])]);
    }

    #[test]
    fn amounts_read_back_as_quantities() {
        assert_eq!(format("requests.cpu", 1500), "1500m");
        assert_eq!(format("cpu", 2000), "2");
        assert_eq!(format("limits.memory", 1 << 30), "1Gi");
        assert_eq!(format("requests.memory", 100), "100");
        assert_eq!(format("pods", 3), "3");
        assert_eq!(parse("requests.cpu", "1").unwrap(), 1000);
        assert_eq!(counted_kind("count/deployments.apps"), Some(("apps".into(), "deployments".into())));
        assert_eq!(counted_kind("limits.memory"), Some(("".into(), "pods".into())));
        assert_eq!(counted_kind("secrets"), Some(("".into(), "secrets".into())));
        assert_eq!(counted_kind("services.nodeports"), Some(("".into(), "services".into())));
    }

    #[test]
    fn scopes_take_in_pods_by_their_kind() {
        let quota = json!({"spec": {"scopes": ["BestEffort"]}});
        assert!(scopes_match(&quota, "", "pods", &json!({"spec": {"containers": [{"name": "a"}]}})));
        assert!(!scopes_match(&quota, "", "pods", &json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}})));
        assert!(!scopes_match(&quota, "", "secrets", &json!({})));
        assert!(scopes_match(&json!({"spec": {}}), "", "secrets", &json!({})));
    }
}
