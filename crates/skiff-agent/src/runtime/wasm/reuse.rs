//! Instance reuse for wasi:http pods, opt-in with `skiff.dev/instance-reuse: N`: an
//! instance that answered a request is kept for the pod's next one, up to N requests, as
//! `wasmtime serve --max-instance-reuse-count N` does. It saves building a WASI context
//! and instantiating per request.
//!
//! The trade-off is isolation between requests: a reused instance keeps its linear
//! memory, globals and tables, so whatever one request left there (data, a corrupted
//! heap) the next requests on that instance see. Requests of different pods never share
//! an instance. A trap, a memory overrun or a deadline still ends only the instance it
//! happened in: such an instance is dropped, never returned here.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use super::http::HttpState;

/// The most requests one instance serves: `skiff.dev/instance-reuse`, default 1 (a fresh
/// instance for every request).
pub const REUSE_ANNOTATION: &str = "skiff.dev/instance-reuse";

/// How long an instance waits for another request before it is dropped (`wasmtime
/// serve`'s default `--idle-instance-timeout`), so an idle pod soon holds no instance
/// and no slot of the engine's pool.
pub const IDLE_FOR: Duration = Duration::from_secs(1);

/// An instance between requests.
pub struct Warm {
    pub store: Store<HttpState>,
    pub proxy: Proxy,
    /// Requests it has answered.
    pub served: usize,
}

/// One pod's instances waiting for a request.
pub struct Pool {
    max_requests: usize,
    idle: Mutex<Vec<(Warm, Instant)>>,
}

impl Pool {
    /// A pool whose instances serve up to `max_requests` each (at least 2: one request per
    /// instance needs no pool).
    pub fn new(max_requests: usize) -> Pool {
        Pool { max_requests, idle: Mutex::new(Vec::new()) }
    }

    /// The instance that answered most recently (its memory is the likeliest still in
    /// cache), if one is waiting.
    pub fn take(&self) -> Option<Warm> {
        self.idle.lock().unwrap().pop().map(|(warm, _)| warm)
    }

    /// Keeps an instance that answered a request, unless it has served its share.
    pub fn put(&self, warm: Warm) {
        if warm.served < self.max_requests {
            self.idle.lock().unwrap().push((warm, Instant::now()));
        }
    }

    /// Drops the instances idle for longer than [`IDLE_FOR`].
    pub fn prune(&self) {
        let stale: Vec<_> = {
            let mut idle = self.idle.lock().unwrap();
            // Oldest first: the stale ones are a prefix.
            let fresh = idle.iter().position(|(_, since)| since.elapsed() < IDLE_FOR).unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        drop(stale); // outside the lock: dropping a store frees its memory
    }

    /// Drops every waiting instance (the pod is stopping).
    pub fn clear(&self) {
        let all = std::mem::take(&mut *self.idle.lock().unwrap());
        drop(all);
    }

    /// Instances waiting.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

/// Reads `skiff.dev/instance-reuse`: `None` for one request per instance.
pub fn max_requests(annotation: Option<&str>) -> Result<Option<usize>, String> {
    match annotation {
        None => Ok(None),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("{REUSE_ANNOTATION} {v:?} is not a positive integer (the most requests one instance serves)")),
            Ok(1) => Ok(None),
            Ok(n) => Ok(Some(n)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::max_requests;

    #[test]
    fn the_annotation_is_a_positive_count() {
        assert_eq!(max_requests(None), Ok(None));
        assert_eq!(max_requests(Some("1")), Ok(None));
        assert_eq!(max_requests(Some("128")), Ok(Some(128)));
        for bad in ["0", "-3", "many", ""] {
            assert!(max_requests(Some(bad)).unwrap_err().contains("not a positive integer"), "{bad}");
        }
    }
}
