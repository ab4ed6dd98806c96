//! What a pod names outside itself: the Secrets, ConfigMaps and PersistentVolumeClaims it
//! reads and the ServiceAccount it runs as. A node may read exactly these for the pods
//! bound to it (the Node authorizer), and its agent watches exactly these.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodReferences {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
    pub claims: BTreeSet<String>,
    pub service_account: String,
}

/// The objects a pod (as JSON) names: volumes (plain and projected), every container's
/// `env` and `envFrom`, image pull secrets, and its ServiceAccount (`default` unless set).
pub fn of(pod: &Value) -> PodReferences {
    let mut refs = PodReferences::default();
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let list = |v: &Value, field: &str| v.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    let name_at = |v: &Value, pointer: &str| v.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    for volume in list(spec, "volumes") {
        refs.secrets.extend(name_at(&volume, "/secret/secretName"));
        refs.config_maps.extend(name_at(&volume, "/configMap/name"));
        refs.claims.extend(name_at(&volume, "/persistentVolumeClaim/claimName"));
        for source in volume.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            refs.secrets.extend(name_at(source, "/secret/name"));
            refs.config_maps.extend(name_at(source, "/configMap/name"));
        }
    }
    for kind in ["initContainers", "containers", "ephemeralContainers"] {
        for container in list(spec, kind) {
            for env in list(&container, "env") {
                refs.secrets.extend(name_at(&env, "/valueFrom/secretKeyRef/name"));
                refs.config_maps.extend(name_at(&env, "/valueFrom/configMapKeyRef/name"));
            }
            for from in list(&container, "envFrom") {
                refs.secrets.extend(name_at(&from, "/secretRef/name"));
                refs.config_maps.extend(name_at(&from, "/configMapRef/name"));
            }
        }
    }
    for secret in list(spec, "imagePullSecrets") {
        refs.secrets.extend(name_at(&secret, "/name"));
    }
    refs.service_account = name_at(spec, "/serviceAccountName").unwrap_or_else(|| "default".into());
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_place_a_pod_names_an_object_is_found() {
        let pod = json!({"spec": {
            "serviceAccountName": "runner",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "kube-root-ca.crt"}}, {"serviceAccountToken": {"path": "token"}}]}},
                {"name": "e", "emptyDir": {}},
            ],
            "initContainers": [{"name": "init", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "app", "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                {"name": "C", "value": "plain"},
            ], "envFrom": [{"configMapRef": {"name": "from-cm"}}]}],
        }});
        let refs = of(&pod);
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(refs.secrets, set(&["env-secret", "init-env", "proj-secret", "pull", "vol-secret"]));
        assert_eq!(refs.config_maps, set(&["env-cm", "from-cm", "kube-root-ca.crt", "vol-cm"]));
        assert_eq!(refs.claims, set(&["data"]));
        assert_eq!(refs.service_account, "runner");
        assert_eq!(of(&json!({"spec": {"containers": [{"name": "c"}]}})).service_account, "default");
    }
}
