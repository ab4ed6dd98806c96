//! From Services and EndpointSlices to what this node's proxy serves: each frontend
//! (an address, port and protocol: a ClusterIP, a NodePort, a LoadBalancer address) with
//! the endpoints it sends to, as kube-proxy computes them.
//!
//! Endpoints are the `ready` ones; when a Service has none, the `serving` ones that are
//! terminating (kube-proxy's fallback, so a Service whose every pod is rolling out still
//! answers). `internalTrafficPolicy: Local` limits ClusterIP traffic, and
//! `externalTrafficPolicy: Local` NodePort and LoadBalancer traffic, to this node's
//! endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use skiff_client::SERVICE_NAME_LABEL;


#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn parse(p: Option<&str>) -> Option<Protocol> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None, // SCTP is not proxied.
        }
    }
}

/// Where clients connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

/// Where a frontend's connections go.
#[derive(Debug, Clone, PartialEq)]
pub struct Backends {
    /// `namespace/name:port` for logs and events.
    pub service: String,
    pub endpoints: Vec<SocketAddr>,
    /// `sessionAffinity: ClientIP` and its timeout.
    pub affinity: Option<Duration>,
}

/// The Service (namespace, name) a `namespace/name:port` label names.
pub fn service_key(label: &str) -> Option<(&str, &str)> {
    let (ns, rest) = label.split_once('/')?;
    Some((ns, rest.split(':').next()?))
}

/// This node as the proxy sees it.
pub struct ThisNode<'a> {
    pub name: &'a str,
    /// Addresses LoadBalancer Services are served on.
    pub addresses: &'a [IpAddr],
    /// ClusterIPs served by something else on the node (the cluster DNS).
    pub reserved: &'a [IpAddr],
}

/// One endpoint of a Service port, as a slice lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// The endpoints of the named port (the name a Service port and a slice port share;
/// empty for a Service's single unnamed port) of one Service, from its slices.
pub fn endpoints_of<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>, port_name: &str, protocol: Protocol) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == port_name && Protocol::parse(p.protocol.as_deref()) == Some(protocol)).and_then(|p| p.port) else {
            continue;
        };
        for e in slice.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                out.push(Endpoint {
                    addr: SocketAddr::new(ip, port as u16),
                    node: e.node_name.clone(),
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                });
            }
        }
    }
    out.sort_by_key(|e| e.addr);
    out.dedup_by_key(|e| e.addr);
    out
}

/// The addresses traffic goes to: ready endpoints, else serving terminating ones; only
/// this node's when `local_only`.
pub fn usable(endpoints: &[Endpoint], node: &str, local_only: bool) -> Vec<SocketAddr> {
    let here = |e: &&Endpoint| !local_only || e.node.as_deref() == Some(node);
    let ready: Vec<SocketAddr> = endpoints.iter().filter(here).filter(|e| e.ready).map(|e| e.addr).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints.iter().filter(here).filter(|e| e.serving && e.terminating).map(|e| e.addr).collect()
}

/// EndpointSlices by the Service they belong to, `(namespace, name)`.
pub type SlicesByService<'a> = HashMap<(String, String), Vec<&'a EndpointSlice>>;

pub fn slices_by_service(slices: &[Arc<EndpointSlice>]) -> SlicesByService<'_> {
    let mut by_service: SlicesByService = HashMap::new();
    for s in slices {
        if let Some(svc) = s.labels().get(SERVICE_NAME_LABEL) {
            by_service.entry((s.namespace().unwrap_or_default(), svc.clone())).or_default().push(s);
        }
    }
    by_service
}

/// The slices of Service `name` in `ns`.
pub fn slices_of<'a>(by_service: &'a SlicesByService, ns: &str, name: &str) -> &'a [&'a EndpointSlice] {
    by_service.get(&(ns.to_string(), name.to_string())).map(Vec::as_slice).unwrap_or_default()
}

/// Every frontend this node serves, with its backends.
pub fn frontends(services: &[Arc<Service>], by_service: &SlicesByService, node: &ThisNode) -> BTreeMap<Frontend, Backends> {
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            continue;
        }
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let svc_slices = slices_of(by_service, &ns, &name);
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let secs = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds).unwrap_or(10_800);
            Duration::from_secs(secs.max(1) as u64)
        });
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let cluster_ips: Vec<IpAddr> = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter()).filter_map(|ip| ip.parse().ok()).collect();
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else { continue };
            let endpoints = endpoints_of(svc_slices.iter().copied(), port.name.as_deref().unwrap_or(""), protocol);
            let backends = |local: bool| Backends { service: format!("{ns}/{name}:{}", port_name(port)), endpoints: usable(&endpoints, node.name, local), affinity };
            let mut add = |ip: IpAddr, p: i32, local: bool| {
                if let Ok(p) = u16::try_from(p) {
                    out.insert(Frontend { addr: SocketAddr::new(ip, p), protocol }, backends(local));
                }
            };
            for ip in cluster_ips.iter().filter(|ip| !node.reserved.contains(ip)) {
                add(*ip, port.port, internal_local);
            }
            for ip in spec.external_ips.iter().flatten().filter_map(|ip| ip.parse().ok()) {
                add(ip, port.port, external_local);
            }
            if matches!(kind, "NodePort" | "LoadBalancer")
                && let Some(node_port) = port.node_port
            {
                add(IpAddr::V4(Ipv4Addr::UNSPECIFIED), node_port, external_local);
            }
            if kind == "LoadBalancer" {
                for ip in node.addresses {
                    add(*ip, port.port, external_local);
                }
            }
        }
    }
    out
}

