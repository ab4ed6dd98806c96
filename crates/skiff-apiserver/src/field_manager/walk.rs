//! The schema-aware walks over objects that server-side apply needs: the paths a value
//! sets, what changed between two versions, the merge of an applied configuration into
//! the live object, and the removal of paths. Lists follow the same rules as strategic
//! merge patch and the OpenAPI documents (`patch::list_strategy`): keyed lists are
//! associative (an item per key), lists of primitives with a merge strategy are sets,
//! every other list is atomic, as are label selectors and node selectors.

use serde_json::{Map, Value};

use super::fieldset::{self, FieldSet};
use crate::patch::{self, ListStrategy};

/// How a value is made of parts that can be owned apart.
enum Shape<'a> {
    /// An object whose fields are owned one by one.
    Fields(&'a Map<String, Value>),
    /// A list whose items are owned one by one, each named by these key fields.
    Keyed(Vec<&'static str>, &'a [Value]),
    /// A list of distinct primitives, each owned on its own.
    Set(&'a [Value]),
    /// Owned whole.
    Atomic,
}

/// Maps owned whole (`x-kubernetes-map-type: atomic`): a `LabelSelector`, and a pod's
/// `nodeSelector`.
fn atomic_map(field: &str, map: &Map<String, Value>) -> bool {
    field == "nodeSelector" || (field == "selector" && (map.contains_key("matchLabels") || map.contains_key("matchExpressions")))
}

fn shape<'a>(field: &str, v: &'a Value) -> Shape<'a> {
    match v {
        Value::Object(map) if !map.is_empty() && !atomic_map(field, map) => Shape::Fields(map),
        Value::Array(items) if !items.is_empty() => {
            match patch::list_strategy(field, |f| items.iter().any(|i| i.get(f).is_some())) {
                ListStrategy::ByKey(merge_key) => {
                    let keys = patch::list_map_keys(field, merge_key);
                    // Items without their key, or with the same key, cannot be told apart:
                    // the list is then owned whole.
                    let mut seen = std::collections::HashSet::new();
                    let distinct = items.iter().all(|i| item_key(&keys, i).is_some_and(|k| seen.insert(k)));
                    if distinct { Shape::Keyed(keys, items) } else { Shape::Atomic }
                }
                ListStrategy::Primitives if items.iter().all(|i| !i.is_object() && !i.is_array()) => Shape::Set(items),
                _ => Shape::Atomic,
            }
        }
        _ => Shape::Atomic,
    }
}

/// A key field's value, with the default a server fills in when it is left out.
fn key_value<'a>(item: &'a Value, key: &str) -> Option<std::borrow::Cow<'a, Value>> {
    match item.get(key) {
        Some(v) if !v.is_null() => Some(std::borrow::Cow::Borrowed(v)),
        _ if key == "protocol" => Some(std::borrow::Cow::Owned(Value::String("TCP".into()))),
        _ => None,
    }
}

/// The path element of a keyed list's item.
fn item_key(keys: &[&str], item: &Value) -> Option<String> {
    let mut fields = Map::new();
    for key in keys {
        fields.insert((*key).to_string(), key_value(item, key)?.into_owned());
    }
    Some(fieldset::key(&fields))
}

/// True when `item` is the one a `k:` path element names.
fn item_matches(element: &str, item: &Value) -> bool {
    let Some(Ok(Value::Object(fields))) = element.strip_prefix("k:").map(serde_json::from_str::<Value>) else { return false };
    fields.iter().all(|(k, v)| key_value(item, k).is_some_and(|iv| *iv == *v))
}

fn fields_set(map: &Map<String, Value>) -> FieldSet {
    let mut set = FieldSet::default();
    for (name, v) in map.iter().filter(|(_, v)| !v.is_null()) {
        set.children.insert(fieldset::field(name), set_of(name, v));
    }
    set
}

/// The paths a value at `field` sets: its leaves, keyed items and set items.
pub fn set_of(field: &str, v: &Value) -> FieldSet {
    match shape(field, v) {
        Shape::Fields(map) => fields_set(map),
        Shape::Keyed(keys, items) => {
            let mut set = FieldSet::default();
            for item in items {
                let mut node = item.as_object().map(fields_set).unwrap_or_default();
                node.member = true;
                set.children.insert(item_key(&keys, item).expect("keyed items have keys"), node);
            }
            set
        }
        Shape::Set(items) => FieldSet { member: false, children: items.iter().map(|i| (fieldset::value(i), FieldSet::leaf())).collect() },
        Shape::Atomic => FieldSet::leaf(),
    }
}

