//! LimitRanger admission, as kube-apiserver's plugin: a namespace's LimitRanges give the
//! containers of a new pod the requests and limits they leave out (`defaultRequest`,
//! `default`, noted in the pod's `kubernetes.io/limit-ranger` annotation), then bound
//! them: `min` a request, `max` a limit, `maxLimitRequestRatio` the two, per Container
//! and summed per Pod. A pod out of bounds is refused (403) with Kubernetes' words.
//! PersistentVolumeClaim limits are not applied (Skiff has no storage classes to size).

use serde_json::{Map, Value, json};
use skiff_core::{ResourceType, quantity, resources};
use skiff_store::ListOptions;

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// Defaults and bounds a pod's containers against the LimitRanges of `ns`.
pub async fn admit_pod(server: &ApiServer, ns: &str, name: &str, pod: &mut Value) -> ApiResult<()> {
    let limit_ranges: &ResourceType = resources::find("", "v1", "limitranges").expect("limitranges");
    let listed = server.store.list(&limit_ranges.list_prefix(Some(ns)), &ListOptions::default()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let items: Vec<&Value> = listed.items.iter().flat_map(|lr| lr.pointer("/spec/limits").and_then(Value::as_array).into_iter().flatten()).collect();
    if items.is_empty() {
        return Ok(());
    }
    apply_defaults(&items, pod);
    let problems = bounds(&items, pod);
    match problems.len() {
        0 => Ok(()),
        1 => Err(ApiError::forbidden(format!("pods {name:?} is forbidden: {}", problems[0]))),
        _ => Err(ApiError::forbidden(format!("pods {name:?} is forbidden: [{}]", problems.join(", ")))),
    }
}

/// A LimitRange's item as stored, with Kubernetes' defaults: a `default` limit from
/// `max`, a `defaultRequest` from `default`, else from `min` (Container items only).
pub fn default_item(item: &mut Map<String, Value>) {
    if item.get("type").and_then(Value::as_str) != Some("Container") {
        return;
    }
    let copy = |item: &mut Map<String, Value>, from: &str, to: &str| {
        let source = item.get(from).and_then(Value::as_object).cloned().unwrap_or_default();
        let target = item.entry(to).or_insert_with(|| json!({}));
        if let Some(target) = target.as_object_mut() {
            for (k, v) in source {
                target.entry(k).or_insert(v);
            }
        }
    };
    copy(item, "max", "default");
    copy(item, "default", "defaultRequest");
    copy(item, "min", "defaultRequest");
}

fn containers_mut(pod: &mut Value) -> impl Iterator<Item = &mut Map<String, Value>> {
    let spec = pod.get_mut("spec").and_then(Value::as_object_mut);
    spec.into_iter().flat_map(|s| s.iter_mut().filter(|(k, _)| *k == "initContainers" || *k == "containers").flat_map(|(_, v)| v.as_array_mut().into_iter().flatten()))
        .filter_map(Value::as_object_mut)
}

/// Sets each container's missing requests and limits from the Container items, and says
/// what it set in the pod's annotation.
fn apply_defaults(items: &[&Value], pod: &mut Value) {
    let containers: Vec<&&Value> = items.iter().filter(|i| i.get("type").and_then(Value::as_str) == Some("Container")).collect();
    let mut notes = Vec::new();
    for c in containers_mut(pod) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let resources = c.entry("resources").or_insert_with(|| json!({}));
        for (field, source, word) in [("requests", "defaultRequest", "request"), ("limits", "default", "limit")] {
            let mut set = Vec::new();
            for item in &containers {
                for (resource, value) in item.get(source).and_then(Value::as_object).into_iter().flatten() {
                    let Some(current) = resources.as_object_mut().map(|r| r.entry(field).or_insert_with(|| json!({}))) else { continue };
                    if let Some(current) = current.as_object_mut()
                        && !current.contains_key(resource)
                    {
                        current.insert(resource.clone(), value.clone());
                        set.push(resource.clone());
                    }
                }
            }
            if !set.is_empty() {
                notes.push(format!("{} {word} for container {name}", set.join(", ")));
            }
        }
    }
    if !notes.is_empty()
        && let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut)
    {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(ANNOTATION.into(), json!(format!("LimitRanger plugin set: {}", notes.join("; "))));
        }
    }
}

/// A quantity in the units it is compared in: millicores for CPU, else whole units.
fn amount(resource: &str, q: &str) -> Option<i64> {
    if resource == "cpu" { quantity::parse_milli(q).ok() } else { quantity::parse_units(q).ok() }
}

