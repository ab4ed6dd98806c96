//! Validation of objects on create and update: names, metadata and the fields of each kind
//! that later parts rely on. Failures become one 422 with a cause per field.

use serde_json::Value;
use skiff_core::{LabelSelector, names};

use crate::error::FieldError;

/// Every problem with `object` of `kind`; empty when valid.
pub fn validate(kind: &str, object: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    metadata(kind, object, &mut errs);
    let spec = object.get("spec");
    match kind {
        "Pod" => match spec {
            Some(s) => pod_spec(s, "spec", &mut errs),
            None => errs.push(FieldError::required("spec")),
        },
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => workload(object, &mut errs),
        "Job" => job(object.get("spec"), "spec", &mut errs),
        "CronJob" => {
            cron_job(object, &mut errs);
            job(object.pointer("/spec/jobTemplate/spec"), "spec.jobTemplate.spec", &mut errs);
        }
        "Service" => service(spec, &mut errs),
        "Namespace" => errs.extend(crate::pod_security::validate_labels(object.pointer("/metadata/labels").and_then(Value::as_object))),
        "HorizontalPodAutoscaler" => autoscaler(spec, &mut errs),
        "ResourceQuota" => quota_scopes(spec, &mut errs),
        "ConfigMap" | "Secret" => {
            for field in ["data", "binaryData", "stringData"] {
                for key in object.get(field).and_then(Value::as_object).into_iter().flat_map(|m| m.keys()) {
                    let ok = !key.is_empty() && key.len() <= 253 && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if !ok {
                        errs.push(FieldError::invalid(&format!("{field}[{key}]"), key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
                    }
                }
            }
        }
        _ => {}
    }
    errs
}

/// What an update of `old` to `new` of `kind` may not change, as Kubernetes forbids it.
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if kind == "Node" {
        // A node's pod range is set once: its pods' addresses and other nodes' routes hang on it.
        let set = |v: Option<&Value>| v.filter(|v| !v.is_null() && v.as_str() != Some("") && v.as_array().is_none_or(|a| !a.is_empty())).cloned();
        for field in ["podCIDR", "podCIDRs"] {
            let pointer = format!("/spec/{field}");
            if let Some(before) = set(old.pointer(&pointer))
                && set(new.pointer(&pointer)) != Some(before)
            {
                errs.push(FieldError::forbidden(&format!("spec.{field}"), "node updates may not change podCIDR except from \"\" to valid"));
            }
        }
    }
    errs
}

fn metadata(kind: &str, object: &Value, errs: &mut Vec<FieldError>) {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else {
        let check = match kind {
            "Namespace" => names::validate_dns1123_label(name),
            "Service" => names::validate_dns1035_label(name),
            // Role-like names may contain ':' (system:controller:...), as in Kubernetes.
            "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
                if name.contains('/') || name.contains('%') || name == "." || name == ".." {
                    Err("may not contain '/' or '%'".to_string())
                } else {
                    Ok(())
                }
            }
            _ => names::validate_dns1123_subdomain(name),
        };
        if let Err(e) = check {
            errs.push(FieldError::invalid("metadata.name", name, e));
        }
    }
    labels_and_annotations(object.get("metadata").unwrap_or(&Value::Null), "metadata", errs);
}

fn labels_and_annotations(meta: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for (k, v) in meta.get("labels").and_then(Value::as_object).into_iter().flatten() {
        if let Err(e) = names::validate_qualified_name(k) {
            errs.push(FieldError::invalid(&format!("{path}.labels"), k, e));
        }
        let v = v.as_str().unwrap_or_default();
        if let Err(e) = names::validate_label_value(v) {
            errs.push(FieldError::invalid(&format!("{path}.labels"), v, e));
        }
    }
    for k in meta.get("annotations").and_then(Value::as_object).into_iter().flat_map(|m| m.keys()) {
        if let Err(e) = names::validate_qualified_name(&k.to_ascii_lowercase()) {
            errs.push(FieldError::invalid(&format!("{path}.annotations"), k, e));
        }
    }
}

fn pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        errs.push(FieldError::required(&format!("{path}.containers")));
    }
    let mut seen = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let cpath = format!("{path}.{list}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                errs.push(FieldError::required(&format!("{cpath}.name")));
            } else if let Err(e) = names::validate_dns1123_label(name) {
                errs.push(FieldError::invalid(&format!("{cpath}.name"), name, e));
            } else if seen.contains(&name) {
                errs.push(FieldError { field: format!("{cpath}.name"), reason: "FieldValueDuplicate", message: format!("Duplicate value: {name:?}") });
            } else {
                seen.push(name);
            }
            if c.get("image").and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
                errs.push(FieldError::required(&format!("{cpath}.image")));
            }
            for (j, p) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    errs.push(FieldError::invalid_number(&format!("{cpath}.ports[{j}].containerPort"), port, "must be between 1 and 65535, inclusive"));
                }
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        errs.push(FieldError::unsupported(&format!("{path}.restartPolicy"), policy, &["Always", "OnFailure", "Never"]));
    }
}

