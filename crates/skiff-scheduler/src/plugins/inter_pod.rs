//! Inter-pod affinity and anti-affinity: required terms filter nodes by the topology
//! domains (nodes sharing a label value) where matching pods run; preferred terms score.
//! Existing pods' required anti-affinity is honoured too (symmetry), so a pod cannot
//! land next to a pod that refuses its company.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::PodAffinityTerm;
use skiff_core::LabelSelector;

use super::{Plugin, PodContext, State};
use crate::cache::{Cache, NodeInfo};

pub struct InterPodAffinity;

/// Per-pod view of where matching pods are.
struct Domains {
    /// Required affinity: per term, the topology values holding a matching pod; `None`
    /// when no pod matches yet and the pod matches its own term (the first of a group may
    /// go anywhere).
    affinity: Vec<(String, Option<HashSet<String>>)>,
    /// Required anti-affinity (the pod's own and existing pods' against it).
    anti: Vec<(String, HashSet<String>)>,
    /// Preferred terms: weight per (topology key, value).
    preferred: HashMap<(String, String), i64>,
}

/// A pod affinity term made ready to match: its label selector parsed once, however
/// many pods it is checked against.
struct Term<'a> {
    term: &'a PodAffinityTerm,
    owner_ns: &'a str,
    selector: Option<LabelSelector>,
}

impl<'a> Term<'a> {
    fn new(term: &'a PodAffinityTerm, owner_ns: &'a str) -> Self {
        Term { term, owner_ns, selector: term.label_selector.as_ref().and_then(|s| skiff_client::label_selector(s).ok()) }
    }

    /// True when the term (of a pod in `owner_ns`) selects a pod in `ns` with `labels`.
    fn selects(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        let namespaces = self.term.namespaces.as_deref().unwrap_or_default();
        let all_namespaces = self.term.namespace_selector.as_ref().is_some_and(|s| s.match_labels.as_ref().is_none_or(|m| m.is_empty()) && s.match_expressions.as_ref().is_none_or(|e| e.is_empty()));
        let ns_ok = all_namespaces || if namespaces.is_empty() { ns == self.owner_ns } else { namespaces.iter().any(|n| n == ns) };
        ns_ok && self.selector.as_ref().is_some_and(|sel| sel.matches_map(Some(labels)))
    }

    /// The topology values (of the term's key) of nodes running a pod the term selects.
    fn domains(&self, cache: &Cache) -> HashSet<String> {
        let mut out = HashSet::new();
        for node in cache.nodes.values() {
            let Some(value) = node.labels.get(&self.term.topology_key) else { continue };
            if !out.contains(value) && node.pods.values().any(|p| self.selects(&p.namespace, &p.labels)) {
                out.insert(value.clone());
            }
        }
        out
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn prepare(&self, pod: &PodContext, cache: &Cache) -> State {
        let affinity = pod.pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let empty = BTreeMap::new();
        let labels = pod.labels().unwrap_or(&empty);
        let mut d = Domains { affinity: vec![], anti: vec![], preferred: HashMap::new() };
        for term in pa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten() {
            let t = Term::new(term, &pod.namespace);
            let found = t.domains(cache);
            let free = found.is_empty() && t.selects(&pod.namespace, labels);
            d.affinity.push((term.topology_key.clone(), if free { None } else { Some(found) }));
        }
        for term in paa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten() {
            d.anti.push((term.topology_key.clone(), Term::new(term, &pod.namespace).domains(cache)));
        }
        // Symmetry: existing pods whose anti-affinity selects this pod.
        for node in cache.nodes.values().filter(|n| n.anti_affinity_pods > 0) {
            for placed in node.pods.values().filter(|p| !p.anti_affinity.is_empty()) {
                for term in &placed.anti_affinity {
                    if Term::new(term, &placed.namespace).selects(&pod.namespace, labels)
                        && let Some(v) = node.labels.get(&term.topology_key)
                    {
                        d.anti.push((term.topology_key.clone(), HashSet::from([v.clone()])));
                    }
                }
            }
        }
        let weighted = pa
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
            .map(|w| (&w.pod_affinity_term, i64::from(w.weight)))
            .chain(paa.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten().map(|w| (&w.pod_affinity_term, -i64::from(w.weight))));
        for (term, weight) in weighted {
            for value in Term::new(term, &pod.namespace).domains(cache) {
                *d.preferred.entry((term.topology_key.clone(), value)).or_default() += weight;
            }
        }
        if d.affinity.is_empty() && d.anti.is_empty() && d.preferred.is_empty() {
            return None;
        }
        Some(Box::new(d))
    }

    fn filter(&self, _pod: &PodContext, node: &NodeInfo, state: &State) -> Result<(), Vec<String>> {
        let Some(d) = state.as_ref().and_then(|s| s.downcast_ref::<Domains>()) else { return Ok(()) };
        for (key, found) in &d.affinity {
            let ok = match (node.labels.get(key), found) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(v), Some(set)) => set.contains(v),
            };
            if !ok {
                return Err(vec!["node(s) didn't match pod affinity rules".into()]);
            }
        }
        for (key, found) in &d.anti {
            if node.labels.get(key).is_some_and(|v| found.contains(v)) {
                return Err(vec!["node(s) didn't match pod anti-affinity rules".into()]);
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
        let Some(d) = state.as_ref().and_then(|s| s.downcast_ref::<Domains>()) else { return 0 };
        d.preferred.iter().filter(|((k, v), _)| node.labels.get(k) == Some(v)).map(|(_, w)| *w).sum()
    }
}
