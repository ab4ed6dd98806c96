//! `metrics.k8s.io/v1beta1`, which metrics-server serves in Kubernetes as an aggregated
//! API: NodeMetrics and PodMetrics for `kubectl top` and the autoscaler. Here the API
//! server serves it itself, from a collector that reads every node agent's
//! `/stats/summary` each resolution period (15 s by default, as metrics-server). The same
//! readings give the request metrics of `custom.metrics.k8s.io` ([`custom`]).

pub mod custom;
pub mod samples;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_store::ListOptions;

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};
use samples::{PodUsage, Samples, Usage};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// How long one agent may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Agents read at once.
const SCRAPE_CONCURRENCY: usize = 32;

/// The resources of `metrics.k8s.io/v1beta1`: (plural, kind, namespaced).
pub const RESOURCES: &[(&str, &str, bool)] = &[("nodes", "NodeMetrics", false), ("pods", "PodMetrics", true)];

/// The last usage read from the agents.
#[derive(Default)]
pub struct ResourceMetrics {
    samples: Mutex<Samples>,
}

/// Reads every node's agent each `resolution`, until the process ends.
pub async fn collect(server: Arc<ApiServer>, resolution: Duration) {
    let mut tick = tokio::time::interval(resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = scrape(&server).await {
            tracing::debug!(error = %e.message, "reading node usage");
        }
    }
}

