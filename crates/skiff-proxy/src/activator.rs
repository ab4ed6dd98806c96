//! Scale from zero: a connection (or, at the ingress, a request) to a Service with no
//! endpoint is held, not refused, when an autoscaler with `minReplicas: 0` scales the
//! workload behind it. The activator sets that workload's scale subresource to 1 at once,
//! and the held connections go on the moment an endpoint is ready; a pod on this node is
//! taken the moment the agent finds it ready, before its status reaches the API and the
//! EndpointSlices. Holding is bounded per Service (1,000 held, 30 s); past
//! that the answer is an HTTP 503 that says why, so one cold Service never takes the proxy
//! down for the others. How long the first held connection of a scale from zero waited is
//! told in a `ColdStart` event on the Service (and, at the ingress, in each held
//! response's `Skiff-Cold-Start` header).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::Recorder;
use skiff_client::local_pods::LocalReadyPods;
use skiff_client::events::EventType;

/// Connections held per Service at most.
pub const MAX_HELD: usize = 1000;
/// How long a connection is held at most.
pub const HOLD_FOR: Duration = Duration::from_secs(30);
/// A Service woken this recently is not looked at again (a burst of connections makes
/// one scale, not one each); held connections wake it again at this pace, in case the
/// workload was scaled back meanwhile.
pub const WAKE_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// A Service, by namespace and name.
type ServiceKey = (String, String);

pub struct Activator {
    client: Client,
    services: Store<Service>,
    autoscalers: Store<HorizontalPodAutoscaler>,
    /// This node's ready pods, as its agent tells them: a held connection goes to one
    /// the moment it is ready, before the API and the EndpointSlices have heard.
    ready_pods: Arc<LocalReadyPods>,
    recorder: Recorder,
    woken: Mutex<HashMap<ServiceKey, Woken>>,
    /// Connections and requests held, per Service.
    held: Mutex<HashMap<ServiceKey, usize>>,
}

/// The last time a Service's workload was looked at.
struct Woken {
    at: Instant,
    /// The activator scaled it from zero, and no held connection has been released since.
    cold_start_untold: bool,
}

/// A connection held for a Service at zero. The holder calls [`Holding::wake`], waits up
/// to [`WAKE_AGAIN_AFTER`] for an endpoint, and again, until one takes the connection
/// ([`Holding::released`]) or `wake` says to stop.
pub struct Holding<'a> {
    activator: &'a Activator,
    key: ServiceKey,
    since: Instant,
}

