//! `skiff rollout status`: follows a Deployment, StatefulSet or DaemonSet through a watch
//! until its rollout is done, with kubectl's wording, on one live line at a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::Api;
use kube::runtime::watcher;

use crate::client::{Session, TargetArgs};

/// Where a rollout stands: a line to show, and whether it is done.
#[derive(Debug, PartialEq)]
pub struct Progress {
    pub message: String,
    pub done: bool,
}

fn waiting(message: String) -> Result<Progress, String> {
    Ok(Progress { message, done: false })
}

fn finished(message: String) -> Result<Progress, String> {
    Ok(Progress { message, done: true })
}

/// kubectl's reading of a Deployment's rollout; an error once it can no longer finish.
pub fn deployment(d: &Deployment) -> Result<Progress, String> {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return waiting("Waiting for deployment spec update to be observed...".into());
    }
    if status.conditions.iter().flatten().any(|c| c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some("ProgressDeadlineExceeded")) {
        return Err(format!("deployment {name:?} exceeded its progress deadline"));
    }
    let want = d.spec.replicas.unwrap_or(1);
    let (updated, replicas, available) = (status.updated_replicas.unwrap_or(0), status.replicas.unwrap_or(0), status.available_replicas.unwrap_or(0));
    if updated < want {
        return waiting(format!("Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."));
    }
    if replicas > updated {
        return waiting(format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...", replicas - updated));
    }
    if available < updated {
        return waiting(format!("Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."));
    }
    finished(format!("deployment {name:?} successfully rolled out"))
}

/// kubectl's reading of a DaemonSet's rollout.
pub fn daemon_set(d: &DaemonSet) -> Result<Progress, String> {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return waiting("Waiting for daemon set spec update to be observed...".into());
    }
    let (desired, updated, available) = (status.desired_number_scheduled, status.updated_number_scheduled.unwrap_or(0), status.number_available.unwrap_or(0));
    if updated < desired {
        return waiting(format!("Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."));
    }
    if available < desired {
        return waiting(format!("Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."));
    }
    finished(format!("daemon set {name:?} successfully rolled out"))
}

/// kubectl's reading of a StatefulSet's rolling update.
pub fn stateful_set(s: &StatefulSet) -> Result<Progress, String> {
    let status = s.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || s.metadata.generation.unwrap_or(0) > observed {
        return waiting("Waiting for statefulset spec update to be observed...".into());
    }
    let spec = &s.spec;
    let want = spec.replicas.unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < want {
        return waiting(format!("Waiting for {} pods to be ready...", want - ready));
    }
    let partition = spec.update_strategy.as_ref().and_then(|u| u.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if partition > 0 {
        let target = want - partition;
        if updated < target {
            return waiting(format!("Waiting for partitioned roll out to finish: {updated} out of {target} new pods have been updated..."));
        }
        return finished(format!("partitioned roll out complete: {updated} new pods have been updated..."));
    }
    let revision = status.update_revision.clone().unwrap_or_default();
    if status.update_revision != status.current_revision {
        return waiting(format!("waiting for statefulset rolling update to complete {updated} pods at revision {revision}..."));
    }
    finished(format!("statefulset rolling update complete {} pods at revision {revision}...", status.current_replicas.unwrap_or(0)))
}

/// Follows `target` (`deploy/NAME`, `sts/NAME`, `ds/NAME`) until its rollout is done or
/// `timeout` (if any) passes.
pub async fn status(args: &TargetArgs, target: &str, timeout: Option<Duration>) -> anyhow::Result<()> {
    let s = Session::connect(args).await?;
    let (kind, name) = target.split_once('/').ok_or_else(|| anyhow!("give the object as KIND/NAME, e.g. deploy/hello"))?;
    let resource = crate::client::resolve(kind)?;
    let ns = s.namespace.clone();
    let follow = async {
        match resource.kind {
            "Deployment" => follow(Api::<Deployment>::namespaced(s.client.clone(), &ns), name, deployment).await,
            "StatefulSet" => follow(Api::<StatefulSet>::namespaced(s.client.clone(), &ns), name, stateful_set).await,
            "DaemonSet" => follow(Api::<DaemonSet>::namespaced(s.client.clone(), &ns), name, daemon_set).await,
            other => bail!("no status viewer has been implemented for {other}: rollout status follows deployments, statefulsets and daemonsets"),
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, follow).await.map_err(|_| anyhow!("timed out waiting for the condition"))?,
        None => follow.await,
    }
}

async fn follow<K>(api: Api<K>, name: &str, read: fn(&K) -> Result<Progress, String>) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    api.get(name).await.map_err(crate::client::api_message)?;
    let mut line = Line::new();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).boxed();
    while let Some(event) = events.next().await {
        let object = match event.context("watching the rollout")? {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => o,
            watcher::Event::Delete(_) => bail!("{name} was deleted"),
            _ => continue,
        };
        let progress = read(&object).map_err(|e| anyhow!(e))?;
        line.show(&progress.message, progress.done);
        if progress.done {
            return Ok(());
        }
    }
    bail!("the watch of {name} ended")
}

