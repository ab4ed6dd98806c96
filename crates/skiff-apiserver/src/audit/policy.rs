//! The audit policy: Kubernetes' `audit.k8s.io/v1` `Policy` (a YAML or JSON file), whose
//! first rule matching a request gives its level and the stages left out. A request no
//! rule matches is not logged, as in Kubernetes.

use serde::Deserialize;

use crate::authz::{Attributes, UserInfo};

/// How much of a request the log keeps, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
pub enum Level {
    None,
    /// Who, what, when and the answer's code: no bodies.
    Metadata,
    /// And the request's body.
    Request,
    /// And the response's body.
    RequestResponse,
}

/// When an event is written in a request's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Stage {
    RequestReceived,
    /// Long-running requests (watches, log streams, exec) only: the answer's head is sent.
    ResponseStarted,
    ResponseComplete,
    Panic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, rename = "metadata")]
    _metadata: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    /// `pods`, `pods/log`, `pods/*` (every subresource), `*/scale`; none: all of the group.
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy says of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

/// The policy `skiff up` and `skiff server` log with unless given another: who changed
/// what (every write at `Metadata`), and who read Secrets, ConfigMaps and tokens; no
/// bodies, so nothing secret is ever written. Reads of everything else, Events, node
/// heartbeats and health, discovery and OpenAPI are left out: they are most requests.
pub const DEFAULT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", "/version", "/api", "/api/*", "/apis", "/apis/*", "/openapi/*", "/.well-known/*", "/openid/*"]
  - level: None
    resources: [{group: "", resources: [events]}, {group: events.k8s.io, resources: [events]}, {group: coordination.k8s.io, resources: [leases]}]
  - level: Metadata
    resources: [{group: "", resources: [secrets, configmaps, serviceaccounts/token]}, {group: authentication.k8s.io, resources: [tokenreviews]}]
  - level: None
    verbs: [get, list, watch]
  - level: Metadata
"#;

/// Resources whose bodies carry credentials: never logged above `Metadata`, whatever
/// the policy says (a Secret's data, a token a TokenRequest or TokenReview carries).
const CREDENTIAL_RESOURCES: [(&str, &str); 3] = [("", "secrets"), ("", "serviceaccounts/token"), ("authentication.k8s.io", "tokenreviews")];

impl Policy {
    /// Reads a policy file's text (YAML or JSON).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = serde_saphyr::from_str(text).map_err(|e| format!("not an audit policy: {e}"))?;
        if let Some(v) = &policy.api_version
            && v != "audit.k8s.io/v1"
        {
            return Err(format!("apiVersion {v:?}: an audit policy is audit.k8s.io/v1"));
        }
        if let Some(k) = &policy.kind
            && k != "Policy"
        {
            return Err(format!("kind {k:?}: an audit policy is of kind Policy"));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            if !rule.non_resource_urls.is_empty() && (!rule.resources.is_empty() || !rule.namespaces.is_empty()) {
                return Err(format!("rule {i}: nonResourceURLs cannot be mixed with resources or namespaces"));
            }
            if let Some(bad) = rule.non_resource_urls.iter().find(|u| !u.starts_with('/') && u.as_str() != "*") {
                return Err(format!("rule {i}: nonResourceURLs {bad:?} is not a path (it starts with /)"));
            }
        }
        Ok(policy)
    }

    pub fn default_policy() -> Policy {
        Policy::parse(DEFAULT_POLICY).expect("the default audit policy parses")
    }

    /// The first matching rule's level and stages, for `user` asking for `a`.
    pub fn decide(&self, user: &UserInfo, a: &Attributes) -> Decision {
        let Some(rule) = self.rules.iter().find(|r| r.matches(user, a)) else {
            return Decision { level: Level::None, omit_stages: vec![], omit_managed_fields: false };
        };
        let mut level = rule.level;
        if a.resource_request && level > Level::Metadata && CREDENTIAL_RESOURCES.contains(&(a.api_group.as_str(), a.combined_resource().as_str())) {
            level = Level::Metadata;
        }
        let mut omit_stages = self.omit_stages.clone();
        omit_stages.extend(rule.omit_stages.iter().copied());
        Decision { level, omit_stages, omit_managed_fields: rule.omit_managed_fields.unwrap_or(self.omit_managed_fields) }
    }
}

impl Rule {
    fn matches(&self, user: &UserInfo, a: &Attributes) -> bool {
        let listed = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        if !listed(&self.users, &user.name) || !listed(&self.verbs, &a.verb) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g)) {
            return false;
        }
        if a.resource_request {
            if !self.non_resource_urls.is_empty() {
                return false;
            }
            let namespaced = self.namespaces.is_empty() || self.namespaces.contains(&a.namespace);
            namespaced && (self.resources.is_empty() || self.resources.iter().any(|g| g.matches(a)))
        } else {
            if !self.resources.is_empty() || !self.namespaces.is_empty() {
                return false;
            }
            self.non_resource_urls.is_empty() || self.non_resource_urls.iter().any(|u| path_matches(u, &a.path))
        }
    }
}

impl GroupResources {
    fn matches(&self, a: &Attributes) -> bool {
        if self.group != a.api_group {
            return false;
        }
        let named = self.resource_names.is_empty() || self.resource_names.contains(&a.name);
        let combined = a.combined_resource();
        let resource = self.resources.is_empty()
            || self.resources.iter().any(|r| {
                r == &combined
                    || r.strip_suffix("/*").is_some_and(|parent| parent == a.resource && !a.subresource.is_empty())
                    || r.strip_prefix("*/").is_some_and(|sub| sub == a.subresource)
            });
        named && resource
    }
}

