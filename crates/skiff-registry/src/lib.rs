//! The OCI registry embedded in Skiff's control plane: the distribution API (`/v2/`) served
//! on the API server's port, so the cluster has somewhere to keep its images with nothing
//! else to run. Every request carries the cluster's credential, as a bearer token or as the
//! password of HTTP Basic (the form registry clients such as skopeo send after a `Basic`
//! challenge). Digests are verified as blobs and manifests arrive (a mismatch is 400
//! `DIGEST_INVALID`), a manifest may only name blobs the registry has, and blobs no manifest
//! refers to are garbage-collected ([`gc`]).

pub mod gc;
pub mod storage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use skiff_core::credentials;
use tokio::io::AsyncWriteExt;

pub use storage::{Digest, Storage};

/// Largest manifest accepted, as the distribution registry limits them.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The registry: its files and the uploads in progress.
pub struct Registry {
    storage: Storage,
    token: String,
    /// Running digest and length of each upload in progress, by upload id.
    uploads: Mutex<HashMap<String, Upload>>,
}

struct Upload {
    repository: String,
    hasher: Sha256,
    size: u64,
}

impl Registry {
    /// The registry in `dir`, open to requests carrying `token`.
    pub fn open(dir: std::path::PathBuf, token: String) -> std::io::Result<Arc<Registry>> {
        Ok(Arc::new(Registry { storage: Storage::open(dir)?, token, uploads: Mutex::default() }))
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
    Router::new().route("/v2/", axum::routing::any(base)).route("/v2/{*rest}", axum::routing::any(handle)).with_state(registry)
}

/// A distribution API error: `{"errors": [{"code", "message"}]}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"errors": [{"code": code, "message": message.into()}]});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn unauthorized() -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required: the cluster's token, as a bearer token or a Basic password");
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"skiff\""));
    response
}

fn authorized(registry: &Registry, headers: &HeaderMap) -> bool {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| credentials::presented(v, true));
    presented.is_some_and(|p| credentials::same_secret(p.as_bytes(), registry.token.as_bytes()))
}

async fn base(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    if !authorized(&registry, &headers) {
        return unauthorized();
    }
    ([(header::CONTENT_TYPE, "application/json"), (HeaderName::from_static("docker-distribution-api-version"), "registry/2.0")], "{}").into_response()
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
    query.as_deref()?.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| percent_decode(v))
}

/// Query values in the distribution API are digests, names and numbers: only `%XX`
/// escapes need undoing.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(registry): State<Arc<Registry>>, Path(rest): Path<String>, RawQuery(query): RawQuery, request: Request) -> Response {
    if !authorized(&registry, request.headers()) {
        return unauthorized();
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
        (Route::Manifest(name, reference), m @ (Method::GET | Method::HEAD)) => get_manifest(r, name, reference, m == Method::HEAD).await,
        (Route::Manifest(name, reference), Method::PUT) => put_manifest(r, name, reference, request).await,
        (Route::Manifest(name, reference), Method::DELETE) => delete_manifest(r, name, reference),
        (Route::Blob(_, digest), m @ (Method::GET | Method::HEAD)) => get_blob(r, digest, m == Method::HEAD).await,
        (Route::Blob(..), Method::DELETE) => error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "blobs are removed by garbage collection once no manifest refers to them"),
        (Route::Uploads(name), Method::POST) => start_upload(r, name, &query, request).await,
        (Route::Upload(name, id), Method::PATCH) => append(r, name, id, request.into_body()).await.map(|size| upload_accepted(name, id, size)).unwrap_or_else(|e| e),
        (Route::Upload(name, id), Method::PUT) => finish_upload(r, name, id, &query, request.into_body()).await,
        (Route::Upload(name, id), Method::GET) => match r.uploads.lock().unwrap().get(id).filter(|u| u.repository == name) {
            Some(u) => {
                let mut response = upload_accepted(name, id, u.size);
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            None => upload_unknown(id),
        },
        (Route::Upload(_, id), Method::DELETE) => {
            r.uploads.lock().unwrap().remove(id);
            let _ = std::fs::remove_file(r.storage.upload_path(id));
            StatusCode::NO_CONTENT.into_response()
        }
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

async fn get_manifest(r: &Registry, name: &str, reference: &str, head: bool) -> Response {
    let Some((digest, media_type)) = r.storage.resolve(name, reference) else {
        return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("manifest {reference:?} is not in repository {name:?}"));
    };
    let bytes = match tokio::fs::read(r.storage.blob_path(&digest)).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("reading manifest {digest}: {e}")),
    };
    let headers = [(header::CONTENT_TYPE, HeaderValue::from_str(&media_type).unwrap_or(HeaderValue::from_static("application/json"))), digest_header(&digest), (header::CONTENT_LENGTH, bytes.len().into())];
    if head { (headers, Body::empty()).into_response() } else { (headers, bytes).into_response() }
}