async fn scrape(server: &ApiServer) -> ApiResult<()> {
    let nodes = skiff_core::resources::find("", "v1", "nodes").expect("nodes are served");
    let listed = server.store.list(&nodes.list_prefix(None), &ListOptions::default()).await.map_err(|e| ApiError::from_store(e, "nodes", ""))?.items;
    let targets: Vec<(String, Option<String>)> =
        listed.iter().filter_map(|n| Some((n.pointer("/metadata/name")?.as_str()?.to_string(), crate::pod_logs::node_agent_url(n)))).collect();
    let reads = futures::stream::iter(targets)
        .map(|(name, url)| async move {
            let Some(url) = url else { return (name, None) };
            let request = crate::pod_logs::agent_client(true).get(format!("{url}/stats/summary")).bearer_auth(&server.config.token).timeout(SCRAPE_TIMEOUT);
            let summary = match request.send().await.and_then(|r| r.error_for_status()) {
                Ok(r) => r.bytes().await.ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
                Err(e) => {
                    tracing::debug!(node = %name, error = %e, "reading the node's usage");
                    None
                }
            };
            (name, summary.map(|s| (s, jiff::Timestamp::now())))
        })
        .buffer_unordered(SCRAPE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut samples = server.metrics.samples.lock().unwrap();
    let present: std::collections::HashSet<&str> = reads.iter().map(|(n, _)| n.as_str()).collect();
    for gone in samples.node_names().into_iter().filter(|n| !present.contains(n.as_str())) {
        samples.forget_node(&gone);
    }
    for (node, read) in &reads {
        match read {
            Some((summary, at)) => samples.take_summary(node, summary, *at),
            None => samples.forget_node(node),
        }
    }
    Ok(())
}

/// Nanocores as metrics-server writes them.
fn cpu(nanocores: u64) -> String {
    format!("{nanocores}n")
}

fn memory(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

/// A duration as Go's `time.Duration` prints it (`15s`, `1.5s`, `1m0.5s`).
fn go_duration(d: Duration) -> String {
    let millis = d.as_millis();
    let (minutes, rest) = (millis / 60_000, millis % 60_000);
    let seconds = format!("{}.{:03}", rest / 1000, rest % 1000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 { format!("{minutes}m{seconds}s") } else { format!("{seconds}s") }
}

fn metadata(object: &Value) -> Value {
    let m = &object["metadata"];
    let mut out = json!({"name": m["name"], "creationTimestamp": jiff::Timestamp::now().to_string()});
    if let Some(ns) = m.get("namespace") {
        out["namespace"] = ns.clone();
    }
    if let Some(labels) = m.get("labels") {
        out["labels"] = labels.clone();
    }
    out
}

fn node_metrics(node: &Value, usage: &Usage) -> Option<Value> {
    Some(json!({"kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": metadata(node),
        "timestamp": usage.timestamp().to_string(), "window": go_duration(usage.window),
        "usage": {"cpu": cpu(usage.nanocores?), "memory": memory(usage.memory_bytes)}}))
}

fn pod_metrics(pod: &Value, usage: &PodUsage) -> Option<Value> {
    if !usage.complete() {
        return None;
    }
    let (_, first) = usage.containers.first()?;
    let containers: Vec<Value> = usage.containers.iter()
        .map(|(name, u)| json!({"name": name, "usage": {"cpu": cpu(u.nanocores.unwrap_or(0)), "memory": memory(u.memory_bytes)}}))
        .collect();
    Some(json!({"kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": metadata(pod),
        "timestamp": first.timestamp().to_string(), "window": go_duration(first.window), "containers": containers}))
}

/// `GET /apis/custom.metrics.k8s.io/v1beta2/…`.
pub async fn handle_custom(State(server): State<Arc<ApiServer>>, method: http::Method, Path(rest): Path<String>, Query(params): Query<HashMap<String, String>>) -> Response {
    if method != http::Method::GET {
        return ApiError::method_not_allowed(format!("{method} is not supported on {}; only get and list are", custom::GROUP)).into_response();
    }
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    custom::answer(&server, &parts, &params).await.map_or_else(|e| e.into_response(), |v| crate::json_body(&v))
}

/// `GET /apis/metrics.k8s.io/v1beta1/…`: lists (with label and field selectors) and gets
/// of nodes and pods. The objects themselves are read from the store, so labels and
/// selectors are the objects' own, and a deleted pod is not reported.
pub async fn handle(State(server): State<Arc<ApiServer>>, method: http::Method, Path(rest): Path<String>, Query(params): Query<HashMap<String, String>>) -> Response {
    if method != http::Method::GET {
        return ApiError::method_not_allowed(format!("{method} is not supported on {GROUP}; only get and list are")).into_response();
    }
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let answer = match parts.as_slice() {
        ["nodes"] => list(&server, "nodes", None, &params).await,
        ["nodes", name] => get(&server, "nodes", None, name).await,
        ["pods"] => list(&server, "pods", None, &params).await,
        ["namespaces", ns, "pods"] => list(&server, "pods", Some(ns), &params).await,
        ["namespaces", ns, "pods", name] => get(&server, "pods", Some(ns), name).await,
        _ => Err(ApiError::no_route(format!("the server could not find the requested resource (/apis/{GROUP}/{VERSION}/{rest})"))),
    };
    answer.map_or_else(|e| e.into_response(), |v| crate::json_body(&v))
}

fn metrics_of(samples: &Samples, plural: &str, object: &Value) -> Option<Value> {
    let name = object.pointer("/metadata/name")?.as_str()?.to_string();
    if plural == "nodes" {
        return node_metrics(object, samples.nodes.get(&name)?);
    }
    let ns = object.pointer("/metadata/namespace")?.as_str()?.to_string();
    pod_metrics(object, samples.pods.get(&(ns, name))?)
}

async fn list(server: &ApiServer, plural: &str, namespace: Option<&str>, params: &HashMap<String, String>) -> ApiResult<Value> {
    let r = skiff_core::resources::find("", "v1", plural).expect("nodes and pods are served");
    let mut options = crate::rest::list_options(params)?;
    (options.limit, options.continue_token) = (None, None);
    let objects = server.store.list(&r.list_prefix(namespace), &options).await.map_err(|e| ApiError::from_store(e, plural, ""))?.items;
    let items: Vec<Value> = {
        let samples = server.metrics.samples.lock().unwrap();
        objects.iter().filter_map(|o| metrics_of(&samples, plural, o)).collect()
    };
    let kind = if plural == "nodes" { "NodeMetricsList" } else { "PodMetricsList" };
    Ok(json!({"kind": kind, "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items}))
}

async fn get(server: &ApiServer, plural: &str, namespace: Option<&str>, name: &str) -> ApiResult<Value> {
    let r = skiff_core::resources::find("", "v1", plural).expect("nodes and pods are served");
    let kind = if plural == "nodes" { "nodemetrics" } else { "podmetrics" };
    let not_found = || ApiError::not_found(&format!("{kind}.{GROUP}"), name);
    let object = server.store.get(&r.key(namespace, name)).await.map_err(|_| not_found())?;
    let samples = server.metrics.samples.lock().unwrap();
    metrics_of(&samples, plural, &object).ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(60_500)), "1m0.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
