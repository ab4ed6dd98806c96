//! The OCI registry embedded in Skiff's control plane: the distribution API (`/v2/`) served
//! on the API server's port, so the cluster has somewhere to keep its images with nothing
//! else to run. Every request carries the cluster's credential, as a bearer token or as the
//! password of HTTP Basic; clients that follow Docker's token authentication trade the
//! Basic form for the bearer one at `/v2/token`. Pulls may also carry a pod's
//! ServiceAccount token made for the registry (a node that joined with a certificate
//! holds no cluster token: it pulls for a pod with the pod's own token, as kubelet's
//! service-account credential providers do); the control plane says which are valid. Digests are verified as blobs and
//! manifests arrive (a mismatch is 400 `DIGEST_INVALID`), a manifest may only name blobs
//! the registry has, and blobs no manifest refers to are garbage-collected ([`gc`]).

mod blobs;
pub mod gc;
mod manifests;
pub mod storage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use skiff_core::credentials;

pub use storage::{Digest, Storage};

/// Says whether a token is valid for pulling (a pod's ServiceAccount token whose audience
/// is the registry, for a pod that still exists).
pub type PullTokenCheck = Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// The registry: its files and the uploads in progress.
pub struct Registry {
    storage: Storage,
    token: String,
    pull_tokens: Option<PullTokenCheck>,
    /// Running digest and length of each upload in progress, by upload id.
    uploads: Mutex<HashMap<String, blobs::Upload>>,
}

impl Registry {
    /// The registry in `dir`, open to requests carrying `token`, and to pulls carrying a
    /// token `pull_tokens` finds valid.
    pub fn open(dir: std::path::PathBuf, token: String, pull_tokens: Option<PullTokenCheck>) -> std::io::Result<Arc<Registry>> {
        Ok(Arc::new(Registry { storage: Storage::open(dir)?, token, pull_tokens, uploads: Mutex::default() }))
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Stores an image whose blobs are given whole (the artifacts carried in the binary)
    /// and tags it. Blobs a manifest refers to must be among `blobs` or already stored.
    pub fn put_image(&self, repository: &str, tag: &str, blobs: &[&[u8]], manifest: &[u8], media_type: &str) -> std::io::Result<Digest> {
        for blob in blobs {
            self.storage.put_blob(blob)?;
        }
        let digest = self.storage.put_blob(manifest)?;
        self.storage.link_manifest(repository, &digest, media_type, Some(tag))?;
        Ok(digest)
    }

    /// Collects garbage every `period`, sparing blobs younger than `grace`.
    pub async fn collect_garbage_every(self: Arc<Self>, period: Duration, grace: Duration) {
        loop {
            let storage = self.storage.clone();
            match tokio::task::spawn_blocking(move || gc::collect(&storage, grace)).await {
                Ok(Ok(c)) if c.blobs + c.uploads > 0 => tracing::info!(blobs = c.blobs, bytes = c.bytes, uploads = c.uploads, "registry garbage collected"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "registry garbage collection failed"),
                Err(e) => tracing::warn!(error = %e, "registry garbage collection panicked"),
            }
            // Uploads whose files were collected as abandoned are forgotten too.
            self.uploads.lock().unwrap().retain(|id, _| self.storage.upload_path(id).exists());
            tokio::time::sleep(period).await;
        }
    }
}

/// The `/v2/` routes.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2/", axum::routing::any(base))
        .route("/v2/token", axum::routing::get(token))
        .route("/v2/{*rest}", axum::routing::any(handle))
        .with_state(registry)
}

/// A distribution API error: `{"errors": [{"code", "message"}]}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"errors": [{"code": code, "message": message.into()}]});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// 401, with the way in: Docker's token authentication, a Bearer challenge whose realm is
/// this registry's token endpoint as the host the client asked for names it (clients such
/// as docker-registry's pull-through cache know no other way). Only one challenge is sent:
/// some clients read several, folded into one header, as one. Without a usable host there
/// is no realm to offer, and the challenge is Basic.
fn unauthorized(host: Option<&str>) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required: the cluster's token, as a bearer token or a Basic password");
    let host = host.filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)));
    let bearer = host.and_then(|h| HeaderValue::from_str(&format!("Bearer realm=\"https://{h}/v2/token\",service=\"skiff\"")).ok());
    response.headers_mut().insert(header::WWW_AUTHENTICATE, bearer.unwrap_or(HeaderValue::from_static("Basic realm=\"skiff\"")));
    response
}

/// The host a request was sent to: HTTP/2's authority, else the Host header.
fn host_of(request_uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    request_uri.authority().map(|a| a.to_string()).or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
}

/// What a request's credential lets it do.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Access {
    None,
    Pull,
    Everything,
}

async fn access(registry: &Registry, headers: &HeaderMap) -> (Access, Option<String>) {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| credentials::presented(v, true));
    let Some(presented) = presented else { return (Access::None, None) };
    if credentials::same_secret(presented.as_bytes(), registry.token.as_bytes()) {
        return (Access::Everything, Some(presented));
    }
    match &registry.pull_tokens {
        Some(check) if check(presented.clone()).await => (Access::Pull, Some(presented)),
        _ => (Access::None, None),
    }
}

async fn base(State(registry): State<Arc<Registry>>, uri: http::Uri, headers: HeaderMap) -> Response {
    if access(&registry, &headers).await.0 == Access::None {
        return unauthorized(host_of(&uri, &headers).as_deref());
    }
    ([(header::CONTENT_TYPE, "application/json"), (HeaderName::from_static("docker-distribution-api-version"), "registry/2.0")], "{}").into_response()
}

