//! The node's Prometheus metrics, served on the agent's `/metrics` (as kubelet serves its
//! own on its port; through the API: `kubectl get --raw /api/v1/nodes/NODE/proxy/metrics`):
//! - `kubelet_pod_start_duration_seconds{runtime}`: from the agent first seeing a pod to
//!   all its containers running, by runtime (`wasmtime`, `crun`, `runc`);
//! - `skiff_wasm_compile_duration_seconds{kind}` (`module`, `component`): compiles, which
//!   happen once per image digest (the cache on disk spares them after);
//! - `skiff_wasm_instantiate_duration_seconds{kind}` (`command`, `http`): an instance
//!   made for a command's run or for an HTTP request (a reused instance makes none);
//! - `skiff_function_requests_total{namespace,pod,code}` and
//!   `skiff_function_request_duration_seconds{namespace,pod}`: the requests each Wasm
//!   HTTP function pod answered, until its response's head; a pod's series go with it.
//!
//! The node's service proxy registers its own beside these.

use std::collections::BTreeSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    namespace: String,
    pod: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnsweredLabels {
    #[prometheus(flatten)]
    pod: PodLabels,
    code: u16,
}

/// 1 ms doubling to about 33 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// 10 µs doubling to about 1.3 s: an instance takes microseconds, a request milliseconds.
fn short_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 2.0, 18))
}

static POD_START: LazyLock<Family<RuntimeLabels, Histogram>> = LazyLock::new(|| Family::new_with_constructor(seconds));
static COMPILE: LazyLock<Family<KindLabels, Histogram>> = LazyLock::new(|| Family::new_with_constructor(seconds));
static INSTANTIATE: LazyLock<Family<KindLabels, Histogram>> = LazyLock::new(|| Family::new_with_constructor(short_seconds));
static REQUESTS: LazyLock<Family<AnsweredLabels, Counter>> = LazyLock::new(Default::default);
static REQUEST_DURATION: LazyLock<Family<PodLabels, Histogram>> = LazyLock::new(|| Family::new_with_constructor(short_seconds));

/// The node's metrics, and those each of `parts` registers (the service proxy's).
pub fn registry(parts: &[fn(&mut Registry)]) -> Registry {
    let mut registry = Registry::default();
    registry.register("kubelet_pod_start_duration_seconds", "Duration in seconds from the node first seeing a pod to all its containers running, by runtime", POD_START.clone());
    registry.register("skiff_wasm_compile_duration_seconds", "Time to compile a Wasm module or component, in seconds", COMPILE.clone());
    registry.register("skiff_wasm_instantiate_duration_seconds", "Time to instantiate Wasm for a command's run or an HTTP request, in seconds", INSTANTIATE.clone());
    registry.register("skiff_function_requests", "Requests answered by each Wasm HTTP function pod, by HTTP status code", REQUESTS.clone());
    registry.register("skiff_function_request_duration_seconds", "Time to the response's head of each Wasm HTTP function pod's requests, in seconds", REQUEST_DURATION.clone());
    for register in parts {
        register(&mut registry);
    }
    registry
}

pub(crate) fn pod_started(runtime: &'static str, took: Duration) {
    POD_START.get_or_create(&RuntimeLabels { runtime }).observe(took.as_secs_f64());
}

pub(crate) fn compiled(kind: &'static str, took: Duration) {
    COMPILE.get_or_create(&KindLabels { kind }).observe(took.as_secs_f64());
}

pub(crate) fn instantiated(kind: &'static str, took: Duration) {
    INSTANTIATE.get_or_create(&KindLabels { kind }).observe(took.as_secs_f64());
}

/// The series of one function pod's requests, removed when it is dropped (the pod stopped
/// serving): a node sees many pods come and go. Each request looks its series up again
/// rather than holding them: a restarted container's new series and its old one share
/// labels, and the old one's removal must not leave the new one's counts unexported.
pub(crate) struct FunctionSeries {
    pod: PodLabels,
    codes: Mutex<BTreeSet<u16>>,
}

impl FunctionSeries {
    pub fn new(namespace: &str, pod: &str) -> FunctionSeries {
        FunctionSeries { pod: PodLabels { namespace: namespace.into(), pod: pod.into() }, codes: Mutex::default() }
    }

    pub fn answered(&self, code: u16, took: Duration) {
        REQUEST_DURATION.get_or_create(&self.pod).observe(took.as_secs_f64());
        REQUESTS.get_or_create(&AnsweredLabels { pod: self.pod.clone(), code }).inc();
        self.codes.lock().unwrap().insert(code);
    }
}

impl Drop for FunctionSeries {
    fn drop(&mut self) {
        REQUEST_DURATION.remove(&self.pod);
        for code in std::mem::take(&mut *self.codes.lock().unwrap()) {
            REQUESTS.remove(&AnsweredLabels { pod: self.pod.clone(), code });
        }
    }
}
