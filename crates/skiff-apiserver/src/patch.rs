//! The patch types Kubernetes accepts: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
//! and strategic merge patch, which merges lists of the built-in types by their merge keys
//! and honours its `$patch`, `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` directives.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            _ => None,
        }
    }
}

/// Applies `patch` to `original`; the error says why the patch does not apply.
pub fn apply(kind: PatchType, original: &Value, patch: &Value) -> Result<Value, String> {
    let mut doc = original.clone();
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
            // On a copy, so a failed patch needs no undo: json-patch's undo of a failed
            // sequence can itself fail, and panics then (found by fuzzing; see the test).
            json_patch::patch_unsafe(&mut doc, &ops).map_err(|e| e.to_string())?;
        }
        PatchType::Strategic => {
            let Value::Object(p) = patch else { return Err("a strategic merge patch must be a JSON object".into()) };
            strategic_map(&mut doc, p)?;
        }
    }
    Ok(doc)
}

/// How a list field merges under strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ListStrategy {
    /// Items are objects identified by this key.
    ByKey(&'static str),
    /// A set of scalars, merged by union.
    Primitives,
    /// Replaced whole (the default for lists with no patch strategy).
    Replace,
}

/// The merge strategy Kubernetes' types declare for a list field (`patchStrategy:"merge"`
/// with `patchMergeKey`), keyed by the field name; the OpenAPI documents publish the same
/// table. `ports` is keyed by `containerPort` in containers and by `port` in Services, told
/// apart by whether the items have that field (`items_have`).
pub fn list_strategy(field: &str, items_have: impl Fn(&str) -> bool) -> ListStrategy {
    use ListStrategy::*;
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets"
        | "resourceClaims" | "schedulingGates" => ByKey("name"),
        "volumeMounts" => ByKey("mountPath"),
        "volumeDevices" => ByKey("devicePath"),
        "conditions" => ByKey("type"),
        "ownerReferences" => ByKey("uid"),
        "hostAliases" | "podIPs" | "hostIPs" => ByKey("ip"),
        "topologySpreadConstraints" => ByKey("topologyKey"),
        "readinessGates" => ByKey("conditionType"),
        "resizePolicy" => ByKey("resourceName"),
        "finalizers" => Primitives,
        "ports" if items_have("containerPort") => ByKey("containerPort"),
        "ports" if items_have("port") => ByKey("port"),
        _ => Replace,
    }
}

/// The fields that identify an item of a `ByKey` list for server-side apply
/// (`x-kubernetes-list-map-keys`): the merge key, with `protocol` beside a port number
/// (port 53 may be served over UDP and TCP) and `whenUnsatisfiable` beside a topology key.
pub fn list_map_keys(field: &str, merge_key: &'static str) -> Vec<&'static str> {
    match field {
        "ports" => vec![merge_key, "protocol"],
        "topologySpreadConstraints" => vec![merge_key, "whenUnsatisfiable"],
        _ => vec![merge_key],
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn strategic_map(doc: &mut Value, patch: &Map<String, Value>) -> Result<(), String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *doc = strip_directives(&Value::Object(patch.clone()));
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch directive $patch: {other:?}")),
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let target = doc.as_object_mut().expect("object");
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain.as_array().ok_or("$retainKeys must be a list")?.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), value.clone()));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let doomed = value.as_array().ok_or("$deleteFromPrimitiveList takes a list")?;
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !doomed.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(p) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                strategic_map(slot, p)?;
                if slot.is_null() {
                    target.remove(key);
                }
            }
            Value::Array(items) => {
                let current = target.remove(key);
                let merged = strategic_list(key, current, items)?;
                target.insert(key.clone(), merged);
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (target.get_mut(&field), order.as_array()) {
            set_element_order(&field, list, order);
        }
    }
    Ok(())
}