fn workload(object: &Value, errs: &mut Vec<FieldError>) {
    let Some(spec) = object.get("spec") else {
        errs.push(FieldError::required("spec"));
        return;
    };
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        errs.push(FieldError::invalid_number("spec.replicas", r, "must be greater than or equal to 0"));
    }
    template_matches_selector(spec, "spec", errs);
}

fn template_matches_selector(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(selector) = spec.get("selector") else {
        errs.push(FieldError::required(&format!("{path}.selector")));
        return;
    };
    let parsed = match LabelSelector::from_json(selector) {
        Ok(s) => s,
        Err(e) => {
            errs.push(FieldError::invalid(&format!("{path}.selector"), &selector.to_string(), e.reason));
            return;
        }
    };
    if parsed.is_empty() {
        errs.push(FieldError::invalid(&format!("{path}.selector"), "{}", "empty selector is invalid for deployment"));
    }
    let Some(template) = spec.get("template") else {
        errs.push(FieldError::required(&format!("{path}.template")));
        return;
    };
    if !parsed.matches(template.pointer("/metadata/labels").and_then(Value::as_object)) {
        errs.push(FieldError::invalid(&format!("{path}.template.metadata.labels"), &template.pointer("/metadata/labels").cloned().unwrap_or_default().to_string(), "`selector` does not match template `labels`"));
    }
    labels_and_annotations(template.get("metadata").unwrap_or(&Value::Null), &format!("{path}.template.metadata"), errs);
    match template.get("spec") {
        Some(s) => pod_spec(s, &format!("{path}.template.spec"), errs),
        None => errs.push(FieldError::required(&format!("{path}.template.spec"))),
    }
}

fn job(spec: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(path));
        return;
    };
    match spec.pointer("/template/spec") {
        Some(s) => {
            pod_spec(s, &format!("{path}.template.spec"), errs);
            let policy = s.get("restartPolicy").and_then(Value::as_str).unwrap_or_default();
            if !["OnFailure", "Never"].contains(&policy) {
                errs.push(FieldError::unsupported(&format!("{path}.template.spec.restartPolicy"), policy, &["OnFailure", "Never"]));
            }
        }
        None => errs.push(FieldError::required(&format!("{path}.template.spec"))),
    }
    for field in ["parallelism", "completions", "backoffLimit"] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64)
            && n < 0
        {
            errs.push(FieldError::invalid_number(&format!("{path}.{field}"), n, "must be greater than or equal to 0"));
        }
    }
}

/// Kubernetes' HPA rules; `minReplicas: 0` (scale to zero) needs a metric that can see
/// demand while no pod runs: Object or External, or Pods (the node proxies count a
/// function's requests even at zero).
fn autoscaler(spec: Option<&Value>, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return errs.push(FieldError::required("spec")) };
    for field in ["kind", "name"] {
        if spec.pointer(&format!("/scaleTargetRef/{field}")).and_then(Value::as_str).is_none_or(str::is_empty) {
            errs.push(FieldError::required(&format!("spec.scaleTargetRef.{field}")));
        }
    }
    let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    if max < 1 {
        errs.push(FieldError::invalid_number("spec.maxReplicas", max, "must be greater than or equal to 1"));
    }
    let sees_demand_at_zero = spec.get("metrics").and_then(Value::as_array).into_iter().flatten()
        .any(|m| matches!(m.get("type").and_then(Value::as_str), Some("Object" | "External" | "Pods")));
    if min < 0 || (min == 0 && !sees_demand_at_zero) {
        errs.push(FieldError::invalid_number("spec.minReplicas", min, "must be greater than or equal to 1 (0 needs an Object, External or Pods metric to scale from zero on)"));
    } else if min > max && max >= 1 {
        errs.push(FieldError::invalid_number("spec.minReplicas", min, "must be less than or equal to maxReplicas"));
    }
}

