//! `spec.behavior`: stabilization windows over recent recommendations, then the scaling
//! policies' rate limits, with Kubernetes' defaults and its condition reasons. The
//! history each HPA needs (recommendations, scale events) is kept by the controller in
//! memory, as kube-controller-manager keeps it.

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior};

/// One direction's rules with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub window: Duration,
    /// `Max`, `Min` or `Disabled`.
    pub select: String,
    /// (type `Pods` or `Percent`, value, period).
    pub policies: Vec<(String, i32, Duration)>,
}

fn rules(given: Option<&HPAScalingRules>, default_window: u64, default_policies: &[(&str, i32, u64)]) -> Rules {
    let window = given.and_then(|r| r.stabilization_window_seconds).map_or(default_window, |s| s.max(0) as u64);
    let select = given.and_then(|r| r.select_policy.clone()).unwrap_or_else(|| "Max".into());
    let policies = match given.and_then(|r| r.policies.as_ref()).filter(|p| !p.is_empty()) {
        Some(ps) => ps.iter().map(|p: &HPAScalingPolicy| (p.type_.clone(), p.value, Duration::from_secs(p.period_seconds.max(1) as u64))).collect(),
        None => default_policies.iter().map(|(t, v, p)| (t.to_string(), *v, Duration::from_secs(*p))).collect(),
    };
    Rules { window: Duration::from_secs(window), select, policies }
}

/// Scale-up: no window, the faster of 4 pods or 100% per 15 s. Scale-down: a 300 s window,
/// 100% per 15 s.
pub fn up_and_down(behavior: Option<&HorizontalPodAutoscalerBehavior>) -> (Rules, Rules) {
    (
        rules(behavior.and_then(|b| b.scale_up.as_ref()), 0, &[("Pods", 4, 15), ("Percent", 100, 15)]),
        rules(behavior.and_then(|b| b.scale_down.as_ref()), 300, &[("Percent", 100, 15)]),
    )
}

/// What one HPA's past decisions were.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Unstabilized recommendations.
    recommendations: Vec<(Instant, i32)>,
    /// Replicas added (positive) or removed (negative) by each rescale.
    changes: Vec<(Instant, i32)>,
}

impl History {
    /// A controller (re)starting knows nothing of recent recommendations; as Kubernetes
    /// does, it takes the current count as one so it does not scale down at once.
    pub fn starting(current: i32, now: Instant) -> History {
        History { recommendations: vec![(now, current)], changes: Vec::new() }
    }

    pub fn record_change(&mut self, from: i32, to: i32, now: Instant) {
        self.changes.push((now, to - from));
    }

    fn changed_within(&self, period: Duration, now: Instant, up: bool) -> i32 {
        self.changes.iter().filter(|(t, c)| now.duration_since(*t) < period && (*c > 0) == up).map(|(_, c)| c.abs()).sum()
    }

    fn forget_older_than(&mut self, keep: Duration, now: Instant) {
        self.recommendations.retain(|(t, _)| now.duration_since(*t) <= keep);
        self.changes.retain(|(t, _)| now.duration_since(*t) <= keep);
    }
}

