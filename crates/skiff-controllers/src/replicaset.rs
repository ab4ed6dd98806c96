//! ReplicaSet: keeps `spec.replicas` pods matching the selector alive. Adopts matching
//! orphans, releases pods that stop matching, creates in slow-start batches and deletes
//! the least useful pods first; reports replicas, ready, available and fully labeled
//! counts.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use skiff_client::pods::{self, Availability};
use skiff_client::{Expectations, Recorder};

use crate::children;
use crate::{Error, selector_of};

pub struct Ctx {
    pub client: Client,
    pub pods: Store<Pod>,
    pub recorder: Recorder,
    pub expectations: Expectations,
}

/// What the ReplicaSet should do to its pods.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Create(usize),
    /// Pod names, least useful first.
    Delete(Vec<String>),
    Nothing,
}

/// Decides creations or deletions from the desired count and the active pods.
pub fn plan(replicas: usize, active: &[&Pod]) -> Plan {
    if active.len() < replicas {
        return Plan::Create(replicas - active.len());
    }
    if active.len() > replicas {
        let mut ranked = active.to_vec();
        ranked.sort_by_key(|p| pods::deletion_rank(p));
        return Plan::Delete(ranked.iter().take(active.len() - replicas).map(|p| p.name_any()).collect());
    }
    Plan::Nothing
}

/// The status a ReplicaSet should report for its pods.
pub fn status(rs: &ReplicaSet, owned: &[&Pod], now: i64) -> (ReplicaSetStatus, Option<i64>) {
    let min_ready = Some(&rs.spec).and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = Some(&rs.spec).and_then(|s| s.template.as_ref()).and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let active: Vec<&&Pod> = owned.iter().filter(|p| pods::is_active(p)).collect();
    let mut wait: Option<i64> = None;
    let mut available = 0;
    for p in &active {
        match pods::availability(p, min_ready, now) {
            Availability::Available => available += 1,
            Availability::ReadyFor(s) => wait = Some(wait.map_or(s, |w| w.min(s))),
            Availability::NotReady => {}
        }
    }
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(active.iter().filter(|p| template_labels.iter().all(|(k, v)| p.labels().get(k) == Some(v))).count() as i32),
        ready_replicas: Some(active.iter().filter(|p| pods::is_ready(p)).count() as i32),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    (status, wait)
}

/// The controller: ReplicaSets, woken by their pods.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Ctx { client: client.clone(), pods: i.pods.store(), recorder: Recorder::new(client.clone(), "replicaset-controller"), expectations: Expectations::new() };
    Controller::for_shared_stream(i.replica_sets.subscribe(), i.replica_sets.store())
        .owns_shared_stream(i.pods.changes())
        .run(crate::metrics::metered("replicaset", reconcile), retry, Arc::new(ctx))
        .for_each(|_| async {})
}

pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", rs.name_any());
    let spec = &rs.spec;
    let selector = selector_of(Some(&spec.selector))?;
    // Expectations first, then the pods: a pod that lands in the cache between the two
    // reads is then counted, where the other order would create one more and later
    // delete the surplus.
    let synced = ctx.expectations.satisfied(&key, |n| children::seen(&ctx.pods, &ns, n));
    let children = children::claim(&ctx.client, &*rs, &ctx.pods, &selector, &ns, &ctx.recorder, |p: &Pod| pods::is_active(p)).await?;
    let owned: Vec<&Pod> = children.iter().map(|p| p.as_ref()).collect();
    if rs.metadata.deletion_timestamp.is_none() && synced {
        let active: Vec<&Pod> = owned.iter().copied().filter(|p| pods::is_active(p)).collect();
        let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
        match plan(replicas, &active) {
            Plan::Create(n) => {
                let template = spec.template.as_ref().ok_or_else(|| Error::Invalid("ReplicaSet has no pod template".into()))?;
                let made = children::create_pods(&ctx.client, &*rs, template, &ns, n, &ctx.recorder).await;
                ctx.expectations.created(&key, made);
            }
            Plan::Delete(names) => {
                let gone = children::delete_pods(&ctx.client, &*rs, &ns, &names, &ctx.recorder).await;
                ctx.expectations.deleted(&key, gone);
            }
            Plan::Nothing => {}
        }
    }
    let (status, wait) = status(&rs, &owned, jiff::Timestamp::now().as_second());
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status}))).await?;
    }
    Ok(match wait {
        Some(s) => Action::requeue(Duration::from_secs(s.max(1) as u64)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, ready: bool) -> Pod {
        let mut v = json!({"metadata": {"name": name, "namespace": "d", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"containers": []}, "status": {"phase": "Pending"}});
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
            v["status"]["phase"] = json!("Running");
        }
        if ready {
            v["status"]["conditions"] = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}]);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn plans_creates_and_least_useful_deletes() {
        let (a, b, c) = (pod("a", Some("n"), true), pod("b", None, false), pod("c", Some("n"), false));
        assert_eq!(plan(5, &[&a, &b]), Plan::Create(3));
        assert_eq!(plan(2, &[&a, &b]), Plan::Nothing);
        assert_eq!(plan(1, &[&a, &b, &c]), Plan::Delete(vec!["b".into(), "c".into()]));
    }

    #[test]
    fn status_counts_ready_and_available() {
        let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "r", "generation": 3}, "spec": {"selector": {}, "minReadySeconds": 10,
            "template": {"metadata": {"labels": {"app": "x"}}}}})).unwrap();
        let (a, b) = (pod("a", Some("n"), true), pod("b", None, false));
        let at = "2026-01-01T00:00:05Z".parse::<jiff::Timestamp>().unwrap().as_second();
        let (s, wait) = status(&rs, &[&a, &b], at + 4);
        assert_eq!((s.replicas, s.ready_replicas, s.available_replicas, s.observed_generation), (2, Some(1), Some(0), Some(3)));
        assert_eq!(wait, Some(6));
        let (s, _) = status(&rs, &[&a, &b], at + 10);
        assert_eq!(s.available_replicas, Some(1));
    }
}
