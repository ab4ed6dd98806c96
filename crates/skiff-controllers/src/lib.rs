//! Skiff's controllers. Each module is one controller in kube-rs's style: a `reconcile`
//! function that reads the world from shared caches, acts through the API with patches,
//! and says when to look again; the decisions live in plain functions the unit tests
//! call with objects, and a `controller` function that declares what wakes it. `run`
//! starts them all over one set of shared informers ([`support::Informers`]), so a pod is
//! watched and cached once per process however many controllers read pods.

pub mod certificates;
pub mod children;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod garbage_collector;
pub mod hpa;
pub mod job;
pub mod load_balancer;
pub mod metrics;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicaset;
pub mod resource_quota;
pub mod revisions;
pub mod root_ca_publisher;
pub mod serviceaccount;
pub mod statefulset;
pub mod support;

use std::future::Future;
use std::time::Duration;

use kube::Client;

pub use support::{Error, api_resource, dynamic_api, int_or_percent, selector_of};

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a node may go without renewing its lease before it is marked unknown.
    pub node_monitor_grace_period: Duration,
    /// The pod range split among nodes (none: nodes get no `podCIDR`).
    pub pod_ranges: Option<node_ipam::PodRanges>,
    /// The API server's CA certificate (PEM), published in every namespace (none: not
    /// published).
    pub root_ca: Option<String>,
    /// The cluster CA that signs node client certificates (none: none are signed).
    pub signer: Option<certificates::Signer>,
}

impl Default for Options {
    fn default() -> Self {
        Options { node_monitor_grace_period: Duration::from_secs(40), pod_ranges: None, root_ca: None, signer: None }
    }
}

/// Starts every controller; runs until `shutdown` completes, then stops them all.
pub async fn run(client: Client, options: Options, shutdown: impl Future<Output = ()> + Send) {
    tracing::info!("starting controllers");
    let i = support::Informers::new(&client);
    let parts = (
        replicaset::controller(&i, &client),
        deployment::controller(&i, &client),
        statefulset::controller(&i, &client),
        daemonset::controller(&i, &client),
        job::controller(&i, &client),
        cronjob::controller(&i, &client),
        namespace::controller(&i, &client),
        serviceaccount::controller(&i, &client),
        root_ca_publisher::controller(&i, &client, options.root_ca.clone()),
        node_ipam::controller(&i, &client, options.pod_ranges.clone()),
        endpoints::controller(&i, &client),
        load_balancer::controllers(&i, &client),
        hpa::controller(&i, &client),
        resource_quota::controller(&i, &client),
        certificates::controller(&client, options.signer.clone()),
        node_lifecycle::run(client.clone(), i.nodes.store(), i.pods.store(), options.node_monitor_grace_period),
        garbage_collector::run(client.clone()),
    );
    let controllers = async move {
        let (rs, deploy, sts, ds, job, cron, ns, sa, ca, ipam, ep, lb, hpa, quota, csr, lifecycle, gc) = parts;
        tokio::join!(rs, deploy, sts, ds, job, cron, ns, sa, ca, ipam, ep, lb, hpa, quota, csr, lifecycle, gc)
    };
    tokio::select! {
        _ = futures::future::join(controllers, i.run()) => {}
        _ = shutdown => tracing::info!("controllers stopped"),
    }
}
