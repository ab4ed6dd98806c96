//! The namespace check of every create (kube-apiserver's NamespaceLifecycle admission):
//! objects go only into a namespace that exists and is not terminating.
//!
//! Reading the namespace from the store on every create cost a tenth of the create path's
//! CPU, so the server remembers what it last learned of each namespace, with the store
//! revision it learned it at. Only an open namespace is taken from memory; anything else
//! (unknown, terminating, gone) is read again, so a namespace created or re-created a
//! moment ago is never refused. A namespace stops taking objects the moment this server
//! marks it for deletion, because the delete records it as closed before it answers.
//!
//! This is exact while one API server owns the store, which is how Skiff runs on redb. A
//! store shared by several servers (etcd) would need a watch feeding these records too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};
use skiff_core::{meta, resources};
use skiff_store::{Store, StoreError, object_revision};

use crate::error::{ApiError, ApiResult};

#[derive(Default)]
pub struct NamespaceLifecycle {
    /// Per namespace: what this server last learned of it.
    known: RwLock<HashMap<String, Known>>,
}

#[derive(Clone)]
struct Known {
    /// Whether it takes new objects.
    open: bool,
    /// As of which store revision.
    revision: u64,
    /// Its labels, for PodSecurity admission.
    labels: Labels,
}

/// A namespace's labels.
pub type Labels = Arc<Map<String, Value>>;

impl Known {
    /// What a stored namespace says, and its name; `closed`: it takes no new objects
    /// whatever the object says (it was just deleted).
    fn of(namespace: &Value, closed: bool) -> Option<(&str, Known)> {
        let (name, revision) = (meta::name(namespace)?, object_revision(namespace)?);
        let labels = Arc::new(namespace.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default());
        Some((name, Known { open: !closed && !meta::is_terminating(namespace), revision, labels }))
    }
}

impl NamespaceLifecycle {
    /// Records `entry` for `name`, unless a later revision is already recorded (a slower
    /// reader must not undo a deletion).
    fn record(&self, name: &str, entry: Known) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        match known.get_mut(name) {
            Some(old) if old.revision >= entry.revision => {}
            Some(old) => *old = entry,
            None => {
                known.insert(name.to_string(), entry);
            }
        }
    }

    fn record_object(&self, namespace: &Value, closed: bool) {
        if let Some((name, entry)) = Known::of(namespace, closed) {
            self.record(name, entry);
        }
    }

    /// The namespace's labels when objects may be created in `ns`; 404 when it does not
    /// exist, 403 when it is terminating.
    pub async fn check(&self, store: &dyn Store, ns: &str) -> ApiResult<Labels> {
        let known = self.learn(store, ns).await?;
        if known.open {
            Ok(known.labels)
        } else {
            Err(ApiError::forbidden(format!("unable to create new content in namespace {ns} because it is being terminated")))
        }
    }

    /// The labels of namespace `ns`, open or terminating (for admission of updates).
    pub async fn labels(&self, store: &dyn Store, ns: &str) -> ApiResult<Labels> {
        Ok(self.learn(store, ns).await?.labels)
    }

    /// An open namespace from memory; anything else read again.
    async fn learn(&self, store: &dyn Store, ns: &str) -> ApiResult<Known> {
        if let Some(known) = self.known.read().unwrap_or_else(|e| e.into_inner()).get(ns).filter(|k| k.open) {
            return Ok(known.clone());
        }
        let key = resources::find("", "v1", "namespaces").expect("namespaces").key(None, ns);
        match store.get(&key).await {
            Ok(n) => {
                let (_, entry) = Known::of(&n, false).ok_or_else(|| ApiError::internal(format!("namespace {ns} is stored without a name or revision")))?;
                self.record(ns, entry.clone());
                Ok(entry)
            }
            Err(StoreError::NotFound(_)) => Err(ApiError::not_found("namespaces", ns)),
            Err(e) => Err(ApiError::from_store(e, "namespaces", ns)),
        }
    }

    /// Records a namespace this server just created or updated (`object` is what the
    /// store returned: its state at that revision), so label changes count at once.
    pub fn written(&self, object: &Value) {
        self.record_object(object, false);
    }

    /// Records a namespace this server just marked for deletion or removed.
    pub fn closed(&self, object: &Value) {
        self.record_object(object, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use skiff_store::{RedbStore, StoreOptions};

    const KEY: &str = "/core/namespaces/team";

    #[tokio::test]
    async fn only_an_open_namespace_is_taken_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let lifecycle = NamespaceLifecycle::default();
        assert_eq!(resources::find("", "v1", "namespaces").unwrap().key(None, "team"), KEY);

        assert_eq!(lifecycle.check(&store, "team").await.unwrap_err().code, 404);
        let created = store.create(KEY, json!({"metadata": {"name": "team"}})).await.unwrap();
        lifecycle.check(&store, "team").await.expect("a namespace created after a miss is read again");

        // Marked for deletion: refused at once, whatever a slower reader records after.
        let mut terminating = created.clone();
        terminating["metadata"]["deletionTimestamp"] = json!("2026-11-22T00:00:00Z");
        let terminating = store.update(KEY, terminating, None).await.unwrap();
        lifecycle.closed(&terminating);
        lifecycle.written(&created);
        assert_eq!(lifecycle.check(&store, "team").await.unwrap_err().code, 403);

        // Gone, then created again: read again, and open.
        let gone = store.delete(KEY, None).await.unwrap();
        lifecycle.closed(&gone);
        assert_eq!(lifecycle.check(&store, "team").await.unwrap_err().code, 404);
        store.create(KEY, json!({"metadata": {"name": "team"}})).await.unwrap();
        lifecycle.check(&store, "team").await.expect("a re-created namespace takes objects");

        // Labels written through this server count at once.
        let labelled = store.update(KEY, json!({"metadata": {"name": "team", "labels": {"tier": "gold"}}}), None).await.unwrap();
        lifecycle.written(&labelled);
        assert_eq!(lifecycle.check(&store, "team").await.unwrap().get("tier"), Some(&json!("gold")));
    }
}
