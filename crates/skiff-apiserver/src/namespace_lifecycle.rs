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
use std::sync::RwLock;

use serde_json::Value;
use skiff_core::{meta, resources};
use skiff_store::{Store, StoreError, object_revision};

use crate::error::{ApiError, ApiResult};

#[derive(Default)]
pub struct NamespaceLifecycle {
    /// Per namespace: whether it takes new objects, as of which store revision.
    known: RwLock<HashMap<String, (bool, u64)>>,
}

impl NamespaceLifecycle {
    /// Records that `name` does or does not take new objects as of `revision`, unless a
    /// later revision is already recorded (a slower reader must not undo a deletion).
    pub fn record(&self, name: &str, open: bool, revision: u64) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        match known.get_mut(name) {
            Some(entry) if entry.1 >= revision => {}
            Some(entry) => *entry = (open, revision),
            None => {
                known.insert(name.to_string(), (open, revision));
            }
        }
    }

    /// Ok when objects may be created in namespace `ns`; 404 when it does not exist, 403
    /// when it is terminating.
    pub async fn check(&self, store: &dyn Store, ns: &str) -> ApiResult<()> {
        let remembered_open = self.known.read().unwrap_or_else(|e| e.into_inner()).get(ns).is_some_and(|(open, _)| *open);
        if remembered_open {
            return Ok(());
        }
        let key = resources::find("", "v1", "namespaces").expect("namespaces").key(None, ns);
        match store.get(&key).await {
            Ok(n) => {
                let open = !meta::is_terminating(&n);
                self.record(ns, open, object_revision(&n).unwrap_or(0));
                if open {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(format!("unable to create new content in namespace {ns} because it is being terminated")))
                }
            }
            Err(StoreError::NotFound(_)) => Err(ApiError::not_found("namespaces", ns)),
            Err(e) => Err(ApiError::from_store(e, "namespaces", ns)),
        }
    }

    /// Records a namespace this server just marked for deletion or removed (`object` is
    /// what the store returned: its state at that revision).
    pub fn closed(&self, object: &Value) {
        if let (Some(name), Some(revision)) = (meta::name(object), object_revision(object)) {
            self.record(name, false, revision);
        }
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
        lifecycle.record("team", true, object_revision(&created).unwrap());
        assert_eq!(lifecycle.check(&store, "team").await.unwrap_err().code, 403);

        // Gone, then created again: read again, and open.
        let gone = store.delete(KEY, None).await.unwrap();
        lifecycle.closed(&gone);
        assert_eq!(lifecycle.check(&store, "team").await.unwrap_err().code, 404);
        store.create(KEY, json!({"metadata": {"name": "team"}})).await.unwrap();
        lifecycle.check(&store, "team").await.expect("a re-created namespace takes objects");
    }
}
