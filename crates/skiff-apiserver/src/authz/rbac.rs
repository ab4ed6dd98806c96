//! RBAC as Kubernetes evaluates it: a user's rules are those of every Role and ClusterRole
//! bound to the user, one of its groups or (for a ServiceAccount's token) its account,
//! cluster-wide by ClusterRoleBindings and in one namespace by RoleBindings. A rule
//! allows a request when its verbs, API groups, resources (or `*/SUB` for one
//! subresource of any) and resource names all match; non-resource rules match paths,
//! with a trailing `*` as a prefix. A ClusterRole with an `aggregationRule` holds the
//! rules of every ClusterRole its selectors match. Nothing denies: no rule, no access.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff_core::{LabelSelector, meta};
use skiff_store::ListOptions;

use super::{Attributes, UserInfo};
use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

/// Whether `rule` allows the request `a`.
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    if !any(&rule.verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule.non_resource_urls.iter().flatten().any(|u| u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p)));
    }
    let combined = a.combined_resource();
    any(rule.api_groups.as_deref().unwrap_or_default(), &a.api_group)
        && rule.resources.iter().flatten().any(|r| {
            r == "*" || *r == combined || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
        })
        && rule.resource_names.as_ref().is_none_or(|names| names.is_empty() || names.contains(&a.name))
}

/// Whether a binding's subject is `user` (a ServiceAccount subject's namespace defaults to
/// the binding's).
fn names(subject: &Subject, user: &UserInfo, binding_namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(binding_namespace);
            user.name == super::service_account_user(ns, &subject.name)
        }
        _ => false,
    }
}

/// Every RBAC object, as the store held them at one generation of [`RbacCache`], and the
/// rules already worked out from them per user and namespace.
struct Snapshot {
    generation: u64,
    cluster_roles: Vec<ClusterRole>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    /// Per namespace.
    roles: HashMap<String, Vec<Role>>,
    bindings: HashMap<String, Vec<RoleBinding>>,
    /// Per (user, groups, namespace): the rules that apply.
    resolved: Mutex<HashMap<(String, Vec<String>, String), Arc<Vec<PolicyRule>>>>,
}

/// Users × namespaces worked out before the memo starts again (a bound on its memory).
const RESOLVED_LIMIT: usize = 10_000;

/// RBAC objects read once per change instead of on every request: listing and decoding
/// every role and binding cost each request of a user outside `system:masters` more
/// than the request itself, and the scheduler, controllers and agents are such users.
/// Every write of an RBAC object through this server moves the generation before it is
/// answered, so a binding is in force the moment its create returns; [`follow`] moves
/// it for writes through other servers sharing the store (etcd).
#[derive(Default)]
pub struct RbacCache {
    generation: AtomicU64,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
}

impl RbacCache {
    /// Notes that an RBAC object changed.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    async fn current(&self, server: &ApiServer) -> ApiResult<Arc<Snapshot>> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(s) = self.snapshot.read().unwrap_or_else(|e| e.into_inner()).as_ref().filter(|s| s.generation == generation) {
            return Ok(s.clone());
        }
        // Read after taking the generation: a change during the read moves it again, and
        // the next request reads anew.
        let by_namespace = |items: Vec<Value>| {
            let mut map: HashMap<String, Vec<Value>> = HashMap::new();
            for o in items {
                map.entry(meta::namespace(&o).unwrap_or_default().to_string()).or_default().push(o);
            }
            map
        };
        let snapshot = Arc::new(Snapshot {
            generation,
            cluster_roles: decode(list(server, "clusterroles").await?),
            cluster_bindings: decode(list(server, "clusterrolebindings").await?),
            roles: by_namespace(list(server, "roles").await?).into_iter().map(|(ns, items)| (ns, decode(items))).collect(),
            bindings: by_namespace(list(server, "rolebindings").await?).into_iter().map(|(ns, items)| (ns, decode(items))).collect(),
            resolved: Default::default(),
        });
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
        Ok(snapshot)
    }
}

/// Moves the cache's generation on every RBAC change in the store, whoever made it.
pub async fn follow(server: Arc<ApiServer>) {
    crate::store_follow::follow(server, "/rbac.authorization.k8s.io/", |s| s.rbac.changed()).await
}

