//! HorizontalPodAutoscaler (autoscaling/v2): each sync period, reads the target's scale
//! and its metrics, proposes a replica count per metric ([`replicas`]), takes the highest,
//! shapes it with `behavior` ([`behavior`]) and min/max, and writes the scale, the status
//! (current metrics, the AbleToScale/ScalingActive/ScalingLimited conditions) and an
//! event. Beyond Kubernetes:
//! - the sync period is per HPA (`skiff.dev/hpa-sync-period`, default 15 s, down to 1 s);
//! - the last decision is explained in `skiff.dev/hpa-last-decision` (each metric's
//!   proposal and the rule that bounded the result), and in the rescale event;
//! - only the target's own pods count (by owner), not every pod its selector matches.

pub mod behavior;
pub mod metrics;
pub mod replicas;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus, MetricStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::Recorder;
use skiff_client::events::EventType;

use crate::Error;
use crate::support::{Informers, retry};
use futures::StreamExt;
use kube::runtime::Controller;
use std::future::Future;
use behavior::History;

pub const SYNC_PERIOD_ANNOTATION: &str = "skiff.dev/hpa-sync-period";
pub const DECISION_ANNOTATION: &str = "skiff.dev/hpa-last-decision";
pub const IDLE_ANNOTATION: &str = "skiff.dev/scale-to-zero-after";
const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);
const DEFAULT_IDLE: Duration = Duration::from_secs(30);
/// Kubernetes' `--horizontal-pod-autoscaler-tolerance`.
const DEFAULT_TOLERANCE: f64 = 0.1;

pub struct Ctx {
    pub client: Client,
    pub pods: Store<Pod>,
    pub replica_sets: Store<ReplicaSet>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub recorder: Recorder,
    /// Per HPA (namespace/name): its behavior history and when it was last synced.
    pub state: Mutex<HashMap<String, Synced>>,
}

#[derive(Debug)]
pub struct Synced {
    history: History,
    at: Instant,
    generation: Option<i64>,
    /// When the target last had a request (or woke from zero), for scale to zero.
    last_busy: Instant,
    last_replicas: i32,
}

impl Synced {
    fn new(history: History, now: Instant) -> Synced {
        Synced { history, at: now, generation: None, last_busy: now, last_replicas: -1 }
    }
}

/// How long a target with `minReplicas: 0` must go without requests before it goes to
/// zero: `skiff.dev/scale-to-zero-after` (`30s`), default 30 s.
pub fn idle_window(hpa: &HorizontalPodAutoscaler) -> Duration {
    hpa.annotations().get(IDLE_ANNOTATION).and_then(|v| v.strip_suffix('s').unwrap_or(v).parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0).map_or(DEFAULT_IDLE, Duration::from_secs_f64)
}

/// The HPA's sync period: its annotation (`15s`, `1s`, `2.5`), else 15 s.
pub fn sync_period(hpa: &HorizontalPodAutoscaler) -> Result<Duration, String> {
    let Some(v) = hpa.annotations().get(SYNC_PERIOD_ANNOTATION) else { return Ok(DEFAULT_SYNC_PERIOD) };
    let seconds = v.strip_suffix('s').unwrap_or(v).parse::<f64>().ok().filter(|s| s.is_finite());
    match seconds {
        Some(s) if s >= 1.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("{SYNC_PERIOD_ANNOTATION} {v:?} is not a period of at least 1s; using 15s")),
    }
}

/// The tolerance of each direction: `behavior.scaleUp/scaleDown.tolerance` (a quantity,
/// `0.05` or `50m`), else Kubernetes' 0.1.
fn tolerance(behavior: Option<&k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior>) -> replicas::Tolerance {
    let of = |rules: Option<&k8s_openapi::api::autoscaling::v2::HPAScalingRules>| {
        rules.and_then(|r| r.tolerance.as_ref()).and_then(|q| skiff_core::quantity::parse_milli(&q.0).ok()).map_or(DEFAULT_TOLERANCE, |m| m.max(0) as f64 / 1000.0)
    };
    replicas::Tolerance { up: of(behavior.and_then(|b| b.scale_up.as_ref())), down: of(behavior.and_then(|b| b.scale_down.as_ref())) }
}

/// What one sync decided, and why.
struct Decision {
    desired: i32,
    /// SuccessfulRescale's reason.
    reason: String,
    explanation: Vec<String>,
    metrics: Vec<MetricStatus>,
    conditions: Vec<(&'static str, bool, &'static str, String)>,
}

