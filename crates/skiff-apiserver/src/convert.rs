//! Conversion between the served version of a resource and its stored version. Only
//! HorizontalPodAutoscaler is served in two versions (autoscaling/v2 stored, v1 converted);
//! every other kind is stored as served.

use serde_json::{Value, json};
use skiff_core::ResourceType;

fn is_hpa_v1(r: &ResourceType) -> bool {
    r.group == "autoscaling" && r.version == "v1"
}

/// The stored form of an object received at resource `r`.
pub fn to_storage(r: &ResourceType, mut object: Value) -> Value {
    if is_hpa_v1(r) {
        let cpu = object.pointer("/spec/targetCPUUtilizationPercentage").cloned();
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("targetCPUUtilizationPercentage");
            if let Some(cpu) = cpu {
                spec.insert("metrics".into(), json!([{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": cpu}}}]));
            }
        }
        if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut)
            && let Some(cpu) = status.remove("currentCPUUtilizationPercentage")
        {
            status.insert("currentMetrics".into(), json!([{"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": cpu}}}]));
        }
        object["apiVersion"] = json!("autoscaling/v2");
    }
    object
}

/// The form of a stored object served at resource `r`.
pub fn from_storage(r: &ResourceType, mut object: Value) -> Value {
    if is_hpa_v1(r) {
        let cpu_target = object
            .pointer("/spec/metrics")
            .and_then(Value::as_array)
            .and_then(|ms| ms.iter().find(|m| m.pointer("/resource/name") == Some(&json!("cpu"))))
            .and_then(|m| m.pointer("/resource/target/averageUtilization").cloned());
        let cpu_current = object
            .pointer("/status/currentMetrics")
            .and_then(Value::as_array)
            .and_then(|ms| ms.iter().find(|m| m.pointer("/resource/name") == Some(&json!("cpu"))))
            .and_then(|m| m.pointer("/resource/current/averageUtilization").cloned());
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("metrics");
            spec.remove("behavior");
            if let Some(cpu) = cpu_target {
                spec.insert("targetCPUUtilizationPercentage".into(), cpu);
            }
        }
        if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
            status.remove("currentMetrics");
            status.remove("conditions");
            if let Some(cpu) = cpu_current {
                status.insert("currentCPUUtilizationPercentage".into(), cpu);
            }
        }
    }
    if let Some(o) = object.as_object_mut() {
        o.insert("apiVersion".into(), json!(r.api_version()));
        o.insert("kind".into(), json!(r.kind));
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_core::resources::find;

    #[test]
    fn hpa_v1_round_trips_through_v2() {
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let obj = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70}});
        let stored = to_storage(v1, obj.clone());
        assert_eq!(stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 70);
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(from_storage(v1, stored), obj);
    }
}