/// A Service port as routes are labelled with it: its name, or its number when unnamed.
pub(crate) fn port_name(port: &ServicePort) -> String {
    port.name.clone().unwrap_or_else(|| port.port.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})).unwrap())
    }

    fn slice(endpoints: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }))
            .unwrap(),
        )
    }

    fn ep(ip: &str, node: &str, ready: bool, terminating: bool) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}})
    }

    const NODE: ThisNode = ThisNode { name: "n1", addresses: &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))], reserved: &[IpAddr::V4(Ipv4Addr::new(10, 43, 0, 10))] };

    fn fe(addr: &str) -> Frontend {
        Frontend { addr: addr.parse().unwrap(), protocol: Protocol::Tcp }
    }

    #[test]
    fn cluster_ip_sends_to_ready_endpoints() {
        let svc = service(json!({"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}));
        let s = slice(json!([ep("10.42.0.2", "n1", true, false), ep("10.42.1.2", "n2", true, false), ep("10.42.0.3", "n1", false, false)]));
        let f = frontends(&[svc], &slices_by_service(&[s]), &NODE);
        assert_eq!(f.len(), 1);
        let b = &f[&fe("10.43.0.5:80")];
        assert_eq!(b.endpoints, ["10.42.0.2:8080".parse().unwrap(), "10.42.1.2:8080".parse::<SocketAddr>().unwrap()]);
        assert_eq!(b.service, "default/web:http");
        assert_eq!(b.affinity, None);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let svc = service(json!({"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80}]}));
        let rolling = slice(json!([ep("10.42.0.2", "n1", false, true), ep("10.42.0.3", "n1", true, false)]));
        assert_eq!(frontends(&[svc.clone()], &slices_by_service(&[rolling]), &NODE)[&fe("10.43.0.5:80")].endpoints, ["10.42.0.3:8080".parse::<SocketAddr>().unwrap()]);
        let draining = slice(json!([ep("10.42.0.2", "n1", false, true), ep("10.42.0.4", "n1", false, false)]));
        assert_eq!(frontends(&[svc], &slices_by_service(&[draining]), &NODE)[&fe("10.43.0.5:80")].endpoints, ["10.42.0.2:8080".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn node_ports_load_balancers_and_traffic_policies() {
        let svc = service(json!({"type": "LoadBalancer", "clusterIP": "10.43.0.5", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "ClientIP", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}));
        let s = slice(json!([ep("10.42.0.2", "n1", true, false), ep("10.42.1.2", "n2", true, false)]));
        let f = frontends(&[svc], &slices_by_service(&[s]), &NODE);
        assert_eq!(f.len(), 3);
        assert_eq!(f[&fe("10.43.0.5:80")].endpoints.len(), 2);
        assert_eq!(f[&fe("0.0.0.0:30080")].endpoints, ["10.42.0.2:8080".parse::<SocketAddr>().unwrap()]);
        assert_eq!(f[&fe("192.0.2.1:80")].endpoints.len(), 1);
        assert_eq!(f[&fe("10.43.0.5:80")].affinity, Some(Duration::from_secs(10_800)));
    }

    #[test]
    fn skips_external_names_headless_reserved_and_sctp() {
        let services = [
            service(json!({"type": "ExternalName", "externalName": "example.com"})),
            service(json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]})),
            service(json!({"clusterIP": "10.43.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]})),
            service(json!({"clusterIP": "10.43.0.6", "ports": [{"name": "s", "port": 9, "protocol": "SCTP"}, {"name": "u", "port": 9, "protocol": "UDP"}]})),
        ];
        let f = frontends(&services, &HashMap::new(), &NODE);
        assert_eq!(f.keys().copied().collect::<Vec<_>>(), [Frontend { addr: "10.43.0.6:9".parse().unwrap(), protocol: Protocol::Udp }]);
        assert!(f.values().all(|b| b.endpoints.is_empty()));
    }
}
