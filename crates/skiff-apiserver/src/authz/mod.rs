//! Who a request is and what it may do. Authentication names the user (the admin
//! credential is `system:admin` in `system:masters`; a ServiceAccount token, [`tokens`],
//! its account); impersonation headers
//! (`Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid`) switch to another user
//! when the caller may `impersonate` it; then RBAC ([`rbac`]) decides, and a refusal is
//! Kubernetes' 403. The access reviews ([`reviews`]) ask the same question on a client's
//! behalf (`kubectl auth can-i`), and [`bootstrap`] creates the default roles.

pub mod attributes;
pub mod bootstrap;
pub mod bootstrap_tokens;
pub mod identity;
pub mod node;
pub mod rbac;
pub mod reviews;
pub mod tokens;

use std::collections::BTreeMap;

pub use attributes::Attributes;
use http::HeaderMap;

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

/// The group whose members may do anything.
pub const MASTERS: &str = "system:masters";
/// Every authenticated user's group.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The user the admin credential authenticates as.
pub const ADMIN: &str = "system:admin";

/// An authenticated user, as Kubernetes' `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// Whether the user may do anything (`system:masters`).
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }

    /// The admin credential's user.
    pub fn admin() -> UserInfo {
        UserInfo { name: ADMIN.into(), groups: vec![MASTERS.into(), AUTHENTICATED.into()], ..Default::default() }
    }

    /// A user in no group but `system:authenticated`: what the control plane's parts are,
    /// each granted its role by [`bootstrap`].
    fn component(name: &str) -> UserInfo {
        UserInfo { name: name.into(), groups: vec![AUTHENTICATED.into()], ..Default::default() }
    }

    pub fn scheduler() -> UserInfo {
        Self::component(bootstrap::SCHEDULER)
    }

    pub fn controllers() -> UserInfo {
        Self::component(bootstrap::CONTROLLERS)
    }

    pub fn proxy() -> UserInfo {
        Self::component(bootstrap::PROXY)
    }
}

/// The user of a request made in this process (the scheduler, controllers, proxy and
/// node agent of `skiff up`), put on the request by [`crate::in_process_client`]: a request
/// extension, which nothing arriving over the network can carry.
#[derive(Debug, Clone)]
pub struct InProcess(pub UserInfo);

/// The user a client certificate names (`CN` the user, each `O` a group), put on the
/// request by the TLS listener once the certificate's chain to the cluster CA is verified.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub UserInfo);

impl ClientCertificate {
    /// The user of a verified certificate (DER); None when it names no user.
    pub fn of(der: &[u8]) -> Option<ClientCertificate> {
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
        let mut groups: Vec<String> = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
        groups.push(AUTHENTICATED.into());
        (!name.is_empty()).then(|| ClientCertificate(UserInfo { name, groups, ..Default::default() }))
    }
}

/// A ServiceAccount's user name.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// What a request's impersonation headers ask for (`kubectl --as`, `--as-group`,
/// `--as-uid`); empty for most requests.
#[derive(Debug, Default)]
pub struct Impersonation {
    users: Vec<String>,
    groups: Vec<String>,
    uids: Vec<String>,
}

impl Impersonation {
    pub fn of(headers: &HeaderMap) -> Impersonation {
        let values = |name: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect::<Vec<_>>();
        Impersonation { users: values("impersonate-user"), groups: values("impersonate-group"), uids: values("impersonate-uid") }
    }
}

