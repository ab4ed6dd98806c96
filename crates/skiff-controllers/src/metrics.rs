//! The controllers' Prometheus metrics, under controller-runtime's names: reconciles by
//! controller and result, how long each takes, the reconciles running now, and
//! `workqueue_depth` where Skiff owns the queue.
//!
//! The queue: the garbage collector's deletions wait for one of its workers, and that wait
//! is its `workqueue_depth`. kube-rs's controller runtime keeps its queue to itself
//! (kube-rs#1917) and runs a triggered object's reconcile at once (no concurrency cap,
//! except node IPAM's one at a time), so for those controllers what waits is what runs:
//! `controller_runtime_active_workers` is the backlog. Served on the API server's
//! `/metrics`.

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

/// client-go's workqueue label: the queue's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    name: &'static str,
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
static DEPTH: LazyLock<Family<QueueLabels, Gauge<i64, AtomicI64>>> = LazyLock::new(Default::default);

pub fn register(registry: &mut Registry) {
    registry.register("controller_runtime_reconcile", "Total number of reconciliations per controller, by result", RECONCILES.clone());
    registry.register("controller_runtime_reconcile_time_seconds", "Length of time per reconciliation per controller, in seconds", RECONCILE_TIME.clone());
    registry.register("controller_runtime_active_workers", "Number of reconciliations running now per controller", ACTIVE.clone());
    registry.register("workqueue_depth", "Current depth of workqueue", DEPTH.clone());
}

type Reconciling<E> = Pin<Box<dyn Future<Output = Result<Action, E>> + Send>>;

/// `reconcile`, counted and timed as `controller`'s.
pub fn metered<K, C, E: 'static, F, Fut>(controller: &'static str, reconcile: F) -> impl FnMut(Arc<K>, Arc<C>) -> Reconciling<E>
where
    F: Fn(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    move |object, ctx| Box::pin(observed(controller, reconcile(object, ctx), |action| *action != Action::await_change()))
}

/// One pass of a controller that is not kube-rs's (a loop of its own), counted and timed
/// as a reconcile of `controller`.
pub async fn pass<E>(controller: &'static str, work: impl Future<Output = Result<(), E>>) -> Result<(), E> {
    observed(controller, work, |_| false).await
}

/// `work` counted as running while it runs, then timed and counted by its result:
/// `requeue` for a success that `requeued` says asked to run again.
async fn observed<T, E>(controller: &'static str, work: impl Future<Output = Result<T, E>>, requeued: impl Fn(&T) -> bool) -> Result<T, E> {
    let labels = ControllerLabels { controller };
    let _running = Counted::start(ACTIVE.get_or_create_owned(&labels));
    let started = Instant::now();
    let result = work.await;
    RECONCILE_TIME.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Err(_) => "error",
        Ok(done) if requeued(done) => "requeue",
        Ok(_) => "success",
    };
    RECONCILES.get_or_create(&ResultLabels { controller, result: outcome }).inc();
    result
}

/// One item in queue `name` until dropped: held from when the work is queued until a
/// worker takes it up.
pub fn queued(name: &'static str) -> Counted {
    Counted::start(DEPTH.get_or_create_owned(&QueueLabels { name }))
}

/// One in a gauge until dropped, however the work ends (cancelled included).
pub struct Counted(Gauge<i64, AtomicI64>);

impl Counted {
    fn start(gauge: Gauge<i64, AtomicI64>) -> Counted {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
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

    #[tokio::test]
    async fn a_pass_is_counted_as_a_reconcile() {
        let _ = pass("test-pass", async { Ok::<(), &str>(()) }).await;
        let _ = pass("test-pass", async { Err::<(), &str>("failed") }).await;
        assert_eq!((count("test-pass", "success"), count("test-pass", "error")), (1, 1));
    }

    #[test]
    fn the_queue_depth_counts_what_is_held() {
        let depth = || DEPTH.get_or_create(&QueueLabels { name: "test-queue" }).get();
        let (a, b) = (queued("test-queue"), queued("test-queue"));
        assert_eq!(depth(), 2);
        drop(a);
        assert_eq!(depth(), 1);
        drop(b);
        assert_eq!(depth(), 0);
    }
}
