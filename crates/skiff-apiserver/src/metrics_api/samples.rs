//! The usage the collector last read from every node's agent, as metrics-server keeps
//! it: CPU as a rate over the last two readings of each cumulative counter (so a node or
//! pod appears once it has been read twice), memory as last read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

/// One cumulative CPU counter reading.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    at: jiff::Timestamp,
    cpu_nanos: u64,
}

/// What one node, pod or container used.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    last: Reading,
    /// CPU in nanocores over `window`, once there were two readings.
    pub nanocores: Option<u64>,
    pub window: Duration,
    pub memory_bytes: u64,
}

impl Usage {
    /// The usage after a new reading, given the one before (if any).
    fn next(previous: Option<&Usage>, at: jiff::Timestamp, cpu_nanos: u64, memory_bytes: u64) -> Usage {
        let last = Reading { at, cpu_nanos };
        let rate = previous.and_then(|p| {
            let elapsed = at.duration_since(p.last.at).unsigned_abs();
            // A counter that went back belongs to a new process: no rate from it.
            let spent = cpu_nanos.checked_sub(p.last.cpu_nanos)?;
            (!elapsed.is_zero()).then(|| ((spent as f64 / elapsed.as_secs_f64()) as u64, elapsed))
        });
        Usage { last, nanocores: rate.map(|(r, _)| r), window: rate.map_or(Duration::ZERO, |(_, w)| w), memory_bytes }
    }

    pub fn timestamp(&self) -> jiff::Timestamp {
        self.last.at
    }
}

/// The requests an HTTP function pod took (or a node's proxy and ingress sent to a pod): counters as
/// last read, and rates over the last two readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Requests {
    at: jiff::Timestamp,
    count: u64,
    nanos: u64,
    pub per_second: Option<f64>,
    /// Average requests in flight over the window (time spent on requests per second).
    pub concurrency: Option<f64>,
    pub in_flight: u64,
    pub window: Duration,
}

impl Requests {
    fn next(previous: Option<&Requests>, at: jiff::Timestamp, count: u64, nanos: u64, in_flight: u64) -> Requests {
        let rates = previous.and_then(|p| {
            let elapsed = at.duration_since(p.at).unsigned_abs().as_secs_f64();
            let (taken, busy) = (count.checked_sub(p.count)?, nanos.checked_sub(p.nanos)?);
            (elapsed > 0.0).then(|| (taken as f64 / elapsed, busy as f64 / 1e9 / elapsed, at.duration_since(p.at).unsigned_abs()))
        });
        Requests {
            at,
            count,
            nanos,
            per_second: rates.map(|r| r.0),
            // Requests still going count as busy now, though their time is added only
            // when they finish.
            concurrency: rates.map(|r| r.1.max(in_flight as f64)),
            in_flight,
            window: rates.map_or(Duration::ZERO, |r| r.2),
        }
    }
}

/// One pod's containers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUsage {
    pub containers: Vec<(String, Usage)>,
    /// For pods that serve HTTP functions.
    pub requests: Option<Requests>,
}

impl PodUsage {
    /// Usage is reported once every container has a CPU rate.
    pub fn complete(&self) -> bool {
        !self.containers.is_empty() && self.containers.iter().all(|(_, u)| u.nanocores.is_some())
    }
}

#[derive(Debug, Default)]
pub struct Samples {
    pub nodes: HashMap<String, Usage>,
    /// By (namespace, name).
    pub pods: HashMap<(String, String), PodUsage>,
    /// Which pods each node listed last, so its next summary replaces them.
    listed: HashMap<String, Vec<(String, String)>>,
    /// The requests each node's proxy and ingress sent to each pod address, by (node,
    /// address).
    proxied: HashMap<(String, IpAddr), Requests>,
}

