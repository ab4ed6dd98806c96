//! The ingress controller's data path: an HTTP/1.1 and HTTP/2 server (cleartext and
//! TLS with SNI, certificates from `kubernetes.io/tls` Secrets) that routes each request
//! by the Ingress rules to one of its Service's endpoints, round robin, over keep-alive
//! connections it pools per endpoint. An endpoint that refuses the connection, or a pooled
//! connection that closed before the request went out, is skipped for the next one.
//! Requests carry `X-Forwarded-For/-Host/-Proto/-Port`; WebSocket (and other) upgrades are
//! relayed both ways once the endpoint agrees. Requests are counted per endpoint, for the
//! request metrics of pods that do not count their own. A request for a Service with no endpoint is
//! held while the activator scales its workload from zero, and its response tells how long
//! in `Skiff-Cold-Start`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::runtime::reflector::{ObjectRef, Store};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use skiff_core::request_counts::RequestCounts;

use crate::activator::{Activator, NotHeld};
use crate::ingress_routes::{Backend, Routes, wildcard_of};
use crate::forward::{self, ATTEMPTS, accept};
use crate::services::{Protocol, SlicesByService, endpoints_of, slices_of, usable};

type Body = BoxBody<Bytes, hyper::Error>;

/// Idle keep-alive connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;
/// Headers that describe one connection and are not passed on (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization"];

/// A problem with an Ingress worth telling its owner: (`namespace/name`, reason, message).
pub type Problem = (String, &'static str, String);

/// Routes with their endpoints resolved.
#[derive(Default)]
pub struct Table {
    routes: Routes,
    targets: HashMap<Backend, Vec<SocketAddr>>,
}

impl Table {
    /// Resolves every backend the routes name to its Service's endpoints.
    pub fn build(routes: Routes, services: &Store<Service>, by_service: &SlicesByService) -> (Table, Vec<Problem>) {
        let mut targets = HashMap::new();
        let mut problems = Vec::new();
        for (ingress, b) in &routes.backends {
            let Some(svc) = services.get(&ObjectRef::new(&b.service).within(&b.namespace)) else {
                problems.push((ingress.clone(), "ServiceNotFound", format!("the backend Service {:?} does not exist", b.service)));
                continue;
            };
            let ports = svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
            let port = ports.iter().find(|p| b.port.is(p));
            let Some(port) = port else {
                problems.push((ingress.clone(), "ServicePortNotFound", format!("the Service {:?} has no port {:?}", b.service, b.port)));
                continue;
            };
            let of_service = slices_of(by_service, &b.namespace, &b.service).iter().copied();
            let endpoints = endpoints_of(of_service, port.name.as_deref().unwrap_or(""), Protocol::Tcp);
            targets.insert(b.clone(), usable(&endpoints, "", false));
        }
        (Table { routes, targets }, problems)
    }
}

/// Certificates by server name, from the Ingresses' TLS sections.
#[derive(Default, Debug)]
pub struct Certs {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no known name: the first certificate listed.
    fallback: Option<Arc<CertifiedKey>>,
}

impl Certs {
    pub fn build(routes: &Routes, secrets: &Store<Secret>) -> (Certs, Vec<Problem>) {
        let mut certs = Certs::default();
        let mut problems = Vec::new();
        for tls in &routes.tls {
            let id = tls.ingress.clone();
            let Some(secret) = secrets.get(&ObjectRef::new(&tls.secret).within(&tls.namespace)) else {
                problems.push((id, "SecretNotFound", format!("the TLS Secret {:?} does not exist", tls.secret)));
                continue;
            };
            let key = match certified_key(&secret) {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    problems.push((id, "InvalidCertificate", format!("the TLS Secret {:?} cannot be used: {e}", tls.secret)));
                    continue;
                }
            };
            certs.fallback.get_or_insert_with(|| key.clone());
            for host in &tls.hosts {
                certs.by_host.entry(host.clone()).or_insert_with(|| key.clone());
            }
        }
        (certs, problems)
    }

    fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name.map(str::to_lowercase) else { return self.fallback.clone() };
        self.by_host.get(&name).or_else(|| wildcard_of(&name).and_then(|w| self.by_host.get(&w))).cloned().or_else(|| self.fallback.clone())
    }
}

