//! Node IPAM: gives every node a share of the cluster's pod range (`spec.podCIDR`,
//! `spec.podCIDRs`), as kube-controller-manager's range allocator does. Agents hand their
//! pods addresses from it and route the other nodes' shares to them. A node keeps its
//! range for life; the range is free again when the node is deleted. When the cluster
//! range is used up, the node gets a `CIDRNotAvailable` event and no range.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::Recorder;
use skiff_client::events::EventType;
use skiff_client::nodes::pod_cidr;
use skiff_core::Cidr;

use crate::Error;

/// How the cluster's pod range is split.
#[derive(Debug, Clone, Copy)]
pub struct PodRanges {
    pub cluster: Cidr,
    /// Prefix length of each node's share (Kubernetes' `--node-cidr-mask-size`, 24).
    pub node_prefix: u8,
}

impl PodRanges {
    pub fn new(cluster: Cidr, node_prefix: u8) -> Result<Self, String> {
        if node_prefix < cluster.prefix || node_prefix > 30 {
            return Err(format!("the node CIDR mask size /{node_prefix} must be between the cluster CIDR's /{} and /30", cluster.prefix));
        }
        Ok(PodRanges { cluster, node_prefix })
    }
}

pub struct Ctx {
    pub client: Client,
    pub nodes: Store<Node>,
    pub ranges: PodRanges,
    pub recorder: Recorder,
    /// Ranges handed out whose node the cache may not show with them yet, by node name.
    pub pending: Mutex<HashMap<String, Cidr>>,
}

/// The first share of the cluster range no one holds.
pub fn first_free(ranges: &PodRanges, used: &HashSet<u32>) -> Option<Cidr> {
    (0..ranges.cluster.subnet_count(ranges.node_prefix)).find(|i| !used.contains(i)).and_then(|i| ranges.cluster.subnet(ranges.node_prefix, i))
}

/// Runs one node at a time (the controller's concurrency is 1), so two nodes never
/// get the same range.
/// The controller: Nodes, one at a time (ranges are handed out in order); nothing when
/// the cluster has no pod range to split.
pub fn controller(i: &Informers, client: &Client, ranges: Option<PodRanges>) -> impl Future<Output = ()> + Send + use<> {
    let (events, nodes, client) = (i.nodes.subscribe(), i.nodes.store(), client.clone());
    async move {
        let Some(ranges) = ranges else { return };
        let ctx = Ctx { client: client.clone(), nodes: nodes.clone(), ranges, recorder: Recorder::new(client, "node-ipam-controller"), pending: Default::default() };
        Controller::for_shared_stream(events, nodes)
            .with_config(kube::runtime::controller::Config::default().concurrency(1))
            .run(crate::metrics::metered("nodeipam", reconcile), retry, Arc::new(ctx))
            .for_each(|_| async {})
            .await
    }
}

pub async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if pod_cidr(&node).is_some() {
        return Ok(Action::await_change());
    }
    let name = node.name_any();
    let chosen = {
        let mut pending = ctx.pending.lock().unwrap();
        let live: HashMap<String, Option<Cidr>> = ctx.nodes.state().iter().map(|n| (n.name_any(), pod_cidr(n))).collect();
        // The object handed in may be older than the cache: the cache may show the range
        // this very node was just given.
        if matches!(live.get(&name), Some(Some(_))) {
            return Ok(Action::await_change());
        }
        // A pending range is settled once the cache shows it, and free if its node went.
        pending.retain(|n, c| matches!(live.get(n), Some(None)) || matches!(live.get(n), Some(Some(have)) if have != c));
        if let Some(c) = pending.get(&name) {
            *c
        } else {
            let used: HashSet<u32> = live.values().flatten().chain(pending.values()).filter_map(|c| ctx.ranges.cluster.subnet_index(c)).collect();
            let Some(c) = first_free(&ctx.ranges, &used) else {
                ctx.recorder.record(node.as_ref(), EventType::Normal, "CIDRNotAvailable",
                    format!("Node {name} status is now: CIDRNotAvailable (no /{} left in the cluster CIDR {})", ctx.ranges.node_prefix, ctx.ranges.cluster));
                return Ok(Action::requeue(Duration::from_secs(30)));
            };
            pending.insert(name.clone(), c);
            c
        }
    };
    let patch = json!({"spec": {"podCIDR": chosen.to_string(), "podCIDRs": [chosen.to_string()]}});
    Api::<Node>::all(ctx.client.clone()).patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::debug!(node = %name, cidr = %chosen, "pod range allocated");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_the_lowest_free_share() {
        let ranges = PodRanges::new("10.42.0.0/16".parse().unwrap(), 24).unwrap();
        assert_eq!(first_free(&ranges, &HashSet::new()).unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(first_free(&ranges, &HashSet::from([0, 1, 3])).unwrap().to_string(), "10.42.2.0/24");
        assert_eq!(first_free(&ranges, &(0..256).collect()), None);
        assert!(PodRanges::new("10.42.0.0/16".parse().unwrap(), 12).is_err());
        assert!(PodRanges::new("10.42.0.0/16".parse().unwrap(), 31).is_err());
    }
}
