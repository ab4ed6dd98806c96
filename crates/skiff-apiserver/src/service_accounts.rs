//! The ServiceAccount admission of a pod's create (kube-apiserver's ServiceAccount
//! plugin). A pod runs as a ServiceAccount, `default` unless it names one, which must
//! exist; it takes the account's `imagePullSecrets` when it names none; and unless the pod
//! or the account turns `automountServiceAccountToken` off, each of its containers gets the
//! account's credentials at `/var/run/secrets/kubernetes.io/serviceaccount`: a
//! `kube-api-access-*` projected volume of a token bound to the pod (the node requests it),
//! the cluster's CA (the `kube-root-ca.crt` ConfigMap every namespace has) and the
//! namespace's name.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

/// Where the credentials are mounted in every container.
const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token lifetime of the default projection: an hour, and 7 s that mark it as such.
const TOKEN_SECONDS: i64 = 3607;
/// How long a create waits for a new namespace's `default` ServiceAccount, which the
/// controllers make a moment after the namespace.
const DEFAULT_ACCOUNT_WAIT: Duration = Duration::from_secs(2);

/// Admits `pod`, to be created in `namespace`: names its account, checks the account
/// exists, and adds what the account gives it.
pub async fn admit_pod(server: &ApiServer, namespace: &str, pod: &mut Value) -> ApiResult<()> {
    let name = skiff_core::meta::name(pod).unwrap_or_default().to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
    let named = |key: &str| spec.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
    let account_name = named("serviceAccountName").or_else(|| named("serviceAccount")).unwrap_or_else(|| "default".into());
    // `serviceAccount` is the field's old name, kept equal to it.
    spec.insert("serviceAccountName".into(), json!(account_name));
    spec.insert("serviceAccount".into(), json!(account_name));
    let account = account(server, namespace, &account_name).await?.ok_or_else(|| {
        ApiError::forbidden(format!("pods {name:?} is forbidden: error looking up service account {namespace}/{account_name}: serviceaccount {account_name:?} not found"))
    })?;
    let pull_secrets = account.get("imagePullSecrets").and_then(Value::as_array).filter(|s| !s.is_empty());
    if spec.get("imagePullSecrets").and_then(Value::as_array).is_none_or(|s| s.is_empty())
        && let Some(secrets) = pull_secrets
    {
        let names: Vec<Value> = secrets.iter().filter_map(|s| s.get("name")).map(|n| json!({"name": n})).collect();
        spec.insert("imagePullSecrets".into(), Value::Array(names));
    }
    let automount = spec.get("automountServiceAccountToken").and_then(Value::as_bool).or_else(|| account.get("automountServiceAccountToken").and_then(Value::as_bool)).unwrap_or(true);
    // A server with no signing key issues no tokens, so there is nothing to mount.
    if automount && server.config.service_account_key.is_some() {
        mount_credentials(spec);
    }
    Ok(())
}

/// The ServiceAccount, waiting a moment for a `default` one not made yet.
async fn account(server: &ApiServer, namespace: &str, name: &str) -> ApiResult<Option<Value>> {
    let deadline = tokio::time::Instant::now() + DEFAULT_ACCOUNT_WAIT;
    loop {
        let found = crate::authz::tokens::get(server, "serviceaccounts", namespace, name).await?;
        if found.is_some() || name != "default" || tokio::time::Instant::now() >= deadline {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds the `kube-api-access-*` volume and mounts it in every container that has nothing
/// mounted at the credentials' path already.
fn mount_credentials(spec: &mut Map<String, Value>) {
    let lists = ["initContainers", "containers", "ephemeralContainers"];
    let wanting = |spec: &Map<String, Value>| {
        lists.iter().flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten()).any(|c| !mounts_credentials(c))
    };
    if !wanting(spec) {
        return;
    }
    let taken: Vec<String> = spec.get("volumes").and_then(Value::as_array).into_iter().flatten().filter_map(|v| v["name"].as_str().map(String::from)).collect();
    let volume = loop {
        let candidate = crate::objects::generated_name("kube-api-access-");
        if !taken.contains(&candidate) {
            break candidate;
        }
    };
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(list) = volumes.as_array_mut() {
        list.push(json!({"name": volume, "projected": {"defaultMode": 0o644, "sources": [
            {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}));
    }
    for list in lists {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if mounts_credentials(c) {
                continue;
            }
            if let Some(c) = c.as_object_mut() {
                let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
                if let Some(m) = mounts.as_array_mut() {
                    m.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
                }
            }
        }
    }
}

/// Whether a container mounts something at the credentials' path itself.
fn mounts_credentials(container: &Value) -> bool {
    container["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(MOUNT_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_gets_the_credentials_once() {
        let mut spec = json!({
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount/"}]}],
            "volumes": [{"name": "mine", "emptyDir": {}}],
        });
        let spec = spec.as_object_mut().unwrap();
        mount_credentials(spec);
        let volumes = spec["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        let added = volumes[1]["name"].as_str().unwrap();
        assert!(added.starts_with("kube-api-access-") && added.len() == "kube-api-access-".len() + 5, "{added}");
        assert_eq!(volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3607);
        let mounted = |list: &str, i: usize| spec[list][i]["volumeMounts"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(mounted("initContainers", 0), [added]);
        assert_eq!(mounted("containers", 0), [added]);
        assert_eq!(mounted("containers", 1), ["mine"], "a container's own mount at the path stays");
    }

    #[test]
    fn nothing_is_added_when_every_container_has_its_own() {
        let mut spec = json!({"containers": [{"name": "a", "volumeMounts": [{"name": "v", "mountPath": MOUNT_PATH}]}], "volumes": [{"name": "v", "emptyDir": {}}]});
        let before = spec.clone();
        mount_credentials(spec.as_object_mut().unwrap());
        assert_eq!(spec, before);
    }
}
