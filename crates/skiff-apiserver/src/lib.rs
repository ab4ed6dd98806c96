//! Skiff's API server: the Kubernetes REST API (discovery, CRUD, watch, patch, the status
//! and scale subresources, Table output, OpenAPI) over a [`skiff_store::Store`].
//!
//! Requests pass authentication (a bearer token) and authorization ([`authz`]: RBAC),
//! then the object pipeline in
//! [`objects`]: metadata, defaulting, typed decoding, validation, allocation, storage.

pub mod audit;
pub mod authz;
pub mod certificate_requests;
pub mod convert;
pub mod defaults;
pub mod deletion;
pub mod discovery;
pub mod error;
pub mod field_manager;
pub mod limit_ranger;
pub mod metrics_api;
pub mod namespace_lifecycle;
mod node_proxy;
pub mod objects;
pub mod openapi;
pub mod openapi_protobuf;
pub mod patch;
pub mod pod_security;
pub mod pod_logs;
pub mod pod_streams;
pub mod protobuf;
pub mod request;
pub mod resource_quota;
pub mod server_metrics;
pub mod rest;
pub mod service_accounts;
pub mod services;
pub mod store_follow;
pub mod strategy;
pub mod table;
pub mod tls;
pub mod typed;
pub mod validation;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, header};
use serde_json::{Value, json};
use skiff_core::{credentials, resources};
use skiff_store::Store;

use crate::error::ApiError;
use crate::objects::WriteOptions;

/// The Kubernetes version whose API Skiff serves (what `/version` reports).
pub const KUBERNETES_VERSION: &str = "v1.32.0";

#[derive(Debug, Clone)]
pub struct Config {
    /// The bearer token every request (but `/version` and health) must carry.
    pub token: String,
    /// Request bodies above this many bytes get 413.
    pub max_body_bytes: usize,
    pub service_cidr: skiff_core::Cidr,
    pub node_port_range: (u16, u16),
    /// How long a watch without `timeoutSeconds` lasts.
    pub watch_timeout: Duration,
    pub bookmark_interval: Duration,
    /// What ServiceAccount tokens are signed with (none: no tokens are issued).
    pub service_account_key: Option<authz::tokens::SigningKey>,
    /// Impersonation and RBAC on every request. Always on in `skiff up` and `skiff
    /// server` (no flag turns it off); the API bench turns it off to measure its cost.
    pub authorization: bool,
    /// Where requests are logged, and by which policy (none: not logged).
    pub audit: Option<Arc<audit::Auditor>>,
    /// Requests counted in `/metrics`. Always on in `skiff up` and `skiff server`; the API
    /// bench turns it off to measure its cost.
    pub request_metrics: bool,
    /// The PodSecurity levels of namespaces without labels.
    pub pod_security: pod_security::Defaults,
    /// The in-process parts whose metrics `/metrics` serves beside the server's own, each
    /// as the function that registers them (the store's, scheduler's, controllers').
    pub metrics_of: Vec<fn(&mut prometheus_client::registry::Registry)>,
}

impl Config {
    pub fn new(token: String) -> Self {
        Self {
            token,
            max_body_bytes: 3 * 1024 * 1024,
            service_cidr: "10.43.0.0/16".parse().expect("valid CIDR"),
            node_port_range: (30000, 32767),
            watch_timeout: Duration::from_secs(1800),
            bookmark_interval: Duration::from_secs(10),
            service_account_key: None,
            authorization: true,
            audit: None,
            request_metrics: true,
            pod_security: pod_security::Defaults::default(),
            metrics_of: Vec::new(),
        }
    }
}

pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub config: Config,
    /// Service creates and updates allocate addresses one at a time.
    service_lock: tokio::sync::Mutex<()>,
    pub namespaces: namespace_lifecycle::NamespaceLifecycle,
    pub rbac: authz::rbac::RbacCache,
    pub quotas: resource_quota::QuotaNamespaces,
    /// Node and pod usage for `metrics.k8s.io`, kept by [`metrics_api::collect`].
    pub metrics: metrics_api::ResourceMetrics,
    /// The server's own Prometheus metrics, at `/metrics`.
    pub server_metrics: Arc<server_metrics::ServerMetrics>,
}

impl ApiServer {
    pub fn new(store: Arc<dyn Store>, config: Config) -> Arc<Self> {
        let server_metrics = Arc::new(server_metrics::ServerMetrics::new(&config.metrics_of));
        Arc::new(Self { store, config, service_lock: tokio::sync::Mutex::new(()), namespaces: Default::default(), rbac: Default::default(), quotas: Default::default(), metrics: Default::default(), server_metrics })
    }

