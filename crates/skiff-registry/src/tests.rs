//! The distribution API driven through the router, as registry clients drive it.

use super::*;
use axum::body::Body;
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "s3cret";

fn registry() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::open(dir.path().join("registry"), TOKEN.into(), None).unwrap();
    (dir, router(r))
}

async fn call(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = http::Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {TOKEN}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

/// Pushes a blob in two chunks (POST, PATCH, PUT); returns its digest.
async fn push_blob(app: &Router, name: &str, bytes: &[u8]) -> Digest {
    let (status, headers, _) = call(app, "POST", &format!("/v2/{name}/blobs/uploads/"), &[], vec![]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let at = headers["location"].to_str().unwrap().to_string();
    let (first, second) = bytes.split_at(bytes.len() / 2);
    let (status, headers, _) = call(app, "PATCH", &at, &[], first.to_vec()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["range"], format!("0-{}", first.len().saturating_sub(1)).as_str());
    let digest = Digest::of(bytes);
    let (status, headers, body) = call(app, "PUT", &format!("{at}?digest={}", digest.as_str().replace(':', "%3A")), &[], second.to_vec()).await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["docker-content-digest"], digest.as_str());
    digest
}

#[test]
fn routes_are_recognised_by_their_ending() {
    assert_eq!(route("_catalog"), Some(Route::Catalog));
    assert_eq!(route("a/b/tags/list"), Some(Route::Tags("a/b")));
    assert_eq!(route("a/manifests/b/manifests/v1"), Some(Route::Manifest("a/manifests/b", "v1")));
    assert_eq!(route("a/blobs/uploads/"), Some(Route::Uploads("a")));
    assert_eq!(route("a/blobs/uploads"), Some(Route::Uploads("a")));
    assert_eq!(route("a/blobs/uploads/123"), Some(Route::Upload("a", "123")));
    assert_eq!(route("a/b/blobs/sha256:00"), Some(Route::Blob("a/b", "sha256:00")));
    assert_eq!(route("a/manifests/"), None);
    assert_eq!(route("nothing"), None);
}

#[tokio::test]
async fn every_request_needs_the_cluster_credential() {
    let (_dir, app) = registry();
    for (method, uri) in [("GET", "/v2/"), ("POST", "/v2/app/blobs/uploads/"), ("GET", "/v2/app/manifests/v1"), ("GET", "/v2/_catalog")] {
        let response = app.clone().oneshot(http::Request::builder().method(method).uri(uri).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{method} {uri}");
        let challenges: Vec<_> = response.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(challenges, ["Basic realm=\"skiff\""], "no Host, so no token realm to offer");
        let wrong = http::Request::builder().method(method).uri(uri).header("authorization", "Bearer nope").body(Body::empty()).unwrap();
        assert_eq!(app.clone().oneshot(wrong).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // Basic credentials carrying the token as the password, as skopeo sends them ("skiff:s3cret").
    let basic = http::Request::builder().uri("/v2/").header("authorization", "Basic c2tpZmY6czNjcmV0").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(basic).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn token_authentication_trades_basic_for_bearer() {
    let (_dir, app) = registry();
    let ask = http::Request::builder().uri("/v2/").header("host", "10.0.0.5:6443").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(ask).await.unwrap();
    let challenges: Vec<_> = response.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(challenges, ["Bearer realm=\"https://10.0.0.5:6443/v2/token\",service=\"skiff\""]);
    // A Host that is not a host name offers no realm to follow.
    let odd = http::Request::builder().uri("/v2/").header("host", "evil\",x=\"y").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(odd).await.unwrap().headers()["www-authenticate"], "Basic realm=\"skiff\"");

    let fetch = |auth: Option<&str>| {
        let mut req = http::Request::builder().uri("/v2/token?service=skiff&scope=repository:app:pull");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    assert_eq!(fetch(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(fetch(Some("Basic c2tpZmY6d3Jvbmc=")).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (parts, body) = fetch(Some("Basic c2tpZmY6czNjcmV0")).await.unwrap().into_parts();
    assert_eq!(parts.status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["token"], TOKEN);
}

#[tokio::test]
async fn a_pull_token_pulls_and_does_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let check: PullTokenCheck = Arc::new(|token: String| Box::pin(async move { token == "pod-token" }));
    let app = router(Registry::open(dir.path().join("registry"), TOKEN.into(), Some(check)).unwrap());
    let layer = push_blob(&app, "team/app", b"layer").await;
    let as_pod = |method: &str, uri: &str, authorization: &str| {
        let request = http::Request::builder().method(method).uri(uri).header("authorization", authorization).body(Body::empty()).unwrap();
        let app = app.clone();
        async move { app.oneshot(request).await.unwrap() }
    };
    assert_eq!(as_pod("GET", "/v2/", "Bearer pod-token").await.status(), StatusCode::OK);
    let pulled = as_pod("GET", &format!("/v2/team/app/blobs/{layer}"), "Bearer pod-token").await;
    assert_eq!(pulled.status(), StatusCode::OK);
    assert_eq!(pulled.into_body().collect().await.unwrap().to_bytes().as_ref(), b"layer");
    assert_eq!(as_pod("GET", &format!("/v2/team/app/blobs/{layer}"), "Bearer other-token").await.status(), StatusCode::UNAUTHORIZED);
    let push = as_pod("POST", "/v2/team/app/blobs/uploads/", "Bearer pod-token").await;
    let (parts, body) = push.into_parts();
    assert_eq!((parts.status, error_code(&body.collect().await.unwrap().to_bytes())), (StatusCode::FORBIDDEN, "DENIED".into()));
    assert_eq!(as_pod("DELETE", "/v2/team/app/manifests/v1", "Bearer pod-token").await.status(), StatusCode::FORBIDDEN);
    // Docker's token flow gives the pull token back, never the cluster's ("x:pod-token").
    let (parts, body) = as_pod("GET", "/v2/token", "Basic eDpwb2QtdG9rZW4=").await.into_parts();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body.collect().await.unwrap().to_bytes()).unwrap()["token"], "pod-token");
}

#[tokio::test]
async fn a_push_and_pull_round_trip() {
    let (_dir, app) = registry();
    let layer = push_blob(&app, "team/app", &vec![7u8; 300_000]).await;
    let config = push_blob(&app, "team/app", b"{}").await;
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config.as_str(), "size": 2},
        "layers": [{"mediaType": "application/wasm", "digest": layer.as_str(), "size": 300_000}]}).to_string();
    let (status, headers, _) = call(&app, "PUT", "/v2/team/app/manifests/v1", &[("content-type", "application/vnd.oci.image.manifest.v1+json")], manifest.clone().into_bytes()).await;
    assert_eq!(status, StatusCode::CREATED);
    let digest = Digest::of(manifest.as_bytes());
    assert_eq!(headers["docker-content-digest"], digest.as_str());

    for reference in ["v1", digest.as_str()] {
        let (status, headers, body) = call(&app, "GET", &format!("/v2/team/app/manifests/{reference}"), &[], vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(body, manifest.as_bytes());
    }
    let (status, headers, body) = call(&app, "GET", &format!("/v2/team/app/blobs/{layer}"), &[], vec![]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 300_000));
    assert_eq!(headers["content-length"], "300000");
    let (status, _, body) = call(&app, "HEAD", &format!("/v2/team/app/blobs/{layer}"), &[], vec![]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));

    let (_, _, body) = call(&app, "GET", "/v2/team/app/tags/list", &[], vec![]).await;
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"name": "team/app", "tags": ["v1"]}));
    let (_, _, body) = call(&app, "GET", "/v2/_catalog", &[], vec![]).await;
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"repositories": ["team/app"]}));

    // A mount from another repository of a blob already here needs no upload.
    let (status, _, _) = call(&app, "POST", &format!("/v2/other/blobs/uploads/?mount={layer}&from=team/app"), &[], vec![]).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _, _) = call(&app, "DELETE", &format!("/v2/team/app/manifests/{digest}"), &[], vec![]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, body) = call(&app, "GET", "/v2/team/app/manifests/v1", &[], vec![]).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into()));
}

