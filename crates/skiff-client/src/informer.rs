//! One watch and one cache per kind, shared by every controller in a process: the
//! informer of client-go.
//!
//! The cache is kube-rs's reflector store; the fan-out to subscribers is our own.
//! kube-rs's shared `ReflectHandle` looks each dispatched object up in the store and,
//! when it was deleted meanwhile, returns `Pending` without registering a waker, so the
//! subscriber sleeps until something unrelated wakes its task; its bounded buffer also
//! holds the cache back behind the slowest subscriber. Here every subscriber gets the
//! objects themselves over its own unbounded channel: nothing is skipped, and one slow
//! controller never stalls the cache or the others.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

struct Subscriber<K> {
    tx: mpsc::UnboundedSender<Arc<K>>,
    /// Told of deletions as well as of objects as they are now.
    deletions: bool,
}

/// A shared cache of every `K` in the cluster. Subscribe all controllers first, then
/// `run` it.
pub struct SharedInformer<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer: Writer<K>,
    api: Api<K>,
    config: watcher::Config,
    subscribers: Arc<Mutex<Vec<Subscriber<K>>>>,
}

impl<K> SharedInformer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Self {
        Self::with_config(api, watcher::Config::default())
    }

    /// An informer of the objects `config` selects (by label or field).
    pub fn with_config(api: Api<K>, config: watcher::Config) -> Self {
        Self { writer: Writer::new(()), api, config, subscribers: Default::default() }
    }

    /// A read handle on the cache.
    pub fn store(&self) -> Store<K> {
        self.writer.as_reader()
    }

    fn add(&self, deletions: bool) -> impl futures::Stream<Item = Arc<K>> + Send + use<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().unwrap().push(Subscriber { tx, deletions });
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
    }

    /// A stream of every object as it changes (after the cache has it), and of every
    /// cached object after each (re)list.
    pub fn subscribe(&self) -> impl futures::Stream<Item = Arc<K>> + Send + use<K> {
        self.add(false)
    }

    /// As `subscribe`, and deleted objects too (a force-deleted pod must still wake its
    /// owner).
    pub fn changes(&self) -> impl futures::Stream<Item = Arc<K>> + Send + use<K> {
        self.add(true)
    }

    /// Watches forever, feeding the cache and subscribers; restarts the watch with backoff
    /// on errors, re-listing when the server says the resume point expired.
    pub async fn run(self) {
        tracing::debug!(kind = %K::kind(&()), "informer starting");
        let Self { mut writer, api, config, subscribers } = self;
        let reader = writer.as_reader();
        let mut events = watcher(api, config).default_backoff().modify(crate::without_managed_fields).boxed();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::debug!(error = %e, kind = %K::kind(&()), "watch error; retrying");
                    continue;
                }
            };
            writer.apply_watcher_event(&event);
            let (objects, deleted) = match event {
                watcher::Event::Apply(o) => (vec![Arc::new(o)], false),
                watcher::Event::Delete(o) => (vec![Arc::new(o)], true),
                // A (re)list is complete: everyone looks at everything again, as the
                // objects changed while the watch was down are among them.
                watcher::Event::InitDone => (reader.state(), false),
                watcher::Event::Init | watcher::Event::InitApply(_) => continue,
            };
            // Subscribers that went away are forgotten.
            subscribers.lock().unwrap().retain(|s| {
                if deleted && !s.deletions {
                    return true;
                }
                objects.iter().all(|o| s.tx.send(o.clone()).is_ok())
            });
        }
    }
}
