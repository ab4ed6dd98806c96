//! What every API client part of Skiff (scheduler, controllers, agents) shares: a shared
//! informer (one watch and cache per kind, fanned out to many controllers), an event
//! recorder that `kubectl describe` can read, helpers for pods and owner references, and
//! the create/delete expectations that keep a controller from acting twice on a cache
//! that has not caught up with its own writes.

pub mod events;
pub mod expectations;
pub mod informer;
pub mod ingress;
pub mod local_pods;
pub mod nodes;
pub mod owners;
pub mod pods;

pub use events::Recorder;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub use expectations::Expectations;
pub use informer::SharedInformer;

/// The dynamic-client description of a served resource.
pub fn api_resource(r: &skiff_core::ResourceType) -> kube::api::ApiResource {
    kube::api::ApiResource { group: r.group.into(), version: r.version.into(), api_version: r.api_version(), kind: r.kind.into(), plural: r.plural.into() }
}

/// A typed `metav1.LabelSelector` (as k8s-openapi objects carry it) as a matcher.
pub fn label_selector(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Result<skiff_core::LabelSelector, skiff_core::labels::SelectorError> {
    let value = serde_json::to_value(selector).expect("a LabelSelector always serialises");
    skiff_core::LabelSelector::from_json(&value)
}

/// The current time as Kubernetes timestamps carry it (whole seconds).
/// Drops `metadata.managedFields` from a watched object: no part of Skiff reads them, and
/// they are about half of a pod's size in a cache.
pub fn without_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_else(|_| jiff::Timestamp::now()))
}

/// Seconds since `t` (negative if in the future).
pub fn seconds_since(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    jiff::Timestamp::now().as_second() - t.0.as_second()
}
