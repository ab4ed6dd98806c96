//! Filters on the node's own state (cordoned, not ready) and image locality scoring.

use super::{Plugin, PodContext, State, tolerates};
use crate::cache::NodeInfo;

/// Cordoned nodes (`spec.unschedulable`) take no new pods, unless tolerated.
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> Result<(), Vec<String>> {
        if node.unschedulable() && !tolerates(&pod.tolerations, "node.kubernetes.io/unschedulable", "NoSchedule") {
            return Err(vec!["node(s) were unschedulable".into()]);
        }
        Ok(())
    }
}

/// Nodes whose `Ready` condition is not `True` take no new pods, unless the pod tolerates
/// the matching condition taint (DaemonSet pods do).
pub struct NodeReady;

impl Plugin for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn filter(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> Result<(), Vec<String>> {
        if node.ready() {
            return Ok(());
        }
        let taint = if skiff_client::nodes::ready_status(&node.node) == Some("False") { "node.kubernetes.io/not-ready" } else { "node.kubernetes.io/unreachable" };
        if tolerates(&pod.tolerations, taint, "NoSchedule") {
            return Ok(());
        }
        Err(vec!["node(s) were not ready".into()])
    }
}

/// Prefers nodes that already hold the pod's images (the Node's `status.images`), so pods
/// start without a pull. Skiff's agent does not report its images there yet.
pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }

    fn weight(&self) -> i64 {
        1
    }

    fn score(&self, pod: &PodContext, node: &NodeInfo, _: &State) -> i64 {
        let Some(spec) = pod.pod.spec.as_ref() else { return 0 };
        if node.images.is_empty() || spec.containers.is_empty() {
            return 0;
        }
        let present = spec.containers.iter().filter(|c| c.image.as_ref().is_some_and(|i| has_image(node, i))).count();
        (present * 100 / spec.containers.len()) as i64
    }
}

/// Matches `nginx`, `nginx:latest` and `docker.io/library/nginx:latest` alike.
fn has_image(node: &NodeInfo, image: &str) -> bool {
    if node.images.contains(image) {
        return true;
    }
    let tagged = if image.rsplit('/').next().is_some_and(|last| last.contains(':') || last.contains('@')) { image.to_string() } else { format!("{image}:latest") };
    let full = if tagged.split('/').next().is_some_and(|first| first.contains('.') || first.contains(':') || first == "localhost") {
        tagged.clone()
    } else if tagged.contains('/') {
        format!("docker.io/{tagged}")
    } else {
        format!("docker.io/library/{tagged}")
    };
    node.images.contains(&tagged) || node.images.contains(&full)
}