fn certified_key(secret: &Secret) -> Result<CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let data = secret.data.as_ref().ok_or("it has no data")?;
    let crt = data.get("tls.crt").ok_or("it has no tls.crt")?;
    let key = data.get("tls.key").ok_or("it has no tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt.0).collect::<Result<_, _>>().map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key.0).map_err(|e| format!("tls.key: {e}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("tls.key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The ingress server's current routes and certificates.
#[derive(Default)]
pub struct IngressServer {
    table: RwLock<Arc<Table>>,
    /// Told of every new table, for the requests held for a scale from zero.
    table_changed: tokio::sync::watch::Sender<()>,
    certs: Arc<RwLock<Arc<Certs>>>,
    next: AtomicUsize,
    pool: Arc<Pool>,
    activator: Option<Arc<Activator>>,
    counts: Arc<RequestCounts>,
}

/// The response header that tells how long a request was held for a scale from zero.
const COLD_START_HEADER: &str = "skiff-cold-start";

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

/// Idle HTTP/1.1 connections to endpoints, for the next requests.
#[derive(Default)]
struct Pool {
    idle: std::sync::Mutex<HashMap<SocketAddr, Vec<Sender>>>,
}

impl Pool {
    /// An idle connection to `endpoint` that is still open.
    fn take(&self, endpoint: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(&endpoint)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for reuse once its response has been read.
    fn give_back(self: &Arc<Self>, endpoint: SocketAddr, mut sender: Sender) {
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = pool.idle.lock().unwrap();
                let list = idle.entry(endpoint).or_default();
                if list.len() < MAX_IDLE_PER_ENDPOINT {
                    list.push(sender);
                }
            }
        });
    }
}

#[derive(Debug)]
struct SniResolver(Arc<RwLock<Arc<Certs>>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap().for_name(hello.server_name())
    }
}

impl IngressServer {
    /// An ingress whose requests for a Service at zero the activator holds, counting the
    /// requests it sends to each endpoint in `counts`.
    pub fn new(activator: Arc<Activator>, counts: Arc<RequestCounts>) -> IngressServer {
        IngressServer { activator: Some(activator), counts, ..Default::default() }
    }

    pub fn update(&self, table: Table, certs: Certs) {
        *self.table.write().unwrap() = Arc::new(table);
        *self.certs.write().unwrap() = Arc::new(certs);
        self.table_changed.send_replace(());
    }

    /// Holds a request for a Service with no endpoint until it has one, where the
    /// activator scales its workload from zero; else the 503's message.
    async fn hold(&self, backend: &Backend) -> Result<(Vec<SocketAddr>, std::time::Duration), String> {
        let none = format!("no endpoints for Service {}/{}\n", backend.namespace, backend.service);
        let Some(activator) = &self.activator else { return Err(none) };
        let mut changed = self.table_changed.subscribe();
        let unavailable = |e: NotHeld| e.into_reason().map_or_else(|| none.clone(), |why| format!("{why}\n"));
        let holding = activator.hold(&backend.namespace, &backend.service).map_err(unavailable)?;
        let mut local_pods = holding.local_changes();
        loop {
            holding.wake().await.map_err(unavailable)?;
            let wake_again = tokio::time::Instant::now() + crate::activator::WAKE_AGAIN_AFTER;
            loop {
                // A pod of this node is taken as soon as its agent finds it ready.
                let mut endpoints = holding.local_endpoints(|p| backend.port.is(p));
                if endpoints.is_empty() {
                    endpoints = self.table.read().unwrap().targets.get(backend).cloned().unwrap_or_default();
                }
                if !endpoints.is_empty() {
                    return Ok((endpoints, holding.released()));
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = local_pods.changed() => {}
                    _ = tokio::time::sleep_until(wake_again) => break,
                }
            }
        }
    }

