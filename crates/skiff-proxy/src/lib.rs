//! Skiff's per-node proxy: what kube-proxy, CoreDNS and an ingress controller do for a
//! Kubernetes node, as one small client of the API that runs inside the node agent.
//!
//! Services are proxied in user space: the node makes the whole service range local (a
//! `local` route, set up by the agent), so a listener can bind each ClusterIP:port
//! directly, and NodePorts and LoadBalancer addresses are plain listeners too. Each
//! listener sends to its Service's endpoints as the EndpointSlices list them and follows
//! them as they change.

pub mod dns;
pub mod forward;
pub mod services;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use skiff_client::events::EventType;
use skiff_client::{Recorder, SharedInformer};

use crate::forward::Route;
use crate::services::{Backends, Frontend, Protocol, ThisNode};

/// How a node's proxy is set up.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub node_name: String,
    /// The node's addresses: LoadBalancer Services are served on them.
    pub node_ips: Vec<IpAddr>,
    /// The cluster DNS address (the `kube-dns` Service's ClusterIP), answered by the
    /// node's DNS server rather than proxied.
    pub cluster_dns: IpAddr,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// The resolvers names outside the cluster are forwarded to.
    pub upstream_dns: Vec<SocketAddr>,
}

/// How often frontends that could not be bound are tried again.
const RETRY_BIND: Duration = Duration::from_secs(5);

/// A listener the proxy keeps, and its endpoints.
struct Listening {
    route: Arc<Route>,
    task: tokio::task::AbortHandle,
}

/// Runs the node's proxy until the process ends.
pub async fn run(client: Client, config: ProxyConfig) {
    let services = SharedInformer::<Service>::new(Api::all(client.clone()));
    let slices = SharedInformer::<EndpointSlice>::new(Api::all(client.clone()));
    let changes = futures::stream::select_all([
        services.subscribe().map(|_| ()).boxed(),
        services.deletions().map(|_| ()).boxed(),
        slices.subscribe().map(|_| ()).boxed(),
        slices.deletions().map(|_| ()).boxed(),
    ]);
    let records: Arc<RwLock<Arc<dns::Records>>> = Arc::default();
    let dns = serve_dns(config.clone(), records.clone());
    let sync = sync_loop(changes, services.store(), slices.store(), config, records, Recorder::new(client, "skiff-proxy"));
    tokio::join!(services.run(), slices.run(), sync, dns);
}

/// Serves cluster DNS on the `kube-dns` address, binding again after a failure.
async fn serve_dns(config: ProxyConfig, records: Arc<RwLock<Arc<dns::Records>>>) {
    let addr = SocketAddr::new(config.cluster_dns, 53);
    let mut reported = false;
    loop {
        let handler = dns::ClusterDns { records: records.clone(), upstreams: config.upstream_dns.clone() };
        if let Err(e) = dns::serve(addr, handler).await
            && !std::mem::replace(&mut reported, true)
        {
            tracing::warn!(%addr, error = %e, "cannot serve cluster DNS on this node; retrying");
        }
        tokio::time::sleep(RETRY_BIND).await;
    }
}

async fn sync_loop(
    mut changes: impl futures::Stream<Item = ()> + Unpin,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    config: ProxyConfig,
    records: Arc<RwLock<Arc<dns::Records>>>,
    recorder: Recorder,
) {
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    tracing::info!(node = %config.node_name, "service proxy started");
    let mut running: HashMap<Frontend, Listening> = HashMap::new();
    let mut reported: HashSet<Frontend> = HashSet::new();
    loop {
        let node = ThisNode { name: &config.node_name, addresses: &config.node_ips, reserved: &[config.cluster_dns] };
        let (all_services, all_slices) = (services.state(), slices.state());
        let want = services::frontends(&all_services, &all_slices, &node);
        *records.write().unwrap() = Arc::new(dns::Records::build(&config.cluster_domain, &all_services, &all_slices));
        apply(&mut running, want, &services, &recorder, &mut reported).await;
        // Wait for a change (or the retry tick), then let a burst of changes settle.
        tokio::select! {
            next = changes.next() => if next.is_none() { return },
            _ = tokio::time::sleep(RETRY_BIND) => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        while futures::FutureExt::now_or_never(changes.next()).flatten().is_some() {}
    }
}

/// Brings the listeners to `want`: updates endpoints in place, binds new frontends and
/// closes those no longer wanted. A frontend that cannot be bound (the port is taken on
/// this node) gets a warning event on its Service, once, and is tried again later.
async fn apply(running: &mut HashMap<Frontend, Listening>, want: BTreeMap<Frontend, Backends>, services: &Store<Service>, recorder: &Recorder, reported: &mut HashSet<Frontend>) {
    running.retain(|f, l| {
        let keep = want.contains_key(f);
        if !keep {
            l.task.abort();
            tracing::debug!(frontend = %f.addr, "proxy listener closed");
        }
        keep
    });
    reported.retain(|f| want.contains_key(f));
    for (frontend, backends) in want {
        if let Some(l) = running.get(&frontend) {
            l.route.update(backends);
            continue;
        }
        let service = backends.service.clone();
        let route = Route::new(backends);
        match bind(frontend, route.clone()).await {
            Ok(task) => {
                tracing::debug!(frontend = %frontend.addr, %service, "proxy listener open");
                reported.remove(&frontend);
                running.insert(frontend, Listening { route, task });
            }
            Err(e) if reported.insert(frontend) => {
                tracing::warn!(frontend = %frontend.addr, %service, error = %e, "cannot serve a Service port on this node");
                if let Some(svc) = service_of(services, &service) {
                    recorder.record(svc.as_ref(), EventType::Warning, "PortUnavailable", format!("{:?} {} cannot be served on this node: {e}", frontend.protocol, frontend.addr));
                }
            }
            Err(_) => {}
        }
    }
}

async fn bind(frontend: Frontend, route: Arc<Route>) -> std::io::Result<tokio::task::AbortHandle> {
    Ok(match frontend.protocol {
        Protocol::Tcp => {
            let socket = match frontend.addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.bind(frontend.addr)?;
            tokio::spawn(forward::serve_tcp(socket.listen(1024)?, route)).abort_handle()
        }
        Protocol::Udp => tokio::spawn(forward::serve_udp(tokio::net::UdpSocket::bind(frontend.addr).await?, route)).abort_handle(),
    })
}

/// The Service a `namespace/name:port` label names.
fn service_of(services: &Store<Service>, label: &str) -> Option<Arc<Service>> {
    let (ns, rest) = label.split_once('/')?;
    let name = rest.split(':').next()?;
    services.get(&ObjectRef::new(name).within(ns))
}
