//! Kubernetes' replica calculator: from one metric's readings to a replica count, with the
//! tolerance, and missing and not-ready pods treated as kube-controller-manager treats
//! them (so a scale-up never rests on pods that cannot report yet, and a scale-down never
//! on pods that stopped reporting).

/// One of the target's pods, as the calculator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodReading {
    pub ready: bool,
    /// The metric's value for this pod, if it has one.
    pub value: Option<f64>,
    /// What the pod requests of the resource (utilization targets only).
    pub request: Option<f64>,
}

/// What a metric aims at per pod.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PodTarget {
    /// Percent of the pods' requests.
    Utilization(f64),
    AverageValue(f64),
}

/// One metric's proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// The current value as the status reports it: utilization in percent, or the average.
    pub current: f64,
    /// Why the proposal is what it is, for the decision's explanation.
    pub why: String,
}

/// How far from the target a ratio may be before it moves the count: Kubernetes' 0.1, or
/// the `tolerance` of `behavior.scaleUp` and `behavior.scaleDown`, one per direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub up: f64,
    pub down: f64,
}

impl Tolerance {
    pub fn both(t: f64) -> Tolerance {
        Tolerance { up: t, down: t }
    }

    fn of(self, ratio: f64) -> f64 {
        if ratio > 1.0 { self.up } else { self.down }
    }
}

fn ratio_within(ratio: f64, tolerance: Tolerance) -> bool {
    (1.0 - ratio).abs() <= tolerance.of(ratio)
}

/// The per-pod average (or utilization) over `readings`, and the ratio to the target.
fn usage_ratio(readings: &[(f64, Option<f64>)], target: PodTarget) -> Result<(f64, f64), String> {
    let total: f64 = readings.iter().map(|(v, _)| v).sum();
    match target {
        PodTarget::Utilization(percent) => {
            let requested: f64 = readings.iter().map(|(_, r)| r.unwrap_or(0.0)).sum();
            if requested <= 0.0 {
                return Err("no pod requests the resource, so its utilization is undefined".into());
            }
            let utilization = total * 100.0 / requested;
            Ok((utilization / percent, utilization))
        }
        PodTarget::AverageValue(v) => {
            let average = total / readings.len() as f64;
            Ok((average / v, average))
        }
    }
}

/// Replicas for a per-pod metric (Resource, ContainerResource, Pods).
pub fn for_pods(current_replicas: i32, pods: &[PodReading], target: PodTarget, tolerance: Tolerance) -> Result<Proposal, String> {
    if let PodTarget::Utilization(_) = target
        && pods.iter().any(|p| p.value.is_some() && p.request.is_none())
    {
        return Err("missing request for the resource in some pod, so its utilization cannot be computed".into());
    }
    let with_value: Vec<(f64, Option<f64>)> = pods.iter().filter(|p| p.ready).filter_map(|p| Some((p.value?, p.request))).collect();
    let missing: Vec<Option<f64>> = pods.iter().filter(|p| p.ready && p.value.is_none()).map(|p| p.request).collect();
    let unready: Vec<Option<f64>> = pods.iter().filter(|p| !p.ready).map(|p| p.request).collect();
    if with_value.is_empty() {
        return Err("no ready pod of the target reports the metric yet".into());
    }
    let (ratio, current) = usage_ratio(&with_value, target)?;
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if missing.is_empty() && !scale_up_with_unready {
        if ratio_within(ratio, tolerance) {
            return Ok(Proposal { replicas: current_replicas, current, why: format!("ratio {ratio:.2} is within the tolerance {}", tolerance.of(ratio)) });
        }
        let replicas = (ratio * with_value.len() as f64).ceil() as i32;
        return Ok(Proposal { replicas, current, why: format!("ratio {ratio:.2} over {} pods", with_value.len()) });
    }
    // Fill in the gaps the cautious way: a missing pod is taken at the target when the rest
    // would scale down (at 0 when they would scale up), and a not-ready pod at 0.
    let at_target = |request: Option<f64>| match target {
        PodTarget::Utilization(percent) => request.unwrap_or(0.0) * percent / 100.0,
        PodTarget::AverageValue(v) => v,
    };
    let mut filled = with_value.clone();
    for request in &missing {
        filled.push((if ratio < 1.0 { at_target(*request) } else { 0.0 }, *request));
    }
    if scale_up_with_unready {
        filled.extend(unready.iter().map(|r| (0.0, *r)));
    }
    let (new_ratio, _) = usage_ratio(&filled, target)?;
    let assumed = format!("{} missing and {} not-ready pods assumed", missing.len(), if scale_up_with_unready { unready.len() } else { 0 });
    if ratio_within(new_ratio, tolerance) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok(Proposal { replicas: current_replicas, current, why: format!("ratio {new_ratio:.2} with {assumed} is within tolerance or changes direction") });
    }
    let replicas = (new_ratio * filled.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current_replicas) || (new_ratio > 1.0 && replicas < current_replicas) {
        return Ok(Proposal { replicas: current_replicas, current, why: format!("ratio {new_ratio:.2} with {assumed} would move against the metric") });
    }
    Ok(Proposal { replicas, current, why: format!("ratio {new_ratio:.2} over {} pods, {assumed}", filled.len()) })
}