/// What changed from `old` to `new` at `field`: the paths set or changed, and the paths
/// no longer there.
pub fn compare(field: &str, old: &Value, new: &Value) -> (FieldSet, FieldSet) {
    let (mut changed, mut removed) = (FieldSet::default(), FieldSet::default());
    match (shape(field, old), shape(field, new)) {
        (Shape::Fields(o), Shape::Fields(n)) => {
            let present = |m: &Map<String, Value>, k: &str| m.get(k).filter(|v| !v.is_null()).cloned();
            for name in o.keys().chain(n.keys().filter(|k| !o.contains_key(*k))) {
                let element = fieldset::field(name);
                match (present(o, name), present(n, name)) {
                    (None, Some(nv)) => insert(&mut changed, &element, set_of(name, &nv)),
                    (Some(ov), None) => insert(&mut removed, &element, set_of(name, &ov)),
                    (Some(ov), Some(nv)) if ov != nv => {
                        let (c, r) = compare(name, &ov, &nv);
                        insert(&mut changed, &element, c);
                        insert(&mut removed, &element, r);
                    }
                    _ => {}
                }
            }
        }
        (Shape::Keyed(ko, o), Shape::Keyed(kn, n)) if ko == kn => {
            let keyed = |items: &[Value]| -> Vec<(String, Value)> { items.iter().map(|i| (item_key(&ko, i).expect("keyed"), i.clone())).collect() };
            let (o, n) = (keyed(o), keyed(n));
            for (element, nv) in &n {
                match o.iter().find(|(e, _)| e == element) {
                    None => {
                        let mut node = set_of("", nv);
                        node.member = true;
                        insert(&mut changed, element, node);
                    }
                    Some((_, ov)) if ov != nv => {
                        let (c, r) = compare("", ov, nv);
                        insert(&mut changed, element, c);
                        insert(&mut removed, element, r);
                    }
                    _ => {}
                }
            }
            for (element, ov) in o.iter().filter(|(e, _)| !n.iter().any(|(ne, _)| ne == e)) {
                let mut node = set_of("", ov);
                node.member = true;
                insert(&mut removed, element, node);
            }
        }
        (Shape::Set(o), Shape::Set(n)) => {
            for v in n.iter().filter(|v| !o.contains(v)) {
                insert(&mut changed, &fieldset::value(v), FieldSet::leaf());
            }
            for v in o.iter().filter(|v| !n.contains(v)) {
                insert(&mut removed, &fieldset::value(v), FieldSet::leaf());
            }
        }
        _ if old != new => {
            changed = set_of(field, new);
            removed = set_of(field, old).difference(&changed);
        }
        _ => {}
    }
    (changed, removed)
}

fn insert(set: &mut FieldSet, element: &str, child: FieldSet) {
    if !child.is_empty() {
        set.children.insert(element.to_string(), child);
    }
}

/// `config` merged into `live` at `field`: fields and items it names replace or merge
/// into theirs, everything else stays.
pub fn merge(field: &str, live: &Value, config: &Value) -> Value {
    match (shape(field, live), shape(field, config)) {
        (Shape::Fields(l), Shape::Fields(c)) => {
            let mut out = l.clone();
            for (name, cv) in c {
                let merged = match l.get(name) {
                    Some(lv) => merge(name, lv, cv),
                    None => cv.clone(),
                };
                out.insert(name.clone(), merged);
            }
            Value::Object(out)
        }
        (Shape::Keyed(kl, l), Shape::Keyed(kc, c)) if kl == kc => {
            let mut out = l.to_vec();
            for item in c {
                let element = item_key(&kc, item).expect("keyed");
                match out.iter_mut().find(|i| item_key(&kl, i).as_deref() == Some(element.as_str())) {
                    Some(existing) => *existing = merge("", existing, item),
                    None => out.push(item.clone()),
                }
            }
            Value::Array(out)
        }
        (Shape::Set(l), Shape::Set(c)) => {
            let mut out = l.to_vec();
            out.extend(c.iter().filter(|v| !l.contains(v)).cloned());
            Value::Array(out)
        }
        _ => config.clone(),
    }
}