/// The controller: HorizontalPodAutoscalers; each one looks again every sync period.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Ctx {
        client: client.clone(),
        pods: i.pods.store(),
        replica_sets: i.replica_sets.store(),
        autoscalers: i.autoscalers.store(),
        recorder: Recorder::new(client.clone(), "horizontal-pod-autoscaler"),
        state: Default::default(),
    };
    Controller::for_shared_stream(i.autoscalers.subscribe(), i.autoscalers.store()).run(crate::metrics::metered("horizontalpodautoscaling", reconcile), retry, Arc::new(ctx)).for_each(|_| async {})
}

pub async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = hpa.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", hpa.name_any());
    let period = sync_period(&hpa).unwrap_or_else(|warning| {
        ctx.recorder.record(hpa.as_ref(), EventType::Warning, "InvalidSyncPeriod", warning);
        DEFAULT_SYNC_PERIOD
    });
    // Its own status writes wake the HPA too: only a new spec or the period's end syncs it.
    {
        let state = ctx.state.lock().unwrap();
        if let Some(s) = state.get(&key)
            && s.generation == hpa.metadata.generation
            && s.at.elapsed() < period
        {
            return Ok(Action::requeue(period - s.at.elapsed()));
        }
    }
    let now = Instant::now();
    let (scale, decision) = match metrics::Target::get(&ctx.client, &hpa).await {
        Ok(target) => {
            let decision = decide(&hpa, &ctx, &key, &target, now).await;
            (Some(target), decision)
        }
        Err(message) => {
            ctx.recorder.record(hpa.as_ref(), EventType::Warning, "FailedGetScale", message.clone());
            let conditions = vec![("AbleToScale", false, "FailedGetScale", message.clone())];
            (None, Decision { desired: 0, reason: String::new(), explanation: vec![message], metrics: Vec::new(), conditions })
        }
    };
    let mut current_replicas = 0;
    let mut rescaled = false;
    if let Some(target) = &scale {
        current_replicas = target.status_replicas;
        if decision.desired != target.replicas {
            match target.set_replicas(decision.desired).await {
                Ok(()) => {
                    rescaled = true;
                    let message = format!("New size: {}; reason: {}", decision.desired, decision.reason);
                    ctx.recorder.record(hpa.as_ref(), EventType::Normal, "SuccessfulRescale", format!("{message} ({})", decision.explanation.join("; ")));
                    if let Some(s) = ctx.state.lock().unwrap().get_mut(&key) {
                        s.history.record_change(target.replicas, decision.desired, now);
                    }
                }
                Err(e) => ctx.recorder.record(hpa.as_ref(), EventType::Warning, "FailedRescale", format!("New size: {}; reason: {}; error: {e}", decision.desired, decision.reason)),
            }
        }
    }
    write_status(&ctx.client, &hpa, &decision, current_replicas, rescaled).await?;
    {
        let mut state = ctx.state.lock().unwrap();
        let synced = state.entry(key).or_insert_with(|| Synced::new(History::default(), now));
        (synced.at, synced.generation) = (now, hpa.metadata.generation);
        // Deleted HPAs' histories go (a reconcile is never called for them).
        let live: std::collections::HashSet<String> = ctx.autoscalers.state().iter().map(|h| format!("{}/{}", h.namespace().unwrap_or_default(), h.name_any())).collect();
        state.retain(|k, _| live.contains(k));
    }
    Ok(Action::requeue(period))
}

