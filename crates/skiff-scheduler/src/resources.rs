//! Amounts of node resources (CPU in millicores, memory and ephemeral storage in bytes,
//! extended resources in units) and what a pod requests of them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_core::quantity;

/// A bundle of resource amounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended resources (`example.com/gpu`, `hugepages-2Mi`, …) by name.
    pub scalar: BTreeMap<String, i64>,
}

/// What the scheduler assumes of a container that requests nothing, for scoring only
/// (Kubernetes' non-zero defaults): otherwise every such pod would look free and pile
/// onto one node.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

impl Resources {
    /// Reads a resource list (`requests`, `allocatable`). Unreadable quantities count as
    /// zero; the API server has already validated them.
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = quantity::parse_milli(&q.0).unwrap_or(0),
                "memory" => r.memory = quantity::parse_units(&q.0).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral_storage = quantity::parse_units(&q.0).unwrap_or(0),
                "pods" => {}
                other => {
                    r.scalar.insert(other.to_string(), quantity::parse_units(&q.0).unwrap_or(0));
                }
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// The larger of each amount.
    pub fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    // A container with limits but no requests requests its limits (API defaulting does
    // this too; repeated here for pods created before it).
    let requests = res.and_then(|r| r.requests.as_ref()).filter(|r| !r.is_empty());
    Resources::from_list(requests.or(res.and_then(|r| r.limits.as_ref())))
}

/// A pod's effective request, as Kubernetes computes it: the sum of its app containers
/// and restartable (sidecar) init containers, or the largest one-shot init container if
/// that is more, plus the RuntimeClass overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources::default() };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c));
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
        } else {
            let mut with_sidecars = r;
            with_sidecars.add(&sidecars);
            init_peak.max(&with_sidecars);
        }
    }
    sum.add(&sidecars);
    sum.max(&init_peak);
    sum.add(&Resources::from_list(spec.overhead.as_ref()));
    sum
}

/// CPU and memory a pod is taken to use when scoring, with the non-zero defaults.
pub fn pod_scoring_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else { return (0, 0) };
    spec.containers.iter().fold((0, 0), |(cpu, mem), c| {
        let r = container_requests(c);
        (
            cpu + if r.milli_cpu == 0 { DEFAULT_MILLI_CPU } else { r.milli_cpu },
            mem + if r.memory == 0 { DEFAULT_MEMORY } else { r.memory },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn init_containers_and_sidecars() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                           {"name": "b", "resources": {"limits": {"cpu": "200m", "example.com/gpu": "1"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}},
                               {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}}],
            "overhead": {"memory": "1Mi"}
        }})).unwrap();
        let r = pod_requests(&pod);
        assert_eq!(r.milli_cpu, 1000);
        assert_eq!(r.memory, (64 << 20) + (1 << 20));
        assert_eq!(r.scalar["example.com/gpu"], 1);
        assert_eq!(pod_scoring_requests(&pod), (300, (64 << 20) + DEFAULT_MEMORY));
    }
}
