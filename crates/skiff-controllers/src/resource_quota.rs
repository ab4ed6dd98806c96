//! The quota controller: each ResourceQuota's `status` says its `hard` limits and what
//! the namespace `used` of them, recounted from the objects that exist, whenever a pod in
//! its namespace changes (a deletion or a pod finishing frees its share) and every half
//! minute for the other kinds. Admission charges creates as they come; this makes the
//! count exact again after deletions and creates that failed after being charged.

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

/// How often use is recounted without a pod change.
const RECOUNT: Duration = Duration::from_secs(30);

pub struct Ctx {
    pub client: Client,
}

/// The controller: ResourceQuotas, woken by the pods of their namespace.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let quotas = i.quotas.store();
    Controller::for_shared_stream(i.quotas.subscribe(), i.quotas.store())
        .watches_shared_stream(i.pods.changes(), move |pod: Arc<Pod>| {
            let ns = pod.namespace().unwrap_or_default();
            quotas.state().into_iter().filter(|q| q.namespace().as_deref() == Some(ns.as_str())).map(|q| ObjectRef::from_obj(&*q)).collect::<Vec<_>>()
        })
        .run(crate::metrics::metered("resourcequota", reconcile), retry, Arc::new(Ctx { client: client.clone() }))
        .for_each(|_| async {})
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
    Ok(Action::requeue(RECOUNT))
}

fn json_of<T: serde::Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Invalid(e.to_string()))
}
