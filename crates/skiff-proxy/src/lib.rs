//! Skiff's per-node proxy: what kube-proxy, CoreDNS and an ingress controller do for a
//! Kubernetes node, as one small client of the API that runs inside the node agent.
//!
//! Services are proxied in user space: the node makes the whole service range local (a
//! `local` route, set up by the agent), so a listener can bind each ClusterIP:port
//! directly, and NodePorts and LoadBalancer addresses are plain listeners too. Each
//! listener sends to its Service's endpoints as the EndpointSlices list them and follows
//! them as they change.

pub mod activator;
pub mod dns;
pub mod forward;
pub mod ingress;
pub mod ingress_routes;
pub mod metrics;
mod request_heads;
pub mod services;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
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
    /// Where the ingress controller serves HTTP and HTTPS (none: not served). These are
    /// the node's own addresses, never the wildcard: a wildcard listener on 80 or 443
    /// would take those ports from every ClusterIP and pod address on the node, which are
    /// local addresses too.
    pub ingress_http: Vec<SocketAddr>,
    pub ingress_https: Vec<SocketAddr>,
    /// Where the ingress and the TCP forwarding count the HTTP requests they send to each
    /// endpoint (the node's agent reports them).
    pub proxied_requests: Arc<skiff_core::request_counts::RequestCounts>,
    /// The pods of this node that are ready, as its agent tells them (held connections
    /// go straight to one).
    pub ready_pods: Arc<skiff_client::local_pods::LocalReadyPods>,
}

/// How often frontends that could not be bound are tried again.
const RETRY_BIND: Duration = Duration::from_secs(5);

/// A listener the proxy keeps, and its endpoints.
struct Listening {
    route: Arc<Route>,
    task: tokio::task::AbortHandle,
}

/// What the proxy watches.
struct Caches {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    secrets: Store<Secret>,
}

/// What the proxy serves, kept current by the sync loop.
struct Served {
    records: Arc<RwLock<Arc<dns::Records>>>,
    ingress: Arc<ingress::IngressServer>,
    activator: Arc<activator::Activator>,
    requests: Arc<skiff_core::request_counts::RequestCounts>,
}

/// Runs the node's proxy until `shutdown` completes.
pub async fn run(client: Client, config: ProxyConfig, shutdown: impl std::future::Future<Output = ()> + Send) {
    let services = SharedInformer::<Service>::new(Api::all(client.clone()));
    let slices = SharedInformer::<EndpointSlice>::new(Api::all(client.clone()));
    let ingresses = SharedInformer::<Ingress>::new(Api::all(client.clone()));
    let classes = SharedInformer::<IngressClass>::new(Api::all(client.clone()));
    let secrets = SharedInformer::<Secret>::new(Api::all(client.clone()));
    let autoscalers = SharedInformer::<HorizontalPodAutoscaler>::new(Api::all(client.clone()));
    let all_changes = futures::stream::select_all([
        services.changes().map(|_| ()).boxed(),
        slices.changes().map(|_| ()).boxed(),
        ingresses.changes().map(|_| ()).boxed(),
        classes.changes().map(|_| ()).boxed(),
        secrets.changes().map(|_| ()).boxed(),
    ]);
    let caches = Caches { services: services.store(), slices: slices.store(), ingresses: ingresses.store(), classes: classes.store(), secrets: secrets.store() };
    let activator = activator::Activator::new(client.clone(), services.store(), autoscalers.store(), config.ready_pods.clone(), Recorder::new(client.clone(), "skiff-activator"));
    let served = Served { records: Arc::default(), ingress: Arc::new(ingress::IngressServer::new(activator.clone(), config.proxied_requests.clone())), activator, requests: config.proxied_requests.clone() };
    let dns = serve_dns(config.clone(), served.records.clone());
    let (claim, claims) = tokio::sync::watch::channel(HashSet::new());
    let http = futures::future::join_all(config.ingress_http.iter().map(|a| serve_ingress(*a, served.ingress.clone(), false, claims.clone())));
    let https = futures::future::join_all(config.ingress_https.iter().map(|a| serve_ingress(*a, served.ingress.clone(), true, claims.clone())));
    let sync = sync_loop(all_changes, caches, config, served, claim, Recorder::new(client, "skiff-proxy"));
    let everything = async { tokio::join!(services.run(), slices.run(), ingresses.run(), classes.run(), secrets.run(), autoscalers.run(), sync, dns, http, https) };
    tokio::select! {
        _ = everything => {}
        _ = shutdown => {}
    }
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

/// The node addresses Services have taken from the ingress: a LoadBalancer Service (or an
/// external IP) on the node's address and an ingress port. The Service wins, as a user's
/// explicit Service should over the built-in ingress; the ingress keeps its other
/// addresses (127.0.0.1 among them) and takes the port back when the Service goes.
type Claims = tokio::sync::watch::Receiver<HashSet<SocketAddr>>;

/// Serves the ingress on `addr` whenever no Service claims it, binding again until it can.
async fn serve_ingress(addr: SocketAddr, server: Arc<ingress::IngressServer>, tls: bool, mut claims: Claims) {
    let mut reported = false;
    loop {
        // Wait out a claim, then bind.
        if claims.wait_for(|c| !c.contains(&addr)).await.is_err() {
            return;
        }
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                if !std::mem::replace(&mut reported, true) {
                    tracing::warn!(%addr, error = %e, "cannot serve the ingress on this node; retrying");
                }
                tokio::time::sleep(RETRY_BIND).await;
                continue;
            }
        };
        tracing::info!(%addr, tls, "ingress serving");
        let serving = if tls { server.clone().serve_https(listener).boxed() } else { server.clone().serve_http(listener).boxed() };
        tokio::select! {
            _ = serving => return,
            claimed = claims.wait_for(|c| c.contains(&addr)) => {
                if claimed.is_err() {
                    return;
                }
                tracing::info!(%addr, "the ingress yields this address to a Service that takes its port");
            }
        }
    }
}

