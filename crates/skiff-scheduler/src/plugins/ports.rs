//! Host ports: two pods cannot bind the same host port and protocol on one node.

use super::{Plugin, PodContext, State};
use crate::cache::NodeInfo;

pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> Result<(), Vec<String>> {
        if pod.host_ports.is_empty() {
            return Ok(());
        }
        let clash = node.pods.values().flat_map(|p| &p.host_ports).any(|used| pod.host_ports.iter().any(|want| want.conflicts(used)));
        if clash { Err(vec!["node(s) didn't have free ports for the requested pod ports".into()]) } else { Ok(()) }
    }
}
