//! Blobs: served from the store, and uploaded as the distribution spec says (a session of
//! PATCHes closed by a PUT with the digest, a monolithic POST, or a mount of a blob
//! already here), hashed as the bytes arrive and refused if the digest does not match.

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderName, HeaderValue, StatusCode, header};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::storage::Digest;
use crate::{Registry, digest_header, error, location, query_param};

/// An upload in progress: its repository and the running digest and length of its bytes.
pub struct Upload {
    repository: String,
    hasher: Sha256,
    size: u64,
}

/// `GET`/`HEAD …/blobs/<digest>`, streamed from disk.
pub async fn get(r: &Registry, digest: &str, head: bool) -> Response {
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
        Ok(file) => (headers, Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024))).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("reading blob {digest}: {e}")),
    }
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
pub async fn start_upload(r: &Registry, name: &str, query: &Option<String>, request: Request) -> Response {
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
            let _ = tokio::fs::remove_file(&path).await;
            Err(error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", format!("upload {id} failed and was cancelled: {e}")))
        }
    }
}

/// `PUT …/blobs/uploads/<id>?digest=`: the last bytes, then the digest check.
pub async fn finish_upload(r: &Registry, name: &str, id: &str, query: &Option<String>, body: Body) -> Response {
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
    if actual != expected {
        let _ = tokio::fs::remove_file(r.storage.upload_path(id)).await;
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", format!("the uploaded content's digest is {actual}, not {expected}"));
    }
    let (storage, id_owned, digest) = (r.storage.clone(), id.to_string(), actual.clone());
    let committed = tokio::task::spawn_blocking(move || storage.commit_upload(&id_owned, &digest)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match committed {
        Ok(()) => (StatusCode::CREATED, [location(format!("/v2/{name}/blobs/{actual}")), digest_header(&actual)]).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("storing blob {actual}: {e}")),
    }
}

/// `PATCH …/blobs/uploads/<id>`: a chunk.
pub async fn patch_upload(r: &Registry, name: &str, id: &str, body: Body) -> Response {
    append(r, name, id, body).await.map(|size| upload_accepted(name, id, size)).unwrap_or_else(|e| e)
}

/// `GET …/blobs/uploads/<id>`: how much has arrived.
pub fn upload_status(r: &Registry, name: &str, id: &str) -> Response {
    match r.uploads.lock().unwrap().get(id).filter(|u| u.repository == name) {
        Some(u) => {
            let mut response = upload_accepted(name, id, u.size);
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        None => upload_unknown(id),
    }
}

/// `DELETE …/blobs/uploads/<id>`: the upload and its bytes go.
pub async fn cancel_upload(r: &Registry, id: &str) -> Response {
    r.uploads.lock().unwrap().remove(id);
    let _ = tokio::fs::remove_file(r.storage.upload_path(id)).await;
    StatusCode::NO_CONTENT.into_response()
}
