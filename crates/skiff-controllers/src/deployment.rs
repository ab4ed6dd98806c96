//! Deployment: rolls a pod template out through ReplicaSets, as Kubernetes does. One
//! ReplicaSet per template (named `{deployment}-{pod-template-hash}`), a revision
//! annotation per rollout, RollingUpdate (maxSurge/maxUnavailable) and Recreate,
//! proportional scaling mid-rollout, pause, progress deadline, history cleanup. Rollback
//! is kubectl's job: it writes an old ReplicaSet's template back into the Deployment,
//! which makes that ReplicaSet the new one again.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::events::EventType;
use skiff_client::{Recorder, owners};

use crate::children::{self, ignore_gone};
use crate::revisions::template_hash;
use crate::{Error, int_or_percent, selector_of};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Deployment annotations that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[REVISION, DESIRED_REPLICAS, MAX_REPLICAS, "kubectl.kubernetes.io/last-applied-configuration", "deployment.kubernetes.io/revision-history"];

pub struct Ctx {
    pub client: Client,
    pub replica_sets: Store<ReplicaSet>,
    pub recorder: Recorder,
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    Some(&rs.spec).and_then(|s| s.replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// (maxSurge, maxUnavailable) of a RollingUpdate deployment; never both zero.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = Some(&d.spec);
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let ru = spec.and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let surge = int_or_percent(ru.and_then(|r| r.max_surge.as_ref()), 25, replicas, true);
    let unavailable = int_or_percent(ru.and_then(|r| r.max_unavailable.as_ref()), 25, replicas, false);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

/// True when the ReplicaSet runs `template` (ignoring its hash label).
pub fn runs_template(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    let Some(mut t) = Some(&rs.spec).and_then(|s| s.template.clone()) else { return false };
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    let strip = |t: &PodTemplateSpec| {
        let mut v = serde_json::to_value(t).unwrap_or_default();
        if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.retain(|_, x| !x.is_null() && x.as_object().is_none_or(|o| !o.is_empty()));
        }
        v
    };
    strip(&t) == strip(template)
}

/// One scaling step: set this ReplicaSet's replicas to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub name: String,
    pub to: i32,
}

/// The rolling-update step for the given ReplicaSets (new one last in `all` too). Returns
/// the scalings to make now, in Kubernetes' order: grow the new ReplicaSet within
/// maxSurge; else shrink old ones within maxUnavailable (unhealthy pods first).
pub fn rolling_step(d: &Deployment, new: &ReplicaSet, old: &[&ReplicaSet]) -> Vec<Scale> {
    let replicas = Some(&d.spec).and_then(|s| s.replicas).unwrap_or(1);
    let (surge, unavailable) = surge_and_unavailable(d);
    let new_replicas = replicas_of(new);
    let all_spec: i32 = new_replicas + old.iter().map(|r| replicas_of(r)).sum::<i32>();
    // Grow the new ReplicaSet.
    if new_replicas > replicas {
        return vec![Scale { name: new.name_any(), to: replicas }];
    }
    if new_replicas < replicas {
        let max_total = replicas + surge;
        if all_spec < max_total {
            let up = (max_total - all_spec).min(replicas - new_replicas);
            return vec![Scale { name: new.name_any(), to: new_replicas + up }];
        }
    }
    // Shrink old ones.
    let old_count: i32 = old.iter().map(|r| replicas_of(r)).sum();
    if old_count == 0 {
        return vec![];
    }
    let min_available = replicas - unavailable;
    let new_unavailable = new_replicas - available(new);
    let max_scaled_down = all_spec - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return vec![];
    }
    let mut sorted: Vec<&ReplicaSet> = old.to_vec();
    sorted.sort_by_key(|r| (r.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()), r.name_any()));
    let mut sizes: BTreeMap<String, i32> = sorted.iter().map(|r| (r.name_any(), replicas_of(r))).collect();
    // Unhealthy pods of old ReplicaSets go first: they count for nothing.
    let mut cleaned = 0;
    for r in &sorted {
        if cleaned >= max_scaled_down {
            break;
        }
        let size = sizes[&r.name_any()];
        let unhealthy = size - available(r).min(size);
        if size == 0 || unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(max_scaled_down - cleaned);
        sizes.insert(r.name_any(), size - down);
        cleaned += down;
    }
    // Then available ones, within maxUnavailable.
    let available_all: i32 = available(new) + sorted.iter().map(|r| available(r).min(sizes[&r.name_any()])).sum::<i32>();
    if available_all > min_available {
        let mut budget = available_all - min_available;
        for r in &sorted {
            if budget <= 0 {
                break;
            }
            let size = sizes[&r.name_any()];
            if size == 0 {
                continue;
            }
            let down = size.min(budget);
            sizes.insert(r.name_any(), size - down);
            budget -= down;
        }
    }
    sorted.iter().filter(|r| sizes[&r.name_any()] != replicas_of(r)).map(|r| Scale { name: r.name_any(), to: sizes[&r.name_any()] }).collect()
}

