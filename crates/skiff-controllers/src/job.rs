//! Job: runs pods until `completions` of them succeed (NonIndexed), or one per index
//! succeeds (Indexed), `parallelism` at a time; fails after `backoffLimit` failed pods
//! (new pods wait 10 s doubling to 6 min after failures) or `activeDeadlineSeconds`; a
//! finished Job is deleted `ttlSecondsAfterFinished` later.
//!
//! Counts come from the Job's pods as they are (Kubernetes' tracking without finalizers),
//! never lower than already reported: a finished pod deleted by hand is not forgotten.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::events::EventType;
use skiff_client::{Expectations, Recorder, owners, pods};

use crate::children::{self, ignore_gone};
use crate::{Error, selector_of};

pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

pub struct Ctx {
    pub client: Client,
    pub pods: Store<Pod>,
    pub recorder: Recorder,
    pub expectations: Expectations,
}

fn finished(job: &Job) -> Option<&JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.annotations().get(INDEX_ANNOTATION)?.parse().ok()
}

/// Seconds to wait before the next pod after `failed` failures (10 s doubling, 6 min cap).
pub fn backoff_seconds(failed: i32) -> i64 {
    if failed <= 0 {
        return 0;
    }
    (10i64 << (failed - 1).min(6)).min(360)
}

/// "0-2,4" for {0,1,2,4}, as `status.completedIndexes` reads.
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().peekable();
    while let Some(&start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(",")
}

/// What to do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Create pods (with these completion indexes, for an Indexed Job).
    Create(usize, Vec<i32>),
    /// Delete surplus active pods (names).
    Delete(Vec<String>),
    Nothing,
}

/// How many pods should run now and which indexes they take.
pub fn plan(job: &Job, active: &[&Pod], succeeded: i32, succeeded_indexes: &BTreeSet<i32>) -> Plan {
    let spec = job.spec.as_ref();
    let parallelism = spec.and_then(|s| s.parallelism).unwrap_or(1).max(0);
    let completions = spec.and_then(|s| s.completions);
    let indexed = spec.and_then(|s| s.completion_mode.as_deref()) == Some("Indexed");
    let want = match completions {
        Some(c) if indexed => parallelism.min(c - succeeded_indexes.len() as i32),
        Some(c) => parallelism.min(c - succeeded),
        // No completions: any success ends the Job; until then, `parallelism` pods.
        None if succeeded > 0 => 0,
        None => parallelism,
    }
    .max(0) as usize;
    if active.len() > want {
        let mut ranked = active.to_vec();
        ranked.sort_by_key(|p| pods::deletion_rank(p));
        return Plan::Delete(ranked.iter().take(active.len() - want).map(|p| p.name_any()).collect());
    }
    if active.len() == want {
        return Plan::Nothing;
    }
    let n = want - active.len();
    if !indexed {
        return Plan::Create(n, vec![]);
    }
    let busy: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
    let free: Vec<i32> = (0..completions.unwrap_or(0)).filter(|i| !busy.contains(i) && !succeeded_indexes.contains(i)).take(n).collect();
    if free.is_empty() { Plan::Nothing } else { Plan::Create(free.len(), free) }
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(skiff_client::now()),
        last_transition_time: Some(skiff_client::now()),
    }
}

/// The controller: Jobs, woken by their pods.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Ctx { client: client.clone(), pods: i.pods.store(), recorder: Recorder::new(client.clone(), "job-controller"), expectations: Expectations::new() };
    Controller::for_shared_stream(i.jobs.subscribe(), i.jobs.store())
        .owns_shared_stream(i.pods.changes())
        .run(crate::metrics::metered("job", reconcile), retry, Arc::new(ctx))
        .for_each(|_| async {})
}