    /// Creates what every cluster starts with: the `default`, `kube-system`, `kube-public`
    /// and `kube-node-lease` namespaces, the `kubernetes` Service with Endpoints at
    /// `advertise` (kept current across restarts, as kube-apiserver's endpoint reconciler
    /// does), the `kube-dns` Service at the service range's tenth address, which every
    /// node's proxy answers, the ingress and runtime classes, and the default RBAC roles
    /// and bindings. Idempotent.
    pub async fn bootstrap(&self, advertise: std::net::SocketAddr) -> Result<(), ApiError> {
        let api_port = advertise.port();
        let namespaces = resources::find("", "v1", "namespaces").expect("namespaces");
        let accounts = resources::find("", "v1", "serviceaccounts").expect("serviceaccounts");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            ignore_exists(self.create_object(namespaces, None, object, WriteOptions::default()).await)?;
            // Their `default` ServiceAccounts, as the controllers would make them, so a
            // server whose controllers have not started (or run elsewhere) takes pods here.
            let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
            ignore_exists(self.create_object(accounts, Some(ns), account, WriteOptions::default()).await)?;
        }
        let services = resources::find("", "v1", "services").expect("services");
        let kubernetes = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": self.config.service_cidr.nth(1).to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api_port}]}});
        ignore_exists(self.create_object(services, Some("default"), kubernetes, WriteOptions::default()).await)?;
        let endpoints = resources::find("", "v1", "endpoints").expect("endpoints");
        let api_endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": advertise.ip().to_string()}], "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}]}]});
        match self.store.get(&endpoints.key(Some("default"), "kubernetes")).await {
            Ok(old) if old.get("subsets") == api_endpoints.get("subsets") => {}
            Ok(old) => {
                self.update_object(endpoints, &old, api_endpoints, None, WriteOptions::default()).await?;
            }
            Err(_) => ignore_exists(self.create_object(endpoints, Some("default"), api_endpoints, WriteOptions::default()).await)?,
        }
        let dns = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": self.config.service_cidr.dns_address().to_string(),
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}});
        ignore_exists(self.create_object(services, Some("kube-system"), dns, WriteOptions::default()).await)?;
        let ingress_classes = resources::find("networking.k8s.io", "v1", "ingressclasses").expect("ingressclasses");
        let skiff_class = json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "skiff", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "skiff.dev/ingress"}});
        ignore_exists(self.create_object(ingress_classes, None, skiff_class, WriteOptions::default()).await)?;
        // The Wasm runtime class: pods naming it are scheduled only onto nodes whose agent
        // offers wasmtime (they carry the label).
        let classes = resources::find("node.k8s.io", "v1", "runtimeclasses").expect("runtimeclasses");
        let wasmtime = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "wasmtime"},
            "handler": "wasmtime", "scheduling": {"nodeSelector": {"skiff.dev/runtime-wasm": "true"}}});
        ignore_exists(self.create_object(classes, None, wasmtime, WriteOptions::default()).await)?;
        // The OCI runtime classes: a node runs containers with one of them, and says which.
        for handler in ["crun", "runc"] {
            let class = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": handler},
                "handler": handler, "scheduling": {"nodeSelector": {"skiff.dev/runtime-oci": handler}}});
            ignore_exists(self.create_object(classes, None, class, WriteOptions::default()).await)?;
        }
        authz::bootstrap::ensure(self).await
    }
}

pub(crate) fn ignore_exists(r: Result<objects::Written, ApiError>) -> Result<(), ApiError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn json_body(value: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(value).unwrap_or_default()).into_response()
}

