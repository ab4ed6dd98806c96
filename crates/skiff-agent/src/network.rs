//! The node's pod network: every pod gets its own address from the node's share of the
//! cluster's pod range (`spec.podCIDR`, given by the node IPAM controller), and the
//! other nodes' shares are routed to them.
//!
//! As root the agent keeps a bridge, `skiff0` (OCI containers will plug their veths into
//! it), holding the range's first address as the pods' gateway, and makes the whole range
//! local with one `local` route: a Wasm pod's listener binds its address with no per-pod
//! set-up, which is what lets a node hold thousands of idle function pods. Where that
//! cannot be done (no root, no `ip`), the node falls back to addresses in 127.42.0.0/16,
//! reachable on this machine only, and says so in its `NetworkUnavailable` condition.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use skiff_core::Cidr;

/// The bridge the agent keeps for the node's pods.
pub const BRIDGE: &str = "skiff0";

/// The single-node fallback range; Linux routes all of 127.0.0.0/8 to loopback.
const LOOPBACK_RANGE: Cidr = Cidr { base: Ipv4Addr::new(127, 42, 0, 0), prefix: 16 };

/// How the node's pods are addressed.
pub struct PodNetwork {
    pub range: Cidr,
    /// Why the node fell back to loopback addresses, if it did.
    pub fallback: Option<String>,
    ips: Mutex<PodIps>,
}

impl PodNetwork {
    /// Sets up the node's share of the pod range on `skiff0`, or falls back to loopback
    /// addresses, saying why.
    pub fn set_up(pod_cidr: Result<Cidr, String>) -> PodNetwork {
        let routed = pod_cidr.and_then(|cidr| {
            ip(&["link", "add", BRIDGE, "type", "bridge"]).or_else(|e| if e.contains("File exists") { Ok(()) } else { Err(e) })?;
            // A bridge takes its ports' lowest MAC address, which changes as container pods
            // come and go, and their cached gateway entries go stale: it gets its own.
            let [a, b, c, d] = cidr.nth(1).octets();
            ip(&["link", "set", BRIDGE, "address", &format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")])?;
            ip(&["link", "set", BRIDGE, "up"])?;
            ip(&["addr", "replace", &format!("{}/{}", cidr.nth(1), cidr.prefix), "dev", BRIDGE])?;
            ip(&["route", "replace", "local", &cidr.to_string(), "dev", BRIDGE, "table", "local"])?;
            Ok(cidr)
        });
        let (range, fallback) = match routed {
            Ok(cidr) => (cidr, None),
            Err(why) => (LOOPBACK_RANGE, Some(why)),
        };
        match &fallback {
            None => tracing::info!(%range, bridge = BRIDGE, "pod network ready"),
            Some(why) => tracing::warn!(%range, %why, "pod addresses fall back to loopback: pods are reachable from this machine only"),
        }
        PodNetwork { range, fallback, ips: Mutex::new(PodIps::new(range)) }
    }

    /// The node's `NetworkUnavailable` condition: reason and message.
    pub fn condition(&self) -> (String, String) {
        match &self.fallback {
            None => ("SkiffBridgeReady".into(), format!("pod addresses from {} on {BRIDGE}; other nodes' pod ranges are routed to them", self.range)),
            Some(why) => ("SkiffLoopbackFallback".into(), format!("pod addresses from {} on loopback, reachable from this machine only ({why})", self.range)),
        }
    }

    /// The pod's address: the one it has, else its previous one (after an agent restart)
    /// if still free, else the next free one.
    pub fn assign(&self, uid: &str, previous: Option<&str>) -> Result<Ipv4Addr, String> {
        self.ips.lock().unwrap().assign(uid, previous.and_then(|p| p.parse().ok()))
    }

    /// The pod's address if it has one.
    pub fn get(&self, uid: &str) -> Option<Ipv4Addr> {
        self.ips.lock().unwrap().by_uid.get(uid).copied()
    }

    pub fn release(&self, uid: &str) {
        self.ips.lock().unwrap().release(uid);
    }
}

/// Makes every address of the Services' range local to this node, so the proxy can bind
/// each ClusterIP; traffic to them never leaves the node.
pub fn make_services_local(range: Cidr) -> Result<(), String> {
    ip(&["route", "replace", "local", &range.to_string(), "dev", "lo", "table", "local"])
}

/// Runs `ip` with `args`; the error is its message.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Runs a network tool to its end; the error names the command and carries its message.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(program).args(args).output().map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Addresses handed out from one range, by pod uid. The network address, the gateway
/// (the first address) and the broadcast address are never handed out, and a freed
/// address is reused only after the rest of the range, as host-local IPAM does.
struct PodIps {
    range: Cidr,
    by_uid: HashMap<String, Ipv4Addr>,
    used: HashSet<Ipv4Addr>,
    next: u32,
}

impl PodIps {
    fn new(range: Cidr) -> Self {
        PodIps { range, by_uid: HashMap::new(), used: HashSet::new(), next: 1 }
    }

    fn usable(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.range.base));
        self.range.contains(ip) && offset > 1 && offset < self.range.size() - 1 && !self.used.contains(&ip)
    }