/// Removes from `value` every member path of `doomed` that nothing in `kept` is at or
/// below; `path` is where `value` sits.
pub fn remove(value: &mut Value, doomed: &FieldSet, kept: &FieldSet, path: &mut Vec<String>) {
    for (element, child) in &doomed.children {
        path.push(element.clone());
        let still_owned = kept.at(path).is_some();
        if child.member && !still_owned {
            remove_element(value, element);
        } else if !child.children.is_empty()
            && let Some(inner) = element_mut(value, element)
        {
            remove(inner, child, kept, path);
        }
        path.pop();
    }
}

fn remove_element(value: &mut Value, element: &str) {
    match (value, element.split_at(2.min(element.len()))) {
        (Value::Object(map), ("f:", name)) => {
            map.remove(name);
        }
        (Value::Array(items), ("k:", _)) => items.retain(|i| !item_matches(element, i)),
        (Value::Array(items), ("v:", v)) => {
            if let Ok(v) = serde_json::from_str::<Value>(v) {
                items.retain(|i| *i != v);
            }
        }
        _ => {}
    }
}

fn element_mut<'a>(value: &'a mut Value, element: &str) -> Option<&'a mut Value> {
    match (value, element.split_at(2.min(element.len()))) {
        (Value::Object(map), ("f:", name)) => map.get_mut(name),
        (Value::Array(items), ("k:", _)) => items.iter_mut().find(|i| item_matches(element, i)),
        _ => None,
    }
}

/// `v` without its null fields, at any depth: in an applied configuration a null says
/// nothing about the field.
pub fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Value {
        set_of("", &v).to_fields_v1()
    }

    #[test]
    fn sets_follow_the_list_rules() {
        let pod = json!({"metadata": {"labels": {"app": "a"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}], "args": ["a", "b"]}],
                     "nodeSelector": {"k": "v"}}});
        assert_eq!(fields(pod), json!({
            "f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"x\"": {}}},
            "f:spec": {"f:nodeSelector": {}, "f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}}}}));
        // A selector is owned whole; a Service's selector is a plain map.
        assert_eq!(fields(json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}})), json!({"f:spec": {"f:selector": {}}}));
        assert_eq!(fields(json!({"spec": {"selector": {"a": "b"}}})), json!({"f:spec": {"f:selector": {"f:a": {}}}}));
    }

    #[test]
    fn compare_finds_changed_and_removed_paths() {
        let old = json!({"spec": {"replicas": 1, "containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}, "data": {"x": "1"}});
        let new = json!({"spec": {"replicas": 2, "containers": [{"name": "a", "image": "2"}]}, "data": {"x": "1", "y": "2"}});
        let (changed, removed) = compare("", &old, &new);
        assert_eq!(changed.to_fields_v1(), json!({"f:data": {"f:y": {}}, "f:spec": {"f:replicas": {}, "f:containers": {"k:{\"name\":\"a\"}": {"f:image": {}}}}}));
        assert_eq!(removed.to_fields_v1(), json!({"f:spec": {"f:containers": {"k:{\"name\":\"b\"}": {".": {}, "f:name": {}, "f:image": {}}}}}));
        assert!(compare("", &old, &old).0.is_empty());
    }

    #[test]
    fn merge_and_remove() {
        let live = json!({"spec": {"containers": [{"name": "a", "image": "1", "imagePullPolicy": "Always"}]}, "metadata": {"finalizers": ["x"]}});
        let config = json!({"spec": {"containers": [{"name": "a", "image": "2"}, {"name": "b", "image": "3"}]}, "metadata": {"finalizers": ["y"]}});
        let mut merged = merge("", &live, &config);
        assert_eq!(merged, json!({"spec": {"containers": [{"name": "a", "image": "2", "imagePullPolicy": "Always"}, {"name": "b", "image": "3"}]},
            "metadata": {"finalizers": ["x", "y"]}}));
        let doomed = FieldSet::from_fields_v1(&json!({"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}}, "k:{\"name\":\"b\"}": {".": {}}}},
            "f:metadata": {"f:finalizers": {"v:\"y\"": {}}}})).unwrap();
        // Someone else owns a's pull policy: a stays, only its image goes.
        let kept = FieldSet::from_fields_v1(&json!({"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {"f:imagePullPolicy": {}}}}})).unwrap();
        remove(&mut merged, &doomed, &kept, &mut Vec::new());
        assert_eq!(merged, json!({"spec": {"containers": [{"name": "a", "imagePullPolicy": "Always"}]}, "metadata": {"finalizers": ["x"]}}));
    }
}
