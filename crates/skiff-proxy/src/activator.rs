//! Scale from zero: a connection to a Service with no endpoint is held, not reset, when an
//! autoscaler with `minReplicas: 0` scales the workload behind it. The activator sets that
//! workload's scale subresource to 1 at once, and the held connections go on the moment an
//! endpoint is ready (the pod's own node sends them straight to it). Holding is bounded per
//! Service port (1,000 connections, 30 s); past that the answer is an HTTP 503 that says
//! why, so one cold Service never takes the proxy down for the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::Recorder;
use skiff_client::events::EventType;

/// Connections held per Service port at most.
pub const MAX_HELD: usize = 1000;
/// How long a connection is held at most.
pub const HOLD_FOR: Duration = Duration::from_secs(30);
/// A Service woken this recently is not looked at again (a burst of connections makes
/// one scale, not one each); held connections wake it again at this pace, in case the
/// workload was scaled back meanwhile.
pub const WAKE_AGAIN_AFTER: Duration = Duration::from_secs(1);

pub struct Activator {
    client: Client,
    services: Store<Service>,
    autoscalers: Store<HorizontalPodAutoscaler>,
    recorder: Recorder,
    woken: Mutex<HashMap<(String, String), Instant>>,
}

impl Activator {
    pub fn new(client: Client, services: Store<Service>, autoscalers: Store<HorizontalPodAutoscaler>, recorder: Recorder) -> Arc<Activator> {
        Arc::new(Activator { client, services, autoscalers, recorder, woken: Mutex::default() })
    }

    /// Wakes what serves Service `namespace/name`: true when an autoscaler that may scale
    /// it to zero targets a workload whose pods the Service selects (so endpoints will
    /// come and a connection is worth holding).
    pub async fn wake(&self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        if self.woken.lock().unwrap().get(&key).is_some_and(|t| t.elapsed() < WAKE_AGAIN_AFTER) {
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
            self.woken.lock().unwrap().insert(key.clone(), Instant::now());
            if target.data.pointer("/spec/replicas").and_then(|v| v.as_i64()) == Some(0) {
                match api.patch_scale(&r.name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await {
                    Ok(_) => self.recorder.record(service.as_ref(), EventType::Normal, "Activated", format!("a connection is held while {} {} scales from 0 to 1", r.kind, r.name)),
                    Err(e) => tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, "cannot scale the Service's workload from zero"),
                }
            }
            return true;
        }
        false
    }
}