impl Samples {
    /// Takes one node's `/stats/summary`: its pods replace those it listed before.
    pub fn take_summary(&mut self, node: &str, summary: &Value, at: jiff::Timestamp) {
        let number = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        let n = &summary["node"];
        let usage = Usage::next(self.nodes.get(node), at, number(n, "/cpu/usageCoreNanoSeconds"), number(n, "/memory/workingSetBytes"));
        self.nodes.insert(node.to_string(), usage);
        let mut before: HashMap<(String, String), PodUsage> =
            self.listed.remove(node).unwrap_or_default().into_iter().filter_map(|k| self.pods.remove(&k).map(|u| (k, u))).collect();
        let mut listed = Vec::new();
        for p in summary["pods"].as_array().into_iter().flatten() {
            let (Some(ns), Some(name)) = (p.pointer("/podRef/namespace").and_then(Value::as_str), p.pointer("/podRef/name").and_then(Value::as_str)) else { continue };
            let key = (ns.to_string(), name.to_string());
            let previous = before.remove(&key);
            let containers = p["containers"].as_array().into_iter().flatten().filter_map(|c| {
                let cname = c["name"].as_str()?;
                let last = previous.as_ref().and_then(|b| b.containers.iter().find(|(n, _)| n == cname)).map(|(_, u)| u);
                Some((cname.to_string(), Usage::next(last, at, number(c, "/cpu/usageCoreNanoSeconds"), number(c, "/memory/workingSetBytes"))))
            }).collect();
            let http: Vec<&Value> = p["containers"].as_array().into_iter().flatten().filter_map(|c| c.get("http")).collect();
            let requests = (!http.is_empty()).then(|| {
                let sum = |field: &str| http.iter().map(|h| number(h, field)).sum::<u64>();
                Requests::next(previous.as_ref().and_then(|b| b.requests.as_ref()), at, sum("/requests"), sum("/requestNanoSeconds"), sum("/inFlight"))
            });
            self.pods.insert(key.clone(), PodUsage { containers, requests });
            listed.push(key);
        }
        self.listed.insert(node.to_string(), listed);
        let mut before: HashMap<IpAddr, Requests> = self.proxied.extract_if(|(n, _), _| n == node).map(|((_, ip), r)| (ip, r)).collect();
        for e in summary["proxied"].as_array().into_iter().flatten() {
            let Some(ip) = e["podIP"].as_str().and_then(|ip| ip.parse::<IpAddr>().ok()) else { continue };
            let requests = Requests::next(before.remove(&ip).as_ref(), at, number(e, "/requests"), number(e, "/requestNanoSeconds"), number(e, "/inFlight"));
            self.proxied.insert((node.to_string(), ip), requests);
        }
    }

    /// A pod's request figures: its own count (HTTP function pods), else what the nodes'
    /// proxies and ingresses sent to its address, summed.
    pub fn requests_of(&self, namespace: &str, name: &str, ip: Option<IpAddr>) -> Option<Requests> {
        if let Some(own) = self.pods.get(&(namespace.to_string(), name.to_string())).and_then(|u| u.requests.clone()) {
            return Some(own);
        }
        let ip = ip?;
        let parts: Vec<&Requests> = self.proxied.iter().filter(|((_, i), _)| *i == ip).map(|(_, r)| r).collect();
        let sum = |f: fn(&Requests) -> Option<f64>| parts.iter().map(|r| f(r)).sum::<Option<f64>>();
        let first = parts.first()?;
        Some(Requests {
            at: first.at,
            count: parts.iter().map(|r| r.count).sum(),
            nanos: parts.iter().map(|r| r.nanos).sum(),
            per_second: sum(|r| r.per_second),
            concurrency: sum(|r| r.concurrency),
            in_flight: parts.iter().map(|r| r.in_flight).sum(),
            window: parts.iter().map(|r| r.window).max().unwrap_or_default(),
        })
    }

    /// Drops what was read from a node that could not be read now, or is gone.
    pub fn forget_node(&mut self, node: &str) {
        self.nodes.remove(node);
        for key in self.listed.remove(node).unwrap_or_default() {
            self.pods.remove(&key);
        }
        self.proxied.retain(|(n, _), _| n != node);
    }

