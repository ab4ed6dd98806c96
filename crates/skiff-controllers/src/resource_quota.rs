//! The quota controller: each ResourceQuota's `status` says its `hard` limits and what
//! the namespace `used` of them, recounted from the objects that exist when its limits
//! are new or changed, when a pod of its namespace frees its share (deleted, being
//! deleted, or finished), and every half minute for the other kinds. Admission charges
//! creates as they come; this makes the count exact again after deletions and creates
//! that failed after being charged.
//!
//! A recount is not started by admission's charges (quota updates that only move `used`)
//! nor by pods starting or running: a recount lists the objects while charged creates
//! may not be written yet, and its lower count would undo their charges and let a burst
//! of creates past the limit. Kubernetes' controller is woken by the same events only.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use skiff_core::quota;

use crate::Error;
use crate::children::ignore_gone;
use crate::support::{Informers, retry};

/// How often every quota's use is recounted without a pod freeing its share.
const RECOUNT: Duration = Duration::from_secs(30);

pub struct Ctx {
    pub client: Client,
}

/// The controller: ResourceQuotas whose limits are not counted yet, those of a namespace
/// where a pod freed its share, and every quota each half minute.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let (quotas, pods) = (i.quotas.store(), i.pods.store());
    let unsettled = i.quotas.subscribe().filter(|q| std::future::ready(!settled(q)));
    Controller::for_shared_stream(unsettled, i.quotas.store())
        .watches_shared_stream(i.pods.changes(), move |pod: Arc<Pod>| {
            let gone = pods.get(&ObjectRef::from_obj(&*pod)).is_none();
            if !(gone || pod.metadata.deletion_timestamp.is_some() || finished(&pod)) {
                return Vec::new();
            }
            let ns = pod.namespace().unwrap_or_default();
            quotas.state().into_iter().filter(|q| q.namespace().as_deref() == Some(ns.as_str())).map(|q| ObjectRef::from_obj(&*q)).collect::<Vec<_>>()
        })
        .reconcile_all_on(futures::stream::unfold((), |()| async {
            tokio::time::sleep(RECOUNT).await;
            Some(((), ()))
        }))
        .run(crate::metrics::metered("resourcequota", reconcile), retry, Arc::new(Ctx { client: client.clone() }))
        .for_each(|_| async {})
}

/// Whether the quota's status counts every limit of its spec as it is now: then only a
/// freed share or the periodic recount changes it.
fn settled(q: &ResourceQuota) -> bool {
    let hard = q.spec.as_ref().and_then(|s| s.hard.as_ref());
    let status = q.status.as_ref();
    let used = status.and_then(|s| s.used.as_ref());
    status.and_then(|s| s.hard.as_ref()) == hard && hard.is_none_or(|hard| hard.keys().all(|k| used.is_some_and(|u| u.contains_key(k))))
}

/// A pod that has finished no longer uses its share of a quota.
fn finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

pub async fn reconcile(q: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = q.namespace().unwrap_or_default();
    let hard = q.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    let scoped = json_of(&*q)?;
    let kinds: BTreeSet<(String, String)> = hard.keys().filter_map(|k| quota::counted_kind(k)).collect();
    let mut used = quota::Usage::new();
    for (group, plural) in kinds {
        let Some(r) = skiff_core::RESOURCES.iter().find(|r| r.group == group && r.plural == plural && r.namespaced) else { continue };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &skiff_client::api_resource(r));
        for object in api.list(&ListParams::default()).await?.items {
            let object = json_of(&object)?;
            if !quota::scopes_match(&scoped, &group, &plural, &object) {
                continue;
            }
            for (k, v) in quota::usage(&group, &plural, &object) {
                *used.entry(k).or_insert(0) += v;
            }
        }
    }
    // Only what the quota limits, and each limited resource, used or not.
    let used: Value = hard.keys().map(|k| (k.clone(), json!(quota::format(k, used.get(k).copied().unwrap_or(0))))).collect::<serde_json::Map<_, _>>().into();
    let status = json!({"hard": hard, "used": used});
    if json_of(&q.status)? != status {
        let mut fixed = (*q).clone();
        fixed.status = Some(serde_json::from_value(status).map_err(|e| Error::Invalid(e.to_string()))?);
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        ignore_gone(api.replace_status(&q.name_any(), &PostParams::default(), &fixed).await)?;
    }
    Ok(Action::await_change())
}

fn json_of<T: serde::Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(spec: Value, status: Value) -> ResourceQuota {
        serde_json::from_value(json!({"metadata": {"name": "q"}, "spec": spec, "status": status})).unwrap()
    }

    #[test]
    fn a_quota_is_settled_once_its_status_counts_every_limit_of_its_spec() {
        let hard = json!({"hard": {"pods": "2", "count/configmaps": "5"}});
        assert!(!settled(&quota(hard.clone(), json!(null))), "never counted");
        // Admission's first charge counts only what it charged.
        assert!(!settled(&quota(hard.clone(), json!({"hard": hard["hard"], "used": {"pods": "1"}}))));
        assert!(settled(&quota(hard.clone(), json!({"hard": hard["hard"], "used": {"pods": "1", "count/configmaps": "3"}}))));
        // A changed limit is counted again.
        assert!(!settled(&quota(json!({"hard": {"pods": "3", "count/configmaps": "5"}}), json!({"hard": hard["hard"], "used": {"pods": "1", "count/configmaps": "3"}}))));
    }

    #[test]
    fn only_a_finished_pod_has_freed_its_share() {
        let pod = |phase: &str| -> Pod { serde_json::from_value(json!({"metadata": {"name": "p"}, "status": {"phase": phase}})).unwrap() };
        assert!(finished(&pod("Succeeded")) && finished(&pod("Failed")));
        assert!(!finished(&pod("Running")) && !finished(&pod("Pending")));
    }
}
