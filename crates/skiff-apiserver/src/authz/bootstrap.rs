//! The roles every cluster starts with, as kube-apiserver's bootstrap policy defines them:
//! `cluster-admin` (bound to `system:masters`); the user-facing `admin`, `edit` and
//! `view`, aggregated from the `system:aggregate-to-*` roles so that a ClusterRole
//! labelled for them extends them; `system:basic-user` (the access reviews),
//! `system:discovery` and `system:public-info-viewer`, bound to every authenticated user,
//! and `system:service-account-issuer-discovery` (the OIDC documents), bound to every
//! ServiceAccount.
//! The control plane's parts have their own: `system:kube-scheduler`,
//! `system:kube-controller-manager` (one identity for every controller, where
//! kube-controller-manager can give each its own ServiceAccount) and `system:node-proxier`
//! with `system:skiff:ingress` for the node proxy (Services, and the ingress and
//! scale-from-zero activator it also runs). Nodes are the Node authorizer's ([`super::node`]).
//! Created when missing; a role a user changed is left as it is.

use serde_json::{Value, json};

use crate::ApiServer;
use crate::error::ApiError;
use crate::objects::WriteOptions;

const READ: &[&str] = &["get", "list", "watch"];
const RECORD: &[&str] = &["create", "patch", "update"];

/// The scheduler's user.
pub const SCHEDULER: &str = "system:kube-scheduler";
/// The controllers' user.
pub const CONTROLLERS: &str = "system:kube-controller-manager";
/// The node proxy's user.
pub const PROXY: &str = "system:kube-proxy";
const NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
const SELF_NODE_CLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn paths(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
           "rules": rules})
}

/// A ClusterRole whose rules are those of the ClusterRoles labelled `aggregate-to-NAME`.
fn aggregated(name: &str, labels: Value) -> Value {
    let mut role = cluster_role(name, labels, vec![]);
    role["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{name}"): "true"}}]});
    role
}

fn aggregate_to(to: &[&str]) -> Value {
    Value::Object(to.iter().map(|t| (format!("rbac.authorization.k8s.io/aggregate-to-{t}"), json!("true"))).collect())
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    subjects_binding(name, role, groups.iter().map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})).collect())
}

fn user_binding(name: &str, role: &str, user: &str) -> Value {
    subjects_binding(name, role, vec![json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user})])
}