/// What an Object metric aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObjectTarget {
    Value(f64),
    AverageValue(f64),
}

/// Replicas for an Object metric (one value describing the whole target, such as a
/// Service's requests per second).
pub fn for_object(current_replicas: i32, ready_pods: i32, value: f64, target: ObjectTarget, tolerance: Tolerance) -> Proposal {
    match target {
        ObjectTarget::Value(t) => {
            let ratio = value / t;
            if ratio_within(ratio, tolerance) {
                return Proposal { replicas: current_replicas, current: value, why: format!("ratio {ratio:.2} is within the tolerance {}", tolerance.of(ratio)) };
            }
            Proposal { replicas: (ratio * ready_pods as f64).ceil() as i32, current: value, why: format!("ratio {ratio:.2} over {ready_pods} ready pods") }
        }
        ObjectTarget::AverageValue(t) => {
            let ratio = value / (t * current_replicas.max(1) as f64);
            if ratio_within(ratio, tolerance) {
                return Proposal { replicas: current_replicas, current: value / current_replicas.max(1) as f64, why: format!("ratio {ratio:.2} is within the tolerance {}", tolerance.of(ratio)) };
            }
            Proposal { replicas: (value / t).ceil() as i32, current: value / current_replicas.max(1) as f64, why: format!("{value} at {t} per pod") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Option<f64>, ready: bool) -> PodReading {
        PodReading { ready, value, request: Some(100.0) }
    }

    #[test]
    fn proportional_with_tolerance() {
        // 3 pods at 90% of a 50% target: ratio 1.8, ceil(5.4) = 6.
        let pods = vec![pod(Some(90.0), true); 3];
        assert_eq!(for_pods(3, &pods, PodTarget::Utilization(50.0), Tolerance::both(0.1)).unwrap().replicas, 6);
        // 54% of 50%: within 10%.
        let pods = vec![pod(Some(54.0), true); 3];
        let p = for_pods(3, &pods, PodTarget::Utilization(50.0), Tolerance::both(0.1)).unwrap();
        assert_eq!((p.replicas, p.current), (3, 54.0));
        // Average values: 10 rps each against 4 → ceil(2.5 × 2) = 5.
        let pods = vec![pod(Some(10.0), true); 2];
        assert_eq!(for_pods(2, &pods, PodTarget::AverageValue(4.0), Tolerance::both(0.1)).unwrap().replicas, 5);
    }

    #[test]
    fn missing_and_unready_pods_hold_back_the_move() {
        // Scaling down with one pod missing: it counts at the target, so 2 pods at 10%
        // and one at 50% of a 50% target → ratio 0.47, ceil(1.4) = 2 (not 1).
        let pods = vec![pod(Some(10.0), true), pod(Some(10.0), true), pod(None, true)];
        assert_eq!(for_pods(3, &pods, PodTarget::Utilization(50.0), Tolerance::both(0.1)).unwrap().replicas, 2);
        // Scaling up with a not-ready pod: it counts as 0. 2 at 100% and 1 not ready, of a
        // 50% target → ratio 1.33 over 3 pods, ceil(4.0) = 4.
        let pods = vec![pod(Some(100.0), true), pod(Some(100.0), true), pod(None, false)];
        assert_eq!(for_pods(3, &pods, PodTarget::Utilization(50.0), Tolerance::both(0.1)).unwrap().replicas, 4);
        // Unready pods that would turn a scale-up into a scale-down: no change.
        let pods = vec![pod(Some(60.0), true), pod(None, false), pod(None, false)];
        assert_eq!(for_pods(3, &pods, PodTarget::Utilization(50.0), Tolerance::both(0.1)).unwrap().replicas, 3);
    }

    #[test]
    fn errors_say_why() {
        assert!(for_pods(2, &[pod(None, true)], PodTarget::Utilization(50.0), Tolerance::both(0.1)).unwrap_err().contains("no ready pod"));
        let no_request = PodReading { ready: true, value: Some(1.0), request: None };
        assert!(for_pods(1, &[no_request], PodTarget::Utilization(50.0), Tolerance::both(0.1)).unwrap_err().contains("missing request"));
    }

    #[test]
    fn object_metrics() {
        assert_eq!(for_object(2, 2, 300.0, ObjectTarget::Value(100.0), Tolerance::both(0.1)).replicas, 6);
        assert_eq!(for_object(2, 2, 105.0, ObjectTarget::Value(100.0), Tolerance::both(0.1)).replicas, 2);
        // A tolerance per direction: 5% up moves it, 5% down does not.
        let t = Tolerance { up: 0.01, down: 0.1 };
        assert_eq!(for_object(2, 2, 210.0, ObjectTarget::Value(200.0), t).replicas, 3);
        assert_eq!(for_object(2, 2, 190.0, ObjectTarget::Value(200.0), t).replicas, 2);
        assert_eq!(for_object(2, 2, 300.0, ObjectTarget::AverageValue(50.0), Tolerance::both(0.1)).replicas, 6);
        assert_eq!(for_object(0, 0, 300.0, ObjectTarget::AverageValue(50.0), Tolerance::both(0.1)).replicas, 6);
    }
}