/// The replica count this sync should set, from the target's scale and metrics.
async fn decide(hpa: &HorizontalPodAutoscaler, ctx: &Ctx, key: &str, target: &metrics::Target, now: Instant) -> Decision {
    let spec = &hpa.spec;
    let (current, min, max) = (target.replicas, spec.min_replicas.unwrap_or(1), spec.max_replicas);
    let mut conditions = vec![("AbleToScale", true, "SucceededGetScale", "the HPA controller was able to get the target's current scale".to_string())];
    // No scaling this sync, and the condition that says why.
    let stay = |desired: i32, why: String, mut conditions: Vec<_>, extra| {
        conditions.push(extra);
        Decision { desired, reason: String::new(), explanation: vec![why], metrics: Vec::new(), conditions }
    };
    if min > max || max < 1 {
        let why = format!("minReplicas {min} and maxReplicas {max} leave no valid count");
        ctx.recorder.record(hpa, EventType::Warning, "InvalidSpec", why.clone());
        return stay(current, why.clone(), conditions, ("ScalingActive", false, "InvalidSpec", why));
    }
    if current == 0 && min != 0 {
        let why = "scaling is disabled since the replica count of the target is zero".to_string();
        return stay(0, why.clone(), conditions, ("ScalingActive", false, "ScalingDisabled", why));
    }
    if current > max || current < min {
        let (desired, why) = if current > max { (max, "Current number of replicas above Spec.MaxReplicas") } else { (min, "Current number of replicas below Spec.MinReplicas") };
        conditions.push(("ScalingActive", true, "ValidMetricFound", "the HPA was able to successfully calculate a replica count".into()));
        conditions.push(("ScalingLimited", true, if current > max { "TooManyReplicas" } else { "TooFewReplicas" }, why.into()));
        return Decision { desired, reason: why.into(), explanation: vec![why.into()], metrics: Vec::new(), conditions };
    }
    let tolerance = tolerance(spec.behavior.as_ref());
    let evaluated = metrics::evaluate(ctx, hpa, target, tolerance).await;
    let mut explanation: Vec<String> = evaluated.iter().map(|e| e.explanation()).collect();
    let proposals: Vec<&metrics::Evaluated> = evaluated.iter().filter(|e| e.proposal.is_ok()).collect();
    let failed: Vec<&metrics::Evaluated> = evaluated.iter().filter(|e| e.proposal.is_err()).collect();
    let best = proposals.iter().max_by_key(|e| e.proposal.as_ref().map(|p| p.replicas).unwrap_or(0));
    // One entry per metric, in spec order (an empty one where it could not be read), as
    // Kubernetes keeps them and kubectl pairs them.
    let statuses: Vec<MetricStatus> = evaluated.iter().map(|e| e.status.clone().unwrap_or_default()).collect();
    let mut min = min;
    if min == 0 {
        match to_zero(hpa, ctx, key, target, &evaluated, now) {
            Some((why, reason)) => {
                conditions.push(("ScalingActive", true, "ScaledToZero", why.clone()));
                explanation.push(why);
                return Decision { desired: 0, reason, explanation, metrics: statuses, conditions };
            }
            // Not idle long enough: at least one replica.
            None => min = 1,
        }
    }
    let Some(best) = best.filter(|b| failed.is_empty() || b.proposal.as_ref().is_ok_and(|p| p.replicas >= current)) else {
        // Kubernetes scales on the metrics it has only upward: a scale-down (or nothing)
        // while some metric is missing could be wrong.
        let (reason, message) = failed.first().map_or(("FailedGetMetrics", "no metrics are specified".to_string()), |f| (f.failure_reason(), f.explanation()));
        ctx.recorder.record(hpa, EventType::Warning, reason, message.clone());
        conditions.push(("ScalingActive", false, reason, message));
        return Decision { desired: current, reason: String::new(), explanation, metrics: statuses, conditions };
    };
    let proposed = best.proposal.as_ref().map(|p| p.replicas).unwrap_or(current);
    conditions.push(("ScalingActive", true, "ValidMetricFound", format!("the HPA was able to successfully calculate a replica count from {}", best.description)));
    let (up, down) = behavior::up_and_down(spec.behavior.as_ref());
    let n = {
        let mut state = ctx.state.lock().unwrap();
        let synced = state.entry(key.to_string()).or_insert_with(|| Synced::new(History::starting(current, now), now));
        behavior::normalize(&mut synced.history, &up, &down, current, proposed, min, max, now)
    };
    let (stab_reason, stab_message) = n.stabilization.clone();
    conditions[0] = ("AbleToScale", true, stab_reason, stab_message.clone());
    let (limit_reason, limit_message, limited) = n.limit.clone();
    conditions.push(("ScalingLimited", limited, limit_reason, limit_message.clone()));
    if stab_reason != "ReadyForNewScale" {
        explanation.push(format!("{stab_reason}: {stab_message}"));
    }
    if limited {
        explanation.push(format!("{limit_reason}: {limit_message} (min {min}, max {max})"));
    }
    explanation.push(format!("{current} → {}", n.replicas));
    let reason = if n.replicas > current { format!("{} above target", best.description) } else { "All metrics below target".to_string() };
    Decision { desired: n.replicas, reason, explanation, metrics: statuses, conditions }
}