/// Stores a manifest after checking it: well-formed JSON, its digest (when pushed by
/// digest), and every blob or manifest it names present.
async fn put_manifest(r: &Registry, name: &str, reference: &str, request: Request) -> Response {
    let expected = Digest::parse(reference);
    if expected.is_none() && !storage::valid_tag(reference) {
        return error(StatusCode::BAD_REQUEST, "TAG_INVALID", format!("{reference:?} is neither a tag nor a sha256 digest"));
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = match axum::body::to_bytes(request.into_body(), MAX_MANIFEST_BYTES).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", format!("a manifest may be at most {MAX_MANIFEST_BYTES} bytes")),
    };
    let manifest: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "the manifest is not a JSON object"),
    };
    let digest = Digest::of(&bytes);
    if let Some(expected) = &expected
        && expected != &digest
    {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", format!("the manifest's digest is {digest}, not {expected}"));
    }
    let media_type = content_type.or_else(|| manifest.get("mediaType").and_then(Value::as_str).map(str::to_string)).unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let blobs = manifest.get("config").into_iter().chain(manifest.get("layers").and_then(Value::as_array).into_iter().flatten());
    for descriptor in blobs {
        let Some(d) = descriptor.get("digest").and_then(Value::as_str).and_then(Digest::parse) else {
            return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "a descriptor has no sha256 digest");
        };
        if r.storage.blob_size(&d).is_none() {
            return error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", format!("blob {d} is not in the registry; push it before the manifest"));
        }
    }
    for child in manifest.get("manifests").and_then(Value::as_array).into_iter().flatten() {
        let known = child.get("digest").and_then(Value::as_str).and_then(|d| r.storage.resolve(name, d));
        if known.is_none() {
            return error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", format!("index entry {} is not a manifest of {name:?}", child.get("digest").unwrap_or(&Value::Null)));
        }
    }
    let storage = r.storage.clone();
    let (name_owned, tag) = (name.to_string(), expected.is_none().then(|| reference.to_string()));
    let stored = tokio::task::spawn_blocking(move || {
        storage.put_blob(&bytes)?;
        storage.link_manifest(&name_owned, &digest, &media_type, tag.as_deref())?;
        Ok::<_, std::io::Error>(digest)
    })
    .await;
    match stored {
        Ok(Ok(digest)) => (StatusCode::CREATED, [location(format!("/v2/{name}/manifests/{digest}")), digest_header(&digest)]).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("storing the manifest: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("storing the manifest: {e}")),
    }
}

fn delete_manifest(r: &Registry, name: &str, reference: &str) -> Response {
    let deleted = match Digest::parse(reference) {
        Some(d) => r.storage.delete_manifest(name, &d),
        None => r.storage.delete_tag(name, reference),
    };
    if deleted { StatusCode::ACCEPTED.into_response() } else { error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("manifest {reference:?} is not in repository {name:?}")) }
}

async fn get_blob(r: &Registry, digest: &str, head: bool) -> Response {
    let Some(digest) = Digest::parse(digest) else {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", format!("{digest:?} is not a sha256 digest"));
    };
    let Some(size) = r.storage.blob_size(&digest) else {
        return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("blob {digest} is not in the registry"));
    };
    let headers = [(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")), digest_header(&digest), (header::CONTENT_LENGTH, size.into())];
    if head {
        return (headers, Body::empty()).into_response();
    }
    match tokio::fs::File::open(r.storage.blob_path(&digest)).await {
        Ok(file) => (headers, Body::from_stream(file_chunks(file))).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("reading blob {digest}: {e}")),
    }
}

