//! `GET …/pods/{name}/log`: checks the request against the pod, then forwards it to the
//! agent of the pod's node (its HTTPS endpoint, found in the Node's address and
//! `daemonEndpoints`) and streams the agent's answer back, as kube-apiserver does with
//! kubelets. The node-reaching parts serve the streams ([`crate::pod_streams`]) too. The
//! agent's serving certificate is verified against the cluster CA (kube-apiserver's
//! `--kubelet-certificate-authority`), unless a log request says
//! `insecureSkipTLSVerifyBackend=true`; the API server presents its client certificate.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use crate::request::Target;

/// Query parameters a log request may carry, and the integer ones among them.
const PARAMS: &[&str] = &["container", "follow", "previous", "timestamps", "tailLines", "sinceSeconds", "sinceTime", "limitBytes", "pretty", "insecureSkipTLSVerifyBackend"];
const INTEGERS: &[&str] = &["tailLines", "sinceSeconds", "limitBytes"];

/// How the API server meets agents: its client certificate and key, and the CA their
/// serving certificates are signed by (PEM).
struct AgentTls {
    identity_pem: String,
    ca_pem: String,
}

static AGENT_TLS: OnceLock<AgentTls> = OnceLock::new();

/// Sets the certificate calls to agents present and the CA they verify agents with,
/// before the first call. Without it (an API server serving no agents of its own, as in
/// tests), agents' certificates are not verified.
pub fn set_agent_tls(identity_pem: String, ca_pem: String) {
    let _ = AGENT_TLS.set(AgentTls { identity_pem, ca_pem });
}

/// A client for agents' endpoints, presenting the API server's certificate and verifying
/// the agent's (unless `verify` is false).
pub(crate) fn agent_client_builder(verify: bool) -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder();
    let Some(tls) = AGENT_TLS.get() else { return builder.tls_danger_accept_invalid_certs(true) };
    let builder = match reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()) {
        Ok(ca) if verify => builder.tls_certs_only([ca]),
        _ => builder.tls_danger_accept_invalid_certs(true),
    };
    match reqwest::Identity::from_pem(tls.identity_pem.as_bytes()) {
        Ok(identity) => builder.identity(identity),
        Err(e) => {
            tracing::warn!(error = %e, "the API server's client certificate for agents is unusable");
            builder
        }
    }
}

/// The client for agents' endpoints; `verify` false for a request that asked to skip the
/// check of the agent's certificate.
pub(crate) fn agent_client(verify: bool) -> &'static reqwest::Client {
    static VERIFYING: OnceLock<reqwest::Client> = OnceLock::new();
    static TRUSTING: OnceLock<reqwest::Client> = OnceLock::new();
    let (cell, verify) = if verify { (&VERIFYING, true) } else { (&TRUSTING, false) };
    cell.get_or_init(|| agent_client_builder(verify).build().expect("an HTTPS client"))
}

pub async fn pod_log(server: &ApiServer, target: &Target, query: Option<&str>, params: &std::collections::HashMap<String, String>) -> ApiResult<Response> {
    for (k, v) in params {
        if !PARAMS.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("unknown log option {k:?}")));
        }
        if INTEGERS.contains(&k.as_str()) && v.parse::<i64>().map_or(true, |n| n < 0) {
            return Err(ApiError::bad_request(format!("{k} must be a non-negative integer, not {v:?}")));
        }
    }
    let name = target.name.as_deref().unwrap_or_default();
    let pod = server.store.get(&target.key()).await.map_err(|e| ApiError::from_store(e, "pods", name))?;
    let container = container_of(&pod, name, params.get("container").map(String::as_str), true)?;
    let base = agent_url(server, &pod, name).await?;
    let ns = target.namespace.as_deref().unwrap_or_default();
    let mut url = format!("{base}/containerLogs/{ns}/{name}/{container}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(q);
    }
    let verify = params.get("insecureSkipTLSVerifyBackend").is_none_or(|v| v != "true");
    let response = agent_client(verify).get(&url).bearer_auth(&server.config.token).send().await
        .map_err(|e| ApiError::internal(format!("Get {url:?}: {e}")))?;
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("text/plain").to_string();
    Ok((status, [(header::CONTENT_TYPE, content_type)], Body::from_stream(response.bytes_stream())).into_response())
}

/// The container a request names, or the pod's only container; init containers count
/// only where `with_init` (logs may read them, exec may not).
pub fn container_of(pod: &Value, name: &str, requested: Option<&str>, with_init: bool) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}")).and_then(Value::as_array).into_iter().flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from)).collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().any(|n| n == c) || (with_init && init.iter().any(|n| n == c)) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
            containers.join(" "),
            init.join(" ")
        ))),
    }
}

/// `https://ADDRESS:PORT` of the agent on the pod's node (its InternalIP and
/// `daemonEndpoints` port).
pub async fn agent_url(server: &ApiServer, pod: &Value, name: &str) -> ApiResult<String> {
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?;
    let nodes = skiff_core::resources::find("", "v1", "nodes").expect("nodes are served");
    let node = server.store.get(&nodes.key(None, node_name)).await.map_err(|e| ApiError::from_store(e, "nodes", node_name))?;
    node_agent_url(&node).ok_or_else(|| ApiError::bad_request(format!("node {node_name} cannot be reached (no InternalIP address or agent port in its status)")))
}

/// `https://ADDRESS:PORT` of a node's agent, if its status says where it is.
pub fn node_agent_url(node: &Value) -> Option<String> {
    let address = node.pointer("/status/addresses").and_then(Value::as_array).into_iter().flatten()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .and_then(|a| a.get("address").and_then(Value::as_str))?;
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).filter(|p| *p > 0)?;
    let host = if address.contains(':') { format!("[{address}]") } else { address.to_string() };
    Some(format!("https://{host}:{port}"))
}
