//! The write pipeline's deletion and binding: what a delete does (at once, or by marking
//! the object with `deletionTimestamp` while finalizers, a propagation policy or a pod's
//! grace period hold it back) and a pod's binding to a node. Kind rules come from the
//! strategies.

use serde_json::{Value, json};
use skiff_core::{ResourceType, meta};
use skiff_store::{StoreError, object_revision};

use crate::error::{ApiError, ApiResult};
use crate::objects::{CONFLICT_RETRIES, now};
use crate::request::qualified;
use crate::{ApiServer, strategy};

impl ApiServer {
    /// Deletes one object as DeleteOptions (`opts`) say. Returns the object's last or
    /// current state.
    pub async fn delete_object(&self, r: &'static ResourceType, namespace: Option<&str>, name: &str, opts: &Value) -> ApiResult<Value> {
        let key = r.key(namespace, name);
        let qualified = qualified(r);
        let kind = strategy::of(r.kind);
        let dry_run = opts.get("dryRun").and_then(Value::as_array).is_some_and(|d| !d.is_empty());
        let mut attempts = 0;
        loop {
            let old = self.store.get(&key).await.map_err(|e| ApiError::from_store(e, &qualified, name))?;
            if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
                && Some(uid) != old.pointer("/metadata/uid").and_then(Value::as_str)
            {
                return Err(ApiError::conflict(&qualified, name, format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", old.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default())));
            }
            let pinned_rv = opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str);
            if let Some(rv) = pinned_rv
                && Some(rv) != meta::resource_version(&old)
            {
                return Err(ApiError::conflict(&qualified, name, format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", meta::resource_version(&old).unwrap_or_default())));
            }
            if dry_run {
                return Ok(old);
            }
            let mut finalizers = kind.finalizers(&old);
            let mut new = old.clone();
            if !meta::is_terminating(&old) {
                // A propagation policy the garbage collector carries out holds the object
                // with its finalizer until then.
                let policy = match opts.get("propagationPolicy").and_then(Value::as_str) {
                    Some("Orphan") => Some("orphan"),
                    Some("Foreground") => Some("foregroundDeletion"),
                    _ => None,
                };
                if let Some(f) = policy.filter(|f| !finalizers.iter().any(|x| x == f)) {
                    finalizers.push(f.to_string());
                    if let Some(list) = meta::metadata_mut(&mut new).entry("finalizers").or_insert(json!([])).as_array_mut() {
                        list.push(json!(f));
                    }
                }
            }
            let grace = kind.deletion_grace(&old, opts.get("gracePeriodSeconds").and_then(Value::as_i64));
            let graceful = grace.filter(|g| *g > 0);
            let expected = object_revision(&old);
            let result = if finalizers.is_empty() && graceful.is_none() {
                self.store.delete(&key, expected).await
            } else {
                let m = meta::metadata_mut(&mut new);
                if !meta::is_terminating(&old) {
                    let when = match graceful {
                        Some(g) => jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now())
                            .checked_add(jiff::SignedDuration::from_secs(g)).map(|t| t.to_string()).unwrap_or_else(|_| now()),
                        None => now(),
                    };
                    m.insert("deletionTimestamp".into(), json!(when));
                    m.insert("deletionGracePeriodSeconds".into(), json!(graceful.unwrap_or(0)));
                } else {
                    // Already terminating: only a grace period may still shorten, as
                    // `kubectl delete --grace-period` does to a pod.
                    let current = old.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0);
                    let Some(shorter) = grace.filter(|g| *g < current) else { return Ok(old) };
                    m.insert("deletionGracePeriodSeconds".into(), json!(shorter));
                }
                kind.mark_terminating(&mut new);
                self.store.update(&key, new, expected).await
            };
            match result {
                Ok(o) => {
                    match r.kind {
                        "Namespace" => self.namespaces.closed(&o),
                        _ => self.written(r, &o),
                    }
                    return Ok(o);
                }
                Err(StoreError::Conflict { .. }) if pinned_rv.is_none() && attempts < CONFLICT_RETRIES => attempts += 1,
                Err(e) => return Err(ApiError::from_store(e, &qualified, name)),
            }
        }
    }

    /// Binds a pod to `node` (`pods/binding`, the scheduler's write): once, and never a
    /// terminating pod.
    pub async fn bind_pod(&self, namespace: &str, name: &str, node: &str) -> ApiResult<()> {
        if node.is_empty() {
            return Err(ApiError::bad_request("a Binding needs target.name (the node)"));
        }
        let pods = skiff_core::resources::find("", "v1", "pods").expect("pods are served");
        let key = pods.key(Some(namespace), name);
        let old = self.store.get(&key).await.map_err(|e| ApiError::from_store(e, "pods", name))?;
        if let Some(current) = old.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict("pods/binding", name, format!("pod {name} is already assigned to node \"{current}\"")));
        }
        if meta::is_terminating(&old) {
            return Err(ApiError::conflict("pods/binding", name, format!("pod {name} is being deleted, cannot be assigned to a host")));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        let conditions = new.pointer_mut("/status").and_then(Value::as_object_mut).map(|s| s.entry("conditions").or_insert(json!([])));
        if let Some(Value::Array(list)) = conditions {
            list.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
            list.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
        }
        self.store.update(&key, new, object_revision(&old)).await.map_err(|e| ApiError::from_store(e, "pods/binding", name))?;
        Ok(())
    }
}