    /// Serves cleartext HTTP/1.1 and HTTP/2 (prior knowledge) on `listener`.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) {
        self.accept_loop(listener, None).await
    }

    /// Serves HTTPS on `listener`, choosing the certificate by SNI; ALPN offers h2.
    pub async fn serve_https(self: Arc<Self>, listener: TcpListener) {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver(self.certs.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        self.accept_loop(listener, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        loop {
            let (tcp, peer) = accept(&listener).await;
            let (server, tls) = (self.clone(), tls.clone());
            tokio::spawn(async move {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req, peer, scheme, port).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    None => builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).await,
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                };
            });
        }
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr, scheme: &'static str, port: u16) -> Response<Body> {
        let host = req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(String::from)).unwrap_or_default();
        let table = self.table.read().unwrap().clone();
        let Some(backend) = table.routes.route(&host, req.uri().path()) else {
            return text(StatusCode::NOT_FOUND, "default backend - 404\n");
        };
        let mut endpoints = table.targets.get(backend).cloned().unwrap_or_default();
        let mut cold_start = None;
        if endpoints.is_empty() {
            match self.hold(backend).await {
                Ok((held, waited)) => (endpoints, cold_start) = (held, Some(waited)),
                Err(why) => return text(StatusCode::SERVICE_UNAVAILABLE, &why),
            }
        }
        let upgrade = wants_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        prepare_upstream(&mut req, &host, peer, scheme, port, upgrade);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut failure = String::from("no endpoint accepted a connection");
        // Each of ATTEMPTS tries takes the next endpoint (the same one again when there are fewer).
        for i in 0..ATTEMPTS {
            let endpoint = endpoints[(start + i) % endpoints.len()];
            // A pooled connection if there is one (an upgrade takes its connection away).
            let pooled = if upgrade { None } else { self.pool.take(endpoint) };
            let mut sender = match pooled {
                Some(s) => s,
                None => match dial(endpoint).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%endpoint, error = %e, "ingress endpoint did not accept; trying the next");
                        failure = e;
                        continue;
                    }
                },
            };
            let counting = self.counts.start(endpoint.ip());
            let sent = sender.try_send_request(req).await;
            drop(counting);
            match sent {
                Ok(resp) => {
                    if !upgrade {
                        self.pool.give_back(endpoint, sender);
                    }
                    let mut resp = respond(resp, client_upgrade);
                    if let Some(waited) = cold_start
                        && let Ok(v) = HeaderValue::from_str(&format!("{:.1}ms", waited.as_secs_f64() * 1000.0))
                    {
                        resp.headers_mut().insert(COLD_START_HEADER, v);
                    }
                    return resp;
                }
                // The request never left (the connection had closed): try the next endpoint.
                Err(mut e) => match e.take_message() {
                    Some(r) => {
                        req = r;
                        failure = e.into_error().to_string();
                    }
                    None => return text(StatusCode::BAD_GATEWAY, &format!("endpoint failed: {}\n", e.into_error())),
                },
            }
        }
        text(StatusCode::BAD_GATEWAY, &format!("Service {}/{}: {failure}\n", backend.namespace, backend.service))
    }
}

/// A new HTTP/1.1 connection to `endpoint` (with upgrades allowed).
async fn dial(endpoint: SocketAddr) -> Result<Sender, String> {
    let stream = forward::dial(endpoint).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("{endpoint}: {e}"))?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

