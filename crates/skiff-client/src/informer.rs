//! One watch and one cache per kind, shared by every controller in a process: the
//! informer of client-go, built from kube-rs's shared reflector.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ReflectHandle, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// How many changes a slow subscriber may lag behind before the watch waits for it.
const BUFFER: usize = 8192;

/// A shared cache of every `K` in the cluster. Subscribe all controllers first, then
/// `run` it; a subscriber that stops reading holds the others back, so every subscription
/// must be consumed.
pub struct SharedInformer<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    api: Api<K>,
    /// kube-rs's shared reflector tells subscribers of changes but not of deletions.
    deleted: tokio::sync::broadcast::Sender<Arc<K>>,
}

impl<K> SharedInformer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Self {
        Self { writer: Writer::new_shared(BUFFER, ()), api, deleted: tokio::sync::broadcast::channel(BUFFER).0 }
    }

    /// A read handle on the cache.
    pub fn store(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// A stream of every object as it changes (after the cache has it).
    pub fn subscribe(&self) -> ReflectHandle<K> {
        self.writer.subscribe().expect("shared writers can be subscribed")
    }

    /// A stream of objects as they are deleted (best effort: a subscriber that lags by
    /// more than the buffer misses some, and is told so in the log).
    pub fn deletions(&self) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
        tokio_stream::wrappers::BroadcastStream::new(self.deleted.subscribe()).filter_map(|r| async move {
            r.inspect_err(|e| tracing::warn!(kind = %K::kind(&()), error = %e, "deletion subscriber lagged")).ok()
        })
    }

    /// Every change to objects of the kind, deletions included (a force-deleted pod must
    /// still wake its owner).
    pub fn changes(&self) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
        futures::stream::select(self.subscribe(), self.deletions())
    }

    /// Watches forever, feeding the cache and subscribers; restarts the watch with backoff
    /// on errors, re-listing when the server says the resume point expired.
    pub async fn run(self) {
        tracing::debug!(kind = %K::kind(&()), "informer starting");
        let deleted = self.deleted;
        let stream = watcher(self.api, watcher::Config::default()).default_backoff().inspect(move |event| {
            if let Ok(watcher::Event::Delete(obj)) = event {
                let _ = deleted.send(Arc::new(obj.clone()));
            }
        });
        reflector::reflector(self.writer, stream)
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::debug!(error = %e, kind = %K::kind(&()), "watch error; retrying");
                }
            })
            .await;
    }
}
