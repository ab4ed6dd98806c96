//! The controllers' Prometheus metrics, under controller-runtime's names: reconciles by
//! controller and result, how long each takes, and the reconciles running now.
//!
//! Why no `workqueue_depth`: kube-rs's controller runtime keeps its queue to itself, and
//! runs a triggered object's reconcile at once (no concurrency cap, except node IPAM's one
//! at a time), so what waits is what runs: `controller_runtime_active_workers` is the
//! backlog. Served on the API server's `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use kube::runtime::controller::Action;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: &'static str,
    /// `success`, `requeue` (succeeded and asked to run again later) or `error`.
    result: &'static str,
}

static RECONCILES: LazyLock<Family<ResultLabels, Counter>> = LazyLock::new(Default::default);
/// 1 ms doubling to about 33 s.
static RECONCILE_TIME: LazyLock<Family<ControllerLabels, Histogram>> =
    LazyLock::new(|| Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))));
static ACTIVE: LazyLock<Family<ControllerLabels, Gauge<i64, AtomicI64>>> = LazyLock::new(Default::default);

pub fn register(registry: &mut Registry) {
    registry.register("controller_runtime_reconcile", "Total number of reconciliations per controller, by result", RECONCILES.clone());
    registry.register("controller_runtime_reconcile_time_seconds", "Length of time per reconciliation per controller, in seconds", RECONCILE_TIME.clone());
    registry.register("controller_runtime_active_workers", "Number of reconciliations running now per controller", ACTIVE.clone());
}

type Reconciling<E> = Pin<Box<dyn Future<Output = Result<Action, E>> + Send>>;

/// `reconcile`, counted and timed as `controller`'s.
pub fn metered<K, C, E, F, Fut>(controller: &'static str, reconcile: F) -> impl FnMut(Arc<K>, Arc<C>) -> Reconciling<E>
where
    F: Fn(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    move |object, ctx| {
        let work = reconcile(object, ctx);
        Box::pin(async move {
            let labels = ControllerLabels { controller };
            let _running = Running::start(ACTIVE.get_or_create_owned(&labels));
            let started = Instant::now();
            let result = work.await;
            RECONCILE_TIME.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            let outcome = match &result {
                Err(_) => "error",
                Ok(action) if *action != Action::await_change() => "requeue",
                Ok(_) => "success",
            };
            RECONCILES.get_or_create(&ResultLabels { controller, result: outcome }).inc();
            result
        })
    }
}

/// A reconcile counted as running until dropped, however it ends (cancelled included).
struct Running(Gauge<i64, AtomicI64>);

impl Running {
    fn start(gauge: Gauge<i64, AtomicI64>) -> Running {
        gauge.inc();
        Running(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(controller: &'static str, result: &'static str) -> u64 {
        RECONCILES.get_or_create(&ResultLabels { controller, result }).get()
    }

    #[tokio::test]
    async fn reconciles_are_counted_by_result_and_none_stays_active() {
        let mut reconcile = metered("test", |outcome: Arc<u8>, _: Arc<()>| async move {
            match *outcome {
                0 => Ok(Action::await_change()),
                1 => Ok(Action::requeue(std::time::Duration::from_secs(1))),
                _ => Err("failed"),
            }
        });
        for outcome in [0, 1, 1, 2] {
            let _ = reconcile(Arc::new(outcome), Arc::new(())).await;
        }
        assert_eq!((count("test", "success"), count("test", "requeue"), count("test", "error")), (1, 2, 1));
        assert_eq!(ACTIVE.get_or_create(&ControllerLabels { controller: "test" }).get(), 0);
    }
}
