//! Cluster DNS, as CoreDNS's kubernetes plugin answers it, served by every node on the
//! `kube-dns` ClusterIP (UDP and TCP port 53) with hickory-server:
//!
//! - `svc.ns.svc.cluster.local`: A of the ClusterIP; for a headless Service, the A of
//!   each ready endpoint; for an ExternalName Service, a CNAME;
//! - `_port._proto.svc.ns.svc.cluster.local`: SRV per named port (per endpoint when
//!   headless, naming it `hostname.svc.ns…` or `a-b-c-d.svc.ns…`), and those names' A;
//! - `a-b-c-d.ns.pod.cluster.local`: A of the pod address the name spells;
//! - anything else is forwarded to the host's resolvers (`/etc/resolv.conf`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, Message, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use crate::services::{SlicesByService, slices_of};

/// Seconds answers may be cached (CoreDNS's kubernetes plugin default).
const TTL: u32 = 5;
/// How long an upstream resolver gets to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// One answer record, before it becomes wire format.
#[derive(Debug, Clone, PartialEq)]
pub enum Rec {
    Addr(IpAddr),
    Cname(String),
    Srv { port: u16, target: String },
}

/// What a name resolves to.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The name does not exist.
    NxDomain,
    /// Records of the asked type (none: the name exists, but has no such records).
    Records(Vec<Rec>),
    /// Not a cluster name: ask the host's resolvers.
    Forward,
}

/// The cluster's names, rebuilt from Services and EndpointSlices on each change.
#[derive(Debug, Default)]
pub struct Records {
    domain: String,
    /// Lower-case names without the trailing dot.
    names: HashMap<String, Vec<Rec>>,
}

impl Records {
    pub fn build(domain: &str, services: &[Arc<Service>], by_service: &SlicesByService) -> Records {
        let mut names: HashMap<String, Vec<Rec>> = HashMap::new();
        for svc in services {
            let Some(spec) = &svc.spec else { continue };
            let ns = svc.namespace().unwrap_or_default();
            let base = format!("{}.{ns}.svc.{domain}", svc.name_any());
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = &spec.external_name {
                    names.entry(base).or_default().push(Rec::Cname(target.trim_end_matches('.').to_lowercase()));
                }
                continue;
            }
            let named_ports = spec.ports.iter().flatten().filter_map(|p| Some((p.name.clone()?, p.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase(), p.port)));
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if !headless {
                let Some(ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()) else { continue };
                names.entry(base.clone()).or_default().push(Rec::Addr(ip));
                for (port, proto, number) in named_ports {
                    names.entry(format!("_{port}._{proto}.{base}")).or_default().push(Rec::Srv { port: number as u16, target: base.clone() });
                }
                continue;
            }
            // Headless: every ready endpoint by address, by its own name, and in SRV.
            names.entry(base.clone()).or_default();
            let named: Vec<(String, String)> = named_ports.map(|(p, proto, _)| (p, proto)).collect();
            for slice in slices_of(by_service, &ns, &svc.name_any()) {
                for e in slice.endpoints.iter().flatten().filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)) {
                    for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                        let host = e.hostname.clone().unwrap_or_else(|| ip.to_string().replace(['.', ':'], "-"));
                        let own = format!("{host}.{base}");
                        names.entry(base.clone()).or_default().push(Rec::Addr(ip));
                        names.entry(own.clone()).or_default().push(Rec::Addr(ip));
                        for (port, proto) in &named {
                            let number = slice.ports.iter().flatten().find(|p| p.name.as_ref() == Some(port)).and_then(|p| p.port);
                            if let Some(number) = number {
                                names.entry(format!("_{port}._{proto}.{base}")).or_default().push(Rec::Srv { port: number as u16, target: own.clone() });
                            }
                        }
                    }
                }
            }
        }
        for recs in names.values_mut() {
            recs.dedup();
        }
        Records { domain: domain.to_string(), names }
    }

    /// The answer to a question about `name` (any case, with or without the final dot).
    pub fn lookup(&self, name: &str, qtype: RecordType) -> Answer {
        let name = name.trim_end_matches('.').to_lowercase();
        let Some(local) = name.strip_suffix(&self.domain).filter(|rest| rest.is_empty() || rest.ends_with('.')) else {
            return Answer::Forward;
        };
        let local = local.trim_end_matches('.');
        let wanted = |r: &Rec| {
            matches!(
                (r, qtype),
                (Rec::Addr(IpAddr::V4(_)), RecordType::A)
                    | (Rec::Addr(IpAddr::V6(_)), RecordType::AAAA)
                    | (Rec::Cname(_), RecordType::A | RecordType::AAAA | RecordType::CNAME)
                    | (Rec::Srv { .. }, RecordType::SRV)
            )
        };
        if let Some(recs) = self.names.get(&name) {
            return Answer::Records(recs.iter().filter(|r| wanted(r)).cloned().collect());
        }
        // Pods by address: a-b-c-d.namespace.pod.cluster.local.
        let labels: Vec<&str> = local.split('.').collect();
        if let [addr, _ns, "pod"] = labels.as_slice()
            && let Ok(ip) = addr.replace('-', ".").parse::<Ipv4Addr>()
        {
            let rec = Rec::Addr(IpAddr::V4(ip));
            return Answer::Records(if wanted(&rec) { vec![rec] } else { vec![] });
        }
        // The zone's own structure (`svc.cluster.local`, a namespace) exists with no records.
        match labels.as_slice() {
            [""] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => Answer::Records(vec![]),
            _ => Answer::NxDomain,
        }
    }
}

