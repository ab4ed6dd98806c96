//! Requests a node's proxy and ingress sent to each endpoint, counted as the Wasm
//! serving path counts its own: taken, in flight, and time spent until the response head.
//! The agent reports them in its stats summary, so the request metrics cover pods that do
//! not count their own requests (container pods).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// One endpoint's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub in_flight: u64,
    pub nanos: u64,
}

/// Counters by endpoint address. An address a new pod takes keeps counting: the readers
/// take rates, differences between two readings.
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<HashMap<IpAddr, Counts>>);

impl RequestCounts {
    /// A request to `endpoint` starts; it is done when the guard drops.
    pub fn start(&self, endpoint: IpAddr) -> Counting<'_> {
        let mut all = self.0.lock().unwrap();
        let c = all.entry(endpoint).or_default();
        c.requests += 1;
        c.in_flight += 1;
        Counting { counts: self, endpoint, started: Instant::now() }
    }

    /// Every endpoint's counters now.
    pub fn snapshot(&self) -> Vec<(IpAddr, Counts)> {
        self.0.lock().unwrap().iter().map(|(ip, c)| (*ip, *c)).collect()
    }
}

/// A request being counted.
pub struct Counting<'a> {
    counts: &'a RequestCounts,
    endpoint: IpAddr,
    started: Instant,
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        let mut all = self.counts.0.lock().unwrap();
        if let Some(c) = all.get_mut(&self.endpoint) {
            c.in_flight -= 1;
            c.nanos += self.started.elapsed().as_nanos() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_in_flight_until_its_guard_drops() {
        let counts = RequestCounts::default();
        let ip: IpAddr = "10.42.0.7".parse().unwrap();
        let first = counts.start(ip);
        let second = counts.start(ip);
        drop(first);
        assert_eq!(counts.snapshot()[0].1.requests, 2);
        assert_eq!(counts.snapshot()[0].1.in_flight, 1);
        drop(second);
        let (_, c) = counts.snapshot()[0];
        assert_eq!((c.requests, c.in_flight), (2, 0));
    }
}