    /// The nodes read before, for the collector to forget those no longer listed.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(node_cpu: u64, pod_cpu: u64) -> Value {
        json!({"node": {"cpu": {"usageCoreNanoSeconds": node_cpu}, "memory": {"workingSetBytes": 1000}},
               "pods": [{"podRef": {"namespace": "d", "name": "p"}, "containers": [{"name": "c", "cpu": {"usageCoreNanoSeconds": pod_cpu}, "memory": {"workingSetBytes": 10}}]}]})
    }

    #[test]
    fn cpu_is_a_rate_over_two_readings() {
        let mut s = Samples::default();
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        s.take_summary("n", &summary(1_000_000_000, 0), t0);
        assert_eq!(s.nodes["n"].nanocores, None);
        assert!(!s.pods[&("d".into(), "p".into())].complete());
        s.take_summary("n", &summary(3_000_000_000, 500_000_000), t0 + jiff::SignedDuration::from_secs(2));
        assert_eq!(s.nodes["n"].nanocores, Some(1_000_000_000), "one core busy");
        assert_eq!(s.nodes["n"].window, Duration::from_secs(2));
        let pod = &s.pods[&("d".into(), "p".into())];
        assert!(pod.complete());
        assert_eq!(pod.containers[0].1.nanocores, Some(250_000_000));
        // A restarted container's counter starts over: no rate until read twice again.
        s.take_summary("n", &summary(4_000_000_000, 1_000), t0 + jiff::SignedDuration::from_secs(3));
        assert!(!s.pods[&("d".into(), "p".into())].complete());
        // A pod the node stops listing is gone; so is all of a node forgotten.
        s.take_summary("n", &json!({"node": {}, "pods": []}), t0 + jiff::SignedDuration::from_secs(4));
        assert!(s.pods.is_empty());
        s.forget_node("n");
        assert!(s.nodes.is_empty());
    }

    #[test]
    fn request_rates() {
        let summary = |requests: u64, nanos: u64, in_flight: u64| json!({"node": {}, "pods": [{"podRef": {"namespace": "d", "name": "f"},
            "containers": [{"name": "fn", "http": {"requests": requests, "requestNanoSeconds": nanos, "inFlight": in_flight}}]}]});
        let mut s = Samples::default();
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        s.take_summary("n", &summary(100, 0, 0), t0);
        s.take_summary("n", &summary(300, 1_000_000_000, 0), t0 + jiff::SignedDuration::from_secs(2));
        let r = s.pods[&("d".into(), "f".into())].requests.clone().unwrap();
        assert_eq!((r.per_second, r.concurrency), (Some(100.0), Some(0.5)));
        // Long requests still running count as busy.
        s.take_summary("n", &summary(300, 1_000_000_000, 3), t0 + jiff::SignedDuration::from_secs(4));
        let r = s.pods[&("d".into(), "f".into())].requests.clone().unwrap();
        assert_eq!((r.per_second, r.concurrency), (Some(0.0), Some(3.0)));
        // Pods that serve no HTTP have no request figures.
        s.take_summary("n", &summary_without_http(), t0);
        assert!(s.pods[&("d".into(), "p".into())].requests.is_none());
    }

    #[test]
    fn what_the_proxies_sent_to_a_pod_is_summed_over_nodes() {
        let summary = |ip: &str, requests: u64| json!({"node": {}, "pods": [],
            "proxied": [{"podIP": ip, "requests": requests, "requestNanoSeconds": 0, "inFlight": 1}]});
        let mut s = Samples::default();
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        let later = t0 + jiff::SignedDuration::from_secs(2);
        let ip: IpAddr = "10.42.0.9".parse().unwrap();
        for (node, before, after) in [("a", 0, 20), ("b", 100, 140)] {
            s.take_summary(node, &summary("10.42.0.9", before), t0);
            s.take_summary(node, &summary("10.42.0.9", after), later);
        }
        let r = s.requests_of("d", "web", Some(ip)).unwrap();
        assert_eq!((r.per_second, r.in_flight), (Some(30.0), 2));
        // A pod that counts its own requests is taken at its own word.
        s.take_summary("a", &json!({"node": {}, "pods": [{"podRef": {"namespace": "d", "name": "fn"},
            "containers": [{"name": "fn", "http": {"requests": 5, "requestNanoSeconds": 0, "inFlight": 0}}]}]}), later);
        assert_eq!(s.requests_of("d", "fn", Some(ip)).unwrap().in_flight, 0);
        // Nothing counted for an address, or no address: no figure.
        assert!(s.requests_of("d", "web", Some("10.42.0.10".parse().unwrap())).is_none());
        assert!(s.requests_of("d", "web", None).is_none());
        s.forget_node("b");
        assert_eq!(s.requests_of("d", "web", Some(ip)), None, "node a's last summary listed no proxied counts");
    }

    fn summary_without_http() -> Value {
        summary(0, 0)
    }
}
