//! `…/pods/{name}/exec`, `…/attach` and `…/portforward`: checks the request against the
//! pod, then forwards the connection upgrade (WebSocket or SPDY) to the agent of the pod's
//! node and joins the two upgraded connections, as kube-apiserver proxies kubelet's
//! streams. The stream protocols themselves are the agent's business.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use skiff_core::exec::ExecOptions;

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::pod_logs::{agent_url, container_of};
use crate::request::Target;

/// Headers of an upgrade request that the agent needs to answer it.
const UPGRADE_HEADERS: &[&str] = &["connection", "upgrade", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol", "x-stream-protocol-version"];

/// HTTP/1.1 only: an upgrade cannot ride an HTTP/2 stream.
fn upgrade_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| crate::pod_logs::agent_client_builder(true).http1_only().build().expect("an HTTPS client"))
}

/// Which stream a request opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Exec,
    Attach,
    PortForward,
}

pub async fn pod_stream(server: &ApiServer, target: &Target, stream: Stream, method: &Method, query: &str, headers: &HeaderMap, client_upgrade: Option<OnUpgrade>) -> ApiResult<Response> {
    let name = target.name.as_deref().unwrap_or_default();
    let pod = server.store.get(&target.key()).await.map_err(|e| ApiError::from_store(e, "pods", name))?;
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    let ns = target.namespace.as_deref().unwrap_or_default();
    let path = match stream {
        Stream::Exec | Stream::Attach => {
            let (options, verb, endpoint) = match stream {
                Stream::Exec => (ExecOptions::parse(query), "exec into", "exec"),
                _ => (ExecOptions::parse_attach(query), "attach to", "attach"),
            };
            let options = options.map_err(ApiError::bad_request)?;
            let container = container_of(&pod, name, options.container.as_deref(), false)?;
            if matches!(phase, "Succeeded" | "Failed") {
                return Err(ApiError::bad_request(format!("cannot {verb} a container in a completed pod; current phase is {phase}")));
            }
            format!("/{endpoint}/{ns}/{name}/{container}")
        }
        Stream::PortForward => {
            if phase != "Running" {
                return Err(ApiError::bad_request(format!("unable to forward port because pod is not running. Current status={phase}")));
            }
            format!("/portForward/{ns}/{name}")
        }
    };
    let url = format!("{}{path}?{query}", agent_url(server, &pod, name).await?);
    forward_upgrade(server, &url, method, headers, client_upgrade).await
}

/// Sends the client's upgrade request on to the agent; on its 101, answers the client
/// with it and joins the two connections; otherwise passes the agent's refusal on.
async fn forward_upgrade(server: &ApiServer, url: &str, method: &Method, headers: &HeaderMap, client_upgrade: Option<OnUpgrade>) -> ApiResult<Response> {
    // Checked first, so the agent never starts a session no client will join.
    let client_upgrade = client_upgrade.ok_or_else(|| ApiError::bad_request("this request needs a connection upgrade (WebSocket or SPDY)"))?;
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut request = upgrade_client().request(method, url).bearer_auth(&server.config.token);
    for (k, v) in headers {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            request = request.header(k.as_str(), v.as_bytes());
        }
    }
    let response = request.send().await.map_err(|e| ApiError::internal(format!("{url:?}: {e}")))?;
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // The agent's refusal (a Status) goes to the client as it is.
        let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
        return Ok((status, [(header::CONTENT_TYPE, content_type)], Body::from_stream(response.bytes_stream())).into_response());
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in response.headers() {
        if matches!(k.as_str(), "connection" | "upgrade" | "sec-websocket-accept" | "sec-websocket-protocol" | "x-stream-protocol-version") {
            answer = answer.header(k.as_str(), v.as_bytes());
        }
    }
    tokio::spawn(async move {
        let (Ok(agent), Ok(client)) = (response.upgrade().await, client_upgrade.await) else { return };
        let (mut agent, mut client) = (agent, TokioIo::new(client));
        // Large buffers: every copy is a TLS record on each side.
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut agent, 256 * 1024, 256 * 1024).await;
    });
    answer.body(Body::empty()).map_err(|e| ApiError::internal(e.to_string()))
}
