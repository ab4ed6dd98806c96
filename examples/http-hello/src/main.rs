//! A wasi:http/proxy component for Skiff pods: each request gets a fresh instance
//! (unless the pod opts in to instance reuse).
//!
//! - `/` answers "Hello from <POD_NAME>!" (`$POD_NAME` from the pod's environment);
//! - `/count` answers how many requests this instance has served, this one included
//!   (always 1 with a fresh instance per request);
//! - `/echo` returns the request body;
//! - `/spin` loops forever (the node cuts it off with 504 after its deadline);
//! - `/hog?mib=N` allocates N MiB (past the memory limit the request fails, alone);
//! - `/fetch?url=U` makes an outgoing request (allowed only to permitted hosts);
//! - `/healthz` answers 200, or 500 if the file `/config/unhealthy` exists.

use std::sync::atomic::{AtomicU64, Ordering};

use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

/// Requests this instance has served: it lives as long as the instance does.
static SERVED: AtomicU64 = AtomicU64::new(0);

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let query = request.uri().query().unwrap_or_default().to_string();
    let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).map(str::to_string);
    match request.uri().path() {
        "/" => {
            let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "a Wasm pod".into());
            Ok(Response::new(format!("Hello from {pod}!\n").into()))
        }
        "/count" => Ok(Response::new(format!("{served}\n").into())),
        "/echo" => {
            let body = request.into_body().contents().await?.to_vec();
            Ok(Response::new(body.into()))
        }
        "/spin" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        "/hog" => {
            let mib: usize = param("mib").and_then(|m| m.parse().ok()).unwrap_or(1);
            let blocks: Vec<Vec<u8>> = (0..mib).map(|i| vec![i as u8; 1 << 20]).collect();
            Ok(Response::new(format!("held {} MiB\n", blocks.len()).into()))
        }
        "/fetch" => {
            let url = param("url").unwrap_or_default();
            let outgoing = Request::get(url.as_str()).body(Body::empty())?;
            match Client::new().send(outgoing).await {
                Ok(r) => Ok(Response::new(format!("fetched {url}: {}\n", r.status()).into())),
                Err(e) => Ok(Response::builder().status(StatusCode::BAD_GATEWAY).body(format!("cannot fetch {url}: {e}\n").into())?),
            }
        }
        "/healthz" if std::path::Path::new("/config/unhealthy").exists() => {
            Ok(Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).body("unhealthy\n".into())?)
        }
        "/healthz" => Ok(Response::new("ok\n".into())),
        _ => Ok(Response::builder().status(StatusCode::NOT_FOUND).body("not found\n".into())?),
    }
}
