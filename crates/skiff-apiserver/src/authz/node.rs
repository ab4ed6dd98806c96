//! The Node authorizer, as Kubernetes' (and the writes NodeRestriction admits): a node's
//! agent, user `system:node:NAME` in group `system:nodes`, reads the Secrets, ConfigMaps,
//! PersistentVolumeClaims (and their volumes) and ServiceAccount tokens of the pods bound
//! to it and nothing else of the kind; writes only its own Node, Lease and its pods'
//! status; reads what every node needs (pods, nodes, Services, endpoints, runtime
//! classes). Whatever else it asks goes on to RBAC, where nothing binds nodes by default.
//!
//! Kubernetes keeps a graph of pods, nodes and the objects they name; here the pods of
//! the node in the object's namespace are read when asked, which is a list of one
//! namespace per Secret a node starts to watch (the agent watches each by name, once).
//! A token request names its pod, which [`super::tokens::request`] checks.

use serde_json::Value;
use skiff_core::{FieldSelector, pod_refs};
use skiff_store::ListOptions;

use super::{Attributes, UserInfo};
use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

/// Every node's group.
pub const NODES: &str = "system:nodes";
/// A node user's name prefix.
const NODE_PREFIX: &str = "system:node:";
/// Where nodes keep their heartbeat Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What the Node authorizer says of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
    /// Not a node's request, or not one it governs: RBAC decides.
    NoOpinion,
}

/// The node a user is, when it is one.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    user.name.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty() && user.groups.iter().any(|g| g == NODES))
}

/// The user a node's agent acts as.
pub fn node_user(node: &str) -> UserInfo {
    UserInfo { name: format!("{NODE_PREFIX}{node}"), groups: vec![NODES.into(), super::AUTHENTICATED.into()], ..Default::default() }
}

const READ: &[&str] = &["get", "list", "watch"];

pub async fn decide(server: &ApiServer, user: &UserInfo, a: &Attributes) -> ApiResult<Decision> {
    let Some(node) = node_of(user) else { return Ok(Decision::NoOpinion) };
    if !a.resource_request {
        return Ok(Decision::NoOpinion);
    }
    let verb = a.verb.as_str();
    let reads = READ.contains(&verb);
    let allow = |yes: bool, why: &str| if yes { Decision::Allow } else { Decision::Deny(why.to_string()) };
    let no_relationship = format!("no relationship found between node '{node}' and this object");
    Ok(match (a.api_group.as_str(), a.resource.as_str(), a.subresource.as_str()) {
        // Named objects of its pods, by name only (a list or watch names one with
        // `fieldSelector=metadata.name=`).
        ("", kind @ ("secrets" | "configmaps" | "persistentvolumeclaims"), "") if reads => {
            if a.name.is_empty() || a.namespace.is_empty() {
                Decision::Deny(format!("node '{node}' may read {kind} only by name"))
            } else {
                allow(named_by_pods(server, node, &a.namespace, |refs| match kind {
                    "secrets" => refs.secrets.contains(&a.name),
                    "configmaps" => refs.config_maps.contains(&a.name),
                    _ => refs.claims.contains(&a.name),
                }).await?, &no_relationship)
            }
        }
        ("", "persistentvolumes", "") if verb == "get" => allow(volume_of_pods(server, node, &a.name).await?, &no_relationship),
        // The token's pod, bound to this node and running as the account, is checked when
        // the request is read (its body names the pod): one read, not a list of the
        // namespace's pods on every pod start.
        ("", "serviceaccounts", "token") if verb == "create" => Decision::Allow,
        ("", "pods", "") if reads => Decision::Allow,
        ("", "pods", "status") if matches!(verb, "get" | "update" | "patch") => allow(pod_on(server, node, &a.namespace, &a.name).await?, &no_relationship),
        ("", "pods", "") if verb == "delete" => allow(pod_on(server, node, &a.namespace, &a.name).await?, &no_relationship),
        ("", "nodes", "" | "status") if reads => Decision::Allow,
        // A create names no node in its path; admission checks the object's name.
        ("", "nodes", "" | "status") if matches!(verb, "create" | "update" | "patch" | "delete") => {
            allow(a.name.is_empty() && verb == "create" || a.name == node, &format!("node '{node}' may only change its own Node"))
        }
        ("coordination.k8s.io", "leases", "") if a.namespace == LEASE_NAMESPACE && matches!(verb, "get" | "create" | "update" | "patch" | "delete") => {
            allow(a.name.is_empty() && verb == "create" || a.name == node, &format!("node '{node}' may only change its own Lease"))
        }
        ("" | "events.k8s.io", "events", "") if matches!(verb, "create" | "update" | "patch") => Decision::Allow,
        ("", "services" | "endpoints", "") | ("discovery.k8s.io", "endpointslices", "") | ("node.k8s.io", "runtimeclasses", "") if reads => Decision::Allow,
        ("certificates.k8s.io", "certificatesigningrequests", "") if matches!(verb, "create" | "get" | "list" | "watch") => Decision::Allow,
        ("authentication.k8s.io", "tokenreviews", "") | ("authorization.k8s.io", "subjectaccessreviews", "") if verb == "create" => Decision::Allow,
        _ => Decision::NoOpinion,
    })
}