/// The DNS server's request handler: cluster names from `records`, the rest forwarded.
pub struct ClusterDns {
    pub records: Arc<RwLock<Arc<Records>>>,
    pub upstreams: Vec<SocketAddr>,
}

/// The host's resolvers from `/etc/resolv.conf`, leaving out `skip` (the cluster DNS
/// itself, which would loop).
pub fn host_resolvers(resolv_conf: &str, skip: IpAddr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .filter(|ip| *ip != skip)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl ClusterDns {
    /// Asks the upstream resolvers in turn; the first answer wins.
    async fn forward(&self, query: &[u8]) -> Option<Message> {
        for upstream in &self.upstreams {
            let bind: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
            let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else { continue };
            if socket.send_to(query, upstream).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            match tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => match Message::from_vec(&buf[..n]) {
                    Ok(m) => return Some(m),
                    Err(e) => tracing::debug!(%upstream, error = %e, "upstream DNS answer unreadable"),
                },
                _ => tracing::debug!(%upstream, "upstream DNS did not answer"),
            }
        }
        None
    }
}

fn to_record(owner: &Name, rec: &Rec) -> Option<Record> {
    let rdata = match rec {
        Rec::Addr(IpAddr::V4(ip)) => RData::A(A(*ip)),
        Rec::Addr(IpAddr::V6(ip)) => RData::AAAA(AAAA(*ip)),
        Rec::Cname(target) => RData::CNAME(CNAME(Name::from_ascii(format!("{target}.")).ok()?)),
        Rec::Srv { port, target } => RData::SRV(SRV::new(0, 100, *port, Name::from_ascii(format!("{target}.")).ok()?)),
    };
    Some(Record::from_rdata(owner.clone(), TTL, rdata))
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::new(&request.queries, None);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let Some(query) = request.queries.queries().first() else {
            meta.response_code = ResponseCode::FormErr;
            return send(&mut response, builder.build_no_records(meta), request).await;
        };
        let owner: Name = query.name().into();
        let answer = self.records.read().unwrap().lookup(&owner.to_ascii(), query.query_type());
        match answer {
            Answer::NxDomain => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                send(&mut response, builder.build_no_records(meta), request).await
            }
            Answer::Records(recs) => {
                meta.authoritative = true;
                let records: Vec<Record> = recs.iter().filter_map(|r| to_record(&owner, r)).collect();
                send(&mut response, builder.build(meta, records.iter(), [], [], []), request).await
            }
            Answer::Forward => match self.forward(request.as_slice()).await {
                Some(upstream) => {
                    meta.response_code = upstream.metadata.response_code;
                    meta.truncation = upstream.metadata.truncation;
                    send(&mut response, builder.build(meta, upstream.answers.iter(), upstream.authorities.iter(), [], upstream.additionals.iter().filter(|r| r.record_type() != RecordType::OPT)), request).await
                }
                None => {
                    meta.response_code = ResponseCode::ServFail;
                    send(&mut response, builder.build_no_records(meta), request).await
                }
            },
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    message: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "DNS answer not sent");
            let mut meta = Metadata::response_from_request(&request.metadata);
            meta.response_code = ResponseCode::ServFail;
            Header { metadata: meta, counts: Default::default() }.into()
        }
    }
}