async fn list(server: &ApiServer, plural: &str) -> ApiResult<Vec<Value>> {
    let r = skiff_core::resources::find("rbac.authorization.k8s.io", "v1", plural).expect("RBAC kinds are served");
    Ok(server.store.list(&r.list_prefix(None), &ListOptions::default()).await.map_err(|e| ApiError::from_store(e, plural, ""))?.items)
}

/// An object the store holds was validated on its way in.
fn decode<T: DeserializeOwned>(items: Vec<Value>) -> Vec<T> {
    items.into_iter().filter_map(|o| serde_json::from_value(o).ok()).collect()
}

/// The rules that apply to `user` in `namespace` (cluster-wide only, when empty).
pub async fn rules_for(server: &ApiServer, user: &UserInfo, namespace: &str) -> ApiResult<Arc<Vec<PolicyRule>>> {
    let snapshot = server.rbac.current(server).await?;
    let key = (user.name.clone(), user.groups.clone(), namespace.to_string());
    if let Some(rules) = snapshot.resolved.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(rules.clone());
    }
    let rules = Arc::new(resolve(&snapshot, user, namespace));
    let mut resolved = snapshot.resolved.lock().unwrap_or_else(|e| e.into_inner());
    if resolved.len() >= RESOLVED_LIMIT {
        resolved.clear();
    }
    resolved.insert(key, rules.clone());
    Ok(rules)
}

fn resolve(s: &Snapshot, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
    let cluster_role = |name: &str| cluster_role_rules(&s.cluster_roles, name, &mut Vec::new());
    let mut rules = Vec::new();
    for binding in &s.cluster_bindings {
        if binding.subjects.iter().flatten().any(|s| names(s, user, "")) && binding.role_ref.kind == "ClusterRole" {
            rules.extend(cluster_role(&binding.role_ref.name));
        }
    }
    if namespace.is_empty() {
        return rules;
    }
    let roles = s.roles.get(namespace).map(Vec::as_slice).unwrap_or_default();
    for binding in s.bindings.get(namespace).into_iter().flatten() {
        if !binding.subjects.iter().flatten().any(|s| names(s, user, namespace)) {
            continue;
        }
        match binding.role_ref.kind.as_str() {
            "ClusterRole" => rules.extend(cluster_role(&binding.role_ref.name)),
            "Role" => rules.extend(roles.iter().filter(|r| r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str())).flat_map(|r| r.rules.clone().unwrap_or_default())),
            _ => {}
        }
    }
    rules
}

/// A ClusterRole's rules; an aggregated one's are those of the ClusterRoles its selectors
/// match, themselves aggregated or not (`admin` takes `edit`, which takes `view`). `seen`
/// keeps a cycle of aggregations from going round.
fn cluster_role_rules(cluster_roles: &[ClusterRole], name: &str, seen: &mut Vec<String>) -> Vec<PolicyRule> {
    if seen.iter().any(|s| s == name) {
        return Vec::new();
    }
    seen.push(name.to_string());
    let Some(role) = cluster_roles.iter().find(|r| r.metadata.name.as_deref() == Some(name)) else { return Vec::new() };
    let Some(aggregation) = &role.aggregation_rule else { return role.rules.clone().unwrap_or_default() };
    let selectors: Vec<LabelSelector> = aggregation.cluster_role_selectors.iter().flatten()
        .filter_map(|s| serde_json::to_value(s).ok().and_then(|v| LabelSelector::from_json(&v).ok()))
        .collect();
    let members: Vec<String> = cluster_roles.iter()
        .filter(|r| selectors.iter().any(|s| s.matches_map(r.metadata.labels.as_ref())))
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    members.iter().flat_map(|m| cluster_role_rules(cluster_roles, m, seen)).collect()
}

