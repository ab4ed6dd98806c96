//! What the controllers share: the error type, the shared informers (one watch and cache
//! per kind for the whole process), the retry policy, and small helpers over selectors,
//! dynamic APIs and `maxSurge`-style values.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use skiff_client::SharedInformer;
use skiff_core::LabelSelector;

/// One shared informer per kind any controller reads.
pub struct Informers {
    pub pods: SharedInformer<Pod>,
    pub replica_sets: SharedInformer<ReplicaSet>,
    pub deployments: SharedInformer<Deployment>,
    pub stateful_sets: SharedInformer<StatefulSet>,
    pub daemon_sets: SharedInformer<DaemonSet>,
    pub revisions: SharedInformer<ControllerRevision>,
    pub jobs: SharedInformer<Job>,
    pub cron_jobs: SharedInformer<CronJob>,
    pub nodes: SharedInformer<Node>,
    pub namespaces: SharedInformer<Namespace>,
    pub services: SharedInformer<Service>,
    pub endpoints: SharedInformer<Endpoints>,
    pub slices: SharedInformer<EndpointSlice>,
    pub ingresses: SharedInformer<Ingress>,
    pub ingress_classes: SharedInformer<IngressClass>,
    pub autoscalers: SharedInformer<HorizontalPodAutoscaler>,
    pub quotas: SharedInformer<k8s_openapi::api::core::v1::ResourceQuota>,
    /// The `kube-root-ca.crt` ConfigMaps only (no controller reads others).
    pub root_ca_maps: SharedInformer<ConfigMap>,
}

fn informer<K>(client: &Client) -> SharedInformer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    SharedInformer::new(Api::all(client.clone()))
}

impl Informers {
    pub fn new(client: &Client) -> Informers {
        Informers {
            pods: informer(client),
            replica_sets: informer(client),
            deployments: informer(client),
            stateful_sets: informer(client),
            daemon_sets: informer(client),
            revisions: informer(client),
            jobs: informer(client),
            cron_jobs: informer(client),
            nodes: informer(client),
            namespaces: informer(client),
            services: informer(client),
            endpoints: informer(client),
            slices: informer(client),
            ingresses: informer(client),
            ingress_classes: informer(client),
            autoscalers: informer(client),
            quotas: informer(client),
            root_ca_maps: SharedInformer::with_config(Api::all(client.clone()), kube::runtime::watcher::Config::default().fields(&format!("metadata.name={}", crate::root_ca_publisher::NAME))),
        }
    }

    /// Runs every watch until the process ends.
    pub async fn run(self) {
        tokio::join!(
            self.pods.run(),
            self.replica_sets.run(),
            self.deployments.run(),
            self.stateful_sets.run(),
            self.daemon_sets.run(),
            self.revisions.run(),
            self.jobs.run(),
            self.cron_jobs.run(),
            self.nodes.run(),
            self.namespaces.run(),
            self.services.run(),
            self.endpoints.run(),
            self.slices.run(),
            self.ingresses.run(),
            self.ingress_classes.run(),
            self.autoscalers.run(),
            self.quotas.run(),
            self.root_ca_maps.run(),
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A workload's `spec.selector` as a matcher. A missing selector matches nothing.
pub fn selector_of(selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>) -> Result<LabelSelector, Error> {
    let Some(s) = selector else { return Ok(LabelSelector::default()) };
    skiff_client::label_selector(s).map_err(|e| Error::Invalid(e.to_string()))
}

pub use skiff_client::api_resource;

/// A dynamic API for objects of `r`: in `namespace` when the kind is namespaced and one is
/// given, across the cluster otherwise.
pub fn dynamic_api(client: &Client, r: &skiff_core::ResourceType, namespace: Option<&str>) -> Api<kube::api::DynamicObject> {
    let ar = api_resource(r);
    match (r.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

/// `maxSurge`/`maxUnavailable`-style values as a count: numbers as they are,
/// percentages of `total` rounded up or down, `default_percent` when unset.
pub fn int_or_percent(value: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>, default_percent: i32, total: i32, round_up: bool) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let percent = match value {
        Some(IntOrString::Int(n)) => return *n,
        Some(IntOrString::String(s)) => s.trim_end_matches('%').parse::<i64>().unwrap_or(i64::from(default_percent)),
        None => i64::from(default_percent),
    };
    let v = percent * i64::from(total);
    (if round_up { (v + 99) / 100 } else { v / 100 }) as i32
}

/// Failed reconciles are retried after a pause. Conflicts with other writers are normal,
/// but one failing over and over (a stale cache) must show in the log: info level.
pub fn retry<K: Resource>(object: Arc<K>, error: &Error, _: Arc<impl Send + Sync>) -> Action {
    let kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or_default();
    tracing::info!(kind, name = ?object.meta().name, %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
