//! Manifests: stored after checks (well-formed JSON, the digest when pushed by digest,
//! every blob or manifest it names present), served with the media type they came with,
//! unlinked on delete.

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::storage::{self, Digest};
use crate::{Registry, digest_header, error, location};

/// Largest manifest accepted, as the distribution registry limits them.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// `GET`/`HEAD …/manifests/<tag or digest>`.
pub async fn get(r: &Registry, name: &str, reference: &str, head: bool) -> Response {
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
pub async fn put(r: &Registry, name: &str, reference: &str, request: Request) -> Response {
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

/// `DELETE …/manifests/<reference>`: by digest, the manifest and its tags; by tag, the tag.
pub fn delete(r: &Registry, name: &str, reference: &str) -> Response {
    let deleted = match Digest::parse(reference) {
        Some(d) => r.storage.delete_manifest(name, &d),
        None => r.storage.delete_tag(name, reference),
    };
    if deleted { StatusCode::ACCEPTED.into_response() } else { error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("manifest {reference:?} is not in repository {name:?}")) }
}