/// The pods bound to `node`, in `namespace` (every namespace when empty).
async fn pods_on(server: &ApiServer, node: &str, namespace: &str) -> ApiResult<Vec<Value>> {
    let pods = skiff_core::resources::find("", "v1", "pods").expect("pods are served");
    let fields = FieldSelector::parse(&format!("spec.nodeName={node}")).map_err(|e| ApiError::internal(e.reason))?;
    let options = ListOptions { fields, ..Default::default() };
    let prefix = pods.list_prefix((!namespace.is_empty()).then_some(namespace));
    Ok(server.store.list(&prefix, &options).await.map_err(|e| ApiError::from_store(e, "pods", ""))?.items)
}

/// Whether a pod bound to `node` in `namespace` names what `wanted` looks for.
async fn named_by_pods(server: &ApiServer, node: &str, namespace: &str, wanted: impl Fn(&pod_refs::PodReferences) -> bool) -> ApiResult<bool> {
    Ok(pods_on(server, node, namespace).await?.iter().any(|p| wanted(&pod_refs::of(p))))
}

/// Whether pod `namespace/name` is bound to `node`.
async fn pod_on(server: &ApiServer, node: &str, namespace: &str, name: &str) -> ApiResult<bool> {
    let pods = skiff_core::resources::find("", "v1", "pods").expect("pods are served");
    Ok(match server.store.get(&pods.key(Some(namespace), name)).await {
        Ok(pod) => pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node),
        Err(skiff_store::StoreError::NotFound(_)) => false,
        Err(e) => return Err(ApiError::from_store(e, "pods", name)),
    })
}

/// Whether PersistentVolume `name` is bound to a claim a pod on `node` names.
async fn volume_of_pods(server: &ApiServer, node: &str, name: &str) -> ApiResult<bool> {
    let claims = skiff_core::resources::find("", "v1", "persistentvolumeclaims").expect("claims are served");
    for pod in pods_on(server, node, "").await? {
        let namespace = skiff_core::meta::namespace(&pod).unwrap_or_default();
        for claim in pod_refs::of(&pod).claims {
            if let Ok(c) = server.store.get(&claims.key(Some(namespace), &claim)).await
                && c.pointer("/spec/volumeName").and_then(Value::as_str) == Some(name)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// NodeRestriction for creates, whose name is in the object rather than the path: a node
/// creates only its own Node and Lease.
pub fn admit_create(user: &UserInfo, kind: &str, object: &Value) -> ApiResult<()> {
    let Some(node) = node_of(user) else { return Ok(()) };
    let name = skiff_core::meta::name(object).unwrap_or_default();
    match kind {
        "Node" | "Lease" if name != node => Err(ApiError::forbidden(format!("node \"{node}\" is not allowed to create a {kind} named {name:?}"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_user_is_known_by_name_and_group() {
        assert_eq!(node_of(&node_user("edge-1")), Some("edge-1"));
        let impostor = UserInfo { name: "system:node:edge-1".into(), groups: vec![super::super::AUTHENTICATED.into()], ..Default::default() };
        assert_eq!(node_of(&impostor), None, "the name alone is not a node");
        let object = serde_json::json!({"metadata": {"name": "edge-2"}});
        assert!(admit_create(&node_user("edge-1"), "Node", &object).is_err());
        assert!(admit_create(&node_user("edge-2"), "Node", &object).is_ok());
        assert!(admit_create(&UserInfo::admin(), "Lease", &object).is_ok());
    }
}
