//! What bounds a guest: its linear memory (a [`Limiter`] per store) and its share of the
//! CPU (a [`Throttled`] future around its task), and how its use is counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

use crate::runtime::Usage;

/// A guest's table may hold at most this many elements.
pub(super) const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Caps a guest's linear memory at its container's memory limit. Growth past it ends
/// the guest (reported `OOMKilled`), as the kernel's OOM killer ends a process.
pub(super) struct Limiter {
    limit: Option<usize>,
    /// Bytes of linear memory across the guest's memories.
    current: usize,
    pub(super) exceeded: bool,
    usage: Arc<Usage>,
}

impl Limiter {
    pub(super) fn new(limit: Option<u64>, usage: Arc<Usage>) -> Self {
        Limiter { limit: limit.map(|l| l as usize), current: 0, exceeded: false, usage }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.current - current.min(self.current) + desired;
        if let Some(limit) = self.limit
            && total > limit
        {
            self.exceeded = true;
            wasmtime::bail!("memory limit of {limit} bytes exceeded: the guest asked for {total} bytes");
        }
        self.current = total;
        self.usage.memory_bytes.store(total as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Runs a guest future, counting the time spent polling it (the guest's CPU time, since
/// it yields at every epoch tick) and, with a CPU limit, pausing it after each slice so
/// its share of a core stays at the limit: a guest limited to 200m that ran 10 ms waits
/// 40 ms before running again.
pub(super) struct Throttled<F> {
    inner: Pin<Box<F>>,
    cpu_limit_milli: Option<u64>,
    usage: Arc<Usage>,
    /// CPU time owed as a pause, accumulated until it is worth a timer.
    owed: Duration,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F> Throttled<F> {
    pub(super) fn new(inner: F, cpu_limit_milli: Option<u64>, usage: Arc<Usage>) -> Self {
        let cpu_limit_milli = cpu_limit_milli.filter(|m| *m < 1000).map(|m| m.max(1));
        Throttled { inner: Box::pin(inner), cpu_limit_milli, usage, owed: Duration::ZERO, pause: None }
    }
}

impl<F: Future> Future for Throttled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let started = Instant::now();
        let result = self.inner.as_mut().poll(cx);
        let spent = started.elapsed();
        self.usage.cpu_nanos.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        if result.is_pending()
            && let Some(milli) = self.cpu_limit_milli
        {
            self.owed += spent * (1000 - milli as u32) / milli as u32;
            if self.owed >= Duration::from_millis(5) {
                let owed = std::mem::take(&mut self.owed);
                let mut pause = Box::pin(tokio::time::sleep(owed));
                // Registers the waker; the guest resumes when the pause is over.
                if pause.as_mut().poll(cx).is_pending() {
                    self.pause = Some(pause);
                }
            }
        }
        result
    }
}
