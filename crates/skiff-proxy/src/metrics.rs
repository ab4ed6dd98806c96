//! The service proxy's Prometheus metrics, served on the node agent's `/metrics`: the TCP
//! connections it relayed to each Service's endpoints (`service` is
//! `namespace/name:port`), those open now, and the bytes relayed each way.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    service: String,
    /// `to_endpoint` (the client's bytes) or `to_client` (the endpoint's answer).
    direction: &'static str,
}

static CONNECTIONS: LazyLock<Family<ServiceLabels, Counter>> = LazyLock::new(Default::default);
static OPEN: LazyLock<Family<ServiceLabels, Gauge<i64, AtomicI64>>> = LazyLock::new(Default::default);
static BYTES: LazyLock<Family<BytesLabels, Counter>> = LazyLock::new(Default::default);

pub fn register(registry: &mut Registry) {
    registry.register("skiff_proxy_connections", "TCP connections the service proxy relayed to an endpoint, by Service", CONNECTIONS.clone());
    registry.register("skiff_proxy_open_connections", "TCP connections the service proxy relays now, by Service", OPEN.clone());
    registry.register("skiff_proxy_bytes", "Bytes the service proxy relayed, by Service and direction", BYTES.clone());
}

/// One relayed connection: counted open until dropped, with its byte counters at hand.
pub(crate) struct Relayed {
    open: Gauge<i64, AtomicI64>,
    pub to_endpoint: Counter<u64, AtomicU64>,
    pub to_client: Counter<u64, AtomicU64>,
}

impl Relayed {
    pub fn start(service: &str) -> Relayed {
        let labels = ServiceLabels { service: service.into() };
        CONNECTIONS.get_or_create(&labels).inc();
        let open = OPEN.get_or_create_owned(&labels);
        open.inc();
        let bytes = |direction| BYTES.get_or_create_owned(&BytesLabels { service: service.into(), direction });
        Relayed { open, to_endpoint: bytes("to_endpoint"), to_client: bytes("to_client") }
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.open.dec();
    }
}
