//! What differs between kinds on the write path, one strategy per kind as kube-apiserver
//! organises them: how a new object starts, which of its fields are status, what holds
//! its deletion back and how it ends, and what a delete answers. The write pipeline
//! (`objects`, `deletion`) asks the strategy and holds no kind's rules itself; defaults and
//! validation have their own per-kind modules (`defaults`, `validation`).

use serde_json::{Value, json};
use skiff_core::{ResourceType, meta};

/// The rules of one kind. Every method has the common behaviour as its default.
pub trait Strategy: Sync {
    /// Readies a new object before defaulting and validation. Status is the controllers'
    /// to write, so a new object starts without one where a status subresource exists.
    fn prepare_create(&self, r: &ResourceType, object: &mut Value) {
        if r.has_subresource("status")
            && let Some(o) = object.as_object_mut()
        {
            o.remove("status");
        }
    }

    /// What still holds an object back from deletion.
    fn finalizers(&self, object: &Value) -> Vec<String> {
        meta::finalizers(object)
    }

    /// The grace period a deletion gives the object before it goes (`requested` by the
    /// client, or the object's own), where something must stop it first; `None` where
    /// nothing has to.
    fn deletion_grace(&self, _object: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Marks an object that has started terminating.
    fn mark_terminating(&self, _object: &mut Value) {}

    /// Whether a delete answers with the deleted object rather than a `Status`.
    fn returns_deleted_object(&self) -> bool {
        false
    }

    /// Whether writes allocate cluster addresses (a Service's IPs and node ports), which
    /// the pipeline does one write at a time.
    fn allocates_addresses(&self) -> bool {
        false
    }
}

/// The strategy of `kind`.
pub fn of(kind: &str) -> &'static dyn Strategy {
    match kind {
        "Pod" => &PodStrategy,
        "Namespace" => &NamespaceStrategy,
        "Job" => &JobStrategy,
        "Service" => &ServiceStrategy,
        _ => &Common,
    }
}

struct Common;
impl Strategy for Common {}

struct PodStrategy;
impl Strategy for PodStrategy {
    /// A pod's status starts empty; its node fills it in.
    fn prepare_create(&self, _: &ResourceType, object: &mut Value) {
        if let Some(o) = object.as_object_mut() {
            o.insert("status".into(), json!({}));
        }
    }

    /// A pod on a node is stopped by its agent within the grace period; an unbound pod has
    /// nothing to stop and goes at once.
    fn deletion_grace(&self, pod: &Value, requested: Option<i64>) -> Option<i64> {
        let bound = pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        bound.then(|| requested.or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64)).unwrap_or(0))
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }
}

struct NamespaceStrategy;
impl Strategy for NamespaceStrategy {
    /// A Namespace is also held by `spec.finalizers`, which the namespace controller
    /// empties once everything in it is gone.
    fn finalizers(&self, ns: &Value) -> Vec<String> {
        let mut f = meta::finalizers(ns);
        f.extend(ns.pointer("/spec/finalizers").and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(String::from)));
        f
    }

    fn mark_terminating(&self, ns: &mut Value) {
        ns["status"]["phase"] = json!("Terminating");
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }
}

struct JobStrategy;
impl Strategy for JobStrategy {
    /// Jobs select their pods by a generated controller-uid label, as Kubernetes does,
    /// unless `manualSelector` is set.
    fn prepare_create(&self, r: &ResourceType, job: &mut Value) {
        Common.prepare_create(r, job);
        if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
            return;
        }
        let uid = job.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
        let name = job.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
        if let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
            let template = spec.entry("template").or_insert(json!({}));
            let labels = &mut meta::metadata_mut(template).entry("labels").or_insert(json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
                l.insert("batch.kubernetes.io/job-name".into(), name.clone());
                l.insert("controller-uid".into(), uid);
                l.insert("job-name".into(), name);
            }
        }
    }
}

struct ServiceStrategy;
impl Strategy for ServiceStrategy {
    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn allocates_addresses(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_wait_out_their_grace_only_on_a_node() {
        let bound = json!({"spec": {"nodeName": "n", "terminationGracePeriodSeconds": 30}});
        assert_eq!(of("Pod").deletion_grace(&bound, None), Some(30));
        assert_eq!(of("Pod").deletion_grace(&bound, Some(0)), Some(0));
        assert_eq!(of("Pod").deletion_grace(&json!({"spec": {"terminationGracePeriodSeconds": 30}}), None), None);
        assert_eq!(of("ConfigMap").deletion_grace(&bound, Some(5)), None);
    }

    #[test]
    fn namespaces_are_held_by_spec_finalizers_too() {
        let ns = json!({"metadata": {"finalizers": ["a"]}, "spec": {"finalizers": ["kubernetes"]}});
        assert_eq!(of("Namespace").finalizers(&ns), ["a", "kubernetes"]);
        assert_eq!(of("ConfigMap").finalizers(&ns), ["a"]);
    }
}