fn subjects_binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects})
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let read_workloads = vec![
        rule(&[""], &["configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods", "replicationcontrollers",
            "replicationcontrollers/scale", "serviceaccounts", "services", "services/status"], READ),
        rule(&[""], &["bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status", "replicationcontrollers/status",
            "resourcequotas", "resourcequotas/status"], READ),
        rule(&[""], &["namespaces"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["apps"], &["controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale", "deployments/status",
            "replicasets", "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status"], READ),
        rule(&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
        rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
        rule(&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], READ),
        rule(&["metrics.k8s.io"], &["pods"], &["get", "list"]),
    ];
    let edit = vec![
        rule(&[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"], READ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(&[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], WRITE),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(&[""], &["configmaps", "events", "persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale", "secrets",
            "serviceaccounts", "services", "services/proxy"], WRITE),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&["apps"], &["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets", "replicasets/scale",
            "statefulsets", "statefulsets/scale"], WRITE),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
    ];
    let admin = vec![
        rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
        rule(&["rbac.authorization.k8s.io"], &["rolebindings", "roles"], &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]),
    ];
    vec![
        cluster_role("cluster-admin", json!({}), vec![rule(&["*"], &["*"], &["*"]), paths(&["*"], &["*"])]),
        aggregated("admin", json!({})),
        aggregated("edit", aggregate_to(&["admin"])),
        aggregated("view", aggregate_to(&["edit"])),
        cluster_role("system:aggregate-to-admin", aggregate_to(&["admin"]), admin),
        cluster_role("system:aggregate-to-edit", aggregate_to(&["edit"]), edit),
        cluster_role("system:aggregate-to-view", aggregate_to(&["view"]), read_workloads),
        cluster_role("system:basic-user", json!({}), vec![
            rule(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
            rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
        ]),
        cluster_role("system:discovery", json!({}), vec![
            paths(&["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], &["get"]),
        ]),
        cluster_role("system:public-info-viewer", json!({}), vec![paths(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])]),
        cluster_role("system:monitoring", json!({}), vec![paths(&["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics", "/readyz", "/readyz/*"], &["get"])]),
        cluster_role("system:service-account-issuer-discovery", json!({}), vec![paths(&["/.well-known/openid-configuration", "/openid/v1/jwks"], &["get"])]),
        // Joining nodes: a bootstrap token may ask for a node client certificate, which the
        // controllers approve when its requester may create `nodeclient` (a new node) or
        // `selfnodeclient` (a node renewing its own).
        cluster_role("system:node-bootstrapper", json!({}), vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"])]),
        cluster_role(NODE_CLIENT, json!({}), vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"], &["create"])]),
        cluster_role(SELF_NODE_CLIENT, json!({}), vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"], &["create"])]),
        cluster_role(SCHEDULER, json!({}), scheduler()),
        cluster_role(CONTROLLERS, json!({}), controllers()),
        cluster_role("system:node-proxier", json!({}), vec![
            rule(&[""], &["services", "endpoints"], &["list", "watch"]),
            rule(&[""], &["nodes"], READ),
            rule(&["discovery.k8s.io"], &["endpointslices"], &["list", "watch"]),
            rule(&["", "events.k8s.io"], &["events"], RECORD),
        ]),
        cluster_role("system:skiff:ingress", json!({}), vec![
            rule(&["networking.k8s.io"], &["ingresses", "ingressclasses"], READ),
            rule(&["networking.k8s.io"], &["ingresses/status"], &["patch", "update"]),
            // TLS certificates of Ingresses: any node may serve any Ingress's host.
            rule(&[""], &["secrets"], READ),
            // The activator wakes a workload scaled to zero by its autoscaler.
            rule(&["autoscaling"], &["horizontalpodautoscalers"], READ),
            rule(&["apps"], &["deployments", "statefulsets", "replicasets"], &["get"]),
            rule(&["apps"], &["deployments/scale", "statefulsets/scale", "replicasets/scale"], &["get", "patch", "update"]),
        ]),
    ]
}

/// What the scheduler reads and writes, as Kubernetes' `system:kube-scheduler` role.
fn scheduler() -> Vec<Value> {
    vec![
        rule(&["", "events.k8s.io"], &["events"], RECORD),
        rule(&[""], &["pods"], READ),
        rule(&[""], &["bindings", "pods/binding"], &["create"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["nodes", "namespaces", "services", "persistentvolumeclaims", "persistentvolumes", "replicationcontrollers"], READ),
        rule(&["apps"], &["replicasets", "statefulsets"], READ),
        rule(&["node.k8s.io"], &["runtimeclasses"], READ),
        rule(&["coordination.k8s.io"], &["leases"], &["create", "get", "update"]),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
    ]
}

/// What the controllers read and write. The garbage collector and the namespace
/// controller delete, and take finalizers off, any kind; the others create only what
/// they own.
fn controllers() -> Vec<Value> {
    vec![
        rule(&["*"], &["*"], &["get", "list", "watch", "update", "patch", "delete", "deletecollection"]),
        rule(&[""], &["pods", "pods/eviction", "events", "endpoints", "serviceaccounts", "configmaps", "persistentvolumeclaims"], &["create"]),
        rule(&["events.k8s.io"], &["events"], &["create"]),
        rule(&["apps"], &["replicasets", "controllerrevisions"], &["create"]),
        rule(&["batch"], &["jobs"], &["create"]),
        rule(&["discovery.k8s.io"], &["endpointslices"], &["create"]),
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        // The certificate approver asks whether a requester may have what it asks for.
        rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", &[super::MASTERS]),
        binding("system:basic-user", "system:basic-user", &[super::AUTHENTICATED]),
        binding("system:discovery", "system:discovery", &[super::AUTHENTICATED]),
        binding("system:public-info-viewer", "system:public-info-viewer", &[super::AUTHENTICATED, "system:unauthenticated"]),
        binding("system:monitoring", "system:monitoring", &["system:monitoring"]),
        binding("system:service-account-issuer-discovery", "system:service-account-issuer-discovery", &["system:serviceaccounts"]),
        binding("skiff:node-bootstrapper", "system:node-bootstrapper", &[super::bootstrap_tokens::BOOTSTRAPPERS]),
        binding("skiff:node-autoapprove-bootstrap", NODE_CLIENT, &[super::bootstrap_tokens::BOOTSTRAPPERS]),
        binding("skiff:node-autoapprove-certificate-rotation", SELF_NODE_CLIENT, &[super::node::NODES]),
        user_binding(SCHEDULER, SCHEDULER, SCHEDULER),
        user_binding(CONTROLLERS, CONTROLLERS, CONTROLLERS),
        user_binding("system:node-proxier", "system:node-proxier", PROXY),
        user_binding("system:skiff:ingress", "system:skiff:ingress", PROXY),
    ]
}

/// Creates the default roles and bindings that are missing.
pub async fn ensure(server: &ApiServer) -> Result<(), ApiError> {
    let roles = skiff_core::resources::find("rbac.authorization.k8s.io", "v1", "clusterroles").expect("served");
    let bindings = skiff_core::resources::find("rbac.authorization.k8s.io", "v1", "clusterrolebindings").expect("served");
    for (r, objects) in [(roles, cluster_roles()), (bindings, cluster_role_bindings())] {
        for object in objects {
            crate::ignore_exists(server.create_object(r, None, object, WriteOptions::default()).await)?;
        }
    }
    Ok(())
}