/// Scale to zero: `Some` (why, and the rescale reason) when the target should be at zero:
/// it is there and nothing asks for more, or no metric has seen a request for the idle
/// window. A target woken from zero (by the activator) gets a whole window again.
fn to_zero(hpa: &HorizontalPodAutoscaler, ctx: &Ctx, key: &str, target: &metrics::Target, evaluated: &[metrics::Evaluated], now: Instant) -> Option<(String, String)> {
    let current = target.replicas;
    let demand = evaluated.iter().any(|e| e.proposal.as_ref().is_ok_and(|p| p.current > 0.0 && p.replicas > 0));
    // Ready pods that report nothing yet (just woken) are not idle; pods that never get
    // ready (an image that cannot be pulled) do not hold the target up.
    let ready = target.own_pods(ctx, &hpa.namespace().unwrap_or_default()).iter().any(|p| skiff_client::pods::is_ready(p));
    let unknown = ready && evaluated.iter().any(|e| e.proposal.is_err());
    let window = idle_window(hpa);
    let idle_for = {
        let mut state = ctx.state.lock().unwrap();
        let s = state.entry(key.to_string()).or_insert_with(|| Synced::new(History::starting(current, now), now));
        if demand || unknown || (current > 0 && s.last_replicas == 0) {
            s.last_busy = now;
        }
        s.last_replicas = current;
        now.duration_since(s.last_busy)
    };
    if current == 0 && !demand {
        return Some(("no requests: at zero until one comes (the node proxies' activator scales the target up)".into(), String::new()));
    }
    (current > 0 && idle_for >= window).then(|| {
        let why = format!("no requests for {}s (scale to zero after {}s)", idle_for.as_secs(), window.as_secs_f64());
        (why.clone(), why)
    })
}

async fn write_status(client: &Client, hpa: &HorizontalPodAutoscaler, d: &Decision, current_replicas: i32, rescaled: bool) -> Result<(), Error> {
    let old = hpa.status.clone().unwrap_or_default();
    let conditions: Vec<HorizontalPodAutoscalerCondition> = d.conditions.iter().map(|(type_, ok, reason, message)| {
        let status = if *ok { "True" } else { "False" };
        let same = old.conditions.iter().flatten().find(|c| c.type_ == *type_).filter(|c| c.status == status);
        HorizontalPodAutoscalerCondition {
            type_: type_.to_string(),
            status: status.into(),
            reason: Some(reason.to_string()),
            message: Some(message.clone()),
            last_transition_time: same.and_then(|c| c.last_transition_time.clone()).or_else(|| Some(skiff_client::now())),
            observed_generation: None,
        }
    }).collect();
    let status = HorizontalPodAutoscalerStatus {
        current_replicas: Some(current_replicas),
        desired_replicas: d.desired,
        current_metrics: Some(d.metrics.clone()).filter(|m| !m.is_empty()),
        conditions: Some(conditions),
        observed_generation: hpa.metadata.generation,
        last_scale_time: if rescaled { Some(skiff_client::now()) } else { old.last_scale_time.clone() },
    };
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &hpa.namespace().unwrap_or_default());
    if hpa.status.as_ref() != Some(&status) {
        crate::children::ignore_gone(api.patch_status(&hpa.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await)?;
    }
    let explanation = d.explanation.join("; ");
    if hpa.annotations().get(DECISION_ANNOTATION) != Some(&explanation) {
        let patch = json!({"metadata": {"annotations": {DECISION_ANNOTATION: explanation}}});
        crate::children::ignore_gone(api.patch(&hpa.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_periods() {
        let hpa = |v: Option<&str>| {
            let mut h = HorizontalPodAutoscaler::default();
            if let Some(v) = v {
                h.metadata.annotations = Some([(SYNC_PERIOD_ANNOTATION.to_string(), v.to_string())].into());
            }
            h
        };
        assert_eq!(sync_period(&hpa(None)), Ok(Duration::from_secs(15)));
        assert_eq!(sync_period(&hpa(Some("1s"))), Ok(Duration::from_secs(1)));
        assert_eq!(sync_period(&hpa(Some("2.5"))), Ok(Duration::from_millis(2500)));
        assert!(sync_period(&hpa(Some("0.1s"))).is_err());
        assert!(sync_period(&hpa(Some("soon"))).is_err());
    }
}
