//! The scheduler's Prometheus metrics, under kube-scheduler's names (profile
//! `default-scheduler`): attempts by result, how long an attempt takes (choosing a node,
//! and binding the pod there when one was found), and the pods waiting by queue.
//! Served on the API server's `/metrics`.

use std::sync::LazyLock;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    /// `scheduled`, `unschedulable` or `error` (the binding failed).
    result: &'static str,
    profile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    /// `active`, `backoff` or `unschedulable`, as kube-scheduler names its queues.
    queue: &'static str,
}

static ATTEMPTS: LazyLock<Family<AttemptLabels, Counter>> = LazyLock::new(Default::default);
/// kube-scheduler's buckets: 1 ms doubling to about 16 s.
static ATTEMPT_DURATION: LazyLock<Family<AttemptLabels, Histogram>> =
    LazyLock::new(|| Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 15))));
static PENDING: LazyLock<Family<QueueLabels, Gauge<i64, AtomicI64>>> = LazyLock::new(Default::default);

pub fn register(registry: &mut Registry) {
    registry.register("scheduler_schedule_attempts", "Number of attempts to schedule pods, by the result", ATTEMPTS.clone());
    registry.register("scheduler_scheduling_attempt_duration_seconds", "Scheduling attempt latency in seconds (choosing a node and binding to it)", ATTEMPT_DURATION.clone());
    registry.register("scheduler_pending_pods", "Number of pending pods, by the queue type", PENDING.clone());
}

/// One attempt ended with `result`, begun at `since`.
pub(crate) fn attempted(result: &'static str, since: Instant) {
    let labels = AttemptLabels { result, profile: "default-scheduler" };
    ATTEMPTS.get_or_create(&labels).inc();
    ATTEMPT_DURATION.get_or_create(&labels).observe(since.elapsed().as_secs_f64());
}

/// The pods waiting now: (active, backoff, unschedulable).
pub(crate) fn pending((active, backoff, unschedulable): (usize, usize, usize)) {
    for (queue, n) in [("active", active), ("backoff", backoff), ("unschedulable", unschedulable)] {
        PENDING.get_or_create(&QueueLabels { queue }).set(n as i64);
    }
}