/// The token endpoint of Docker's token authentication. A client that met the Bearer
/// challenge proves it holds a credential (as Basic, usually) and gets that same
/// credential back as its bearer token: nothing new is minted or kept.
async fn token(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let (Access::Pull | Access::Everything, Some(token)) = access(&registry, &headers).await else {
        return unauthorized(None);
    };
    json_response(StatusCode::OK, &json!({"token": token, "access_token": token, "expires_in": 3600}))
}

/// What a `/v2/…` path names.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
    Blob(&'a str, &'a str),
}

/// Parses the path after `/v2/`. Repository names hold slashes, so each form is
/// recognised by its ending.
fn route(rest: &str) -> Option<Route<'_>> {
    let leaf = |s: &str| !s.is_empty() && !s.contains('/');
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/").filter(|(_, r)| leaf(r)) {
        return Some(Route::Manifest(name, reference));
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads/").or_else(|| rest.strip_suffix("/blobs/uploads")) {
        return Some(Route::Uploads(name));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/").filter(|(_, id)| leaf(id)) {
        return Some(Route::Upload(name, id));
    }
    rest.rsplit_once("/blobs/").filter(|(_, d)| leaf(d)).map(|(name, digest)| Route::Blob(name, digest))
}

fn query_param(query: &Option<String>, key: &str) -> Option<String> {
    query.as_deref()?.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
}

async fn handle(State(registry): State<Arc<Registry>>, Path(rest): Path<String>, RawQuery(query): RawQuery, request: Request) -> Response {
    let needed = if matches!(*request.method(), Method::GET | Method::HEAD) { Access::Pull } else { Access::Everything };
    match access(&registry, request.headers()).await.0 {
        Access::None => return unauthorized(host_of(request.uri(), request.headers()).as_deref()),
        Access::Pull if needed == Access::Everything => return error(StatusCode::FORBIDDEN, "DENIED", "a pull token may only pull: pushing and deleting take the cluster's token"),
        _ => {}
    }
    let Some(route) = route(&rest) else {
        return error(StatusCode::NOT_FOUND, "UNSUPPORTED", format!("no registry route for /v2/{rest}"));
    };
    let name = match &route {
        Route::Catalog => None,
        Route::Tags(n) | Route::Manifest(n, _) | Route::Uploads(n) | Route::Upload(n, _) | Route::Blob(n, _) => Some(*n),
    };
    if let Some(n) = name
        && !storage::valid_name(n)
    {
        return error(StatusCode::BAD_REQUEST, "NAME_INVALID", format!("invalid repository name {n:?}"));
    }
    let method = request.method().clone();
    let r = &registry;
    match (route, method) {
        (Route::Catalog, Method::GET) => catalog(r, &query),
        (Route::Tags(name), Method::GET) => tags(r, name, &query),
        (Route::Manifest(name, reference), m @ (Method::GET | Method::HEAD)) => manifests::get(r, name, reference, m == Method::HEAD).await,
        (Route::Manifest(name, reference), Method::PUT) => manifests::put(r, name, reference, request).await,
        (Route::Manifest(name, reference), Method::DELETE) => manifests::delete(r, name, reference),
        (Route::Blob(_, digest), m @ (Method::GET | Method::HEAD)) => blobs::get(r, digest, m == Method::HEAD).await,
        (Route::Blob(..), Method::DELETE) => error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "blobs are removed by garbage collection once no manifest refers to them"),
        (Route::Uploads(name), Method::POST) => blobs::start_upload(r, name, &query, request).await,
        (Route::Upload(name, id), Method::PATCH) => blobs::patch_upload(r, name, id, request.into_body()).await,
        (Route::Upload(name, id), Method::PUT) => blobs::finish_upload(r, name, id, &query, request.into_body()).await,
        (Route::Upload(name, id), Method::GET) => blobs::upload_status(r, name, id),
        (Route::Upload(_, id), Method::DELETE) => blobs::cancel_upload(r, id).await,
        (_, m) => error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", format!("{m} is not supported on /v2/{rest}")),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `_catalog`, paged by `n` and `last` as the spec says.
fn catalog(r: &Registry, query: &Option<String>) -> Response {
    json_response(StatusCode::OK, &json!({"repositories": page(r.storage.repositories(), query)}))
}

/// One page of a sorted list: at most `n` entries after `last`, as the spec pages them.
fn page(sorted: Vec<String>, query: &Option<String>) -> Vec<String> {
    let last = query_param(query, "last").unwrap_or_default();
    let n = query_param(query, "n").and_then(|n| n.parse::<usize>().ok()).unwrap_or(usize::MAX);
    sorted.into_iter().filter(|s| s.as_str() > last.as_str()).take(n).collect()
}

fn tags(r: &Registry, name: &str, query: &Option<String>) -> Response {
    let Some(tags) = r.storage.tags(name) else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("repository {name:?} is not known to the registry"));
    };
    json_response(StatusCode::OK, &json!({"name": name, "tags": page(tags, query)}))
}

fn digest_header(digest: &Digest) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static("docker-content-digest"), HeaderValue::from_str(digest.as_str()).expect("a digest is a header value"))
}

fn location(path: String) -> (HeaderName, HeaderValue) {
    (header::LOCATION, HeaderValue::from_str(&path).expect("names and digests are header values"))
}

#[cfg(test)]
mod tests;