fn json_bytes(bytes: &'static [u8]) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

async fn version() -> Response {
    let (major, minor) = ("1", KUBERNETES_VERSION.trim_start_matches("v1.").split('.').next().unwrap_or("32"));
    json_body(&json!({
        "major": major, "minor": minor, "gitVersion": KUBERNETES_VERSION, "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean", "buildDate": "", "goVersion": "skiff", "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    }))
}

async fn healthy() -> &'static str {
    "ok"
}

/// `/api` or `/apis`: aggregated discovery when the client asks for it (kubectl does,
/// first), else the plain APIVersions or APIGroupList.
fn discovery_root(headers: &HeaderMap, core: bool) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    match discovery::wants_aggregated(accept) {
        Some(version) => {
            let body = serde_json::to_vec(&discovery::aggregated(core, version)).unwrap_or_default();
            ([(header::CONTENT_TYPE, discovery::aggregated_media_type(version))], body).into_response()
        }
        None if core => json_body(&discovery::core_versions()),
        None => json_body(&discovery::group_list()),
    }
}

async fn api_group(Path(group): Path<String>) -> Response {
    match discovery::api_group(&group) {
        Some(g) => json_body(&g),
        None => ApiError::no_route(format!("the server could not find the requested resource (group {group})")).into_response(),
    }
}

async fn group_version(Path((group, version)): Path<(String, String)>) -> Response {
    match discovery::resource_list(&group, &version) {
        Some(l) => json_body(&l),
        None => ApiError::no_route(format!("the server could not find the requested resource ({group}/{version})")).into_response(),
    }
}

async fn openapi_v2(headers: HeaderMap) -> Response {
    // kubectl asks for gnostic's protobuf; other clients take JSON.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("*/*");
    if accept.contains(openapi_protobuf::MEDIA_TYPE) {
        ([(header::CONTENT_TYPE, openapi_protobuf::CONTENT_TYPE)], openapi::v2_protobuf()).into_response()
    } else if accept.contains("json") || accept.contains("*/*") {
        json_bytes(openapi::v2())
    } else {
        ApiError::not_acceptable(format!("/openapi/v2 is served as application/json or {}", openapi_protobuf::MEDIA_TYPE)).into_response()
    }
}

async fn openapi_v3_doc(Path(gv): Path<String>) -> Response {
    match openapi::v3(&gv) {
        Some(doc) => json_bytes(doc),
        None => ApiError::no_route(format!("no OpenAPI document for {gv}")).into_response(),
    }
}

/// Authentication, impersonation and authorization, before any handler: the request goes
/// on carrying its user ([`authz::UserInfo`]) when its user may make it. The audit log
/// ([`audit`]) records it here, where who asked and what was decided are known.
async fn authenticate(State(server): State<Arc<ApiServer>>, mut request: Request, next: Next) -> Response {
    let arrival = server.config.audit.is_some().then(|| audit::Arrival::of(&request));
    // (Read before the awaits: a request's body is not Sync, so the future may not hold it.)
    // The metrics layer before this one has read them already, when it counts.
    let attributes = match request.extensions_mut().remove::<authz::Attributes>() {
        Some(read) => read,
        None => authz::Attributes::of(request.method(), request.uri().path(), request.uri().query()),
    };
    let path = request.uri().path();
    let public = matches!(path, "/version" | "/healthz" | "/livez" | "/readyz") || ui::serves(path);
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| credentials::presented(v, false));
    // In-process parts, then a verified client certificate, then a bearer token, as
    // kube-apiserver orders its authenticators.
    let extensions = request.extensions();
    let known = extensions.get::<authz::InProcess>().map(|u| u.0.clone()).or_else(|| extensions.get::<authz::ClientCertificate>().map(|c| c.0.clone()));
    let user = match (known, presented) {
        (Some(user), _) => Some(user),
        (None, Some(t)) => authz::authenticate_bearer(&server, &t, &[authz::tokens::ISSUER]).await,
        (None, None) => None,
    };
    let mut entry = match (&server.config.audit, arrival) {
        (Some(auditor), Some(arrival)) => auditor.begin(arrival, user.as_ref(), &attributes),
        _ => None,
    };
    let user = match user {
        Some(user) => user,
        None if public => return next.run(request).await,
        None => return refuse(entry, ApiError::unauthorized()),
    };
    let decided = match server.config.authorization {
        true => authorize(&server, user, &attributes, authz::Impersonation::of(request.headers()), entry.as_mut()).await,
        false => Ok(user),
    };
    match decided {
        Ok(acting) => request.extensions_mut().insert(acting),
        Err(refusal) => return refuse(entry, refusal),
    };
    let Some(mut entry) = entry else { return next.run(request).await };
    match entry.keep_request_body(request, server.config.max_body_bytes).await {
        Ok(request) => entry.respond(next.run(request).await).await,
        Err(e) => refuse(Some(entry), e),
    }
}

/// Counts every request and its answer (refusals too) in the server's metrics; a watch
/// or stream stays counted as open until its body ends.
async fn count(State(server): State<Arc<ApiServer>>, mut request: Request, next: Next) -> Response {
    if !server.config.request_metrics {
        return next.run(request).await;
    }
    let since = std::time::Instant::now();
    let attributes = authz::Attributes::of(request.method(), request.uri().path(), request.uri().query());
    let labels = server_metrics::RequestLabels::of(&attributes);
    let streaming = labels.streams(request.uri().query());
    // Handed on, so `authenticate` does not read the path again.
    request.extensions_mut().insert(attributes);
    let response = next.run(request).await;
    match server.server_metrics.answered(labels, response.status().as_u16(), since, streaming) {
        None => response,
        Some(open) => response.map(|body| axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
            let _open = &open;
            frame
        }))),
    }
}

