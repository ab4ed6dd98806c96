//! The typed view of each served kind, from k8s-openapi: decoding a request body into the
//! real type (which rejects wrong field types and drops unknown fields, as Kubernetes
//! does), and the JSON schemas the OpenAPI documents publish.

use k8s_openapi::api::{apps, autoscaling, batch, certificates, coordination, core, discovery, networking, node, rbac};
use schemars::SchemaGenerator;
use serde_json::Value;

macro_rules! typed_kinds {
    ($( ($api_version:literal, $kind:literal, $ty:ty) ),* $(,)?) => {
        /// Decodes `object` as its typed kind and encodes it again: the normalised object.
        /// `None` for kinds without a type here, which pass through unchanged.
        pub fn normalise(api_version: &str, kind: &str, object: &Value) -> Result<Option<Value>, String> {
            match (api_version, kind) {
                $( ($api_version, $kind) => {
                    let typed = <$ty as serde::Deserialize>::deserialize(object).map_err(|e| e.to_string())?;
                    serde_json::to_value(&typed).map(Some).map_err(|e| e.to_string())
                } )*
                _ => Ok(None),
            }
        }

        /// Registers every kind's schema with `generator`; returns (apiVersion, kind, schema name).
        pub fn register_schemas(generator: &mut SchemaGenerator) -> Vec<(&'static str, &'static str, String)> {
            let mut out = Vec::new();
            $(
                let schema = generator.subschema_for::<$ty>();
                let name = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.rsplit('/').next()).unwrap_or($kind).to_string();
                out.push(($api_version, $kind, name));
            )*
            out
        }
    };
}

typed_kinds! {
    ("v1", "Namespace", core::v1::Namespace),
    ("v1", "Pod", core::v1::Pod),
    ("v1", "Node", core::v1::Node),
    ("v1", "Service", core::v1::Service),
    ("v1", "Endpoints", core::v1::Endpoints),
    ("v1", "ConfigMap", core::v1::ConfigMap),
    ("v1", "Secret", core::v1::Secret),
    ("v1", "Event", core::v1::Event),
    ("v1", "ServiceAccount", core::v1::ServiceAccount),
    ("v1", "LimitRange", core::v1::LimitRange),
    ("v1", "ResourceQuota", core::v1::ResourceQuota),
    ("v1", "PersistentVolume", core::v1::PersistentVolume),
    ("v1", "PersistentVolumeClaim", core::v1::PersistentVolumeClaim),
    ("v1", "Binding", core::v1::Binding),
    ("apps/v1", "Deployment", apps::v1::Deployment),
    ("apps/v1", "ReplicaSet", apps::v1::ReplicaSet),
    ("apps/v1", "StatefulSet", apps::v1::StatefulSet),
    ("apps/v1", "DaemonSet", apps::v1::DaemonSet),
    ("apps/v1", "ControllerRevision", apps::v1::ControllerRevision),
    ("batch/v1", "Job", batch::v1::Job),
    ("batch/v1", "CronJob", batch::v1::CronJob),
    ("autoscaling/v2", "HorizontalPodAutoscaler", autoscaling::v2::HorizontalPodAutoscaler),
    ("autoscaling/v1", "HorizontalPodAutoscaler", autoscaling::v1::HorizontalPodAutoscaler),
    ("autoscaling/v1", "Scale", autoscaling::v1::Scale),
    ("networking.k8s.io/v1", "Ingress", networking::v1::Ingress),
    ("networking.k8s.io/v1", "IngressClass", networking::v1::IngressClass),
    ("coordination.k8s.io/v1", "Lease", coordination::v1::Lease),
    ("discovery.k8s.io/v1", "EndpointSlice", discovery::v1::EndpointSlice),
    ("node.k8s.io/v1", "RuntimeClass", node::v1::RuntimeClass),
    ("certificates.k8s.io/v1", "CertificateSigningRequest", certificates::v1::CertificateSigningRequest),
    ("rbac.authorization.k8s.io/v1", "Role", rbac::v1::Role),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", rbac::v1::RoleBinding),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", rbac::v1::ClusterRole),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", rbac::v1::ClusterRoleBinding),
}

/// Paths of fields present in `input` but absent from its normalised form: the fields the
/// type does not know, which Kubernetes reports under `fieldValidation`.
pub fn unknown_fields(input: &Value, normalised: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, normalised, "", &mut out);
    out
}

fn walk(input: &Value, normalised: &Value, path: &str, out: &mut Vec<String>) {
    match (input, normalised) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(w) => walk(v, w, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                walk(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalise_reports_unknown_and_rejects_bad_types() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "extra": true}});
        let n = normalise("v1", "Pod", &pod).unwrap().unwrap();
        assert_eq!(unknown_fields(&pod, &n), ["spec.containers[0].bogus", "spec.extra"]);
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {"containers": "x"}});
        assert!(normalise("v1", "Pod", &bad).is_err());
    }

    #[test]
    fn round_trip_keeps_known_fields() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a", "labels": {}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"limits": {"memory": "128Mi"}}}]}}}});
        let n = normalise("apps/v1", "Deployment", &d).unwrap().unwrap();
        assert!(unknown_fields(&d, &n).is_empty());
        assert_eq!(n, d);
    }
}
