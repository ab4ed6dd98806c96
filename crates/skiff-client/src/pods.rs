//! Pod state as controllers judge it: active, terminal, ready, available; and pods made
//! from a controller's template.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

/// `Succeeded` or `Failed`: the pod will never run again.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// Not terminal and not being deleted: counts toward a controller's replicas.
pub fn is_active(pod: &Pod) -> bool {
    !is_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's `Ready` condition, if it is `True`, with when it became so.
pub fn ready_since(pod: &Pod) -> Option<Option<&Time>> {
    pod.status.as_ref()?.conditions.as_deref()?.iter().find(|c| c.type_ == "Ready" && c.status == "True").map(|c| c.last_transition_time.as_ref())
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (Unix seconds). Returns the seconds
/// still to wait when ready but not yet available, so callers can requeue.
pub fn availability(pod: &Pod, min_ready_seconds: i32, now: i64) -> Availability {
    match ready_since(pod) {
        None => Availability::NotReady,
        Some(_) if min_ready_seconds <= 0 => Availability::Available,
        Some(None) => Availability::Available,
        Some(Some(t)) => {
            let left = t.0.as_second() + i64::from(min_ready_seconds) - now;
            if left <= 0 { Availability::Available } else { Availability::ReadyFor(left) }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    NotReady,
    /// Ready, but available only after this many more seconds.
    ReadyFor(i64),
    Available,
}

/// A pod of `template`, owned by `owner`, named `name` or generated from `generate_name`.
pub fn from_template(template: &PodTemplateSpec, namespace: &str, owner: OwnerReference, name: Option<String>, generate_name: &str) -> Pod {
    let t = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: name.clone(),
            generate_name: if name.is_none() { Some(generate_name.to_string()) } else { None },
            namespace: Some(namespace.to_string()),
            labels: t.labels,
            annotations: t.annotations,
            finalizers: t.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The generateName prefix Kubernetes uses for a controller's pods (`name-`, cut so
/// that generated names stay within 63 characters).
pub fn generate_name_prefix(owner_name: &str) -> String {
    let max = 58;
    let base = if owner_name.len() > max { &owner_name[..max] } else { owner_name };
    format!("{base}-")
}

/// How controllers rank pods for deletion (Kubernetes' `ActivePods` order): the first
/// pods of a sorted list go first: unscheduled before scheduled, pending before
/// running, not ready before ready, ready for less time before longer, more restarts
/// before fewer, newer before older.
pub fn deletion_rank(pod: &Pod) -> impl Ord {
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    let running = phase(pod) == "Running";
    let ready = ready_since(pod);
    let ready_at = ready.flatten().map(|t| std::cmp::Reverse(t.0.as_second()));
    let restarts: i32 = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|cs| cs.iter().map(|c| c.restart_count).sum()).unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| std::cmp::Reverse(t.0.as_second()));
    (scheduled, running, ready.is_some(), ready_at, std::cmp::Reverse(restarts), created)
}

/// The pod's port a service port sends to: a number as given, a name looked up among
/// the pod's container ports (with the same protocol). None when the pod lacks it.
pub fn resolve_target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    let declared = pod.spec.as_ref().into_iter().flat_map(|s| s.containers.iter().flat_map(|c| c.ports.iter().flatten()));
    resolve_target_port_in(port, declared.map(|p| (p.name.as_deref(), p.container_port, p.protocol.as_deref())))
}

/// [`resolve_target_port`] among declared container ports: (name, number, protocol).
pub fn resolve_target_port_in<'a>(port: &k8s_openapi::api::core::v1::ServicePort, mut declared: impl Iterator<Item = (Option<&'a str>, i32, Option<&'a str>)>) -> Option<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            declared.find(|(n, _, p)| *n == Some(name.as_str()) && p.unwrap_or("TCP") == protocol).map(|(_, number, _)| number)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deletion_prefers_unscheduled_then_not_ready_then_newest() {
        let unscheduled = pod(json!({"metadata": {"name": "u", "creationTimestamp": "2026-01-01T00:00:00Z"}}));
        let pending = pod(json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Pending"}}));
        let ready_old = pod(json!({"metadata": {"name": "r1", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:10Z"}]}}));
        let ready_new = pod(json!({"metadata": {"name": "r2", "creationTimestamp": "2026-01-01T00:01:00Z"}, "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:01:10Z"}]}}));
        let mut pods = vec![&ready_old, &ready_new, &pending, &unscheduled];
        pods.sort_by_key(|p| deletion_rank(p));
        let names: Vec<_> = pods.iter().map(|p| p.metadata.name.as_deref().unwrap()).collect();
        assert_eq!(names, ["u", "p", "r2", "r1"]);
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let p = pod(json!({"metadata": {"name": "r"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}));
        let t0 = jiff::Timestamp::from_second(0).unwrap();
        let at = "2026-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap().as_second() - t0.as_second();
        assert_eq!(availability(&p, 0, at), Availability::Available);
        assert_eq!(availability(&p, 10, at + 4), Availability::ReadyFor(6));
        assert_eq!(availability(&p, 10, at + 10), Availability::Available);
    }
}
