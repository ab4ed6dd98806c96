//! `GET /api/v1/nodes/NAME/proxy/PATH`: a node agent's own endpoint read through the API
//! server, as kube-apiserver proxies to kubelet — how `kubectl get --raw
//! /api/v1/nodes/NODE/proxy/metrics` and Prometheus' node discovery read a node's
//! metrics. Reading takes `get` on `nodes/proxy`; the agent is called with the API
//! server's own credential. Only GET is proxied: the agent's endpoints that change
//! anything (exec, attach, port-forward) have their own pod subresources.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

pub async fn get(State(server): State<Arc<ApiServer>>, Path((node, path)): Path<(String, String)>, RawQuery(query): RawQuery) -> Response {
    proxy(&server, &node, &path, query.as_deref()).await.unwrap_or_else(IntoResponse::into_response)
}

async fn proxy(server: &ApiServer, name: &str, path: &str, query: Option<&str>) -> ApiResult<Response> {
    let nodes = skiff_core::resources::find("", "v1", "nodes").expect("nodes are served");
    let node = server.store.get(&nodes.key(None, name)).await.map_err(|e| ApiError::from_store(e, "nodes", name))?;
    let url = crate::pod_logs::node_agent_url(&node)
        .ok_or_else(|| ApiError::service_unavailable(format!("node {name} cannot be reached (no InternalIP address or agent port in its status)")))?;
    let target = match query {
        Some(q) => format!("{url}/{path}?{q}"),
        None => format!("{url}/{path}"),
    };
    let answer = crate::pod_logs::agent_client(true).get(target).bearer_auth(&server.config.token).send().await
        .map_err(|e| ApiError::service_unavailable(format!("error trying to reach node {name}: {e}")))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let media = answer.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/octet-stream").to_string();
    Ok((status, [(header::CONTENT_TYPE, media)], Body::from_stream(answer.bytes_stream())).into_response())
}