/// `/healthz*` matches by prefix, anything else exactly; `*` matches every path.
fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn attrs(method: Method, path: &str) -> Attributes {
        Attributes::of(&method, path, None)
    }

    fn alice() -> UserInfo {
        UserInfo { name: "alice".into(), groups: vec!["devs".into(), "system:authenticated".into()], ..Default::default() }
    }

    #[test]
    fn the_default_policy_logs_writes_and_credential_reads_only() {
        let p = Policy::default_policy();
        let level = |m: Method, path: &str| p.decide(&alice(), &attrs(m, path)).level;
        assert_eq!(level(Method::POST, "/apis/apps/v1/namespaces/d/deployments"), Level::Metadata);
        assert_eq!(level(Method::PATCH, "/api/v1/namespaces/d/pods/p/status"), Level::Metadata);
        assert_eq!(level(Method::GET, "/api/v1/namespaces/d/pods"), Level::None);
        assert_eq!(level(Method::GET, "/api/v1/namespaces/d/secrets/s"), Level::Metadata);
        assert_eq!(level(Method::POST, "/api/v1/namespaces/d/serviceaccounts/default/token"), Level::Metadata);
        assert_eq!(level(Method::POST, "/api/v1/namespaces/d/events"), Level::None);
        assert_eq!(level(Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n"), Level::None);
        assert_eq!(level(Method::GET, "/healthz"), Level::None);
        assert_eq!(level(Method::GET, "/apis/apps/v1"), Level::None);
        assert!(p.decide(&alice(), &attrs(Method::POST, "/api/v1/namespaces/d/pods")).omit_stages.contains(&Stage::RequestReceived));
    }

    #[test]
    fn rules_match_as_kubernetes_matches_them() {
        let p = Policy::parse(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: [system:kube-proxy]
  - level: RequestResponse
    userGroups: [devs]
    resources: [{group: apps, resources: ["deployments/*"]}, {group: "", resources: ["*/log"]}]
    omitStages: [ResponseStarted]
  - level: Request
    namespaces: [shop]
    verbs: [create]
  - level: Metadata
    nonResourceURLs: ["/metrics"]
"#,
        )
        .unwrap();
        let decide = |user: &UserInfo, m: Method, path: &str| p.decide(user, &attrs(m, path));
        let proxy = UserInfo { name: "system:kube-proxy".into(), ..Default::default() };
        assert_eq!(decide(&proxy, Method::POST, "/api/v1/namespaces/shop/pods").level, Level::None);
        // `deployments/*` is every subresource, not the deployment itself.
        let d = decide(&alice(), Method::PUT, "/apis/apps/v1/namespaces/x/deployments/web/scale");
        assert_eq!((d.level, d.omit_stages), (Level::RequestResponse, vec![Stage::RequestReceived, Stage::ResponseStarted]));
        assert_eq!(decide(&alice(), Method::PUT, "/apis/apps/v1/namespaces/x/deployments/web").level, Level::None);
        assert_eq!(decide(&alice(), Method::GET, "/api/v1/namespaces/x/pods/p/log").level, Level::RequestResponse);
        assert_eq!(decide(&alice(), Method::POST, "/api/v1/namespaces/shop/configmaps").level, Level::Request);
        assert_eq!(decide(&alice(), Method::POST, "/api/v1/namespaces/other/configmaps").level, Level::None);
        assert_eq!(decide(&alice(), Method::GET, "/metrics").level, Level::Metadata);
        // A rule naming paths never matches a resource, nor one naming resources a path.
        assert_eq!(decide(&alice(), Method::GET, "/api/v1/namespaces/x/pods/metrics").level, Level::None);
        assert_eq!(decide(&alice(), Method::GET, "/logs").level, Level::None);
        // Credentials stay at Metadata, whatever a rule asks.
        let all = Policy::parse("rules: [{level: RequestResponse}]").unwrap();
        assert_eq!(all.decide(&alice(), &attrs(Method::GET, "/api/v1/namespaces/d/secrets/s")).level, Level::Metadata);
        assert_eq!(all.decide(&alice(), &attrs(Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews")).level, Level::Metadata);
        assert_eq!(all.decide(&alice(), &attrs(Method::GET, "/api/v1/namespaces/d/configmaps/c")).level, Level::RequestResponse);
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        assert!(Policy::parse("rules: [{level: Loud}]").unwrap_err().contains("not an audit policy"));
        assert!(Policy::parse("rules: [{level: None, verb: [get]}]").unwrap_err().contains("verb"));
        assert!(Policy::parse("kind: Pod").unwrap_err().contains("kind"));
        assert!(Policy::parse("rules: [{level: None, nonResourceURLs: [healthz]}]").unwrap_err().contains("not a path"));
        assert!(Policy::parse("rules: [{level: None, nonResourceURLs: [/x], namespaces: [a]}]").unwrap_err().contains("mixed"));
    }
}