/// The user the request acts as (`user`, or whom it impersonates) when that user may make
/// it; the audit entry notes the decision.
async fn authorize(server: &ApiServer, user: authz::UserInfo, a: &authz::Attributes, asked: authz::Impersonation, entry: Option<&mut audit::Entry>) -> Result<authz::UserInfo, ApiError> {
    let acting = authz::impersonated(server, user.clone(), asked).await?;
    let allowed = authz::authorize(server, &acting, a).await;
    if let Some(entry) = entry {
        if acting != user {
            entry.impersonating(&acting);
        }
        entry.authorized(allowed.is_ok());
    }
    allowed.map(|()| acting)
}

/// A request refused before any handler: the error is the answer, and the audit log's.
fn refuse(entry: Option<audit::Entry>, refusal: ApiError) -> Response {
    if let Some(entry) = entry {
        entry.refused(&refusal);
    }
    refusal.into_response()
}

async fn not_found(uri: http::Uri) -> Response {
    ApiError::no_route(format!("the server could not find the requested resource ({})", uri.path())).into_response()
}

/// The HTTP router of the whole API.
/// A kube-rs client whose requests go straight into `router` as `user`: how the
/// scheduler, controllers, proxy and agent in the same process reach the API, each with
/// its own identity (no socket, no TLS, no credential to keep, the same request path and
/// authorization as any client). `component` is its User-Agent, the field manager its
/// writes are recorded for.
pub fn in_process_client(router: Router, user: authz::UserInfo, component: &'static str) -> kube::Client {
    let user = authz::InProcess(user);
    let agent = http::HeaderValue::from_static(component);
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: http::Request<kube::client::Body>| {
            req.extensions_mut().insert(user.clone());
            req.headers_mut().insert(header::USER_AGENT, agent.clone());
            req
        })
        .service(router);
    kube::Client::new(service, "default")
}

pub fn router(server: Arc<ApiServer>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(healthy))
        .route("/livez", get(healthy))
        .route("/readyz", get(healthy))
        .route("/api", get(|headers: HeaderMap| async move { discovery_root(&headers, true) }))
        .route("/apis", get(|headers: HeaderMap| async move { discovery_root(&headers, false) }))
        .route("/api/v1", get(|| async { json_body(&discovery::resource_list("", "v1").expect("core")) }))
        .route("/apis/{group}", get(api_group))
        .route("/apis/{group}/{version}", get(group_version))
        .route("/.well-known/openid-configuration", get(|| async { json_body(&authz::tokens::openid_configuration()) }))
        .route("/openid/v1/jwks", get(|State(server): State<Arc<ApiServer>>| async move {
            match &server.config.service_account_key {
                Some(key) => json_body(&authz::tokens::jwks(key)),
                None => ApiError::no_route("this server issues no service account tokens").into_response(),
            }
        }))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(|| async { json_bytes(openapi::v3_index()) }))
        .route("/openapi/v3/{*gv}", get(openapi_v3_doc))
        .route("/api/v1/nodes/{name}/proxy/{*path}", get(node_proxy::get))
        .route("/api/v1/{*rest}", axum::routing::any(rest::handle))
        .route("/apis/metrics.k8s.io/v1beta1/{*rest}", axum::routing::any(metrics_api::handle))
        .route("/apis/custom.metrics.k8s.io/v1beta2/{*rest}", axum::routing::any(metrics_api::handle_custom))
        .route("/apis/authorization.k8s.io/v1/{*rest}", axum::routing::any(authz::reviews::handle))
        .route("/apis/authentication.k8s.io/v1/{*rest}", axum::routing::any(authz::identity::handle))
        .route("/apis/{group}/{version}/{*rest}", axum::routing::any(rest::handle))
        .route("/metrics", get(|State(server): State<Arc<ApiServer>>| async move {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], server.server_metrics.encode())
        }))
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(server.clone(), authenticate))
        .layer(middleware::from_fn_with_state(server.clone(), count))
        .layer(DefaultBodyLimit::disable())
        .with_state(server)
}