/// The count after behavior, and the rules that shaped it, as the conditions report them.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub replicas: i32,
    /// AbleToScale's reason: `ScaleUpStabilized`, `ScaleDownStabilized` or `ReadyForNewScale`.
    pub stabilization: (&'static str, String),
    /// ScalingLimited's reason and whether it limited: `DesiredWithinRange`,
    /// `ScaleUpLimit`, `ScaleDownLimit`, `TooManyReplicas`, `TooFewReplicas`.
    pub limit: (&'static str, String, bool),
}

/// Applies the stabilization windows, then the policies and min/max, to `desired`.
pub fn normalize(history: &mut History, up: &Rules, down: &Rules, current: i32, desired: i32, min: i32, max: i32, now: Instant) -> Normalized {
    // Stabilize: no higher than the lowest recommendation of the up window, no lower than
    // the highest of the down window.
    let within = |w: Duration| move |(t, _): &&(Instant, i32)| now.duration_since(*t) <= w;
    let up_floor = history.recommendations.iter().filter(within(up.window)).map(|(_, r)| *r).fold(desired, i32::min);
    let down_ceiling = history.recommendations.iter().filter(within(down.window)).map(|(_, r)| *r).fold(desired, i32::max);
    let stabilized = current.max(up_floor).min(down_ceiling);
    history.recommendations.push((now, desired));
    let stabilization = if stabilized == desired {
        ("ReadyForNewScale", "recommended size matches current size".to_string())
    } else if desired >= current {
        ("ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation".to_string())
    } else {
        ("ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation".to_string())
    };
    let (replicas, reason, message) = rate_limited(history, up, down, current, stabilized, min, max, now);
    let keep = up.window.max(down.window).max(up.policies.iter().chain(&down.policies).map(|p| p.2).max().unwrap_or_default());
    history.forget_older_than(keep, now);
    Normalized { replicas, stabilization, limit: (reason, message.to_string(), replicas != stabilized) }
}

/// The policies' limit on the change from `current` toward `desired`, and min/max.
fn rate_limited(history: &History, up: &Rules, down: &Rules, current: i32, desired: i32, min: i32, max: i32, now: Instant) -> (i32, &'static str, &'static str) {
    // Where each policy's period started: the count before the changes made within it.
    let period_start = |period: Duration| current - history.changed_within(period, now, true) + history.changed_within(period, now, false);
    if desired > current {
        let proposals = up.policies.iter().map(|(kind, value, period)| {
            let start = period_start(*period);
            if kind == "Percent" { (start as f64 * (1.0 + *value as f64 / 100.0)).ceil() as i32 } else { start + value }
        });
        let limit = match up.select.as_str() {
            "Disabled" => current,
            "Min" => proposals.min().unwrap_or(current),
            _ => proposals.max().unwrap_or(current),
        }
        .max(current);
        let (allowed, reason, message) = if max > limit {
            (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
        } else {
            (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
        };
        if desired > allowed {
            return (allowed, reason, message);
        }
    } else if desired < current {
        let proposals = down.policies.iter().map(|(kind, value, period)| {
            let start = period_start(*period);
            if kind == "Percent" { (start as f64 * (1.0 - *value as f64 / 100.0)) as i32 } else { start - value }
        });
        let limit = match down.select.as_str() {
            "Disabled" => current,
            "Min" => proposals.max().unwrap_or(current),
            _ => proposals.min().unwrap_or(current),
        }
        .min(current);
        let (allowed, reason, message) = if min < limit {
            (limit, "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate")
        } else {
            (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
        };
        if desired < allowed {
            return (allowed, reason, message);
        }
    }
    (desired, "DesiredWithinRange", "the desired count is within the acceptable range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn behavior(v: serde_json::Value) -> HorizontalPodAutoscalerBehavior {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_are_kubernetes_own() {
        let (up, down) = up_and_down(None);
        assert_eq!(up.window, Duration::ZERO);
        assert_eq!(up.policies, [("Pods".to_string(), 4, Duration::from_secs(15)), ("Percent".to_string(), 100, Duration::from_secs(15))]);
        assert_eq!(down.window, Duration::from_secs(300));
    }

    #[test]
    fn scale_up_is_rate_limited_by_the_faster_policy() {
        let (up, down) = up_and_down(None);
        let now = Instant::now();
        let mut h = History::default();
        // From 1: max(1 + 4, 1 × 2) = 5.
        let n = normalize(&mut h, &up, &down, 1, 20, 1, 100, now);
        assert_eq!((n.replicas, n.limit.0, n.limit.2), (5, "ScaleUpLimit", true));
        h.record_change(1, 5, now);
        // Within the same 15 s the period still starts at 1: no more.
        assert_eq!(normalize(&mut h, &up, &down, 5, 20, 1, 100, now + Duration::from_secs(5)).replicas, 5);
        // A new period starts from 5: max(9, 10) = 10.
        assert_eq!(normalize(&mut h, &up, &down, 5, 20, 1, 100, now + Duration::from_secs(16)).replicas, 10);
        // maxReplicas bounds it, with its own reason.
        let n = normalize(&mut History::default(), &up, &down, 5, 20, 1, 6, now);
        assert_eq!((n.replicas, n.limit.0), (6, "TooManyReplicas"));
    }

    #[test]
    fn scale_down_waits_out_its_window() {
        let (up, down) = up_and_down(Some(&behavior(json!({"scaleDown": {"stabilizationWindowSeconds": 60}}))));
        let now = Instant::now();
        let mut h = History::starting(4, now);
        let n = normalize(&mut h, &up, &down, 4, 1, 1, 10, now + Duration::from_secs(10));
        assert_eq!((n.replicas, n.stabilization.0), (4, "ScaleDownStabilized"));
        // Past the window only the low recommendation is left.
        let n = normalize(&mut h, &up, &down, 4, 1, 1, 10, now + Duration::from_secs(71));
        assert_eq!((n.replicas, n.stabilization.0), (1, "ReadyForNewScale"));
    }

    #[test]
    fn policies_select_and_disable() {
        let b = behavior(json!({"scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}, {"type": "Percent", "value": 50, "periodSeconds": 60}]},
            "scaleUp": {"selectPolicy": "Disabled"}}));
        let (up, down) = up_and_down(Some(&b));
        let now = Instant::now();
        // Min change of (10 - 1, 10 × 0.5): 9.
        let n = normalize(&mut History::default(), &up, &down, 10, 2, 0, 20, now);
        assert_eq!((n.replicas, n.limit.0), (9, "ScaleDownLimit"));
        // Scale-up disabled: stays.
        assert_eq!(normalize(&mut History::default(), &up, &down, 3, 8, 0, 20, now).replicas, 3);
    }
}
