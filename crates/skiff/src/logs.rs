//! `skiff logs`: a container's log, from a pod or from the first pod of a workload
//! (`deploy/NAME`, `job/NAME`, …), streamed with `-f`. Unlike kubectl, `-f` on a pod whose
//! container has not started yet waits for it rather than failing.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{AsyncBufReadExt, StreamExt};
use http::Request;
use serde_json::Value;
use skiff_core::LabelSelector;

use crate::client::{Session, TargetArgs, api_message, path, resolve, urlencode};

#[derive(clap::Args)]
pub struct LogArgs {
    /// A pod name, or KIND/NAME of a pod or a workload (its first pod).
    target: String,
    /// Keep streaming as the container writes.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The container (default: the pod's only or first container).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Lines from the end to start with.
    #[arg(long)]
    tail: Option<i64>,
    /// The previous run of a restarted container.
    #[arg(short = 'p', long)]
    previous: bool,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    timestamps: bool,
}

/// The pod `target` names: itself, or the first pod (running ones first, then by name)
/// matching a workload's selector.
async fn pod_of(s: &Session, ns: &str, target: &str) -> anyhow::Result<Value> {
    let (kind, name) = target.split_once('/').unwrap_or(("pods", target));
    let resource = resolve(kind)?;
    let object = s.json(http::Method::GET, &path(resource, Some(ns), Some(name)), None).await.map_err(api_message)?;
    if resource.kind == "Pod" {
        return Ok(object);
    }
    let selector = LabelSelector::from_json(&object["spec"]["selector"]).map_err(|e| anyhow!("{kind}/{name} has no usable pod selector: {e}"))?;
    if selector.is_empty() {
        bail!("{kind}/{name} has no pod selector: name a pod instead");
    }
    let pods_uri = format!("{}?labelSelector={}", path(resolve("pods")?, Some(ns), None), urlencode(&selector.to_string()));
    let mut pods = s.json(http::Method::GET, &pods_uri, None).await.map_err(api_message)?["items"].as_array().cloned().unwrap_or_default();
    pods.sort_by_key(|p| (p["status"]["phase"] != "Running", p["metadata"]["name"].as_str().unwrap_or_default().to_string()));
    pods.into_iter().next().ok_or_else(|| anyhow!("{kind}/{name} has no pods yet"))
}

/// Whether the container has started (it is running or has ended), so it has a log.
fn started(pod: &Value, container: &str) -> bool {
    let statuses = pod["status"]["containerStatuses"].as_array().into_iter().flatten().chain(pod["status"]["initContainerStatuses"].as_array().into_iter().flatten());
    statuses.filter(|c| c["name"] == container).any(|c| c["state"].get("running").is_some() || c["state"].get("terminated").is_some() || c["lastState"].get("terminated").is_some())
}

pub async fn logs(args: &TargetArgs, log: &LogArgs) -> anyhow::Result<()> {
    let s = Session::connect(args).await?;
    let ns = s.namespace.clone();
    let mut pod = pod_of(&s, &ns, &log.target).await?;
    let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let containers: Vec<String> = pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect();
    let container = match &log.container {
        Some(c) => c.clone(),
        None => containers.first().cloned().context("the pod has no containers")?,
    };
    let pod_uri = path(resolve("pods")?, Some(&ns), Some(&name));
    if log.follow && !started(&pod, &container) {
        eprintln!("waiting for container {container:?} of pod {name} to start…");
        while !started(&pod, &container) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pod = s.json(http::Method::GET, &pod_uri, None).await.map_err(api_message)?;
        }
    }
    let mut query = format!("container={}", urlencode(&container));
    for (on, param) in [(log.follow, "follow=true"), (log.previous, "previous=true"), (log.timestamps, "timestamps=true")] {
        if on {
            query.push('&');
            query.push_str(param);
        }
    }
    if let Some(n) = log.tail {
        query.push_str(&format!("&tailLines={n}"));
    }
    let request = Request::builder().uri(format!("{pod_uri}/log?{query}")).body(Vec::new())?;
    let mut lines = s.client.request_stream(request).await.map_err(api_message)?.lines();
    while let Some(line) = lines.next().await {
        println!("{}", line?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_container_has_a_log_once_it_started() {
        let pod = |state: Value| json!({"status": {"containerStatuses": [{"name": "app", "state": state, "lastState": {}}]}});
        assert!(!started(&pod(json!({"waiting": {"reason": "ContainerCreating"}})), "app"));
        assert!(started(&pod(json!({"running": {}})), "app"));
        assert!(started(&pod(json!({"terminated": {"exitCode": 0}})), "app"));
        assert!(!started(&pod(json!({"running": {}})), "other"));
    }
}