/// The progress line: rewritten in place, with the time waited, at a terminal; one line
/// per change elsewhere (as kubectl prints it).
struct Line {
    tty: bool,
    started: Instant,
    last: String,
}

impl Line {
    fn new() -> Line {
        Line { tty: std::io::stdout().is_terminal(), started: Instant::now(), last: Default::default() }
    }

    fn show(&mut self, message: &str, done: bool) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[K{message}");
            if done {
                let _ = writeln!(out, " ({:.1}s)", self.started.elapsed().as_secs_f64());
            }
        } else if self.last != message {
            let _ = writeln!(out, "{message}");
        }
        let _ = out.flush();
        self.last = message.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "hello", "generation": generation}, "spec": {"replicas": 3, "selector": {}, "template": {}}, "status": status})).unwrap()
    }

    #[test]
    fn a_deployment_rollout_reads_as_kubectl_says_it() {
        let message = |d: &Deployment| deployment(d).unwrap().message;
        assert_eq!(message(&deploy(2, json!({"observedGeneration": 1}))), "Waiting for deployment spec update to be observed...");
        assert_eq!(message(&deploy(2, json!({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 3}))), "Waiting for deployment \"hello\" rollout to finish: 1 out of 3 new replicas have been updated...");
        assert_eq!(message(&deploy(2, json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 4}))), "Waiting for deployment \"hello\" rollout to finish: 1 old replicas are pending termination...");
        assert_eq!(message(&deploy(2, json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 2}))), "Waiting for deployment \"hello\" rollout to finish: 2 of 3 updated replicas are available...");
        let done = deployment(&deploy(2, json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3}))).unwrap();
        assert_eq!(done, Progress { message: "deployment \"hello\" successfully rolled out".into(), done: true });
        let stuck = deploy(2, json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}));
        assert_eq!(deployment(&stuck).unwrap_err(), "deployment \"hello\" exceeded its progress deadline");
    }

    #[test]
    fn daemon_sets_and_stateful_sets() {
        let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "d", "generation": 1}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1, "currentNumberScheduled": 2, "numberMisscheduled": 0, "numberReady": 1}})).unwrap();
        assert_eq!(daemon_set(&ds).unwrap().message, "Waiting for daemon set \"d\" rollout to finish: 1 of 2 updated pods are available...");
        let sts = |status: serde_json::Value| -> StatefulSet { serde_json::from_value(json!({"metadata": {"name": "s", "generation": 1}, "spec": {"replicas": 2, "selector": {}, "template": {}, "serviceName": "s"}, "status": status})).unwrap() };
        assert_eq!(stateful_set(&sts(json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 1}))).unwrap().message, "Waiting for 1 pods to be ready...");
        let done = stateful_set(&sts(json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "currentReplicas": 2, "updateRevision": "s-1", "currentRevision": "s-1"}))).unwrap();
        assert!(done.done, "{done:?}");
    }
}