/// Serves cluster DNS on `addr` (UDP and TCP) until the process ends.
pub async fn serve(addr: SocketAddr, handler: ClusterDns) -> std::io::Result<()> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64);
    tracing::info!(%addr, "cluster DNS serving");
    server.block_until_done().await.map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records() -> Records {
        let svc = |name: &str, spec: serde_json::Value| Arc::new(serde_json::from_value::<Service>(json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})).unwrap());
        let services = [
            svc("web", json!({"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80}]})),
            svc("db", json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]})),
            svc("ext", json!({"type": "ExternalName", "externalName": "example.com."})),
        ];
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432}],
            "endpoints": [
                {"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.8"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.9"], "conditions": {"ready": false}},
            ],
        }))
        .unwrap();
        Records::build("cluster.local", &services, &crate::services::slices_by_service(&[Arc::new(slice)]))
    }

    fn addrs(a: Answer) -> Vec<String> {
        match a {
            Answer::Records(r) => r.iter().map(|r| format!("{r:?}")).collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn services_resolve_to_cluster_ips_and_srv() {
        let r = records();
        assert_eq!(addrs(r.lookup("web.ns.svc.cluster.local.", RecordType::A)), ["Addr(10.43.0.5)"]);
        assert_eq!(addrs(r.lookup("WEB.ns.svc.Cluster.Local", RecordType::A)), ["Addr(10.43.0.5)"]);
        assert_eq!(addrs(r.lookup("web.ns.svc.cluster.local", RecordType::AAAA)), Vec::<String>::new());
        assert_eq!(addrs(r.lookup("_http._tcp.web.ns.svc.cluster.local", RecordType::SRV)), [r#"Srv { port: 80, target: "web.ns.svc.cluster.local" }"#]);
        assert_eq!(r.lookup("nope.ns.svc.cluster.local", RecordType::A), Answer::NxDomain);
        assert_eq!(r.lookup("example.org", RecordType::A), Answer::Forward);
        assert_eq!(r.lookup("notcluster.local", RecordType::A), Answer::Forward);
    }

    #[test]
    fn headless_services_name_their_ready_pods() {
        let r = records();
        assert_eq!(addrs(r.lookup("db.ns.svc.cluster.local", RecordType::A)), ["Addr(10.42.0.7)", "Addr(10.42.0.8)"]);
        assert_eq!(addrs(r.lookup("db-0.db.ns.svc.cluster.local", RecordType::A)), ["Addr(10.42.0.7)"]);
        assert_eq!(addrs(r.lookup("10-42-0-8.db.ns.svc.cluster.local", RecordType::A)), ["Addr(10.42.0.8)"]);
        assert_eq!(r.lookup("10-42-0-9.db.ns.svc.cluster.local", RecordType::A), Answer::NxDomain);
        assert_eq!(addrs(r.lookup("_pg._tcp.db.ns.svc.cluster.local", RecordType::SRV)).len(), 2);
    }

    #[test]
    fn external_names_pods_and_zone_structure() {
        let r = records();
        assert_eq!(addrs(r.lookup("ext.ns.svc.cluster.local", RecordType::A)), [r#"Cname("example.com")"#]);
        assert_eq!(addrs(r.lookup("10-42-1-3.ns.pod.cluster.local", RecordType::A)), ["Addr(10.42.1.3)"]);
        assert_eq!(addrs(r.lookup("ns.svc.cluster.local", RecordType::A)), Vec::<String>::new());
        assert_eq!(r.lookup("x.y.ns.pod.cluster.local", RecordType::A), Answer::NxDomain);
    }

    #[test]
    fn resolv_conf_upstreams_skip_the_cluster_dns() {
        let conf = "# comment\nnameserver 10.43.0.10\nnameserver 192.0.2.53\nsearch example\nnameserver bogus\n";
        assert_eq!(host_resolvers(conf, "10.43.0.10".parse().unwrap()), ["192.0.2.53:53".parse::<SocketAddr>().unwrap()]);
    }
}