/// What the items' bounds find wrong with the pod, in Kubernetes' words.
fn bounds(items: &[&Value], pod: &Value) -> Vec<String> {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let containers: Vec<&Value> = spec.get("containers").and_then(Value::as_array).into_iter().flatten().collect();
    let init: Vec<&Value> = spec.get("initContainers").and_then(Value::as_array).into_iter().flatten().collect();
    let mut problems = Vec::new();
    for item in items {
        match item.get("type").and_then(Value::as_str) {
            Some("Container") => {
                for c in containers.iter().chain(&init) {
                    let get = |field: &str, r: &str| c.pointer(&format!("/resources/{field}")).and_then(|m| m.get(r)).and_then(Value::as_str).map(str::to_string);
                    check(item, "Container", &get, &mut problems);
                }
            }
            Some("Pod") => {
                // A pod asks for the sum of its containers, or its largest init container.
                let get = |field: &str, r: &str| {
                    let mut sum = 0i64;
                    for c in &containers {
                        let q = c.pointer(&format!("/resources/{field}")).and_then(|m| m.get(r)).and_then(Value::as_str)?;
                        sum += amount(r, q)?;
                    }
                    for c in &init {
                        if let Some(q) = c.pointer(&format!("/resources/{field}")).and_then(|m| m.get(r)).and_then(Value::as_str) {
                            sum = sum.max(amount(r, q)?);
                        }
                    }
                    Some(if r == "cpu" { format!("{sum}m") } else { sum.to_string() })
                };
                check(item, "Pod", &get, &mut problems);
            }
            _ => {}
        }
    }
    problems
}

/// The item's min, max and ratio against one container's (or the pod's) amounts.
fn check(item: &Value, what: &str, get: &dyn Fn(&str, &str) -> Option<String>, problems: &mut Vec<String>) {
    let bounds = |field: &str| item.get(field).and_then(Value::as_object).cloned().unwrap_or_default();
    for (r, min) in bounds("min") {
        let min = min.as_str().unwrap_or_default();
        match get("requests", &r) {
            None => problems.push(format!("minimum {r} usage per {what} is {min}.  No request is specified")),
            Some(request) if amount(&r, &request) < amount(&r, min) => problems.push(format!("minimum {r} usage per {what} is {min}, but request is {request}")),
            _ => {}
        }
    }
    for (r, max) in bounds("max") {
        let max = max.as_str().unwrap_or_default();
        match get("limits", &r) {
            None => problems.push(format!("maximum {r} usage per {what} is {max}.  No limit is specified")),
            Some(limit) if amount(&r, &limit) > amount(&r, max) => problems.push(format!("maximum {r} usage per {what} is {max}, but limit is {limit}")),
            _ => {}
        }
    }
    for (r, ratio) in bounds("maxLimitRequestRatio") {
        let ratio_text = ratio.as_str().unwrap_or_default();
        let (Some(limit), Some(request)) = (get("limits", &r).and_then(|l| amount(&r, &l)), get("requests", &r).and_then(|q| amount(&r, &q))) else {
            problems.push(format!("{r} max limit to request ratio per {what} is {ratio_text}, but no request is specified or request is 0"));
            continue;
        };
        if request == 0 {
            problems.push(format!("{r} max limit to request ratio per {what} is {ratio_text}, but no request is specified or request is 0"));
            continue;
        }
        let allowed = quantity::parse_milli(ratio_text).unwrap_or(i64::MAX) as f64 / 1000.0;
        let provided = limit as f64 / request as f64;
        if provided > allowed {
            problems.push(format!("{r} max limit to request ratio per {what} is {ratio_text}, but provided ratio is {provided:.6}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(v: Value) -> Value {
        let mut v = v;
        default_item(v.as_object_mut().unwrap());
        v
    }

    #[test]
    fn stored_items_get_kubernetes_defaults() {
        let i = item(json!({"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}, "default": {"memory": "256Mi"}}));
        assert_eq!(i["default"], json!({"cpu": "2", "memory": "256Mi"}));
        assert_eq!(i["defaultRequest"], json!({"cpu": "2", "memory": "256Mi"}));
        let pod_item = item(json!({"type": "Pod", "max": {"cpu": "2"}}));
        assert!(pod_item.get("default").is_none());
    }

    #[test]
    fn missing_amounts_are_filled_and_noted() {
        let limits = item(json!({"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "100m"}}));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a"}, {"name": "b", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}]}});
        apply_defaults(&[&limits], &mut pod);
        assert_eq!(pod["spec"]["containers"][0]["resources"], json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}));
        assert_eq!(pod["spec"]["containers"][1]["resources"], json!({"limits": {"cpu": "1", "memory": "128Mi"}, "requests": {"cpu": "1", "memory": "128Mi"}}));
        assert_eq!(pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a; memory request for container b; memory limit for container b");
    }

    #[test]
    fn bounds_are_said_as_kubernetes_says_them() {
        let limits = item(json!({"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}, "maxLimitRequestRatio": {"cpu": "2"}}));
        let pod = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "32Mi"}}}]}});
        assert_eq!(bounds(&[&limits], &pod), vec![
            "minimum memory usage per Container is 64Mi, but request is 32Mi",
            "maximum cpu usage per Container is 1, but limit is 1500m",
            "cpu max limit to request ratio per Container is 2, but provided ratio is 3.000000",
        ]);
        let per_pod = json!({"type": "Pod", "max": {"memory": "1Gi"}});
        let two = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"memory": "768Mi"}}}, {"name": "b", "resources": {"limits": {"memory": "512Mi"}}}]}});
        assert_eq!(bounds(&[&per_pod], &two), vec!["maximum memory usage per Pod is 1Gi, but limit is 1342177280"]);
        let unlimited = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(bounds(&[&per_pod], &unlimited), vec!["maximum memory usage per Pod is 1Gi.  No limit is specified"]);
    }
}