/// The user a request acts as: `user`, or the one its impersonation headers name, if
/// `user` may impersonate it (and each group and uid it names).
pub async fn impersonated(server: &ApiServer, user: UserInfo, asked: Impersonation) -> ApiResult<UserInfo> {
    let Impersonation { users, groups, uids } = asked;
    let Some(name) = users.first().cloned() else {
        if !groups.is_empty() || !uids.is_empty() {
            return Err(ApiError::bad_request("Impersonate-Group and Impersonate-Uid need Impersonate-User"));
        }
        return Ok(user);
    };
    let mut checks = vec![match name.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':')) {
        Some((ns, sa)) => impersonate("", "serviceaccounts", ns, sa),
        None => impersonate("", "users", "", &name),
    }];
    checks.extend(groups.iter().map(|g| impersonate("", "groups", "", g)));
    checks.extend(uids.iter().map(|u| impersonate("authentication.k8s.io", "uids", "", u)));
    for check in &checks {
        if !rbac::allows(server, &user, check).await? {
            return Err(ApiError::forbidden(check.forbidden_message(&user.name)));
        }
    }
    let mut as_user = UserInfo { name, uid: uids.first().cloned().unwrap_or_default(), groups, extra: BTreeMap::new() };
    if let Some(ns) = as_user.name.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split(':').next()) {
        let ns = ns.to_string();
        as_user.groups.push("system:serviceaccounts".into());
        as_user.groups.push(format!("system:serviceaccounts:{ns}"));
    }
    if !as_user.groups.iter().any(|g| g == AUTHENTICATED) {
        as_user.groups.push(AUTHENTICATED.into());
    }
    Ok(as_user)
}

/// The body of a review (answered, never stored, as kube-apiserver answers them): only
/// created, with POST.
pub(crate) async fn read_review(server: &ApiServer, parts: &http::request::Parts, body: axum::body::Body, kind: &str) -> ApiResult<serde_json::Value> {
    if parts.method != http::Method::POST {
        return Err(ApiError::method_not_allowed(format!("{kind} is only created (POST), never read or stored")));
    }
    let bytes = crate::rest::read_body(body, server.config.max_body_bytes).await?;
    crate::rest::parse_body(&parts.headers, &bytes)
}

/// A review with its answer, as `group/version` `kind`: 201, in the client's format.
pub(crate) fn answer_review(parts: &http::request::Parts, mut review: serde_json::Value, group_version: &str, kind: &str) -> axum::response::Response {
    review["apiVersion"] = serde_json::json!(group_version);
    review["kind"] = serde_json::json!(kind);
    let out = crate::rest::output(&parts.headers, &Default::default());
    crate::rest::respond(http::StatusCode::CREATED, &review, out, &[])
}

/// The user a bearer token names: the admin for the admin token, a bootstrap token's
/// user, else the ServiceAccount of a valid token for one of `audiences`.
pub async fn authenticate_bearer(server: &ApiServer, token: &str, audiences: &[&str]) -> Option<UserInfo> {
    if !token.is_empty() && skiff_core::credentials::same_secret(token.as_bytes(), server.config.token.as_bytes()) {
        return Some(UserInfo::admin());
    }
    if bootstrap_tokens::parse(token).is_some() {
        return bootstrap_tokens::authenticate(server, token).await;
    }
    tokens::authenticate_for(server, token, audiences).await
}

fn impersonate(group: &str, resource: &str, namespace: &str, name: &str) -> Attributes {
    Attributes { verb: "impersonate".into(), resource_request: true, api_group: group.into(), resource: resource.into(), namespace: namespace.into(), name: name.into(), ..Default::default() }
}

/// Refuses a request its user may not make, with Kubernetes' message: the Node authorizer
/// decides a node's requests it governs, RBAC the rest.
pub async fn authorize(server: &ApiServer, user: &UserInfo, a: &Attributes) -> ApiResult<()> {
    let why = match node::decide(server, user, a).await? {
        node::Decision::Allow => return Ok(()),
        node::Decision::Deny(why) => Some(why),
        node::Decision::NoOpinion if rbac::allows(server, user, a).await? => return Ok(()),
        node::Decision::NoOpinion => None,
    };
    let mut message = a.forbidden_message(&user.name);
    if let Some(why) = why {
        message = format!("{message}: {why}");
    }
    let mut refusal = ApiError::forbidden(message);
    if a.resource_request {
        refusal.details = Some(serde_json::json!({"name": a.name, "group": a.api_group, "kind": a.resource}));
    }
    Err(refusal)
}