/// A quota's `scopes` and `scopeSelector`, by Kubernetes' rules: known scopes, no
/// Terminating with NotTerminating (nor BestEffort with NotBestEffort), and expressions
/// whose operator and values suit their scope.
fn quota_scopes(spec: Option<&Value>, errs: &mut Vec<FieldError>) {
    use skiff_core::quota::SCOPES;
    let names: Vec<&str> = SCOPES.iter().map(|(name, _)| *name).collect();
    let mut named = Vec::new();
    for (i, scope) in spec.and_then(|s| s.get("scopes")).and_then(Value::as_array).into_iter().flatten().enumerate() {
        let scope = scope.as_str().unwrap_or_default();
        if names.contains(&scope) {
            named.push(scope);
        } else {
            errs.push(FieldError::unsupported(&format!("spec.scopes[{i}]"), scope, &names));
        }
    }
    let expressions = spec.and_then(|s| s.pointer("/scopeSelector/matchExpressions")).and_then(Value::as_array).into_iter().flatten();
    for (i, e) in expressions.enumerate() {
        let path = format!("spec.scopeSelector.matchExpressions[{i}]");
        let (scope, operator) = (e.get("scopeName").and_then(Value::as_str).unwrap_or_default(), e.get("operator").and_then(Value::as_str).unwrap_or_default());
        let values = e.get("values").and_then(Value::as_array).map_or(0, Vec::len);
        let Some((_, takes_values)) = SCOPES.iter().find(|(name, _)| *name == scope) else {
            errs.push(FieldError::unsupported(&format!("{path}.scopeName"), scope, &names));
            continue;
        };
        match operator {
            "In" | "NotIn" if values == 0 => errs.push(FieldError {
                field: format!("{path}.values"),
                reason: "FieldValueRequired",
                message: "Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector".into(),
            }),
            "Exists" | "DoesNotExist" if values > 0 => {
                errs.push(FieldError::invalid(&format!("{path}.values"), &format!("{values} values"), "must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector"));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => errs.push(FieldError::invalid(&format!("{path}.operator"), operator, "not a valid selector operator")),
        }
        if !takes_values && operator != "Exists" && !operator.is_empty() {
            errs.push(FieldError::invalid(&format!("{path}.operator"), operator,
                "must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity"));
        }
        if operator == "Exists" {
            named.push(scope);
        }
    }
    for (a, b) in [("Terminating", "NotTerminating"), ("BestEffort", "NotBestEffort")] {
        if named.contains(&a) && named.contains(&b) {
            errs.push(FieldError::invalid("spec.scopeSelector", &format!("{a}, {b}"), "conflicting scopes"));
        }
    }
}

fn service(spec: Option<&Value>, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required("spec"));
        return;
    };
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
    const TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !TYPES.contains(&kind) {
        errs.push(FieldError::unsupported("spec.type", kind, &TYPES));
        return;
    }
    if kind == "ExternalName" {
        if spec.get("externalName").and_then(Value::as_str).is_none_or(str::is_empty) {
            errs.push(FieldError::required("spec.externalName"));
        }
        return;
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get("ports").and_then(Value::as_array);
    if ports.is_none_or(|p| p.is_empty()) && !headless {
        errs.push(FieldError::required("spec.ports"));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid_number(&format!("spec.ports[{i}].port"), port, "must be between 1 and 65535, inclusive"));
        }
        if many && p.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            errs.push(FieldError::required(&format!("spec.ports[{i}].name")));
        }
        if let Some(proto) = p.get("protocol").and_then(Value::as_str)
            && !["TCP", "UDP", "SCTP"].contains(&proto)
        {
            errs.push(FieldError::unsupported(&format!("spec.ports[{i}].protocol"), proto, &["TCP", "UDP", "SCTP"]));
        }
    }
}