fn strategic_list(field: &str, current: Option<Value>, patch: &[Value]) -> Result<Value, String> {
    let mut current = match current {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    // `{"$patch": "replace"}` as an item replaces the whole list with the other items.
    if patch.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(Value::Array(
            patch.iter().filter(|i| i.get("$patch").is_none()).map(strip_directives).collect(),
        ));
    }
    match list_strategy(field, |f| patch.iter().chain(current.iter()).any(|i| i.get(f).is_some())) {
        ListStrategy::Replace => Ok(strip_directives(&Value::Array(patch.to_vec()))),
        ListStrategy::Primitives => {
            for item in patch {
                if !current.contains(item) {
                    current.push(item.clone());
                }
            }
            Ok(Value::Array(current))
        }
        ListStrategy::ByKey(key) => {
            for item in patch {
                let Value::Object(p) = item else { return Err(format!("items of {field} must be objects")) };
                let id = p.get(key).ok_or_else(|| format!("an item of {field} has no merge key {key:?}"))?;
                let pos = current.iter().position(|c| c.get(key) == Some(id));
                match (p.get("$patch").and_then(Value::as_str), pos) {
                    (Some("delete"), Some(i)) => {
                        current.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => strategic_map(&mut current[i], p)?,
                    (_, None) => current.push(strip_directives(item)),
                }
            }
            Ok(Value::Array(current))
        }
    }
}

/// Orders `list` as `order` says: listed items first in that order, the rest after.
fn set_element_order(field: &str, list: &mut [Value], order: &[Value]) {
    let strategy = list_strategy(field, |f| list.iter().any(|i| i.get(f).is_some()));
    let rank = |item: &Value| -> usize {
        let found = match strategy {
            ListStrategy::ByKey(key) => order.iter().position(|o| o.get(key).is_some() && o.get(key) == item.get(key)),
            _ => order.iter().position(|o| o == item),
        };
        found.unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(original: Value, patch: Value) -> Value {
        apply(PatchType::Strategic, &original, &patch).unwrap()
    }

    #[test]
    fn containers_merge_by_name() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}});
        let out = smp(pod, json!({"spec": {"containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]}}));
        assert_eq!(out["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(out["spec"]["containers"][0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["containers"][1]["name"], "b");
    }

    #[test]
    fn directives() {
        let pod = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "spec": {"containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}], "tolerations": [{"key": "k"}]}});
        let out = smp(pod.clone(), json!({
            "metadata": {"finalizers": ["b"], "labels": {"x": null}},
            "spec": {"containers": [{"name": "a", "$patch": "delete"}], "tolerations": [{"key": "z"}]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "b", "image": "b"}]));
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "z"}]));
        let out = smp(pod.clone(), json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a2"}]}}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "b", "image": "b"}, {"name": "a", "image": "a2"}]));
        let out = smp(pod.clone(), json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        let out = smp(pod, json!({"metadata": {"labels": {"$patch": "replace", "z": "3"}}}));
        assert_eq!(out["metadata"]["labels"], json!({"z": "3"}));
    }

    #[test]
    fn service_ports_by_port() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let out = smp(svc, json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}));
        assert_eq!(out["spec"]["ports"][0], json!({"port": 80, "name": "http", "targetPort": 8080}));
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn merge_and_json_patch() {
        let o = json!({"a": {"b": 1, "c": 2}});
        assert_eq!(apply(PatchType::Merge, &o, &json!({"a": {"b": null, "d": 3}})).unwrap(), json!({"a": {"c": 2, "d": 3}}));
        let ops = json!([{"op": "replace", "path": "/a/b", "value": 5}]);
        assert_eq!(apply(PatchType::Json, &o, &ops).unwrap()["a"]["b"], 5);
        assert!(apply(PatchType::Json, &o, &json!([{"op": "remove", "path": "/x"}])).is_err());
        // Moves whose undo json-patch cannot replay: an error, not a panic.
        let tangled = json!([{"op": "add", "path": "/(aa'~1(", "value": 3}, {"op": "move", "from": "/a/1", "path": "/B'~1("},
            {"op": "move", "from": "/a/0", "path": "//"}]);
        assert!(apply(PatchType::Json, &json!({"a": [1, 2]}), &tangled).is_err());
        assert!(apply(PatchType::Merge, &o, &json!([1])).is_err());
    }
}
