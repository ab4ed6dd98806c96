//! StatefulSet: pods with stable ordinal names (`{set}-0`, `{set}-1`, …), hostnames and
//! per-pod PersistentVolumeClaims from `volumeClaimTemplates` that outlive the pods.
//! OrderedReady creates in order, each after the previous is running and ready, and
//! removes from the highest ordinal down; Parallel does all at once. RollingUpdate
//! replaces pods from the highest ordinal down to `partition`, one at a time.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::events::EventType;
use skiff_client::pods::{self, Availability};
use skiff_client::{Recorder, owners};

use crate::children::{self, ignore_gone};
use crate::revisions::{self, REVISION_LABEL};
use crate::{Error, selector_of};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub struct Ctx {
    pub client: Client,
    pub pods: Store<Pod>,
    pub revisions: Store<ControllerRevision>,
    pub recorder: Recorder,
}

/// The ordinal in a pod name `{set}-{ordinal}`.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_and_ready(p: &Pod) -> bool {
    pods::phase(p) == "Running" && pods::is_ready(p) && p.metadata.deletion_timestamp.is_none()
}

/// What to do next with the set's pods.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Create(Vec<i32>),
    Delete(Vec<String>),
    Wait,
    Nothing,
}

/// The next step for pods by ordinal, given the desired ordinals `[start, start+replicas)`,
/// the pod management policy, the revision every pod should be at, and the partition.
pub fn next_step(pods: &BTreeMap<i32, &Pod>, start: i32, replicas: i32, parallel: bool, update_revision: &str, partition: i32, rolling: bool) -> Step {
    let end = start + replicas;
    // Failed pods are replaced.
    let failed: Vec<String> = pods.values().filter(|p| pods::phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none()).map(|p| p.name_any()).collect();
    if !failed.is_empty() {
        return Step::Delete(failed);
    }
    // Scale up.
    let missing: Vec<i32> = (start..end).filter(|i| !pods.contains_key(i)).collect();
    if !missing.is_empty() {
        if parallel {
            return Step::Create(missing);
        }
        // In order: every lower ordinal must be running and ready first.
        let first = missing[0];
        if pods.range(start..first).all(|(_, p)| running_and_ready(p)) {
            return Step::Create(vec![first]);
        }
        return Step::Wait;
    }
    if !parallel && pods.range(start..end).any(|(_, p)| !running_and_ready(p)) {
        return Step::Wait;
    }
    // Scale down: highest ordinal first, one at a time when ordered.
    let extra: Vec<&&Pod> = pods.iter().filter(|(i, _)| **i < start || **i >= end).map(|(_, p)| p).rev().collect();
    if !extra.is_empty() {
        if extra.iter().any(|p| p.metadata.deletion_timestamp.is_some()) && !parallel {
            return Step::Wait;
        }
        let names: Vec<String> = extra.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).map(|p| p.name_any()).collect();
        return Step::Delete(if parallel { names } else { names.into_iter().take(1).collect() });
    }
    // Rolling update, highest ordinal first, down to the partition.
    if rolling {
        if pods.values().any(|p| p.metadata.deletion_timestamp.is_some() || !running_and_ready(p)) {
            return Step::Wait;
        }
        if let Some((_, p)) = pods.range(start.max(partition)..end).rev().find(|(_, p)| p.labels().get(REVISION_LABEL).map(String::as_str) != Some(update_revision)) {
            return Step::Delete(vec![p.name_any()]);
        }
    }
    Step::Nothing
}

fn claim_name(template: &str, set: &str, i: i32) -> String {
    format!("{template}-{set}-{i}")
}

/// Pod `i` of the set, from `template` at revision `hash`.
fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, hash: &str, i: i32) -> Pod {
    let spec = &set.spec;
    let name = format!("{}-{i}", set.name_any());
    let mut pod = pods::from_template(template, &set.namespace().unwrap_or_default(), owners::controller_ref(set), Some(name.clone()), "");
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), i.to_string());
    labels.insert(REVISION_LABEL.into(), hash.into());
    if let Some(ps) = pod.spec.as_mut() {
        ps.hostname = Some(name.clone());
        if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
            ps.subdomain = spec.service_name.clone();
        }
        let volumes = ps.volumes.get_or_insert_with(Vec::new);
        for t in spec.volume_claim_templates.iter().flatten() {
            let tname = t.metadata.name.clone().unwrap_or_default();
            volumes.retain(|v| v.name != tname);
            volumes.push(Volume {
                name: tname.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim_name(&tname, &set.name_any(), i), read_only: None }),
                ..Default::default()
            });
        }
    }
    pod
}

/// Creates the claims pod `i` needs, if missing. They carry no owner: they outlive the
/// pod and the set, as Kubernetes' default retention policy says.
async fn ensure_claims(ctx: &Ctx, set: &StatefulSet, i: i32) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let selector_labels = Some(&set.spec).and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    for t in Some(&set.spec).and_then(|s| s.volume_claim_templates.as_ref()).into_iter().flatten() {
        let name = claim_name(&t.metadata.name.clone().unwrap_or_default(), &set.name_any(), i);
        if api.get_opt(&name).await?.is_some() {
            continue;
        }
        let mut labels = t.metadata.labels.clone().unwrap_or_default();
        labels.extend(selector_labels.clone());
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns.clone()), labels: Some(labels), annotations: t.metadata.annotations.clone(), ..Default::default() },
            spec: t.spec.clone(),
            status: None,
        };
        if ignore_gone(api.create(&PostParams::default(), &pvc).await)?.is_some() {
            ctx.recorder.record(set, EventType::Normal, "SuccessfulCreate", format!("create Claim {name} Pod {}-{i} in StatefulSet {} success", set.name_any(), set.name_any()));
        }
    }
    Ok(())
}