/// Proportional scaling when the Deployment's replicas change mid-rollout: every active
/// ReplicaSet grows or shrinks by its share, the rest going to the newest (up) or the
/// oldest (down).
pub fn proportional(d: &Deployment, active: &[&ReplicaSet]) -> Vec<Scale> {
    let replicas = Some(&d.spec).and_then(|s| s.replicas).unwrap_or(1);
    let surge = if is_rolling(d) { surge_and_unavailable(d).0 } else { 0 };
    let allowed = if replicas > 0 { replicas + surge } else { 0 };
    let current: i32 = active.iter().map(|r| replicas_of(r)).sum();
    let to_add = allowed - current;
    if to_add == 0 || current == 0 {
        return vec![];
    }
    let mut sorted: Vec<&ReplicaSet> = active.to_vec();
    // Newest first when growing, oldest first when shrinking.
    sorted.sort_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0));
    if to_add > 0 {
        sorted.reverse();
    }
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::new();
    for r in &sorted {
        let share = (i64::from(replicas_of(r)) * i64::from(to_add) / i64::from(current)) as i32;
        let share = if to_add > 0 { share.min(to_add - added) } else { share.max(to_add - added) };
        added += share;
        sizes.push(replicas_of(r) + share);
    }
    if let Some(first) = sizes.first_mut() {
        *first += to_add - added;
    }
    // A shrink that overshoots one ReplicaSet carries over to the next.
    let mut carry = 0;
    for s in sizes.iter_mut() {
        *s += carry;
        carry = 0;
        if *s < 0 {
            carry = *s;
            *s = 0;
        }
    }
    sorted.iter().zip(sizes).filter(|(r, s)| replicas_of(r) != *s).map(|(r, s)| Scale { name: r.name_any(), to: s }).collect()
}

fn is_rolling(d: &Deployment) -> bool {
    Some(&d.spec).and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate"
}

fn condition(type_: &str, status: &str, reason: &str, message: String, previous: Option<&DeploymentCondition>) -> DeploymentCondition {
    let now = skiff_client::now();
    let transition = match previous {
        Some(p) if p.status.as_deref() == Some(status) => p.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    DeploymentCondition { type_: Some(type_.into()), status: Some(status.into()), reason: Some(reason.into()), message: Some(message), last_update_time: Some(now), last_transition_time: transition }
}

/// The Deployment's status from its ReplicaSets; the second value is when to check the
/// progress deadline again.
pub fn compute_status(d: &Deployment, new: Option<&ReplicaSet>, all: &[&ReplicaSet], changed: bool) -> (DeploymentStatus, Option<Duration>) {
    let spec = Some(&d.spec);
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let old = d.status.clone().unwrap_or_default();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|r| f(r)).sum::<i32>();
    let total = sum(&status_replicas);
    let updated = new.map(status_replicas).unwrap_or(0);
    let ready = sum(&|r| r.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0));
    let avail = sum(&available);
    let (_, max_unavailable) = if is_rolling(d) { surge_and_unavailable(d) } else { (0, 0) };
    let find = |t: &str| old.conditions.as_ref().and_then(|cs| cs.iter().find(|c| c.type_.as_deref() == Some(t))).cloned();
    let available_cond = if avail >= replicas - max_unavailable {
        condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), find("Available").as_ref())
    } else {
        condition("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into(), find("Available").as_ref())
    };
    let prev = find("Progressing");
    let rs_name = new.map(|r| r.name_any()).unwrap_or_default();
    let deadline = spec.and_then(|s| s.progress_deadline_seconds).unwrap_or(600);
    let complete = updated == replicas && total == replicas && avail == replicas && new.is_some();
    let mut recheck = None;
    let progressing = if spec.and_then(|s| s.paused).unwrap_or(false) {
        condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), prev.as_ref())
    } else if complete {
        match prev {
            Some(p) if p.reason.as_deref() == Some("NewReplicaSetAvailable") && p.message.as_deref().is_some_and(|m| m.contains(&rs_name)) => p,
            p => condition("Progressing", "True", "NewReplicaSetAvailable", format!("ReplicaSet \"{rs_name}\" has successfully progressed."), p.as_ref()),
        }
    } else if changed || prev.is_none() || prev.as_ref().is_some_and(|p| p.reason.as_deref() == Some("NewReplicaSetAvailable") || p.reason.as_deref() == Some("DeploymentPaused")) {
        recheck = Some(Duration::from_secs(deadline.max(1) as u64));
        condition("Progressing", "True", "ReplicaSetUpdated", format!("ReplicaSet \"{rs_name}\" is progressing."), prev.as_ref())
    } else {
        let p = prev.expect("checked above");
        let since = p.last_update_time.as_ref().map(skiff_client::seconds_since).unwrap_or(0);
        if p.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            p
        } else if since > i64::from(deadline) {
            condition("Progressing", "False", "ProgressDeadlineExceeded", format!("ReplicaSet \"{rs_name}\" has timed out progressing."), Some(&p))
        } else {
            recheck = Some(Duration::from_secs((i64::from(deadline) - since).max(1) as u64));
            p
        }
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((replicas - avail).max(0)),
        collision_count: old.collision_count,
        conditions: Some(vec![available_cond, progressing]),
        terminating_replicas: None,
    };
    (status, recheck)
}