pub async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = job.spec.as_ref().ok_or_else(|| Error::Invalid("Job has no spec".into()))?;
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Some(done) = finished(&job) {
        // TTL after finished.
        let Some(ttl) = spec.ttl_seconds_after_finished else { return Ok(Action::await_change()) };
        let at = job.status.as_ref().and_then(|s| s.completion_time.as_ref()).or(done.last_transition_time.as_ref()).map(skiff_client::seconds_since).unwrap_or(0);
        let left = i64::from(ttl) - at;
        if left > 0 {
            return Ok(Action::requeue(Duration::from_secs(left as u64)));
        }
        ignore_gone(api.delete(&job.name_any(), &DeleteParams::background()).await)?;
        return Ok(Action::await_change());
    }
    let key = format!("{ns}/{}", job.name_any());
    let selector = selector_of(spec.selector.as_ref())?;
    // Expectations before the pods, as in the ReplicaSet controller.
    let synced = ctx.expectations.satisfied(&key, |n| children::seen(&ctx.pods, &ns, n));
    let owned = children::claim(&ctx.client, &*job, &ctx.pods, &selector, &ns, &ctx.recorder, |_: &Pod| true).await?;
    let active: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).filter(|p| pods::is_active(p)).collect();
    let old = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let succeeded_pods: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).filter(|p| pods::phase(p) == "Succeeded").collect();
    let failed_live = owned.iter().filter(|p| pods::phase(p) == "Failed").count() as i32;
    let mut succeeded_indexes: BTreeSet<i32> = succeeded_pods.iter().filter_map(|p| index_of(p)).collect();
    if let Some(prev) = old.completed_indexes.as_deref() {
        succeeded_indexes.extend(parse_indexes(prev));
    }
    let succeeded = if indexed { succeeded_indexes.len() as i32 } else { (succeeded_pods.len() as i32).max(old.succeeded.unwrap_or(0)) };
    let failed = failed_live.max(old.failed.unwrap_or(0));
    let mut status = JobStatus {
        active: Some(active.len() as i32),
        ready: Some(active.iter().filter(|p| pods::is_ready(p)).count() as i32),
        succeeded: Some(succeeded),
        failed: Some(failed),
        start_time: old.start_time.clone(),
        completion_time: old.completion_time.clone(),
        completed_indexes: if indexed { Some(format_indexes(&succeeded_indexes)) } else { None },
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    let mut requeue = Duration::from_secs(300);
    let suspended = spec.suspend.unwrap_or(false);
    if suspended {
        let names: Vec<String> = active.iter().map(|p| p.name_any()).collect();
        children::delete_pods(&ctx.client, &*job, &ns, &names, &ctx.recorder).await;
    } else {
        if status.start_time.is_none() {
            status.start_time = Some(skiff_client::now());
        }
        let elapsed = status.start_time.as_ref().map(skiff_client::seconds_since).unwrap_or(0);
        let limit = spec.backoff_limit.unwrap_or(6);
        let completions_met = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        let failure = if failed > limit {
            Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
        } else if spec.active_deadline_seconds.is_some_and(|d| elapsed >= d) {
            Some(("DeadlineExceeded", "Job was active longer than specified deadline"))
        } else {
            None
        };
        if let Some((reason, message)) = failure {
            let names: Vec<String> = active.iter().map(|p| p.name_any()).collect();
            children::delete_pods(&ctx.client, &*job, &ns, &names, &ctx.recorder).await;
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.push(condition("FailureTarget", reason, message));
            conditions.push(condition("Failed", reason, message));
            status.active = Some(0);
            ctx.recorder.record(&*job, EventType::Warning, reason, message);
        } else if completions_met && (spec.completions.is_none() || active.is_empty() || indexed) {
            let names: Vec<String> = active.iter().map(|p| p.name_any()).collect();
            children::delete_pods(&ctx.client, &*job, &ns, &names, &ctx.recorder).await;
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.push(condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"));
            conditions.push(condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"));
            status.completion_time = Some(skiff_client::now());
            status.active = Some(0);
            ctx.recorder.record(&*job, EventType::Normal, "Completed", "Job completed");
        } else if synced {
            // Back off after failures, measured from the latest one.
            let last_failure = owned
                .iter()
                .filter(|p| pods::phase(p) == "Failed")
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref()?.iter().filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref()).map(skiff_client::seconds_since).min())
                .min();
            let wait = last_failure.map(|since| backoff_seconds(failed) - since).unwrap_or(0);
            if wait > 0 {
                requeue = Duration::from_secs(wait as u64);
            } else {
                match plan(&job, &active, succeeded, &succeeded_indexes) {
                    Plan::Create(_, indexes) if indexed => {
                        let mut made = Vec::new();
                        for i in indexes {
                            if let Some(name) = children::create_pod(&ctx.client, &*job, &indexed_pod(&job, &ns, i), &ctx.recorder).await {
                                made.push(name);
                            }
                        }
                        ctx.expectations.created(&key, made);
                    }
                    Plan::Create(n, _) => {
                        let made = children::create_pods(&ctx.client, &*job, &spec.template, &ns, n, &ctx.recorder).await;
                        ctx.expectations.created(&key, made);
                    }
                    Plan::Delete(names) => {
                        let gone = children::delete_pods(&ctx.client, &*job, &ns, &names, &ctx.recorder).await;
                        ctx.expectations.deleted(&key, gone);
                    }
                    Plan::Nothing => {}
                }
            }
            if let Some(d) = spec.active_deadline_seconds {
                requeue = requeue.min(Duration::from_secs((d - elapsed).max(1) as u64));
            }
        }
    }
    if job.status.as_ref() != Some(&status) {
        // The status accumulates (completed indexes, counts, conditions) from the Job as
        // cached here: pin its resourceVersion so a reconcile of a stale copy conflicts and
        // retries instead of overwriting a newer status with an older one.
        let patch = json!({"metadata": {"resourceVersion": job.resource_version()}, "status": status});
        ignore_gone(api.patch_status(&job.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await)?;
    }
    Ok(Action::requeue(requeue))
}

fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// A pod for completion index `i`: the index as annotation and label, the hostname
/// `{job}-{i}`, and `JOB_COMPLETION_INDEX` in every container's environment.
fn indexed_pod(job: &Job, ns: &str, i: i32) -> Pod {
    let spec = job.spec.as_ref().expect("checked by the caller");
    let mut pod = pods::from_template(&spec.template, ns, owners::controller_ref(job), None, &format!("{}-{i}-", job.name_any()));
    pod.metadata.annotations.get_or_insert_with(Default::default).insert(INDEX_ANNOTATION.into(), i.to_string());
    pod.metadata.labels.get_or_insert_with(Default::default).insert(INDEX_ANNOTATION.into(), i.to_string());
    if let Some(ps) = pod.spec.as_mut() {
        ps.hostname = Some(format!("{}-{i}", job.name_any()));
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource { field_ref: Some(ObjectFieldSelector { field_path: format!("metadata.annotations['{INDEX_ANNOTATION}']"), api_version: None }), ..Default::default() }),
        };
        for c in ps.containers.iter_mut().chain(ps.init_containers.iter_mut().flatten()) {
            c.env.get_or_insert_with(Vec::new).push(env.clone());
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(completions: Option<i32>, parallelism: i32, indexed: bool) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j", "namespace": "d"}, "spec": {"completions": completions, "parallelism": parallelism,
            "completionMode": if indexed { "Indexed" } else { "NonIndexed" }, "template": {"spec": {"containers": [{"name": "c"}]}}}})).unwrap()
    }

    fn pod(name: &str, index: Option<i32>) -> Pod {
        let mut v = json!({"metadata": {"name": name, "namespace": "d"}, "spec": {"containers": []}});
        if let Some(i) = index {
            v["metadata"]["annotations"] = json!({INDEX_ANNOTATION: i.to_string()});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn runs_parallelism_up_to_remaining_completions() {
        let j = job(Some(5), 2, false);
        assert_eq!(plan(&j, &[], 0, &BTreeSet::new()), Plan::Create(2, vec![]));
        let a = pod("a", None);
        assert_eq!(plan(&j, &[&a], 3, &BTreeSet::new()), Plan::Create(1, vec![]));
        assert_eq!(plan(&j, &[&a], 4, &BTreeSet::new()), Plan::Nothing);
        let b = pod("b", None);
        assert_eq!(plan(&j, &[&a, &b], 4, &BTreeSet::new()), Plan::Delete(vec!["a".into()]));
    }

    #[test]
    fn indexed_jobs_fill_missing_indexes() {
        let j = job(Some(4), 2, true);
        let a = pod("a", Some(0));
        let done = BTreeSet::from([1]);
        assert_eq!(plan(&j, &[&a], 1, &done), Plan::Create(1, vec![2]));
        assert_eq!(format_indexes(&BTreeSet::from([0, 1, 2, 4, 6, 7])), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4"), BTreeSet::from([0, 1, 2, 4]));
    }

    #[test]
    fn backoff_doubles_to_six_minutes() {
        assert_eq!((backoff_seconds(0), backoff_seconds(1), backoff_seconds(2), backoff_seconds(10)), (0, 10, 20, 360));
    }
}