/// Whether `user` may do `a`: members of `system:masters` may do anything, as in
/// Kubernetes; everyone else by RBAC.
pub async fn allows(server: &ApiServer, user: &UserInfo, a: &Attributes) -> ApiResult<bool> {
    if user.is_master() {
        return Ok(true);
    }
    Ok(rules_for(server, user, &a.namespace).await?.iter().any(|r| rule_allows(r, a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let owned = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        PolicyRule { verbs: verbs.iter().map(|s| s.to_string()).collect(), api_groups: owned(groups), resources: owned(resources), resource_names: owned(names), non_resource_urls: None }
    }

    fn request(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes { verb: verb.into(), resource_request: true, api_group: group.into(), resource: resource.into(), subresource: sub.into(), namespace: "shop".into(), name: name.into(), path: String::new() }
    }

    #[test]
    fn a_rule_matches_verb_group_resource_and_name() {
        let view = rule(&["get", "list", "watch"], &[""], &["pods", "pods/log"], &[]);
        assert!(rule_allows(&view, &request("list", "", "pods", "", "")));
        assert!(rule_allows(&view, &request("get", "", "pods", "log", "web")));
        assert!(!rule_allows(&view, &request("delete", "", "pods", "", "web")));
        assert!(!rule_allows(&view, &request("get", "", "pods", "exec", "web")), "a subresource is not its resource");
        assert!(!rule_allows(&view, &request("get", "apps", "pods", "", "web")), "the group must match");
        let any_status = rule(&["update"], &["*"], &["*/status"], &[]);
        assert!(rule_allows(&any_status, &request("update", "apps", "deployments", "status", "web")));
        assert!(!rule_allows(&any_status, &request("update", "apps", "deployments", "", "web")));
        let one = rule(&["get"], &[""], &["configmaps"], &["settings"]);
        assert!(rule_allows(&one, &request("get", "", "configmaps", "", "settings")));
        assert!(!rule_allows(&one, &request("get", "", "configmaps", "", "other")));
        assert!(!rule_allows(&one, &request("list", "", "configmaps", "", "")));
        let everything = rule(&["*"], &["*"], &["*"], &[]);
        assert!(rule_allows(&everything, &request("deletecollection", "batch", "jobs", "", "")));
    }

    #[test]
    fn non_resource_rules_match_paths_and_prefixes() {
        let discovery = PolicyRule { verbs: vec!["get".into()], non_resource_urls: Some(vec!["/apis".into(), "/apis/*".into()]), ..Default::default() };
        let path = |p: &str| Attributes { verb: "get".into(), path: p.into(), ..Default::default() };
        assert!(rule_allows(&discovery, &path("/apis")));
        assert!(rule_allows(&discovery, &path("/apis/apps/v1")));
        assert!(!rule_allows(&discovery, &path("/version")));
        assert!(!rule_allows(&discovery, &request("get", "", "pods", "", "")), "a resource request needs a resource rule");
    }

    #[test]
    fn aggregated_roles_take_their_members_rules_all_the_way_down() {
        let roles: Vec<ClusterRole> = super::super::bootstrap::cluster_roles().into_iter().map(|r| serde_json::from_value(r).unwrap()).collect();
        let rules = |name: &str| cluster_role_rules(&roles, name, &mut Vec::new());
        let can = |name: &str, verb: &str, group: &str, resource: &str| rules(name).iter().any(|r| rule_allows(r, &request(verb, group, resource, "", "")));
        assert!(can("view", "list", "apps", "deployments"));
        assert!(!can("view", "list", "", "secrets"), "view reads no Secret");
        assert!(!can("view", "delete", "", "pods"));
        assert!(can("edit", "delete", "", "pods") && can("edit", "list", "apps", "deployments") && can("edit", "get", "", "secrets"));
        assert!(!can("edit", "create", "rbac.authorization.k8s.io", "rolebindings"));
        assert!(can("admin", "create", "rbac.authorization.k8s.io", "rolebindings") && can("admin", "list", "batch", "jobs"));
        assert!(can("cluster-admin", "delete", "", "nodes"));
    }

    #[test]
    fn subjects_name_users_groups_and_service_accounts() {
        let user = UserInfo { name: "system:serviceaccount:shop:reader".into(), groups: vec!["system:serviceaccounts".into(), "system:authenticated".into()], ..Default::default() };
        let subject = |kind: &str, name: &str, ns: Option<&str>| Subject { kind: kind.into(), name: name.into(), namespace: ns.map(String::from), api_group: None };
        assert!(names(&subject("ServiceAccount", "reader", None), &user, "shop"));
        assert!(!names(&subject("ServiceAccount", "reader", None), &user, "other"));
        assert!(names(&subject("ServiceAccount", "reader", Some("shop")), &user, "other"));
        assert!(names(&subject("Group", "system:authenticated", None), &user, ""));
        assert!(!names(&subject("User", "reader", None), &user, ""));
    }
}
