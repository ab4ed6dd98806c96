//! The agent's HTTPS endpoint (kubelet's port 10250): container logs, which the API
//! server forwards `pods/log` requests to, and per-pod usage (`/stats/summary`). Callers
//! present the API server's client certificate or the cluster's bearer token. It serves
//! the certificate the cluster CA signed for this node ([`crate::serving_certificate`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::ResourceExt;
use serde_json::json;

use crate::channels::Upgrade;
use crate::Agent;
use crate::serving_certificate::ServingCertificate;
use crate::logs::{self, LogOptions};

/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Binds the endpoint and starts serving; returns the port it listens on and the
/// certificate it serves, which [`crate::serving_certificate::keep`] replaces.
pub async fn start(agent: Arc<Agent>) -> anyhow::Result<(u16, Arc<ServingCertificate>, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", agent.config.port)).await?;
    let port = listener.local_addr()?.port();
    let certificate = Arc::new(ServingCertificate::at_start(&agent)?);
    let tls = tls_config(certificate.clone(), &agent.config.cluster_ca)?;
    let metrics = Arc::new(crate::metrics::registry(&agent.config.metrics_of));
    let router = Router::new()
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route("/attach/{namespace}/{pod}/{container}", get(attach).post(attach))
        .route("/portForward/{namespace}/{pod}", get(port_forward).post(port_forward))
        .route("/stats/summary", get(stats))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || async move {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &metrics).expect("writing to a String cannot fail");
            ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        }))
        .layer(axum::middleware::from_fn_with_state(agent.clone(), authenticate))
        .with_state(agent);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let serving = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                // A certificate here was verified against the cluster CA by the handshake.
                let from_api_server = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).is_some_and(|c| names_api_server(c));
                let service = tower::ServiceExt::map_request(router, move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                    if from_api_server {
                        request.extensions_mut().insert(ApiServerCertificate);
                    }
                    request
                });
                let service = hyper_util::service::TowerToHyperService::new(service);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((port, certificate, serving))
}

/// The common name of the client certificate the API server calls agents with.
pub const API_SERVER_CLIENT: &str = "kube-apiserver-kubelet-client";

/// Marks a request on a connection whose client certificate is the API server's.
#[derive(Clone, Copy)]
struct ApiServerCertificate;

fn names_api_server(der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else { return false };
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) == Some(API_SERVER_CLIENT)
}

/// TLS for the endpoint; with the cluster CA, client certificates it signed are asked
/// for (not required: a caller may present the token instead).
fn tls_config(certificate: Arc<ServingCertificate>, cluster_ca: &[Vec<u8>]) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = if cluster_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cluster_ca {
            roots.add(CertificateDer::from(ca.clone()))?;
        }
        builder.with_client_cert_verifier(rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).allow_unauthenticated().build()?)
    };
    let mut config = builder.with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn authenticate(State(agent): State<Arc<Agent>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use skiff_core::credentials;
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| credentials::presented(v, false));
    let by_certificate = request.extensions().get::<ApiServerCertificate>().is_some();
    let by_token = !agent.config.token.is_empty() && presented.is_some_and(|p| credentials::same_secret(p.as_bytes(), agent.config.token.as_bytes()));
    let ok = by_certificate || by_token;
    if !ok {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    next.run(request).await
}

/// `kubectl exec`: a WebSocket session running the container's command ([`crate::exec`]).
async fn exec(State(agent): State<Arc<Agent>>, Path(target): Path<(String, String, String)>, request: axum::extract::Request) -> Response {
    let (query, headers) = (request.uri().query().unwrap_or_default().to_string(), request.headers().clone());
    crate::exec::handle(&agent.exec, target, &query, &headers, Upgrade::of(request).await)
}

/// `kubectl attach`: a WebSocket session following the container's output
/// ([`crate::attach`]).
async fn attach(State(agent): State<Arc<Agent>>, Path(target): Path<(String, String, String)>, request: axum::extract::Request) -> Response {
    let (query, headers) = (request.uri().query().unwrap_or_default().to_string(), request.headers().clone());
    crate::attach::handle(&agent.exec, target, &query, &headers, Upgrade::of(request).await)
}

/// `kubectl port-forward`: an SPDY (or the Python client's WebSocket) session copying
/// streams to the pod's ports ([`crate::port_forward`]).
async fn port_forward(State(agent): State<Arc<Agent>>, Path((namespace, pod)): Path<(String, String)>, request: axum::extract::Request) -> Response {
    let (query, headers) = (request.uri().query().unwrap_or_default().to_string(), request.headers().clone());
    let ip = crate::port_forward::pod_address(&agent, &namespace, &pod);
    crate::port_forward::handle(ip, format!("{namespace}/{pod}"), &query, &headers, Upgrade::of(request).await)
}