/// Whether the status differs in anything but condition timestamps.
fn status_changed(old: Option<&DeploymentStatus>, new: &DeploymentStatus) -> bool {
    let strip = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_update_time = None;
        }
        s
    };
    old.is_none_or(|o| strip(o) != strip(new))
}

async fn scale(ctx: &Ctx, d: &Deployment, rs: &ReplicaSet, to: i32) -> Result<(), Error> {
    let from = replicas_of(rs);
    let replicas = Some(&d.spec).and_then(|s| s.replicas).unwrap_or(1);
    let surge = if is_rolling(d) { surge_and_unavailable(d).0 } else { 0 };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {DESIRED_REPLICAS: replicas.to_string(), MAX_REPLICAS: (replicas + surge).to_string()}}, "spec": {"replicas": to}});
    if ignore_gone(api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await)?.is_some() && from != to {
        let dir = if to > from { "up" } else { "down" };
        ctx.recorder.record(d, EventType::Normal, "ScalingReplicaSet", format!("Scaled {dir} replica set {} from {from} to {to}", rs.name_any()));
    }
    Ok(())
}

/// Creates the ReplicaSet for the Deployment's current template, or takes an existing
/// one. On a hash collision with a foreign ReplicaSet, bumps `collisionCount` and waits.
async fn create_new_rs(ctx: &Ctx, d: &Deployment, template: &PodTemplateSpec, selector: &K8sSelector, revision: i64, replicas: i32) -> Result<Option<ReplicaSet>, Error> {
    let ns = d.namespace().unwrap_or_default();
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(template, collision);
    let mut t = template.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    meta.labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let mut sel = selector.clone();
    sel.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let (surge, _) = if is_rolling(d) { surge_and_unavailable(d) } else { (0, 0) };
    let want = Some(&d.spec).and_then(|s| s.replicas).unwrap_or(1);
    let mut annotations: BTreeMap<String, String> = d.annotations().iter().filter(|(k, _)| !NOT_COPIED.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
    annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
    let name = format!("{}-{hash}", d.name_any());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: t.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![owners::controller_ref(d)]),
            ..Default::default()
        },
        spec: ReplicaSetSpec { replicas: Some(replicas), min_ready_seconds: d.spec.min_ready_seconds, selector: sel, template: Some(t) },
        status: None,
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            ctx.recorder.record(d, EventType::Normal, "ScalingReplicaSet", format!("Scaled up replica set {name} from 0 to {replicas}"));
            Ok(Some(created))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(&name).await?;
            if owners::is_controlled_by(&existing.metadata, &d.uid().unwrap_or_default()) && runs_template(&existing, template) {
                return Ok(Some(existing));
            }
            let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
            dapi.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The controller: Deployments, woken by their ReplicaSets.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Ctx { client: client.clone(), replica_sets: i.replica_sets.store(), recorder: Recorder::new(client.clone(), "deployment-controller") };
    Controller::for_shared_stream(i.deployments.subscribe(), i.deployments.store())
        .owns_shared_stream(i.replica_sets.changes())
        .run(crate::metrics::metered("deployment", reconcile), retry, Arc::new(ctx))
        .for_each(|_| async {})
}

pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let spec = &d.spec;
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let selector = selector_of(Some(&spec.selector))?;
    let rss = children::claim(&ctx.client, &*d, &ctx.replica_sets, &selector, &ns, &ctx.recorder, |_: &ReplicaSet| true).await?;
    let replicas = spec.replicas.unwrap_or(1);
    let template = &spec.template;
    let mut new: Option<ReplicaSet> = rss.iter().filter(|r| runs_template(r, template)).max_by_key(|r| revision(r)).map(|r| (**r).clone());
    let old: Vec<&ReplicaSet> = rss.iter().map(|r| r.as_ref()).filter(|r| new.as_ref().is_none_or(|n| n.name_any() != r.name_any())).collect();
    let max_old_revision = old.iter().map(|r| revision(r)).max().unwrap_or(0);
    let paused = spec.paused.unwrap_or(false);
    let mut changed = false;

    // The new ReplicaSet carries the newest revision (a rollback makes an old one new again).
    if let Some(n) = new.as_ref()
        && revision(n) <= max_old_revision
        && !paused
    {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION: (max_old_revision + 1).to_string()}}});
        new = ignore_gone(api.patch(&n.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await)?;
        changed = true;
    }
    let active: Vec<&ReplicaSet> = rss.iter().map(|r| r.as_ref()).filter(|r| replicas_of(r) > 0).collect();
    let scaling_event = active.iter().any(|r| r.annotations().get(DESIRED_REPLICAS).is_some_and(|v| v.parse::<i32>().ok() != Some(replicas)));

    let mut steps: Vec<Scale> = Vec::new();
    if paused || scaling_event {
        steps = match (active.len(), new.as_ref()) {
            (0, Some(n)) if !paused => vec![Scale { name: n.name_any(), to: replicas }],
            (0, _) => vec![],
            (1, _) => vec![Scale { name: active[0].name_any(), to: replicas }],
            _ => proportional(&d, &active),
        };
    } else if is_rolling(&d) {
        if new.is_none() {
            // The first step of a rollout: create the new ReplicaSet within the surge.
            let (surge, _) = surge_and_unavailable(&d);
            let current: i32 = old.iter().map(|r| replicas_of(r)).sum();
            let start = if old.is_empty() { replicas } else { (replicas + surge - current).clamp(0, replicas) };
            new = create_new_rs(&ctx, &d, template, &spec.selector, max_old_revision + 1, start).await?;
            changed = true;
        }
        if let Some(n) = new.as_ref() {
            steps = rolling_step(&d, n, &old);
        }
    } else {
        // Recreate: every old pod goes before a new one starts.
        let old_active: Vec<&&ReplicaSet> = old.iter().filter(|r| replicas_of(r) > 0).collect();
        if !old_active.is_empty() {
            steps = old_active.iter().map(|r| Scale { name: r.name_any(), to: 0 }).collect();
        } else if old.iter().all(|r| status_replicas(r) == 0) {
            match new.as_ref() {
                None => {
                    new = create_new_rs(&ctx, &d, template, &spec.selector, max_old_revision + 1, replicas).await?;
                    changed = true;
                }
                Some(n) if replicas_of(n) != replicas => steps = vec![Scale { name: n.name_any(), to: replicas }],
                Some(_) => {}
            }
        }
    }
    for step in &steps {
        if let Some(rs) = rss.iter().find(|r| r.name_any() == step.name) {
            scale(&ctx, &d, rs, step.to).await?;
            changed = true;
        }
    }

    // History: old ReplicaSets scaled to zero beyond revisionHistoryLimit go, oldest first.
    let complete = steps.is_empty() && new.as_ref().is_some_and(|n| replicas_of(n) == replicas && available(n) == replicas) && old.iter().all(|r| replicas_of(r) == 0);
    if complete {
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let mut idle: Vec<&&ReplicaSet> = old.iter().filter(|r| replicas_of(r) == 0 && status_replicas(r) == 0 && r.metadata.deletion_timestamp.is_none()).collect();
        if idle.len() > limit {
            idle.sort_by_key(|r| revision(r));
            let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
            for r in &idle[..idle.len() - limit] {
                ignore_gone(api.delete(&r.name_any(), &DeleteParams::background()).await)?;
            }
        }
    }

    let all: Vec<&ReplicaSet> = rss.iter().map(|r| r.as_ref()).collect();
    let new_ref = new.as_ref().and_then(|n| all.iter().find(|r| r.name_any() == n.name_any()).copied()).or(new.as_ref());
    let (status, recheck) = compute_status(&d, new_ref, &all, changed);
    let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let new_revision = new.as_ref().map(revision).unwrap_or(0);
    if new_revision > 0 && d.annotations().get(REVISION).map(String::as_str) != Some(new_revision.to_string().as_str()) {
        let patch = json!({"metadata": {"annotations": {REVISION: new_revision.to_string()}}});
        ignore_gone(dapi.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await)?;
    }
    if status_changed(d.status.as_ref(), &status) {
        let progressing = status.conditions.iter().flatten().find(|c| c.type_.as_deref() == Some("Progressing"));
        if progressing.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            && d.status.as_ref().and_then(|s| s.conditions.as_ref()).is_none_or(|cs| !cs.iter().any(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")))
        {
            ctx.recorder.record(&*d, EventType::Warning, "ProgressDeadlineExceeded", format!("Deployment {:?} has timed out progressing.", d.name_any()));
        }
        ignore_gone(dapi.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await)?;
    }
    Ok(Action::requeue(recheck.unwrap_or(Duration::from_secs(300))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn deployment(replicas: i32, surge: &str, unavailable: &str) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "v2"}]}}}})).unwrap()
    }

    fn rs(name: &str, created: &str, replicas: i32, available: i32) -> ReplicaSet {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "creationTimestamp": created},
            "spec": {"replicas": replicas, "selector": {}}, "status": {"replicas": replicas, "availableReplicas": available, "readyReplicas": available}})).unwrap()
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(int_or_percent(Some(&IntOrString::String("25%".into())), 25, 10, true), 3);
        assert_eq!(int_or_percent(Some(&IntOrString::String("25%".into())), 25, 10, false), 2);
        assert_eq!(int_or_percent(Some(&IntOrString::Int(0)), 25, 10, false), 0);
        assert_eq!(surge_and_unavailable(&deployment(10, "0", "0")), (0, 1));
    }

    #[test]
    fn rolling_update_surges_then_scales_down_old() {
        let d = deployment(10, "25%", "25%");
        let old = rs("web-old", "2026-01-01T00:00:00Z", 10, 10);
        let new = rs("web-new", "2026-01-02T00:00:00Z", 0, 0);
        // Surge: 10 + 3 allowed, so the new ReplicaSet grows by 3.
        assert_eq!(rolling_step(&d, &new, &[&old]), vec![Scale { name: "web-new".into(), to: 3 }]);
        // New pods not yet available: old may drop to minAvailable 8 (2 down).
        let new = rs("web-new", "2026-01-02T00:00:00Z", 3, 0);
        assert_eq!(rolling_step(&d, &new, &[&old]), vec![Scale { name: "web-old".into(), to: 8 }]);
        // New pods available: the new set grows again within the surge.
        let old = rs("web-old", "2026-01-01T00:00:00Z", 8, 8);
        let new = rs("web-new", "2026-01-02T00:00:00Z", 3, 3);
        assert_eq!(rolling_step(&d, &new, &[&old]), vec![Scale { name: "web-new".into(), to: 5 }]);
    }

    #[test]
    fn proportional_scaling_keeps_the_ratio() {
        let d = deployment(20, "0", "1");
        let old = rs("web-old", "2026-01-01T00:00:00Z", 6, 6);
        let new = rs("web-new", "2026-01-02T00:00:00Z", 4, 4);
        let mut steps = proportional(&d, &[&old, &new]);
        steps.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(steps, vec![Scale { name: "web-new".into(), to: 8 }, Scale { name: "web-old".into(), to: 12 }]);
    }

    #[test]
    fn hash_is_stable_and_moves_with_collisions() {
        let d = deployment(1, "1", "0");
        let t = &Some(&d.spec).unwrap().template;
        assert_eq!(template_hash(t, None), template_hash(t, None));
        assert_ne!(template_hash(t, None), template_hash(t, Some(1)));
        let mut labelled = t.clone();
        labelled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH_LABEL.into(), "x".into());
        let r: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "r"}, "spec": {"selector": {}, "template": labelled}})).unwrap();
        assert!(runs_template(&r, t));
    }
}