/// The controller: StatefulSets, woken by their pods.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Ctx { client: client.clone(), pods: i.pods.store(), revisions: i.revisions.store(), recorder: Recorder::new(client.clone(), "statefulset-controller") };
    Controller::for_shared_stream(i.stateful_sets.subscribe(), i.stateful_sets.store())
        .owns_shared_stream(i.pods.changes())
        .run(crate::metrics::metered("statefulset", reconcile), retry, Arc::new(ctx))
        .for_each(|_| async {})
}

pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = set.namespace().unwrap_or_default();
    let spec = &set.spec;
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let selector = selector_of(Some(&spec.selector))?;
    let owned = children::claim(&ctx.client, &*set, &ctx.pods, &selector, &ns, &ctx.recorder, |p: &Pod| pods::is_active(p)).await?;
    let revs = revisions::owned(&ctx.revisions, &uid, &ns);
    let update_revision = revisions::ensure(&ctx.client, &*set, &spec.template, &revs).await?;
    let old = set.status.clone().unwrap_or_default();
    let current_revision = old.current_revision.clone().map(|r| r.trim_start_matches(&format!("{name}-")).to_string()).unwrap_or_else(|| update_revision.clone());
    let by_ordinal: BTreeMap<i32, &Pod> = owned.iter().filter_map(|p| Some((ordinal(&name, &p.name_any())?, p.as_ref()))).collect();
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let replicas = spec.replicas.unwrap_or(1);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy.and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = strategy.and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0);

    match next_step(&by_ordinal, start, replicas, parallel, &update_revision, partition, rolling) {
        Step::Create(ordinals) => {
            let current_template = revs.iter().find(|r| r.name_any() == format!("{name}-{current_revision}")).and_then(|r| revisions::template_of(r));
            for i in ordinals {
                ensure_claims(&ctx, &set, i).await?;
                // Below the partition, pods stay at the current revision.
                let (template, hash) = match (&current_template, rolling && i < partition) {
                    (Some(t), true) => (t, current_revision.as_str()),
                    _ => (&spec.template, update_revision.as_str()),
                };
                if children::create_pod(&ctx.client, &*set, &pod_for(&set, template, hash, i), &ctx.recorder).await.is_none() {
                    break;
                }
            }
        }
        Step::Delete(names) => {
            children::delete_pods(&ctx.client, &*set, &ns, &names, &ctx.recorder).await;
        }
        Step::Wait | Step::Nothing => {}
    }

    let now = jiff::Timestamp::now().as_second();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let live: Vec<&Pod> = by_ordinal.values().copied().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let at = |rev: &str| live.iter().filter(|p| p.labels().get(REVISION_LABEL).map(String::as_str) == Some(rev)).count() as i32;
    let updated = at(&update_revision);
    // Once every pod runs the update revision it becomes the current one.
    let current_revision = if updated == replicas && live.len() as i32 == replicas { update_revision.clone() } else { current_revision };
    let status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| pods::is_ready(p)).count() as i32),
        available_replicas: Some(live.iter().filter(|p| pods::availability(p, min_ready, now) == Availability::Available).count() as i32),
        current_replicas: Some(at(&current_revision)),
        updated_replicas: Some(updated),
        current_revision: Some(format!("{name}-{current_revision}")),
        update_revision: Some(format!("{name}-{update_revision}")),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    if set.status.as_ref() != Some(&status) {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        ignore_gone(api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await)?;
    }
    let live_revisions = [update_revision.as_str(), current_revision.as_str()];
    revisions::trim(&ctx.client, &revs, &live_revisions, spec.revision_history_limit.unwrap_or(10).max(0) as usize).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, rev: &str, ready: bool) -> Pod {
        let mut v = json!({"metadata": {"name": name, "namespace": "d", "labels": {REVISION_LABEL: rev}}, "spec": {"containers": []}, "status": {"phase": "Pending"}});
        if ready {
            v["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ordered_creation_waits_for_ready_predecessors() {
        let p0 = pod("web-0", "a", false);
        let mut m = BTreeMap::new();
        assert_eq!(next_step(&m, 0, 3, false, "a", 0, true), Step::Create(vec![0]));
        m.insert(0, &p0);
        assert_eq!(next_step(&m, 0, 3, false, "a", 0, true), Step::Wait);
        assert_eq!(next_step(&m, 0, 3, true, "a", 0, true), Step::Create(vec![1, 2]));
        let r0 = pod("web-0", "a", true);
        m.insert(0, &r0);
        assert_eq!(next_step(&m, 0, 3, false, "a", 0, true), Step::Create(vec![1]));
    }

    #[test]
    fn scale_down_and_rolling_update_go_from_the_top() {
        let (a, b, c) = (pod("web-0", "old", true), pod("web-1", "old", true), pod("web-2", "old", true));
        let m = BTreeMap::from([(0, &a), (1, &b), (2, &c)]);
        assert_eq!(next_step(&m, 0, 2, false, "old", 0, true), Step::Delete(vec!["web-2".into()]));
        assert_eq!(next_step(&m, 0, 3, false, "new", 0, true), Step::Delete(vec!["web-2".into()]));
        // Partition 2 keeps web-0 and web-1 at the old revision.
        let c2 = pod("web-2", "new", true);
        let m = BTreeMap::from([(0, &a), (1, &b), (2, &c2)]);
        assert_eq!(next_step(&m, 0, 3, false, "new", 2, true), Step::Nothing);
        assert_eq!(next_step(&m, 0, 3, false, "new", 0, true), Step::Delete(vec!["web-1".into()]));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "webx-1"), None);
    }
}
