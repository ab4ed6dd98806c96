//! The registry of resource kinds the API server serves: group, version, kind, plural,
//! scope and subresources. Discovery, routing, storage keys and the CLI all read it.

/// One served resource (a group/version/plural triple) and what clients need to know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core (legacy) group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Subresources beyond the object itself, e.g. `status`, `scale`.
    pub subresources: &'static [&'static str],
    /// Categories such as `all` (`kubectl get all`).
    pub categories: &'static [&'static str],
}

impl ResourceType {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage prefix of this resource. Versions of one group/plural share storage,
    /// as in Kubernetes (e.g. autoscaling/v1 and v2 HorizontalPodAutoscalers).
    pub fn storage_prefix(&self) -> String {
        let group = if self.group.is_empty() { "core" } else { self.group };
        format!("/{group}/{}/", self.plural)
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.storage_prefix()),
            _ => format!("{}{name}", self.storage_prefix()),
        }
    }

    /// The prefix of every object of this resource in one namespace (or in all).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.storage_prefix()),
            _ => self.storage_prefix(),
        }
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// True when `name` (case-insensitive) names this resource the way kubectl accepts:
    /// plural, singular, short name or kind, optionally qualified by `.group`.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let (base, group) = match name.split_once('.') {
            Some((b, g)) => (b.to_string(), Some(g.to_string())),
            None => (name, None),
        };
        if let Some(g) = group {
            let own = if self.group.is_empty() { "core" } else { self.group };
            if own != g && !own.starts_with(&format!("{g}.")) {
                return false;
            }
        }
        base == self.plural
            || base == self.singular
            || base == self.kind.to_ascii_lowercase()
            || self.short_names.contains(&base.as_str())
    }
}

const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    subresources: &'static [&'static str],
    categories: &'static [&'static str],
) -> ResourceType {
    ResourceType { group, version, kind, plural, singular, short_names, namespaced, subresources, categories }
}

const NS: bool = true;
const CLUSTER: bool = false;
const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];
const STATUS: &[&str] = &["status"];
const STATUS_SCALE: &[&str] = &["status", "scale"];

/// Every resource Skiff serves, in discovery order. When one group/plural is served in
/// several versions, the first listed is the preferred (and stored) version.
pub static RESOURCES: &[ResourceType] = &[
    res("", "v1", "Namespace", "namespaces", "namespace", &["ns"], CLUSTER, STATUS, NONE),
    res("", "v1", "Pod", "pods", "pod", &["po"], NS, &["status", "binding", "log", "exec", "attach", "portforward"], ALL),
    res("", "v1", "Node", "nodes", "node", &["no"], CLUSTER, STATUS, NONE),
    res("", "v1", "Service", "services", "service", &["svc"], NS, STATUS, ALL),
    res("", "v1", "Endpoints", "endpoints", "endpoints", &["ep"], NS, NONE, NONE),
    res("", "v1", "ConfigMap", "configmaps", "configmap", &["cm"], NS, NONE, NONE),
    res("", "v1", "Secret", "secrets", "secret", NONE, NS, NONE, NONE),
    res("", "v1", "Event", "events", "event", &["ev"], NS, NONE, NONE),
    res("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", &["sa"], NS, &["token"], NONE),
    res("", "v1", "LimitRange", "limitranges", "limitrange", &["limits"], NS, NONE, NONE),
    res("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", &["quota"], NS, STATUS, NONE),
    res("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", &["pv"], CLUSTER, STATUS, NONE),
    res("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", &["pvc"], NS, STATUS, NONE),
    res("apps", "v1", "Deployment", "deployments", "deployment", &["deploy"], NS, STATUS_SCALE, ALL),
    res("apps", "v1", "ReplicaSet", "replicasets", "replicaset", &["rs"], NS, STATUS_SCALE, ALL),
    res("apps", "v1", "StatefulSet", "statefulsets", "statefulset", &["sts"], NS, STATUS_SCALE, ALL),
    res("apps", "v1", "DaemonSet", "daemonsets", "daemonset", &["ds"], NS, STATUS, ALL),
    res("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", NONE, NS, NONE, NONE),
    res("batch", "v1", "Job", "jobs", "job", NONE, NS, STATUS, ALL),
    res("batch", "v1", "CronJob", "cronjobs", "cronjob", &["cj"], NS, STATUS, ALL),
    res("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", &["hpa"], NS, STATUS, ALL),
    res("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", &["hpa"], NS, STATUS, ALL),
    res("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", &["ing"], NS, STATUS, NONE),
    res("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", NONE, CLUSTER, NONE, NONE),
    res("coordination.k8s.io", "v1", "Lease", "leases", "lease", NONE, NS, NONE, NONE),
    res("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", NONE, NS, NONE, NONE),
    res("certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", "certificatesigningrequest", &["csr"], CLUSTER, &["status", "approval"], NONE),
    res("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", "runtimeclass", NONE, CLUSTER, NONE, NONE),
    res("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", NONE, NS, NONE, NONE),
    res("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", NONE, NS, NONE, NONE),
    res("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", NONE, CLUSTER, NONE, NONE),
    res("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", NONE, CLUSTER, NONE, NONE),
];

/// The resource served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource whose objects have this `apiVersion` and `kind`.
pub fn find_by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The preferred version of the resource a user names (`po`, `deployments.apps`, `Service`).
pub fn resolve(name: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.matches_name(name))
}

/// The group/versions served, each once, core first, in registry order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Every stored resource once: each group/plural in its stored (first listed) version,
/// as clients that walk all kinds (garbage collector, namespace deletion) need them.
pub fn stored() -> impl Iterator<Item = &'static ResourceType> {
    RESOURCES.iter().enumerate().filter(|(i, r)| !RESOURCES[..*i].iter().any(|o| o.group == r.group && o.plural == r.plural)).map(|(_, r)| r)
}

/// The preferred version of a group: the version of its first listed resource.
pub fn preferred_version(group: &str) -> Option<&'static str> {
    RESOURCES.iter().find(|r| r.group == group).map(|r| r.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_lists_each_kind_once_in_its_stored_version() {
        let hpas: Vec<_> = stored().filter(|r| r.plural == "horizontalpodautoscalers").map(|r| r.version).collect();
        assert_eq!(hpas, ["v2"]);
        assert_eq!(stored().count(), RESOURCES.len() - 1);
    }

    #[test]
    fn kubectl_style_names_resolve() {
        assert_eq!(resolve("po").unwrap().plural, "pods");
        assert_eq!(resolve("Deployment").unwrap().group, "apps");
        assert_eq!(resolve("deployments.apps").unwrap().kind, "Deployment");
        assert_eq!(resolve("hpa").unwrap().version, "v2");
        assert!(resolve("deployments.batch").is_none());
        assert!(resolve("nonsense").is_none());
    }

    #[test]
    fn storage_keys_share_versions() {
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v2 = find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        assert_eq!(v1.key(Some("a"), "b"), v2.key(Some("a"), "b"));
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(ns.key(Some("ignored"), "x"), "/core/namespaces/x");
        assert_eq!(find("", "v1", "pods").unwrap().list_prefix(Some("d")), "/core/pods/d/");
    }
}