/// The endpoint's answer as the client's: an accepted upgrade joins the two connections.
fn respond(mut resp: Response<Incoming>, client_upgrade: Option<hyper::upgrade::OnUpgrade>) -> Response<Body> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
            }
        });
        return resp.map(|_| Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    resp.map(BodyExt::boxed)
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Turns the client's request into the endpoint's: origin-form URI, a Host header (HTTP/2
/// requests carry only `:authority`), no hop-by-hop headers, and the X-Forwarded set.
fn prepare_upstream(req: &mut Request<Incoming>, host: &str, peer: SocketAddr, scheme: &str, port: u16, upgrade: bool) {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    *req.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    *req.version_mut() = http::Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if let Ok(h) = HeaderValue::from_str(host) {
        headers.insert(header::HOST, h.clone());
        headers.insert(HeaderName::from_static("x-forwarded-host"), h);
    }
    let client = peer.ip().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client.clone(),
    };
    let set = |headers: &mut http::HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set(headers, "x-forwarded-for", &forwarded_for);
    set(headers, "x-real-ip", &client);
    set(headers, "x-forwarded-proto", scheme);
    set(headers, "x-forwarded-port", &port.to_string());
}

/// Drops the headers that describe one connection; an upgrade keeps `Connection: upgrade`
/// and `Upgrade`, which the endpoint must see.
fn strip_hop_by_hop(headers: &mut http::HeaderMap, upgrade: bool) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<String> = headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',').map(|t| t.trim().to_lowercase())).collect();
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    for name in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(named) {
        headers.remove(name.as_str());
    }
    if upgrade && let Some(u) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn cache<K: kube::Resource<DynamicType = ()> + Clone + k8s_openapi::serde::de::DeserializeOwned + 'static>(objects: Vec<serde_json::Value>) -> Store<K> {
        let (reader, mut writer) = store::<K>();
        for o in objects {
            writer.apply_watcher_event(&Event::Apply(serde_json::from_value(o).unwrap()));
        }
        reader
    }

    #[test]
    fn bad_references_become_problems_not_routes() {
        let ingress: Arc<k8s_openapi::api::networking::v1::Ingress> = Arc::new(serde_json::from_value(json!({"metadata": {"name": "shop", "namespace": "ns"}, "spec": {
            "tls": [{"hosts": ["a.example"], "secretName": "missing"}, {"hosts": ["b.example"], "secretName": "garbage"}],
            "rules": [{"http": {"paths": [
                {"path": "/x", "pathType": "Prefix", "backend": {"service": {"name": "nowhere", "port": {"number": 80}}}},
                {"path": "/y", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "grpc"}}}},
            ]}}]}})).unwrap());
        let routes = Routes::build(&[ingress], &[]);
        let secrets: Store<Secret> = cache(vec![json!({"metadata": {"name": "garbage", "namespace": "ns"}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": "bm90IGEgY2VydA==", "tls.key": "bm90IGEga2V5"}})]);
        let (certs, problems) = Certs::build(&routes, &secrets);
        assert!(certs.for_name(Some("a.example")).is_none());
        let reasons: Vec<(&str, &str)> = problems.iter().map(|(i, r, _)| (i.as_str(), *r)).collect();
        assert_eq!(reasons, [("ns/shop", "SecretNotFound"), ("ns/shop", "InvalidCertificate")]);
        assert!(problems[1].2.contains("holds no certificate"), "{}", problems[1].2);
        let services: Store<Service> = cache(vec![json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": {"ports": [{"name": "http", "port": 80}]}})]);
        let (table, problems) = Table::build(routes, &services, &Default::default());
        let reasons: Vec<&str> = problems.iter().map(|(_, r, _)| *r).collect();
        assert_eq!(reasons, ["ServiceNotFound", "ServicePortNotFound"]);
        assert!(table.targets.is_empty());
    }

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_stay() {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private, Upgrade"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(h.get("x-private").is_none());
    }

    #[test]
    fn certificates_by_exact_wildcard_and_fallback_name() {
        let key = |name: &str| {
            let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            let der = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
            Arc::new(CertifiedKey::new(vec![ck.cert.der().clone()], rustls::crypto::ring::sign::any_supported_type(&der).unwrap()))
        };
        let (a, w) = (key("a.example"), key("*.example"));
        let certs = Certs { by_host: HashMap::from([("a.example".to_string(), a.clone()), ("*.example".to_string(), w.clone())]), fallback: Some(a.clone()) };
        assert!(Arc::ptr_eq(&certs.for_name(Some("A.example")).unwrap(), &a));
        assert!(Arc::ptr_eq(&certs.for_name(Some("b.example")).unwrap(), &w));
        assert!(Arc::ptr_eq(&certs.for_name(Some("other.org")).unwrap(), &a));
        assert!(Arc::ptr_eq(&certs.for_name(None).unwrap(), &a));
    }
}
