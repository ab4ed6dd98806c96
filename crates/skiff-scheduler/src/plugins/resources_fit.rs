//! Resources: the pod's requests must fit in what the node has left (CPU, memory,
//! ephemeral storage, pod count, extended resources). Scores prefer the least allocated
//! nodes and nodes whose CPU and memory stay in balance.

use super::{Plugin, PodContext, State};
use crate::cache::NodeInfo;

pub struct NodeResourcesFit;

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if node.pods.len() as i64 + 1 > node.allocatable_pods {
            reasons.push("Too many pods".to_string());
        }
        let want = &pod.requests;
        let (alloc, used) = (&node.allocatable, &node.requested);
        if want.milli_cpu > 0 && want.milli_cpu > alloc.milli_cpu - used.milli_cpu {
            reasons.push("Insufficient cpu".into());
        }
        if want.memory > 0 && want.memory > alloc.memory - used.memory {
            reasons.push("Insufficient memory".into());
        }
        if want.ephemeral_storage > 0 && want.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (name, &amount) in &want.scalar {
            let free = alloc.scalar.get(name).copied().unwrap_or(0) - used.scalar.get(name).copied().unwrap_or(0);
            if amount > 0 && amount > free {
                reasons.push(format!("Insufficient {name}"));
            }
        }
        if reasons.is_empty() { Ok(()) } else { Err(reasons) }
    }

    fn weight(&self) -> i64 {
        1
    }

    /// Least allocated: the mean share of CPU and memory left free after placing the pod.
    fn score(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> i64 {
        let (cpu, mem) = fractions(pod, node);
        (((1.0 - cpu).max(0.0) + (1.0 - mem).max(0.0)) * 50.0) as i64
    }
}

pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn weight(&self) -> i64 {
        1
    }

    fn score(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> i64 {
        let (cpu, mem) = fractions(pod, node);
        ((1.0 - (cpu.min(1.0) - mem.min(1.0)).abs()) * 100.0) as i64
    }
}

/// Shares of the node's CPU and memory in use once the pod is placed (with the non-zero
/// defaults for pods that request nothing).
fn fractions(pod: &PodContext, node: &NodeInfo) -> (f64, f64) {
    let share = |used: i64, alloc: i64| if alloc <= 0 { 1.0 } else { used as f64 / alloc as f64 };
    (
        share(node.scoring_requested.0 + pod.scoring.0, node.allocatable.milli_cpu),
        share(node.scoring_requested.1 + pod.scoring.1, node.allocatable.memory),
    )
}
