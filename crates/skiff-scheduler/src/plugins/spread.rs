//! Pod topology spread: `topologySpreadConstraints` keep the count of matching pods per
//! topology domain within `maxSkew` (a filter for `DoNotSchedule`) or prefer the emptier
//! domains (a score for `ScheduleAnyway`).

use std::collections::HashMap;

use super::affinity::NodeAffinity;
use super::taints::TaintToleration;
use super::{Plugin, PodContext, State};
use crate::cache::{Cache, NodeInfo};

pub struct PodTopologySpread;

struct Constraint {
    key: String,
    max_skew: i64,
    hard: bool,
    /// 1 when the pod itself matches the selector (placing it adds to the count).
    self_match: i64,
    counts: HashMap<String, i64>,
    min: i64,
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn prepare(&self, pod: &PodContext, cache: &Cache) -> State {
        let constraints = pod.pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_ref()).filter(|c| !c.is_empty())?;
        let mut out = Vec::new();
        for c in constraints {
            let selector = c.label_selector.as_ref().and_then(|s| skiff_client::label_selector(s).ok());
            let honor_taints = c.node_taints_policy.as_deref() == Some("Honor");
            let honor_affinity = c.node_affinity_policy.as_deref() != Some("Ignore");
            let mut counts: HashMap<String, i64> = HashMap::new();
            for node in cache.nodes.values() {
                let Some(value) = node.labels.get(&c.topology_key) else { continue };
                if honor_affinity && NodeAffinity.filter(pod, node, &None).is_err() {
                    continue;
                }
                if honor_taints && TaintToleration.filter(pod, node, &None).is_err() {
                    continue;
                }
                let matching = match &selector {
                    Some(sel) => node.pods.values().filter(|p| p.namespace == pod.namespace && sel.matches_map(Some(&p.labels))).count() as i64,
                    None => 0,
                };
                *counts.entry(value.clone()).or_default() += matching;
            }
            let min_domains = i64::from(c.min_domains.unwrap_or(1));
            let min = if (counts.len() as i64) < min_domains { 0 } else { counts.values().copied().min().unwrap_or(0) };
            let self_match = selector.as_ref().is_some_and(|s| s.matches_map(pod.labels())) as i64;
            out.push(Constraint { key: c.topology_key.clone(), max_skew: i64::from(c.max_skew), hard: c.when_unsatisfiable == "DoNotSchedule", self_match, counts, min });
        }
        Some(Box::new(out))
    }

    fn filter(&self, _pod: &PodContext, node: &NodeInfo, state: &State) -> Result<(), Vec<String>> {
        let Some(cs) = state.as_ref().and_then(|s| s.downcast_ref::<Vec<Constraint>>()) else { return Ok(()) };
        for c in cs.iter().filter(|c| c.hard) {
            let Some(value) = node.labels.get(&c.key) else {
                return Err(vec!["node(s) didn't match pod topology spread constraints (missing required label)".into()]);
            };
            let count = c.counts.get(value).copied().unwrap_or(0);
            if count + c.self_match - c.min > c.max_skew {
                return Err(vec!["node(s) didn't match pod topology spread constraints".into()]);
            }
        }
        Ok(())
    }

    fn weight(&self) -> i64 {
        2
    }

    fn normalize(&self) -> bool {
        true
    }

    fn score(&self, _pod: &PodContext, node: &NodeInfo, state: &State) -> i64 {
        let Some(cs) = state.as_ref().and_then(|s| s.downcast_ref::<Vec<Constraint>>()) else { return 0 };
        -cs.iter().filter(|c| !c.hard).map(|c| node.labels.get(&c.key).and_then(|v| c.counts.get(v)).copied().unwrap_or(0)).sum::<i64>()
    }
}