async fn sync_loop(mut changes: impl futures::Stream<Item = ()> + Unpin, caches: Caches, config: ProxyConfig, served: Served, claim: tokio::sync::watch::Sender<HashSet<SocketAddr>>, recorder: Recorder) {
    let _ = tokio::join!(
        caches.services.wait_until_ready(),
        caches.slices.wait_until_ready(),
        caches.ingresses.wait_until_ready(),
        caches.classes.wait_until_ready(),
        caches.secrets.wait_until_ready()
    );
    tracing::info!(node = %config.node_name, "service proxy started");
    let mut running: HashMap<Frontend, Listening> = HashMap::new();
    let mut reported: HashSet<Frontend> = HashSet::new();
    let mut ingress_problems: HashSet<ingress::Problem> = HashSet::new();
    loop {
        let node = ThisNode { name: &config.node_name, addresses: &config.node_ips, reserved: &[config.cluster_dns] };
        let (all_services, all_slices) = (caches.services.state(), caches.slices.state());
        let by_service = services::slices_by_service(&all_slices);
        let want = services::frontends(&all_services, &by_service, &node);
        *served.records.write().unwrap() = Arc::new(dns::Records::build(&config.cluster_domain, &all_services, &by_service));
        let claimed = ingress_claims(&want, &config);
        if claim.send_if_modified(|current| std::mem::replace(current, claimed.clone()) != claimed) {
            // Let the ingress close what was just claimed before the Services bind it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        apply(&mut running, want, &caches.services, &recorder, &mut reported, &served).await;
        if !config.ingress_http.is_empty() || !config.ingress_https.is_empty() {
            let routes = ingress_routes::Routes::build(&caches.ingresses.state(), &caches.classes.state());
            let (certs, mut problems) = ingress::Certs::build(&routes, &caches.secrets);
            let (table, more) = ingress::Table::build(routes, &caches.services, &by_service);
            problems.extend(more);
            served.ingress.update(table, certs);
            report_ingress_problems(problems, &mut ingress_problems, &caches.ingresses, &recorder);
        }
        // Wait for a change (or the retry tick), then let a burst of changes settle.
        tokio::select! {
            next = changes.next() => if next.is_none() { return },
            _ = tokio::time::sleep(RETRY_BIND) => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        while futures::FutureExt::now_or_never(changes.next()).flatten().is_some() {}
    }
}

/// The ingress addresses a wanted TCP frontend takes.
fn ingress_claims(want: &BTreeMap<Frontend, Backends>, config: &ProxyConfig) -> HashSet<SocketAddr> {
    let ingress: HashSet<&SocketAddr> = config.ingress_http.iter().chain(&config.ingress_https).collect();
    want.keys().filter(|f| f.protocol == Protocol::Tcp && ingress.contains(&f.addr)).map(|f| f.addr).collect()
}

/// A warning event on the Ingress for each problem not reported before.
fn report_ingress_problems(problems: Vec<ingress::Problem>, reported: &mut HashSet<ingress::Problem>, ingresses: &Store<Ingress>, recorder: &Recorder) {
    let now: HashSet<ingress::Problem> = problems.into_iter().collect();
    for p in now.difference(reported) {
        tracing::warn!(ingress = %p.0, reason = p.1, message = %p.2, "ingress problem");
        let (ns, name) = p.0.split_once('/').unwrap_or_default();
        if let Some(ing) = ingresses.get(&ObjectRef::new(name).within(ns)) {
            recorder.record(ing.as_ref(), EventType::Warning, p.1, p.2.clone());
        }
    }
    *reported = now;
}

/// Brings the listeners to `want`: updates endpoints in place, binds new frontends and
/// closes those no longer wanted. A frontend that cannot be bound (the port is taken on
/// this node) gets a warning event on its Service, once, and is tried again later.
async fn apply(running: &mut HashMap<Frontend, Listening>, want: BTreeMap<Frontend, Backends>, services: &Store<Service>, recorder: &Recorder, reported: &mut HashSet<Frontend>, served: &Served) {
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
        match bind(frontend, route.clone(), served).await {
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

async fn bind(frontend: Frontend, route: Arc<Route>, served: &Served) -> std::io::Result<tokio::task::AbortHandle> {
    Ok(match frontend.protocol {
        Protocol::Tcp => {
            let socket = match frontend.addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.bind(frontend.addr)?;
            tokio::spawn(forward::serve_tcp(socket.listen(1024)?, route, Some(served.activator.clone()), served.requests.clone())).abort_handle()
        }
        Protocol::Udp => tokio::spawn(forward::serve_udp(tokio::net::UdpSocket::bind(frontend.addr).await?, route)).abort_handle(),
    })
}

/// The Service a `namespace/name:port` label names.
fn service_of(services: &Store<Service>, label: &str) -> Option<Arc<Service>> {
    let (ns, name) = services::service_key(label)?;
    services.get(&ObjectRef::new(name).within(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_frontends_on_ingress_addresses_claim_them() {
        let node: IpAddr = "192.0.2.1".parse().unwrap();
        let on = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let config = ProxyConfig {
            node_name: "n".into(),
            node_ips: vec![node],
            cluster_dns: "10.43.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            upstream_dns: vec![],
            ingress_http: vec![on(node, 80), on(localhost, 80)],
            ingress_https: vec![on(node, 443), on(localhost, 443)],
            proxied_requests: Arc::default(),
            ready_pods: Arc::default(),
        };
        let backends = Backends { service: "default/lb:80".into(), endpoints: vec![], affinity: None };
        let want: BTreeMap<Frontend, Backends> = [
            (Frontend { addr: on(node, 80), protocol: Protocol::Tcp }, backends.clone()),        // a LoadBalancer on 80
            (Frontend { addr: on(node, 443), protocol: Protocol::Udp }, backends.clone()),       // UDP leaves TCP 443 alone
            (Frontend { addr: "10.43.0.5:80".parse().unwrap(), protocol: Protocol::Tcp }, backends.clone()), // a ClusterIP
            (Frontend { addr: on(node, 8080), protocol: Protocol::Tcp }, backends),             // not an ingress port
        ]
        .into_iter()
        .collect();
        assert_eq!(ingress_claims(&want, &config), HashSet::from([on(node, 80)]));
    }
}