    fn assign(&mut self, uid: &str, previous: Option<Ipv4Addr>) -> Result<Ipv4Addr, String> {
        if let Some(ip) = self.by_uid.get(uid) {
            return Ok(*ip);
        }
        let ip = match previous.filter(|ip| self.usable(*ip)) {
            Some(ip) => ip,
            None => {
                let size = self.range.size();
                let found = (1..=size).map(|step| (self.next + step) % size).map(|o| self.range.nth(o)).find(|ip| self.usable(*ip));
                let ip = found.ok_or_else(|| format!("no free pod IP left in {}", self.range))?;
                self.next = u32::from(ip) - u32::from(self.range.base);
                ip
            }
        };
        self.used.insert(ip);
        self.by_uid.insert(uid.to_string(), ip);
        Ok(ip)
    }

    fn release(&mut self, uid: &str) {
        if let Some(ip) = self.by_uid.remove(uid) {
            self.used.remove(&ip);
        }
    }
}

/// Keeps a route to each other node's pod range via that node's InternalIP, following
/// nodes as they come, change and go. Nodes whose address is this machine's (several
/// agents on one host) need none: their ranges are local already.
pub async fn route_other_nodes(client: Client, own: String) {
    let mut routes: HashMap<String, (Cidr, Ipv4Addr)> = HashMap::new();
    let mut listed = HashSet::new();
    let mut events = watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "watching nodes for pod routes");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(node) | watcher::Event::Apply(node) => {
                listed.insert(node.name_any());
                if node.name_any() != own {
                    set_route(&mut routes, &node.name_any(), wanted_route(&node));
                }
            }
            watcher::Event::Delete(node) => set_route(&mut routes, &node.name_any(), None),
            watcher::Event::InitDone => {
                let gone: Vec<String> = routes.keys().filter(|n| !listed.contains(*n)).cloned().collect();
                for name in gone {
                    set_route(&mut routes, &name, None);
                }
            }
        }
    }
}

/// The route another node's pods need: its range via its InternalIP, unless that
/// address is this machine's own.
fn wanted_route(node: &Node) -> Option<(Cidr, Ipv4Addr)> {
    let cidr = skiff_client::nodes::pod_cidr(node)?;
    let via: Ipv4Addr = node.status.as_ref()?.addresses.iter().flatten().find(|a| a.type_ == "InternalIP")?.address.parse().ok()?;
    let local = std::net::UdpSocket::bind((via, 0)).is_ok();
    (!local).then_some((cidr, via))
}

fn set_route(routes: &mut HashMap<String, (Cidr, Ipv4Addr)>, node: &str, wanted: Option<(Cidr, Ipv4Addr)>) {
    let current = routes.get(node).copied();
    if current == wanted {
        return;
    }
    if let Some((cidr, _)) = current {
        let _ = ip(&["route", "del", &cidr.to_string()]);
        routes.remove(node);
    }
    if let Some((cidr, via)) = wanted {
        match ip(&["route", "replace", &cidr.to_string(), "via", &via.to_string()]) {
            Ok(()) => {
                tracing::info!(node, %cidr, %via, "routing the node's pods");
                routes.insert(node.to_string(), (cidr, via));
            }
            Err(e) => tracing::warn!(node, error = %e, "routing the node's pods"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_address_once_and_skips_the_reserved_ones() {
        let mut ips = PodIps::new("10.42.4.0/30".parse().unwrap());
        // A /30 has one address for pods: .0 is the network, .1 the gateway, .3 broadcast.
        assert_eq!(ips.assign("a", None).unwrap().to_string(), "10.42.4.2");
        assert_eq!(ips.assign("a", None).unwrap().to_string(), "10.42.4.2");
        assert_eq!(ips.assign("b", None).unwrap_err(), "no free pod IP left in 10.42.4.0/30");
        ips.release("a");
        assert_eq!(ips.assign("b", None).unwrap().to_string(), "10.42.4.2");
    }

    #[test]
    fn keeps_a_previous_address_and_does_not_reuse_a_freed_one_at_once() {
        let mut ips = PodIps::new("10.42.4.0/24".parse().unwrap());
        assert_eq!(ips.assign("old", Some("10.42.4.77".parse().unwrap())).unwrap().to_string(), "10.42.4.77");
        // Outside the range, reserved, or taken: a fresh address instead.
        assert_eq!(ips.assign("x", Some("10.9.9.9".parse().unwrap())).unwrap().to_string(), "10.42.4.2");
        assert_eq!(ips.assign("y", Some("10.42.4.77".parse().unwrap())).unwrap().to_string(), "10.42.4.3");
        ips.release("x");
        assert_eq!(ips.assign("z", None).unwrap().to_string(), "10.42.4.4");
    }
}