/// A CronJob's schedule parses and its time zone exists, as kube-apiserver checks them at
/// create (the controller would otherwise find out only when it runs).
fn cron_job(object: &Value, errs: &mut Vec<FieldError>) {
    match object.pointer("/spec/schedule").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        None => errs.push(FieldError::required("spec.schedule")),
        Some(schedule) if schedule.contains("TZ") => {
            errs.push(FieldError::invalid("spec.schedule", schedule, "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"));
        }
        Some(schedule) => {
            if let Err(e) = skiff_core::cron::Schedule::parse(schedule) {
                errs.push(FieldError::invalid("spec.schedule", schedule, e.reason));
            }
        }
    }
    if let Some(zone) = object.pointer("/spec/timeZone").and_then(Value::as_str)
        && jiff::tz::TimeZone::get(zone).is_err()
    {
        errs.push(FieldError::invalid("spec.timeZone", zone, format!("unknown time zone {zone}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_pod_range_is_set_once() {
        let empty = json!({"spec": {}});
        let given = json!({"spec": {"podCIDR": "10.42.0.0/22", "podCIDRs": ["10.42.0.0/22"]}});
        let moved = json!({"spec": {"podCIDR": "10.42.4.0/22", "podCIDRs": ["10.42.4.0/22"]}});
        assert!(validate_update("Node", &empty, &given).is_empty());
        assert!(validate_update("Node", &given, &given).is_empty());
        let errs: Vec<String> = validate_update("Node", &given, &moved).into_iter().map(|e| e.field).collect();
        assert_eq!(errs, ["spec.podCIDR", "spec.podCIDRs"]);
        assert_eq!(validate_update("Node", &given, &empty).len(), 2);
        assert!(validate_update("Pod", &given, &moved).is_empty());
    }

    fn fields(kind: &str, v: Value) -> Vec<String> {
        validate(kind, &v).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn cron_jobs_schedule_and_time_zone_are_checked_at_create() {
        let cron = |schedule: &str, zone: Option<&str>| fields("CronJob", json!({"metadata": {"name": "c"}, "spec": {"schedule": schedule, "timeZone": zone,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}}));
        assert!(cron("*/5 * * * *", Some("Europe/Paris")).is_empty());
        assert!(cron("@hourly", None).is_empty());
        assert_eq!(cron("61 * * * *", None), ["spec.schedule"]);
        assert_eq!(cron("CRON_TZ=UTC 0 * * * *", None), ["spec.schedule"]);
        assert_eq!(cron("0 * * * *", Some("Mars/Olympus_Mons")), ["spec.timeZone"]);
    }

    #[test]
    fn names_and_required_fields() {
        assert_eq!(fields("ConfigMap", json!({"metadata": {"name": "Bad_Name"}})), ["metadata.name"]);
        assert_eq!(fields("Pod", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}})), ["spec.containers[0].image"]);
        assert!(fields("Pod", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).is_empty());
        assert_eq!(fields("Service", json!({"metadata": {"name": "s"}, "spec": {}})), ["spec.ports"]);
        assert_eq!(fields("Namespace", json!({"metadata": {"name": "a.b"}})), ["metadata.name"]);
    }

    #[test]
    fn selector_must_match_template() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(fields("Deployment", d), ["spec.template.metadata.labels"]);
    }

    #[test]
    fn quota_scopes_follow_kubernetes_rules() {
        let quota = |spec: Value| fields("ResourceQuota", json!({"metadata": {"name": "q"}, "spec": spec}));
        assert!(quota(json!({"scopes": ["BestEffort"], "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}})).is_empty());
        assert_eq!(quota(json!({"scopes": ["Sometimes"]})), ["spec.scopes[0]"]);
        assert_eq!(quota(json!({"scopes": ["Terminating", "NotTerminating"]})), ["spec.scopeSelector"]);
        let expression = |e: Value| quota(json!({"scopeSelector": {"matchExpressions": [e]}}));
        assert_eq!(expression(json!({"scopeName": "PriorityClass", "operator": "In"})), ["spec.scopeSelector.matchExpressions[0].values"]);
        assert_eq!(expression(json!({"scopeName": "PriorityClass", "operator": "Exists", "values": ["x"]})), ["spec.scopeSelector.matchExpressions[0].values"]);
        assert_eq!(expression(json!({"scopeName": "PriorityClass", "operator": "Near", "values": ["x"]})), ["spec.scopeSelector.matchExpressions[0].operator"]);
        assert_eq!(expression(json!({"scopeName": "BestEffort", "operator": "In", "values": ["x"]})), ["spec.scopeSelector.matchExpressions[0].operator"]);
        assert_eq!(expression(json!({"scopeName": "Whenever", "operator": "Exists"})), ["spec.scopeSelector.matchExpressions[0].scopeName"]);
    }

    #[test]
    fn autoscaler_bounds() {
        let hpa = |spec: Value| json!({"metadata": {"name": "h"}, "spec": spec});
        let target = json!({"kind": "Deployment", "name": "d"});
        assert!(fields("HorizontalPodAutoscaler", hpa(json!({"scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 3}))).is_empty());
        assert_eq!(fields("HorizontalPodAutoscaler", hpa(json!({"scaleTargetRef": target, "minReplicas": 5, "maxReplicas": 3}))), ["spec.minReplicas"]);
        assert_eq!(fields("HorizontalPodAutoscaler", hpa(json!({"scaleTargetRef": {}, "maxReplicas": 0}))), ["spec.scaleTargetRef.kind", "spec.scaleTargetRef.name", "spec.maxReplicas"]);
        assert_eq!(fields("HorizontalPodAutoscaler", hpa(json!({"scaleTargetRef": target, "minReplicas": 0, "maxReplicas": 3}))), ["spec.minReplicas"]);
        let pods_metric = json!([{"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "10"}}}]);
        assert!(fields("HorizontalPodAutoscaler", hpa(json!({"scaleTargetRef": target, "minReplicas": 0, "maxReplicas": 3, "metrics": pods_metric}))).is_empty());
    }
}