/// A file as a stream of 256 KiB chunks.
fn file_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    futures::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

fn upload_unknown(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", format!("upload {id:?} is not in progress"))
}

fn upload_accepted(name: &str, id: &str, size: u64) -> Response {
    let range = format!("0-{}", size.saturating_sub(1));
    (
        StatusCode::ACCEPTED,
        [location(format!("/v2/{name}/blobs/uploads/{id}")), (header::RANGE, HeaderValue::from_str(&range).expect("digits")), (HeaderName::from_static("docker-upload-uuid"), HeaderValue::from_str(id).expect("a uuid"))],
    )
        .into_response()
}

/// `POST …/blobs/uploads/`: a cross-repository mount of a blob already here, a monolithic
/// upload (`?digest=`), or the start of a session.
async fn start_upload(r: &Registry, name: &str, query: &Option<String>, request: Request) -> Response {
    if let Some(mount) = query_param(query, "mount").and_then(|d| Digest::parse(&d))
        && r.storage.blob_size(&mount).is_some()
    {
        return (StatusCode::CREATED, [location(format!("/v2/{name}/blobs/{mount}")), digest_header(&mount)]).into_response();
    }
    let id = uuid::Uuid::new_v4().to_string();
    if let Err(e) = tokio::fs::File::create(r.storage.upload_path(&id)).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("starting an upload: {e}"));
    }
    r.uploads.lock().unwrap().insert(id.clone(), Upload { repository: name.to_string(), hasher: Sha256::new(), size: 0 });
    if query_param(query, "digest").is_some() {
        return finish_upload(r, name, &id, query, request.into_body()).await;
    }
    upload_accepted(name, &id, 0)
}

/// Appends a request body to an upload, hashing as it goes; returns the upload's size.
async fn append(r: &Registry, name: &str, id: &str, body: Body) -> Result<u64, Response> {
    // The upload's state is taken out while its body streams in, so a second request on
    // the same upload at once finds it unknown rather than interleaving.
    let mut upload = match r.uploads.lock().unwrap().remove(id) {
        Some(u) if u.repository == name => u,
        _ => return Err(upload_unknown(id)),
    };
    let path = r.storage.upload_path(id);
    let result = async {
        let mut file = tokio::fs::OpenOptions::new().append(true).open(&path).await?;
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            upload.hasher.update(&chunk);
            upload.size += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await
    }
    .await;
    match result {
        Ok(()) => {
            let size = upload.size;
            r.uploads.lock().unwrap().insert(id.to_string(), upload);
            Ok(size)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", format!("upload {id} failed and was cancelled: {e}")))
        }
    }
}

/// `PUT …/blobs/uploads/<id>?digest=`: the last bytes, then the digest check.
async fn finish_upload(r: &Registry, name: &str, id: &str, query: &Option<String>, body: Body) -> Response {
    let Some(expected) = query_param(query, "digest") else {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "the upload's digest parameter is missing");
    };
    let Some(expected) = Digest::parse(&expected) else {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", format!("{expected:?} is not a sha256 digest"));
    };
    if let Err(response) = append(r, name, id, body).await {
        return response;
    }
    // Gone only if a DELETE of the same upload came in between.
    let Some(upload) = r.uploads.lock().unwrap().remove(id) else {
        return upload_unknown(id);
    };
    let actual = Digest::from_hasher(upload.hasher);
    let storage = r.storage.clone();
    let id_owned = id.to_string();
    if actual != expected {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(storage.upload_path(&id_owned))).await;
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", format!("the uploaded content's digest is {actual}, not {expected}"));
    }
    let digest = actual.clone();
    match tokio::task::spawn_blocking(move || storage.commit_upload(&id_owned, &digest)).await {
        Ok(Ok(())) => (StatusCode::CREATED, [location(format!("/v2/{name}/blobs/{actual}")), digest_header(&actual)]).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("storing blob {actual}: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("storing blob {actual}: {e}")),
    }
}

#[cfg(test)]
mod tests;
