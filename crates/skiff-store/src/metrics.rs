//! The store's Prometheus metrics: how long each commit takes and how many writes it
//! carries. The writer thread commits, in one transaction, every write that queued while
//! the last commit ran, so under load the batch grows and the commits stay few.
//! Served on the API server's `/metrics`.

use std::sync::LazyLock;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// 100 µs to about 3.3 s.
pub(crate) static COMMIT_DURATION: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
/// 1 to 2,048 writes (the most one commit takes).
pub(crate) static BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(exponential_buckets(1.0, 2.0, 12)));

pub fn register(registry: &mut Registry) {
    registry.register("skiff_store_commit_duration_seconds", "Time of one store commit (one redb write transaction, made durable), in seconds", COMMIT_DURATION.clone());
    registry.register("skiff_store_commit_batch_size", "Writes carried by one store commit", BATCH_SIZE.clone());
}