#[tokio::test]
async fn bad_pushes_are_refused_and_leave_nothing() {
    let (dir, app) = registry();
    // A blob whose bytes do not match the digest it claims.
    let claimed = Digest::of(b"the real bytes");
    let (status, _, body) = call(&app, "POST", &format!("/v2/app/blobs/uploads/?digest={claimed}"), &[], b"corrupted bytes".to_vec()).await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into()));
    let (status, _, _) = call(&app, "HEAD", &format!("/v2/app/blobs/{claimed}"), &[], vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(std::fs::read_dir(dir.path().join("registry/uploads")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("registry/blobs/sha256")).unwrap().count(), 0);

    // A manifest naming a blob the registry does not have, or not JSON, or not its digest.
    let manifest = json!({"schemaVersion": 2, "config": {"digest": claimed.as_str(), "size": 1}, "layers": []}).to_string();
    let (status, _, body) = call(&app, "PUT", "/v2/app/manifests/v1", &[], manifest.into_bytes()).await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into()));
    let (status, _, body) = call(&app, "PUT", "/v2/app/manifests/v1", &[], b"not json".to_vec()).await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "MANIFEST_INVALID".into()));
    let (status, _, body) = call(&app, "PUT", &format!("/v2/app/manifests/{claimed}"), &[], b"{}".to_vec()).await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into()));

    // Names that are not repository names, and tags that are not tags.
    let (status, _, body) = call(&app, "GET", "/v2/../etc/manifests/v1", &[], vec![]).await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "NAME_INVALID".into()));
    let (status, _, body) = call(&app, "PUT", "/v2/app/manifests/.bad", &[], b"{}".to_vec()).await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "TAG_INVALID".into()));
    let (status, _, body) = call(&app, "PATCH", "/v2/app/blobs/uploads/nope", &[], b"x".to_vec()).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN".into()));
    assert!(std::fs::read_dir(dir.path().join("registry/repositories")).unwrap().next().is_none());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// A name the registry accepts is only ever a relative path of plain components, so it
    /// cannot reach outside the registry's directory.
    #[test]
    fn accepted_names_stay_inside_the_root(name in "[a-z0-9._/-]{0,40}") {
        if storage::valid_name(&name) {
            let path = std::path::Path::new(&name);
            proptest::prop_assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))), "{name}");
        }
    }

    /// Whatever path and method a client sends, with the credential, the answer is never a
    /// server error and never a panic.
    #[test]
    fn any_request_gets_a_client_answer(
        method in proptest::sample::select(vec!["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]),
        segments in proptest::collection::vec("[a-zA-Z0-9._:%-]{0,12}|manifests|blobs|uploads|tags|list|_catalog|sha256:[0-9a-f]{64}|\\.\\.", 0..6),
        query in "(digest=sha256:[0-9a-f]{64}|mount=[a-z:0-9]{0,10}|n=[0-9]{0,3}|last=[a-z]{0,3}|[a-z=&%]{0,10})?",
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, _, _) = runtime.block_on(async {
            let (_dir, app) = registry();
            let uri = format!("/v2/{}?{query}", segments.join("/"));
            let Ok(uri) = uri.parse::<http::Uri>() else { return (StatusCode::BAD_REQUEST, HeaderMap::new(), vec![]) };
            call(&app, method, &uri.to_string(), &[], body).await
        });
        proptest::prop_assert!(!status.is_server_error(), "{method} /v2/{} → {status}", segments.join("/"));
    }
}
