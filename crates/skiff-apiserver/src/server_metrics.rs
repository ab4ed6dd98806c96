//! The API server's own Prometheus metrics, served at `/metrics` in the OpenMetrics text
//! format by prometheus-client, under kube-apiserver's names so its dashboards and alerts
//! read them as they are:
//! - `apiserver_request_total{verb,group,version,resource,subresource,scope,code}`;
//! - `apiserver_request_duration_seconds{verb,group,version,resource,subresource,scope}`,
//!   until the response's head (a watch or a log stream: until it starts);
//! - `apiserver_longrunning_requests{verb,group,version,resource,subresource,scope}`: the
//!   watches and streams open now;
//! - `apiserver_registered_watchers{group,version,kind}`: the watches the store feeds now,
//!   over HTTP or WebSocket.
//!
//! The parts in the same process register theirs beside these ([`Config::metrics_of`]):
//! the store's commits, the scheduler's attempts, the controllers' reconciles.
//!
//! Reading `/metrics` needs `get` on that non-resource URL (cluster-admin has it, and
//! the `system:monitoring` ClusterRole grants it), as in Kubernetes.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::authz::Attributes;
#[cfg(doc)]
use crate::Config;

/// kube-apiserver's request latency buckets (seconds).
const LATENCY_BUCKETS: [f64; 21] = [0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0];

/// What a request is, as kube-apiserver labels it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    /// `resource` (one named object), `namespace`, `cluster`, or empty for a path that
    /// names no resource.
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchedLabels {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnsweredLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    code: String,
}

/// The server's metrics and the registry that encodes them.
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<AnsweredLabels, Counter>,
    durations: Family<RequestLabels, Histogram>,
    longrunning: Family<RequestLabels, Gauge<i64, AtomicI64>>,
    watchers: Family<WatchedLabels, Gauge<i64, AtomicI64>>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl ServerMetrics {
    /// The server's metrics, and those each of `parts` registers.
    pub fn new(parts: &[fn(&mut Registry)]) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<AnsweredLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS.into_iter()));
        let longrunning = Family::<RequestLabels, Gauge<i64, AtomicI64>>::default();
        registry.register("apiserver_request", "Counter of API requests, by verb, group, version, resource, subresource, scope and HTTP response code", requests.clone());
        registry.register("apiserver_request_duration_seconds", "Response latency of API requests in seconds, until the response's head, by verb, group, version, resource, subresource and scope", durations.clone());
        registry.register("apiserver_longrunning_requests", "Watches and streams open now, by verb, group, version, resource, subresource and scope", longrunning.clone());
        let watchers = Family::<WatchedLabels, Gauge<i64, AtomicI64>>::default();
        registry.register("apiserver_registered_watchers", "Watches the store feeds now, by group, version and kind", watchers.clone());
        for register in parts {
            register(&mut registry);
        }
        ServerMetrics { registry, requests, durations, longrunning, watchers }
    }

    /// A watch of `r` begins; it is counted until the guard returned is dropped.
    pub fn watching(&self, r: &skiff_core::ResourceType) -> Watching {
        let gauge = self.watchers.get_or_create_owned(&WatchedLabels { group: r.group, version: r.version, kind: r.kind });
        gauge.inc();
        Watching(gauge)
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Counts a request answered with `code` after `since`; a watch or stream answered
    /// with success stays counted among the long-running until the guard returned is
    /// dropped (when its body ends).
    pub fn answered(self: &Arc<Self>, labels: RequestLabels, code: u16, since: Instant, streaming: bool) -> Option<LongRunning> {
        self.durations.get_or_create(&labels).observe(since.elapsed().as_secs_f64());
        self.requests.get_or_create(&AnsweredLabels { request: labels.clone(), code: code.to_string() }).inc();
        (streaming && code < 300).then(|| {
            self.longrunning.get_or_create(&labels).inc();
            LongRunning { metrics: self.clone(), labels }
        })
    }
}

/// A watch or stream open now, counted until dropped.
pub struct LongRunning {
    metrics: Arc<ServerMetrics>,
    labels: RequestLabels,
}

impl Drop for LongRunning {
    fn drop(&mut self) {
        self.metrics.longrunning.get_or_create(&self.labels).dec();
    }
}

/// A watch the store feeds, counted until dropped.
pub struct Watching(Gauge<i64, AtomicI64>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestLabels {
    /// A request's labels from its attributes and path; `watch` for a list that watches.
    pub fn of(a: &Attributes) -> RequestLabels {
        if !a.resource_request {
            return RequestLabels { verb: a.verb.to_uppercase(), group: String::new(), version: String::new(), resource: String::new(), subresource: String::new(), scope: String::new() };
        }
        let scope = if !a.name.is_empty() { "resource" } else if !a.namespace.is_empty() { "namespace" } else { "cluster" };
        RequestLabels {
            verb: a.verb.to_uppercase(),
            group: a.api_group.clone(),
            version: crate::audit::api_version(&a.path),
            resource: a.resource.clone(),
            subresource: a.subresource.clone(),
            scope: scope.into(),
        }
    }

    /// Whether the answer is a stream that stays open: a watch, a log follow, exec,
    /// attach or port-forward.
    pub fn streams(&self, query: Option<&str>) -> bool {
        self.verb == "WATCH" || matches!(self.subresource.as_str(), "exec" | "attach" | "portforward")
            || (self.subresource == "log" && query.is_some_and(|q| q.split('&').any(|kv| kv == "follow=true" || kv == "follow=1")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_under_kubernetes_names() {
        let metrics = Arc::new(ServerMetrics::default());
        let create = Attributes::of(&http::Method::POST, "/api/v1/namespaces/default/pods", None);
        let labels = RequestLabels::of(&create);
        assert_eq!((labels.verb.as_str(), labels.version.as_str(), labels.resource.as_str(), labels.scope.as_str()), ("CREATE", "v1", "pods", "namespace"));
        assert!(metrics.answered(labels, 201, Instant::now(), false).is_none());
        let watch = RequestLabels::of(&Attributes::of(&http::Method::GET, "/apis/apps/v1/deployments", Some("watch=true")));
        assert!(watch.streams(None));
        let open = metrics.answered(watch, 200, Instant::now(), true);
        let text = metrics.encode();
        assert!(text.contains(r#"apiserver_request_total{verb="CREATE",group="",version="v1",resource="pods",subresource="",scope="namespace",code="201"} 1"#), "{text}");
        assert!(text.contains(r#"apiserver_longrunning_requests{verb="WATCH",group="apps",version="v1",resource="deployments",subresource="",scope="cluster"} 1"#), "{text}");
        assert!(text.contains("apiserver_request_duration_seconds_bucket{"), "{text}");
        drop(open);
        assert!(metrics.encode().contains(r#"scope="cluster"} 0"#));
    }
}