/// A Kubernetes `Status`, which the API server passes on to the client.
pub(crate) fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn container_logs(
    State(agent): State<Arc<Agent>>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    options: Result<Query<LogOptions>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(options) = match options {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &format!("invalid log options: {}", e.body_text())),
    };
    let Some(pod) = agent.pod(&namespace, &pod_name) else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("pods {pod_name:?} not found on node {}", agent.config.node_name));
    };
    let spec = pod.spec.clone().unwrap_or_default();
    if !spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == container) {
        return status(StatusCode::BAD_REQUEST, "BadRequest", &format!("container {container} is not valid for pod {pod_name}"));
    }
    let uid = pod.uid().unwrap_or_default();
    let runs = agent.logs.runs(&namespace, &pod_name, &uid, &container);
    let chosen = if options.previous { runs.iter().rev().nth(1) } else { runs.last() };
    let Some((run, path)) = chosen.cloned() else {
        return if options.previous {
            status(StatusCode::BAD_REQUEST, "BadRequest", &format!("previous terminated container {container:?} in pod {pod_name:?} not found"))
        } else {
            status(StatusCode::BAD_REQUEST, "BadRequest", &format!("container {container:?} in pod {pod_name:?} is waiting to start: ContainerCreating"))
        };
    };
    let content = match tokio::fs::read(&path).await {
        Ok(c) => c,
        Err(e) => return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &format!("reading {}: {e}", path.display())),
    };
    let complete = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut out = Vec::new();
    logs::render(&content[..complete], &options, &mut out);
    let full = logs::limit(&mut out, &options, 0);
    let headers = [(header::CONTENT_TYPE, "text/plain")];
    if !options.follow || full {
        return (StatusCode::OK, headers, out).into_response();
    }
    // Following: what is there, then new lines as they come, until the run ends.
    let state = Follow { agent, uid, container, run: run as i32, path, offset: complete as u64, sent: out.len() as u64, options, first: Some(out) };
    let stream = futures::stream::unfold(state, |mut f| async move {
        if let Some(first) = f.first.take() {
            return Some((Ok::<_, std::io::Error>(bytes_of(first)), f));
        }
        loop {
            let running = f.agent.is_running(&f.uid, &f.container, f.run);
            let content = tokio::fs::read(&f.path).await.ok()?;
            let new = content.get(f.offset as usize..).unwrap_or_default();
            let complete = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if complete > 0 {
                let mut out = Vec::new();
                let mut opts = f.options.clone();
                opts.tail_lines = None;
                opts.since_seconds = None;
                opts.since_time = None;
                logs::render(&new[..complete], &opts, &mut out);
                f.offset += complete as u64;
                let done = logs::limit(&mut out, &f.options, f.sent);
                f.sent += out.len() as u64;
                if done {
                    f.options.follow = false;
                }
                return Some((Ok(bytes_of(out)), f));
            }
            if !running || !f.options.follow {
                return None;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
}

fn bytes_of(v: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(v)
}

struct Follow {
    agent: Arc<Agent>,
    uid: String,
    container: String,
    run: i32,
    path: std::path::PathBuf,
    offset: u64,
    sent: u64,
    options: LogOptions,
    first: Option<Vec<u8>>,
}

/// Per-pod and per-container usage, shaped like kubelet's Summary API.
async fn stats(State(agent): State<Arc<Agent>>, _: HeaderMap) -> Response {
    use std::sync::atomic::Ordering;
    let now = jiff::Timestamp::now().to_string();
    let pods: Vec<_> = agent
        .usage()
        .into_iter()
        .map(|p| {
            let containers: Vec<_> = p.containers.iter().map(|(name, u)| {
                // `http` is Skiff's own: the requests an HTTP function took, for the
                // request metrics (custom.metrics.k8s.io) and the autoscaler.
                let mut c = json!({"name": name, "startTime": now,
                       "cpu": {"time": now, "usageCoreNanoSeconds": u.cpu_nanos.load(Ordering::Relaxed)},
                       "memory": {"time": now, "workingSetBytes": u.memory_bytes.load(Ordering::Relaxed), "usageBytes": u.memory_bytes.load(Ordering::Relaxed)}});
                if u.serves_http.load(Ordering::Relaxed) {
                    c["http"] = json!({"requests": u.requests.load(Ordering::Relaxed), "inFlight": u.in_flight.load(Ordering::Relaxed),
                                       "requestNanoSeconds": u.request_nanos.load(Ordering::Relaxed)});
                }
                c
            }).collect();
            let cpu: u64 = p.containers.values().map(|u| u.cpu_nanos.load(Ordering::Relaxed)).sum();
            let memory: u64 = p.containers.values().map(|u| u.memory_bytes.load(Ordering::Relaxed)).sum();
            json!({"podRef": {"name": p.name, "namespace": p.namespace}, "containers": containers,
                   "cpu": {"time": now, "usageCoreNanoSeconds": cpu}, "memory": {"time": now, "workingSetBytes": memory}})
        })
        .collect();
    // The node is the machine, as kubelet reports it; the agent's own process is a system
    // container of it.
    let rss = crate::node::proc_bytes("/proc/self/status", "VmRSS:").unwrap_or(0);
    // Skiff's own too: what the node's proxy and ingress sent to each endpoint, wherever
    // it runs, for the request metrics of pods that do not count their own.
    let proxied: Vec<_> = agent.config.proxied_requests.snapshot().into_iter()
        .map(|(ip, c)| json!({"podIP": ip.to_string(), "requests": c.requests, "inFlight": c.in_flight, "requestNanoSeconds": c.nanos}))
        .collect();
    let body = json!({
        "node": {"nodeName": agent.config.node_name,
                 "cpu": {"time": now, "usageCoreNanoSeconds": crate::node::cpu_busy_nanos().unwrap_or(0)},
                 "memory": {"time": now, "workingSetBytes": crate::node::memory_in_use().unwrap_or(0)},
                 "systemContainers": [{"name": "skiff-agent", "memory": {"time": now, "workingSetBytes": rss}}],
                 "runtime": {"compiledPrograms": agent.runtimes.wasm.compiled_count()}},
        "pods": pods,
        "proxied": proxied,
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