impl Holding<'_> {
    /// Wakes the Service's workload (again: it may have been scaled back meanwhile).
    /// An error ends the hold: nothing will come, or it was held too long.
    pub async fn wake(&self) -> Result<(), NotHeld> {
        let (namespace, name) = (&self.key.0, &self.key.1);
        if self.since.elapsed() >= HOLD_FOR {
            return Err(NotHeld::Unavailable(format!("{namespace}/{name} did not get a ready endpoint within {}s of scaling from zero", HOLD_FOR.as_secs())));
        }
        match self.activator.wake(namespace, name).await {
            true => Ok(()),
            false => Err(NotHeld::NothingToWake),
        }
    }

    /// Where this node's ready pods serve the Service's port that `is_port` picks.
    pub fn local_endpoints(&self, is_port: impl Fn(&ServicePort) -> bool) -> Vec<std::net::SocketAddr> {
        let (namespace, name) = (&self.key.0, &self.key.1);
        match self.activator.services.get(&ObjectRef::new(name).within(namespace)) {
            Some(service) => self.activator.ready_pods.endpoints(&service, is_port),
            None => Vec::new(),
        }
    }

    /// Changes to this node's ready pods.
    pub fn local_changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.activator.ready_pods.changes()
    }

    /// An endpoint took the connection: how long it was held.
    pub fn released(self) -> Duration {
        let waited = self.since.elapsed();
        self.activator.tell_cold_start(&self.key, waited);
        waited
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut held = self.activator.held.lock().unwrap();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Why a held connection was not released.
pub enum NotHeld {
    /// Nothing will come: no autoscaler scales the Service's workload from zero.
    NothingToWake,
    /// Held too long, or too many held: the 503's message.
    Unavailable(String),
}

impl NotHeld {
    /// The 503's message, if there is one to give.
    pub fn into_reason(self) -> Option<String> {
        match self {
            NotHeld::NothingToWake => None,
            NotHeld::Unavailable(why) => Some(why),
        }
    }
}

impl Activator {
    pub fn new(client: Client, services: Store<Service>, autoscalers: Store<HorizontalPodAutoscaler>, ready_pods: Arc<LocalReadyPods>, recorder: Recorder) -> Arc<Activator> {
        Arc::new(Activator { client, services, autoscalers, ready_pods, recorder, woken: Mutex::default(), held: Mutex::default() })
    }

    /// Starts holding a connection for Service `namespace/name`: its place in the
    /// Service's hold queue, until dropped.
    pub fn hold<'a>(&'a self, namespace: &'a str, name: &'a str) -> Result<Holding<'a>, NotHeld> {
        let key = (namespace.to_string(), name.to_string());
        let mut held = self.held.lock().unwrap();
        let n = held.entry(key.clone()).or_default();
        if *n >= MAX_HELD {
            return Err(NotHeld::Unavailable(format!("{namespace}/{name} is scaling from zero and already holds {MAX_HELD} connections; try again shortly")));
        }
        *n += 1;
        Ok(Holding { activator: self, key, since: Instant::now() })
    }

    /// Tells, once per scale from zero, how long its first held connection waited.
    fn tell_cold_start(&self, key: &ServiceKey, waited: Duration) {
        tracing::debug!(service = %format!("{}/{}", key.0, key.1), waited_ms = waited.as_millis() as u64, "held connection released");
        let first = self.woken.lock().unwrap().get_mut(key).is_some_and(|w| std::mem::take(&mut w.cold_start_untold));
        if first && let Some(service) = self.services.get(&ObjectRef::new(&key.1).within(&key.0)) {
            self.recorder.record(service.as_ref(), EventType::Normal, "ColdStart", format!("the first connection held while scaling from zero waited {} ms", waited.as_millis()));
        }
    }

    /// Wakes what serves Service `namespace/name`: true when an autoscaler that may scale
    /// it to zero targets a workload whose pods the Service selects (so endpoints will
    /// come and a connection is worth holding).
    pub async fn wake(&self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        if self.woken.lock().unwrap().get(&key).is_some_and(|w| w.at.elapsed() < WAKE_AGAIN_AFTER) {
            return true;
        }
        let Some(service) = self.services.get(&ObjectRef::new(name).within(namespace)) else { return false };
        let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.clone()).filter(|s| !s.is_empty()) else { return false };
        let candidates: Vec<Arc<HorizontalPodAutoscaler>> =
            self.autoscalers.state().into_iter().filter(|h| h.namespace().as_deref() == Some(namespace) && h.spec.min_replicas == Some(0)).collect();
        for hpa in candidates {
            let r = &hpa.spec.scale_target_ref;
            let Some(resource) = skiff_core::resources::find_by_kind(r.api_version.as_deref().unwrap_or_default(), &r.kind).filter(|x| x.has_subresource("scale")) else { continue };
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &skiff_client::api_resource(resource));
            let Ok(target) = api.get(&r.name).await else { continue };
            let labels = target.data.pointer("/spec/template/metadata/labels").and_then(|l| l.as_object()).cloned().unwrap_or_default();
            if !selector.iter().all(|(k, v)| labels.get(k).and_then(|l| l.as_str()) == Some(v.as_str())) {
                continue;
            }
            let mut scaled = false;
            if target.data.pointer("/spec/replicas").and_then(|v| v.as_i64()) == Some(0) {
                match api.patch_scale(&r.name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await {
                    Ok(_) => {
                        scaled = true;
                        self.recorder.record(service.as_ref(), EventType::Normal, "Activated", format!("a connection is held while {} {} scales from 0 to 1", r.kind, r.name));
                    }
                    Err(e) => tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, "cannot scale the Service's workload from zero"),
                }
            }
            let mut woken = self.woken.lock().unwrap();
            let entry = woken.entry(key).or_insert(Woken { at: Instant::now(), cold_start_untold: false });
            entry.at = Instant::now();
            entry.cold_start_untold |= scaled;
            return true;
        }
        false
    }
}
