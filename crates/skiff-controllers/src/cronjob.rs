//! CronJob: creates a Job from `jobTemplate` at each scheduled time (in `timeZone`),
//! honouring `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds` and
//! `suspend`; keeps `successfulJobsHistoryLimit`/`failedJobsHistoryLimit` finished Jobs.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::sync::Arc;
use std::time::Duration;

use jiff::Zoned;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use skiff_client::events::EventType;
use skiff_client::{Recorder, owners};

use crate::children::ignore_gone;
use skiff_core::cron::Schedule;
use crate::Error;

pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed runs than this are not counted one by one (Kubernetes' limit).
const MAX_MISSED: usize = 100;

pub struct Ctx {
    pub client: Client,
    pub jobs: Store<Job>,
    pub recorder: Recorder,
}

fn job_state(job: &Job) -> Option<&str> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True").map(|c| c.type_.as_str())
}

/// The latest scheduled time in (`since`, `now`], and how many were missed.
pub fn latest_due(schedule: &Schedule, since: &Zoned, now: &Zoned) -> (Option<Zoned>, usize) {
    let mut latest = None;
    let mut count = 0;
    let mut t = since.clone();
    while let Some(next) = schedule.next_after(&t) {
        if next > *now {
            break;
        }
        count += 1;
        t = next.clone();
        latest = Some(next);
        if count > MAX_MISSED {
            // Jump close to now: only the latest run matters.
            let jump = now.checked_sub(jiff::SignedDuration::from_secs(3600 * 24)).unwrap_or_else(|_| now.clone());
            if jump > t {
                t = jump;
            }
        }
    }
    (latest, count)
}

/// The controller: CronJobs, woken by their Jobs.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Ctx { client: client.clone(), jobs: i.jobs.store(), recorder: Recorder::new(client.clone(), "cronjob-controller") };
    Controller::for_shared_stream(i.cron_jobs.subscribe(), i.cron_jobs.store())
        .owns_shared_stream(i.jobs.changes())
        .run(crate::metrics::metered("cronjob", reconcile), retry, Arc::new(ctx))
        .for_each(|_| async {})
}

pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = cj.namespace().unwrap_or_default();
    let spec = &cj.spec;
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = cj.uid().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut jobs: Vec<Arc<Job>> = ctx.jobs.state().into_iter().filter(|j| j.namespace().as_deref() == Some(&ns) && owners::is_controlled_by(&j.metadata, &uid)).collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()));
    let old = cj.status.clone().unwrap_or_default();
    let mut status = CronJobStatus { last_schedule_time: old.last_schedule_time.clone(), last_successful_time: old.last_successful_time.clone(), active: None };

    // History: finished Jobs beyond the limits go, oldest first.
    for (state, limit) in [("Complete", spec.successful_jobs_history_limit.unwrap_or(3)), ("Failed", spec.failed_jobs_history_limit.unwrap_or(1))] {
        let done: Vec<&Arc<Job>> = jobs.iter().filter(|j| job_state(j) == Some(state) && j.metadata.deletion_timestamp.is_none()).collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        for j in &done[..extra] {
            if ignore_gone(jobs_api.delete(&j.name_any(), &DeleteParams::background()).await)?.is_some() {
                ctx.recorder.record(&*cj, EventType::Normal, "SuccessfulDelete", format!("Deleted job {}", j.name_any()));
            }
        }
    }
    for j in jobs.iter().filter(|j| job_state(j) == Some("Complete")) {
        let t = j.status.as_ref().and_then(|s| s.completion_time.clone());
        if t.as_ref().map(|t| t.0) > status.last_successful_time.as_ref().map(|t| t.0) {
            status.last_successful_time = t;
        }
    }
    let mut active: Vec<Arc<Job>> = jobs.iter().filter(|j| job_state(j).is_none() && j.metadata.deletion_timestamp.is_none()).cloned().collect();

    let tz = match spec.time_zone.as_deref() {
        Some(name) => match TimeZone::get(name) {
            Ok(tz) => tz,
            Err(_) => {
                ctx.recorder.record(&*cj, EventType::Warning, "UnknownTimeZone", format!("invalid timeZone: {name:?}"));
                return Ok(Action::await_change());
            }
        },
        None => TimeZone::system(),
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            ctx.recorder.record(&*cj, EventType::Warning, "UnparseableSchedule", e.to_string());
            return Ok(Action::await_change());
        }
    };
    let now = Zoned::now().with_time_zone(tz.clone());
    let since_ts = status.last_schedule_time.as_ref().or(cj.metadata.creation_timestamp.as_ref()).map(|t| t.0).unwrap_or_else(|| now.timestamp());
    let since = since_ts.to_zoned(tz.clone());
    let mut requeue = schedule.next_after(&now).map(|n| (n.timestamp().as_millisecond() - now.timestamp().as_millisecond()).max(0) as u64 + 100).map(Duration::from_millis);

    if !spec.suspend.unwrap_or(false) {
        let (due, missed) = latest_due(&schedule, &since, &now);
        if missed > MAX_MISSED {
            ctx.recorder.record(&*cj, EventType::Warning, "TooManyMissedTimes", format!("too many missed start times: {missed}; the latest is run"));
        }
        if let Some(t) = due {
            let late = now.timestamp().as_second() - t.timestamp().as_second();
            let too_late = spec.starting_deadline_seconds.is_some_and(|d| late > d);
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            if too_late {
                ctx.recorder.record(&*cj, EventType::Warning, "MissSchedule", format!("Missed scheduled time to start a job: {}", t.timestamp()));
            } else if policy == "Forbid" && !active.is_empty() {
                // Try again soon: the running Job may finish within the deadline.
                requeue = Some(Duration::from_secs(5).min(requeue.unwrap_or(Duration::from_secs(5))));
            } else {
                if policy == "Replace" {
                    for j in active.drain(..) {
                        ignore_gone(jobs_api.delete(&j.name_any(), &DeleteParams::background()).await)?;
                        ctx.recorder.record(&*cj, EventType::Normal, "SuccessfulDelete", format!("Deleted job {}", j.name_any()));
                    }
                }
                let job = job_for(&cj, &t);
                match jobs_api.create(&PostParams::default(), &job).await {
                    Ok(created) => {
                        ctx.recorder.record(&*cj, EventType::Normal, "SuccessfulCreate", format!("Created job {}", created.name_any()));
                        active.push(Arc::new(created));
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        ctx.recorder.record(&*cj, EventType::Warning, "FailedCreate", format!("Error creating job: {e}"));
                        return Err(e.into());
                    }
                }
                status.last_schedule_time = Some(Time(t.timestamp()));
            }
        }
    }
    status.active = if active.is_empty() { None } else { Some(active.iter().map(|j| job_ref(j)).collect()) };
    if cj.status.as_ref() != Some(&status) {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        ignore_gone(api.patch_status(&cj.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": {"active": status.active, "lastScheduleTime": status.last_schedule_time, "lastSuccessfulTime": status.last_successful_time}}))).await)?;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn job_ref(j: &Job) -> ObjectReference {
    let mut r = j.object_ref(&());
    r.field_path = None;
    r
}

/// The Job for the run at `t`: named `{cronjob}-{minutes since the epoch}` so each run
/// is made once even if the controller restarts.
fn job_for(cj: &CronJob, t: &Zoned) -> Job {
    let spec = &cj.spec;
    let template = &spec.job_template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_AT.into(), t.timestamp().to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", cj.name_any(), t.timestamp().as_second() / 60)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owners::controller_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_due_counts_missed_runs() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let tz = TimeZone::UTC;
        let since = "2026-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap().to_zoned(tz.clone());
        let now = "2026-01-01T00:35:00Z".parse::<jiff::Timestamp>().unwrap().to_zoned(tz.clone());
        let (due, missed) = latest_due(&s, &since, &now);
        assert_eq!(due.unwrap().timestamp().to_string(), "2026-01-01T00:30:00Z");
        assert_eq!(missed, 3);
        let (due, missed) = latest_due(&s, &now, &now);
        assert!(due.is_none());
        assert_eq!(missed, 0);
    }
}
