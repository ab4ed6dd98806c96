//! The Secrets and ConfigMaps this node's pods name, each watched by name while a pod
//! names it, as kubelet watches them: a node may read only what its own pods use (the
//! Node authorizer), never every Secret of the cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// What is known of one named object.
enum Seen<K> {
    /// Its watch has not listed it yet.
    Unknown,
    /// As last listed or watched; `None`: it does not exist.
    Known(Option<Arc<K>>),
}

struct Entry<K> {
    /// Pods naming it.
    holders: usize,
    seen: watch::Receiver<Seen<K>>,
    watching: Option<tokio::task::AbortHandle>,
}

impl<K> Drop for Entry<K> {
    fn drop(&mut self) {
        if let Some(w) = &self.watching {
            w.abort();
        }
    }
}

type Key = (String, String);

/// Objects of kind `K` watched by namespace and name while held.
pub struct Referenced<K> {
    /// None where nothing is watched (tests fill it with [`Referenced::fixed`]).
    client: Option<Client>,
    entries: Mutex<HashMap<Key, Entry<K>>>,
    /// Moved on every change seen, shared by the kinds (volumes are rewritten when it moves).
    changes: Arc<AtomicU64>,
}

/// How long a pod waits for one of its objects to be listed before it goes on without it
/// (and reports it missing, to be tried again when it comes).
const LIST_WAIT: Duration = Duration::from_secs(10);

impl<K> Referenced<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    pub fn new(client: Client, changes: Arc<AtomicU64>) -> Self {
        Self { client: Some(client), entries: Default::default(), changes }
    }

    /// Objects known from the start, watched never.
    #[cfg(test)]
    pub fn fixed(objects: impl IntoIterator<Item = K>) -> Self {
        use kube::ResourceExt;
        let entries = objects.into_iter().map(|o| {
            let key = (o.namespace().unwrap_or_default(), o.name_any());
            let (_, seen) = watch::channel(Seen::Known(Some(Arc::new(o))));
            (key, Entry { holders: 1, seen, watching: None })
        });
        Self { client: None, entries: Mutex::new(entries.collect()), changes: Default::default() }
    }

    /// Starts watching `namespace/name` for a pod that names it (or counts one more pod).
    pub fn hold(&self, namespace: &str, name: &str) {
        let mut entries = self.entries.lock().unwrap();
        let key = (namespace.to_string(), name.to_string());
        if let Some(entry) = entries.get_mut(&key) {
            entry.holders += 1;
            return;
        }
        let Some(client) = &self.client else { return };
        let (tx, seen) = watch::channel(Seen::Unknown);
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let watching = Some(tokio::spawn(follow(api, name.to_string(), tx, self.changes.clone())).abort_handle());
        entries.insert(key, Entry { holders: 1, seen, watching });
    }

    /// A pod naming `namespace/name` is gone; the last one's going ends the watch.
    pub fn release(&self, namespace: &str, name: &str) {
        let mut entries = self.entries.lock().unwrap();
        let key = (namespace.to_string(), name.to_string());
        if let Some(entry) = entries.get_mut(&key) {
            entry.holders -= 1;
            if entry.holders == 0 {
                entries.remove(&key);
            }
        }
    }

    /// The object as last seen; None when it does not exist or is not held.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let entries = self.entries.lock().unwrap();
        match &*entries.get(&(namespace.to_string(), name.to_string()))?.seen.borrow() {
            Seen::Known(o) => o.clone(),
            Seen::Unknown => None,
        }
    }

    /// Waits until a held object's watch has listed it (at most [`LIST_WAIT`]).
    pub async fn listed(&self, namespace: &str, name: &str) {
        let seen = self.entries.lock().unwrap().get(&(namespace.to_string(), name.to_string())).map(|e| e.seen.clone());
        if let Some(mut seen) = seen {
            let _ = tokio::time::timeout(LIST_WAIT, seen.wait_for(|s| matches!(s, Seen::Known(_)))).await;
        }
    }
}

/// Lists and watches one object by name (`fieldSelector=metadata.name=`), publishing
/// each state.
async fn follow<K>(api: Api<K>, name: String, tx: watch::Sender<Seen<K>>, changes: Arc<AtomicU64>)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listing = None;
    while let Some(event) = events.next().await {
        let seen = match event {
            Ok(watcher::Event::Init) => {
                listing = None;
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                listing = Some(o);
                continue;
            }
            Ok(watcher::Event::InitDone) => listing.take().map(Arc::new),
            Ok(watcher::Event::Apply(o)) => Some(Arc::new(o)),
            Ok(watcher::Event::Delete(_)) => None,
            Err(e) => {
                tracing::debug!(%name, error = %e, "watching an object a pod names");
                continue;
            }
        };
        tx.send_replace(Seen::Known(seen));
        changes.fetch_add(1, Ordering::Relaxed);
    }
}
