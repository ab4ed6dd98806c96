//! `custom.metrics.k8s.io/v1beta2`, the request metrics the nodes count for HTTP function
//! pods, and their proxies and ingresses for the HTTP requests they send to any pod (a
//! Prometheus adapter's role in Kubernetes): `requests_per_second` and
//! `concurrency` (average requests in flight) per pod, and summed over the pods of a
//! Service or a Deployment for HPA `Object` metrics.

use std::collections::HashMap;

use serde_json::{Value, json};
use skiff_core::LabelSelector;
use skiff_store::ListOptions;

use super::samples::Requests;
use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

pub const GROUP: &str = "custom.metrics.k8s.io";
pub const VERSION: &str = "v1beta2";
pub const METRICS: &[&str] = &["requests_per_second", "concurrency"];
/// What discovery lists: each resource the metrics describe, with each metric.
pub const RESOURCES: &[(&str, &str, bool)] = &[
    ("pods/requests_per_second", "MetricValueList", true),
    ("pods/concurrency", "MetricValueList", true),
    ("services/requests_per_second", "MetricValueList", true),
    ("services/concurrency", "MetricValueList", true),
    ("deployments.apps/requests_per_second", "MetricValueList", true),
    ("deployments.apps/concurrency", "MetricValueList", true),
];

fn value_of(requests: &Requests, metric: &str) -> Option<f64> {
    match metric {
        "requests_per_second" => requests.per_second,
        _ => requests.concurrency,
    }
}

/// A quantity in milli-units, as the adapters write fractional values.
fn milli(v: f64) -> String {
    format!("{}m", (v * 1000.0).round() as i64)
}

fn item(kind: &str, api_version: &str, namespace: &str, name: &str, metric: &str, value: f64, window: std::time::Duration) -> Value {
    json!({"describedObject": {"kind": kind, "namespace": namespace, "name": name, "apiVersion": api_version},
           "metric": {"name": metric, "selector": null}, "timestamp": jiff::Timestamp::now().to_string(),
           "windowSeconds": window.as_secs().max(1), "value": milli(value)})
}

fn list(items: Vec<Value>) -> Value {
    json!({"kind": "MetricValueList", "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items})
}

/// The pods of `namespace` the selector matches, with their request figures.
async fn pods_matching(server: &ApiServer, namespace: &str, labels: LabelSelector) -> ApiResult<Vec<(String, Option<Requests>)>> {
    let pods = skiff_core::resources::find("", "v1", "pods").expect("pods are served");
    let options = ListOptions { labels, ..Default::default() };
    let listed = server.store.list(&pods.list_prefix(Some(namespace)), &options).await.map_err(|e| ApiError::from_store(e, "pods", ""))?.items;
    let samples = server.metrics.samples.lock().unwrap();
    Ok(listed.iter().filter_map(|p| {
        let name = p.pointer("/metadata/name")?.as_str()?.to_string();
        let ip = p.pointer("/status/podIP").and_then(Value::as_str).and_then(|ip| ip.parse().ok());
        let requests = samples.requests_of(namespace, &name, ip);
        Some((name, requests))
    }).collect())
}

/// Answers a path under `/apis/custom.metrics.k8s.io/v1beta2/`.
pub async fn answer(server: &ApiServer, parts: &[&str], params: &HashMap<String, String>) -> ApiResult<Value> {
    let ["namespaces", ns, resource, name, metric] = parts else {
        return Err(ApiError::no_route(format!("the server could not find the requested resource (/apis/{GROUP}/{VERSION}/{})", parts.join("/"))));
    };
    if !METRICS.contains(metric) {
        return Err(ApiError::not_found(&format!("{resource}.{GROUP}"), &format!("{name}/{metric}: the server could not find the metric {metric} (served: {})", METRICS.join(", "))));
    }
    match *resource {
        "pods" => {
            let labels = LabelSelector::parse(params.get("labelSelector").map(String::as_str).unwrap_or_default()).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let pods = pods_matching(server, ns, labels).await?;
            let items: Vec<Value> = pods.iter()
                .filter(|(n, _)| *name == "*" || n == name)
                .filter_map(|(n, r)| r.as_ref().and_then(|r| Some(item("Pod", "/v1", ns, n, metric, value_of(r, metric)?, r.window))))
                .collect();
            if *name != "*" && items.is_empty() {
                return Err(ApiError::not_found(&format!("pods.{GROUP}"), &format!("{name}/{metric}: no {metric} is known for pod {name} (HTTP function pods count their requests, and the proxy and the ingress count the HTTP/1.1 requests they send to any pod; figures appear once read twice)")));
            }
            Ok(list(items))
        }
        "services" | "deployments.apps" => {
            let (r, kind, api_version) = if *resource == "services" { (skiff_core::resources::find("", "v1", "services"), "Service", "/v1") } else { (skiff_core::resources::find("apps", "v1", "deployments"), "Deployment", "apps/v1") };
            let r = r.expect("served");
            let object = server.store.get(&r.key(Some(ns), name)).await.map_err(|e| ApiError::from_store(e, r.plural, name))?;
            let selector = if kind == "Service" { object.pointer("/spec/selector").map(|s| json!({"matchLabels": s})) } else { object.pointer("/spec/selector").cloned() };
            // A Service without a selector has no pods the node can count.
            let labels = match selector {
                Some(s) => LabelSelector::from_json(&s).map_err(|e| ApiError::bad_request(e.to_string()))?,
                None => return Ok(list(vec![item(kind, api_version, ns, name, metric, 0.0, std::time::Duration::ZERO)])),
            };
            let pods = pods_matching(server, ns, labels).await?;
            let counted: Vec<&Requests> = pods.iter().filter_map(|(_, r)| r.as_ref()).collect();
            let total: f64 = counted.iter().filter_map(|r| value_of(r, metric)).sum();
            let window = counted.iter().map(|r| r.window).max().unwrap_or_default();
            Ok(list(vec![item(kind, api_version, ns, name, metric, total, window)]))
        }
        other => Err(ApiError::not_found(&format!("{other}.{GROUP}"), &format!("{name}/{metric}: request metrics describe pods, services and deployments.apps"))),
    }
}
