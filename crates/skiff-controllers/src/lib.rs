//! Skiff's controllers. Each module is one controller in kube-rs's style: a `reconcile`
//! function that reads the world from shared caches, acts through the API with patches,
//! and says when to look again; the decisions live in plain functions the unit tests
//! call with objects. `run` starts them all over one set of shared informers, so a pod
//! is watched and cached once per process however many controllers read pods.

pub mod children;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod garbage_collector;
pub mod hpa;
pub mod job;
pub mod load_balancer;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod revisions;
pub mod serviceaccount;
pub mod statefulset;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use skiff_client::{Expectations, Recorder, SharedInformer};
use skiff_core::LabelSelector;

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a node may go without renewing its lease before it is marked unknown.
    pub node_monitor_grace_period: Duration,
    /// The pod range split among nodes (none: nodes get no `podCIDR`).
    pub pod_ranges: Option<node_ipam::PodRanges>,
}

impl Default for Options {
    fn default() -> Self {
        Options { node_monitor_grace_period: Duration::from_secs(40), pod_ranges: None }
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

/// The dynamic-client description of a served resource.
pub fn api_resource(r: &skiff_core::ResourceType) -> kube::api::ApiResource {
    kube::api::ApiResource { group: r.group.into(), version: r.version.into(), api_version: r.api_version(), kind: r.kind.into(), plural: r.plural.into() }
}

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
fn retry<K: Resource>(object: Arc<K>, error: &Error, _: Arc<impl Send + Sync>) -> Action {
    let kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or_default();
    tracing::info!(kind, name = ?object.meta().name, %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

fn informer<K>(client: &Client) -> SharedInformer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    SharedInformer::new(Api::all(client.clone()))
}

/// A tick each time the set of load balancer addresses (Ready nodes' addresses) changes.
fn address_changes(nodes: impl futures::Stream<Item = Arc<Node>> + Send + 'static, store: Store<Node>) -> impl futures::Stream<Item = ()> + Send + 'static {
    let mut last = None;
    nodes.filter_map(move |_| {
        let now = load_balancer::node_addresses(&store.state());
        let changed = last.as_ref() != Some(&now);
        last = Some(now);
        futures::future::ready(changed.then_some(()))
    })
}

/// Starts every controller; runs until the process ends.
pub async fn run(client: Client, options: Options) {
    tracing::info!("starting controllers");
    let pods = informer::<Pod>(&client);
    let replica_sets = informer::<ReplicaSet>(&client);
    let deployments = informer::<Deployment>(&client);
    let stateful_sets = informer::<StatefulSet>(&client);
    let daemon_sets = informer::<DaemonSet>(&client);
    let revisions = informer::<ControllerRevision>(&client);
    let jobs = informer::<Job>(&client);
    let cron_jobs = informer::<CronJob>(&client);
    let nodes = informer::<Node>(&client);
    let namespaces = informer::<Namespace>(&client);
    let services = informer::<Service>(&client);
    let endpoints = informer::<Endpoints>(&client);
    let slices = informer::<EndpointSlice>(&client);
    let ingresses = informer::<Ingress>(&client);
    let ingress_classes = informer::<IngressClass>(&client);
    let autoscalers = informer::<HorizontalPodAutoscaler>(&client);

    let rs = Controller::for_shared_stream(replica_sets.subscribe(), replica_sets.store())
        .owns_shared_stream(pods.changes())
        .run(
            replicaset::reconcile,
            retry,
            Arc::new(replicaset::Ctx { client: client.clone(), pods: pods.store(), recorder: Recorder::new(client.clone(), "replicaset-controller"), expectations: Expectations::new() }),
        )
        .for_each(|_| async {});
    let deploy = Controller::for_shared_stream(deployments.subscribe(), deployments.store())
        .owns_shared_stream(replica_sets.changes())
        .run(
            deployment::reconcile,
            retry,
            Arc::new(deployment::Ctx { client: client.clone(), replica_sets: replica_sets.store(), recorder: Recorder::new(client.clone(), "deployment-controller") }),
        )
        .for_each(|_| async {});
    let sts = Controller::for_shared_stream(stateful_sets.subscribe(), stateful_sets.store())
        .owns_shared_stream(pods.changes())
        .run(
            statefulset::reconcile,
            retry,
            Arc::new(statefulset::Ctx {
                client: client.clone(),
                pods: pods.store(),
                revisions: revisions.store(),
                recorder: Recorder::new(client.clone(), "statefulset-controller"),
            }),
        )
        .for_each(|_| async {});
    let ds_nodes = nodes.subscribe();
    let ds = Controller::for_shared_stream(daemon_sets.subscribe(), daemon_sets.store())
        .owns_shared_stream(pods.changes())
        // Every DaemonSet looks again when a node comes, goes or changes.
        .reconcile_all_on(ds_nodes.map(|_| ()))
        .run(
            daemonset::reconcile,
            retry,
            Arc::new(daemonset::Ctx {
                client: client.clone(),
                pods: pods.store(),
                nodes: nodes.store(),
                revisions: revisions.store(),
                recorder: Recorder::new(client.clone(), "daemonset-controller"),
                expectations: Expectations::new(),
            }),
        )
        .for_each(|_| async {});
    let job = Controller::for_shared_stream(jobs.subscribe(), jobs.store())
        .owns_shared_stream(pods.changes())
        .run(
            job::reconcile,
            retry,
            Arc::new(job::Ctx { client: client.clone(), pods: pods.store(), recorder: Recorder::new(client.clone(), "job-controller"), expectations: Expectations::new() }),
        )
        .for_each(|_| async {});
    let cron = Controller::for_shared_stream(cron_jobs.subscribe(), cron_jobs.store())
        .owns_shared_stream(jobs.changes())
        .run(
            cronjob::reconcile,
            retry,
            Arc::new(cronjob::Ctx { client: client.clone(), jobs: jobs.store(), recorder: Recorder::new(client.clone(), "cronjob-controller") }),
        )
        .for_each(|_| async {});
    let ns = Controller::for_shared_stream(namespaces.subscribe(), namespaces.store())
        .run(namespace::reconcile, retry, Arc::new(namespace::Ctx { client: client.clone(), recorder: Recorder::new(client.clone(), "namespace-controller") }))
        .for_each(|_| async {});
    let sa = Controller::for_shared_stream(namespaces.subscribe(), namespaces.store())
        .run(serviceaccount::reconcile, retry, Arc::new(serviceaccount::Ctx { client: client.clone() }))
        .for_each(|_| async {});
    let (ipam_events, ipam_nodes, ipam_client) = (nodes.subscribe(), nodes.store(), client.clone());
    let ipam = async move {
        let Some(ranges) = options.pod_ranges else { return };
        let ctx = node_ipam::Ctx { client: ipam_client.clone(), nodes: ipam_nodes.clone(), ranges, recorder: Recorder::new(ipam_client, "node-ipam-controller"), pending: Default::default() };
        Controller::for_shared_stream(ipam_events, ipam_nodes)
            .with_config(kube::runtime::controller::Config::default().concurrency(1))
            .run(node_ipam::reconcile, retry, Arc::new(ctx))
            .for_each(|_| async {})
            .await
    };
    let (selecting, listing) = (services.store(), slices.store());
    let ep = Controller::for_shared_stream(services.subscribe(), services.store())
        // A pod's Services: those selecting it now, and those whose slices still list it.
        .watches_shared_stream(pods.changes(), move |pod| {
            let mut refs = endpoints::services_selecting(&selecting, &pod);
            refs.extend(endpoints::services_listing(&listing, &pod));
            refs
        })
        // A Service's own Endpoints and slices: user-written Endpoints are mirrored, and
        // slices changed or deleted by someone else are put back.
        .watches_shared_stream(endpoints.subscribe(), |e| {
            let ns = e.metadata.namespace.clone().unwrap_or_default();
            e.metadata.name.as_deref().map(|n| ObjectRef::new(n).within(&ns))
        })
        .watches_shared_stream(slices.subscribe(), |s| {
            let ns = s.metadata.namespace.clone();
            s.metadata.labels.as_ref().and_then(|l| l.get(skiff_client::SERVICE_NAME_LABEL)).map(|n| ObjectRef::new(n).within(ns.as_deref().unwrap_or_default()))
        })
        .run(
            endpoints::reconcile,
            // Conflicts with a newer cache are common; look again soon, as proxies wait.
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            Arc::new(endpoints::Ctx { client: client.clone(), recorder: Recorder::new(client.clone(), "endpoint-controller"), pods: pods.store(), endpoints: endpoints.store(), slices: slices.store() }),
        )
        .for_each(|_| async {});
    let lb_ctx = Arc::new(load_balancer::Ctx { client: client.clone(), nodes: nodes.store(), classes: ingress_classes.store() });
    // Load balancer addresses follow the nodes; node status changes every few seconds,
    // so only a change in the set of addresses wakes every Service and Ingress.
    let lb = Controller::for_shared_stream(services.subscribe(), services.store())
        .reconcile_all_on(address_changes(nodes.subscribe(), nodes.store()))
        .run(load_balancer::reconcile_service, retry, lb_ctx.clone())
        .for_each(|_| async {});
    let ing = Controller::for_shared_stream(ingresses.subscribe(), ingresses.store())
        .reconcile_all_on(futures::stream::select(address_changes(nodes.subscribe(), nodes.store()), ingress_classes.subscribe().map(|_| ())))
        .run(load_balancer::reconcile_ingress, retry, lb_ctx)
        .for_each(|_| async {});
    let hpa = Controller::for_shared_stream(autoscalers.subscribe(), autoscalers.store())
        .run(
            hpa::reconcile,
            retry,
            Arc::new(hpa::Ctx {
                client: client.clone(),
                pods: pods.store(),
                replica_sets: replica_sets.store(),
                recorder: Recorder::new(client.clone(), "horizontal-pod-autoscaler"),
                state: Default::default(),
            }),
        )
        .for_each(|_| async {});
    let lifecycle = node_lifecycle::run(client.clone(), nodes.store(), pods.store(), options.node_monitor_grace_period);
    let gc = garbage_collector::run(client.clone());

    tokio::join!(
        pods.run(),
        replica_sets.run(),
        deployments.run(),
        stateful_sets.run(),
        daemon_sets.run(),
        revisions.run(),
        jobs.run(),
        cron_jobs.run(),
        nodes.run(),
        namespaces.run(),
        services.run(),
        endpoints.run(),
        slices.run(),
        ingresses.run(),
        ingress_classes.run(),
        autoscalers.run(),
        rs,
        deploy,
        sts,
        ds,
        job,
        cron,
        ns,
        sa,
        ipam,
        ep,
        lb,
        ing,
        hpa,
        lifecycle,
        gc,
    );
}
