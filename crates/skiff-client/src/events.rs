//! Records core/v1 Events, the ones `kubectl describe` and `kubectl get events` read.
//!
//! Recording never slows the caller: events go through a bounded queue to a background
//! task and are dropped (with a log line) when it is full, as client-go's broadcaster
//! does under pressure. Repeats of the same event for the same object bump `count` and
//! `lastTimestamp` of the first one instead of piling up new objects.

use std::collections::HashMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

/// `Normal` or `Warning`, as Kubernetes events are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

struct Pending {
    regarding: ObjectReference,
    kind: EventType,
    reason: String,
    message: String,
}

/// A cheap, cloneable handle that queues events for one reporting component.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Pending>,
}

/// Queued events beyond this are dropped rather than delaying controllers.
const QUEUE: usize = 4096;
/// Remembered (object, reason, message) series for aggregation.
const SERIES: usize = 8192;
/// Events written at once.
const CONCURRENCY: usize = 16;

impl Recorder {
    /// Starts the background writer for `component` (e.g. `deployment-controller`).
    pub fn new(client: Client, component: &str) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(client, component.to_string(), rx));
        Recorder { queue }
    }

    /// Records an event about `object`.
    pub fn record<K: Resource<DynamicType = ()>>(&self, object: &K, kind: EventType, reason: &str, message: impl Into<String>) {
        let pending = Pending { regarding: object.object_ref(&()), kind, reason: reason.to_string(), message: message.into() };
        if self.queue.try_send(pending).is_err() {
            tracing::debug!(reason, "event queue full; dropping an event");
        }
    }
}

type SeriesKey = (String, EventType, String, String);

async fn write_events(client: Client, component: String, rx: mpsc::Receiver<Pending>) {
    let series = std::sync::Mutex::new(HashMap::<SeriesKey, (String, String, i32)>::new());
    let series = &series;
    let client = &client;
    let component = &component;
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .for_each_concurrent(CONCURRENCY, |p| async move {
            let namespace = p.regarding.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            let key: SeriesKey = (p.regarding.uid.clone().unwrap_or_default(), p.kind, p.reason.clone(), p.message.clone());
            let now = crate::now();
            let previous = {
                let mut s = series.lock().unwrap();
                let prev = s.get(&key).cloned();
                if let Some((ns, name, count)) = &prev {
                    s.insert(key.clone(), (ns.clone(), name.clone(), count + 1));
                }
                prev
            };
            if let Some((_, name, count)) = previous {
                let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now});
                if api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
                    return;
                }
            }
            let object_name = p.regarding.name.clone().unwrap_or_default();
            let suffix: String = format!("{:016x}", rand_u64());
            let event = Event {
                metadata: kube::api::ObjectMeta { name: Some(format!("{object_name}.{suffix}")), namespace: Some(namespace.clone()), ..Default::default() },
                involved_object: p.regarding.clone(),
                reason: Some(p.reason.clone()),
                message: Some(p.message.clone()),
                type_: Some(p.kind.as_str().into()),
                source: Some(EventSource { component: Some(component.clone()), host: None }),
                reporting_component: Some(component.clone()),
                reporting_instance: Some(component.clone()),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                count: Some(1),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &event).await {
                Ok(created) => {
                    let mut s = series.lock().unwrap();
                    if s.len() >= SERIES {
                        s.clear();
                    }
                    s.insert(key, (namespace, created.name_any(), 1));
                }
                Err(e) => tracing::debug!(error = %e, reason = %p.reason, "recording an event"),
            }
        })
        .await;
}

/// Event names need only be unique; a per-process counter mixed with the clock is enough.
fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.rotate_left(32)
}
