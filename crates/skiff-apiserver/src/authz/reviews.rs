//! `authorization.k8s.io/v1`: the access reviews, answered and never stored, as
//! kube-apiserver answers them. SelfSubjectAccessReview asks "may I?" (`kubectl auth
//! can-i`), SubjectAccessReview and LocalSubjectAccessReview ask it for another user,
//! and SelfSubjectRulesReview lists what the caller may do in a namespace (`kubectl auth
//! can-i --list`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Attributes, UserInfo, rbac};
use crate::ApiServer;
use crate::error::{ApiError, ApiResult, FieldError};

pub const GROUP: &str = "authorization.k8s.io";
pub const VERSION: &str = "v1";
/// (plural, kind, namespaced).
pub const RESOURCES: &[(&str, &str, bool)] = &[
    ("localsubjectaccessreviews", "LocalSubjectAccessReview", true),
    ("selfsubjectaccessreviews", "SelfSubjectAccessReview", false),
    ("selfsubjectrulesreviews", "SelfSubjectRulesReview", false),
    ("subjectaccessreviews", "SubjectAccessReview", false),
];

/// Answers a request under `/apis/authorization.k8s.io/v1/`.
pub async fn handle(State(server): State<Arc<ApiServer>>, request: Request) -> Response {
    let user = request.extensions().get::<UserInfo>().cloned().unwrap_or_default();
    let (parts, body) = request.into_parts();
    let answer = async {
        let rest = parts.uri.path().trim_start_matches(&format!("/apis/{GROUP}/{VERSION}/")).to_string();
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let (kind, namespace) = match segments.as_slice() {
            ["namespaces", ns, "localsubjectaccessreviews"] => ("LocalSubjectAccessReview", Some(ns.to_string())),
            [plural] => match RESOURCES.iter().find(|(p, _, namespaced)| p == plural && !namespaced) {
                Some((_, kind, _)) => (*kind, None),
                None => return Err(ApiError::no_route(format!("the server could not find the requested resource ({})", parts.uri.path()))),
            },
            _ => return Err(ApiError::no_route(format!("the server could not find the requested resource ({})", parts.uri.path()))),
        };
        let mut review = super::read_review(&server, &parts, body, kind).await?;
        if review.get("kind").and_then(Value::as_str).is_some_and(|k| k != kind) {
            return Err(ApiError::bad_request(format!("the body is a {}, not a {kind}", review["kind"])));
        }
        let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
        let status = match kind {
            "SelfSubjectRulesReview" => rules(&server, &user, spec.get("namespace").and_then(Value::as_str).unwrap_or_default()).await?,
            _ => {
                let attributes = attributes(kind, &spec, namespace.as_deref())?;
                let subject = if kind == "SelfSubjectAccessReview" { user.clone() } else { subject(&spec) };
                json!({"allowed": rbac::allows(&server, &subject, &attributes).await?})
            }
        };
        review["status"] = status;
        if kind == "SelfSubjectRulesReview" || kind == "SelfSubjectAccessReview" {
            review["spec"] = spec;
        }
        Ok(super::answer_review(&parts, review, &format!("{GROUP}/{VERSION}"), kind))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// The request a review asks about; exactly one of `resourceAttributes` and
/// `nonResourceAttributes`.
fn attributes(kind: &str, spec: &Value, namespace: Option<&str>) -> ApiResult<Attributes> {
    let text = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let invalid = |field: &str, why: &str| ApiError::invalid(kind, GROUP, "", vec![FieldError::invalid(field, "", why)]);
    match (spec.get("resourceAttributes"), spec.get("nonResourceAttributes")) {
        (Some(r), None) => {
            let a = Attributes {
                verb: text(r, "verb"),
                resource_request: true,
                api_group: text(r, "group"),
                resource: text(r, "resource"),
                subresource: text(r, "subresource"),
                namespace: text(r, "namespace"),
                name: text(r, "name"),
                path: String::new(),
            };
            if let Some(ns) = namespace
                && a.namespace != ns
            {
                return Err(invalid("spec.resourceAttributes.namespace", "must match the namespace of the request"));
            }
            Ok(a)
        }
        (None, Some(n)) => Ok(Attributes { verb: text(n, "verb"), path: text(n, "path"), ..Default::default() }),
        _ => Err(invalid("spec", "exactly one of nonResourceAttributes or resourceAttributes must be specified")),
    }
}

/// The user a SubjectAccessReview names.
fn subject(spec: &Value) -> UserInfo {
    let strings = |f: &str| spec.get(f).and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect::<Vec<_>>();
    UserInfo {
        name: spec.get("user").and_then(Value::as_str).unwrap_or_default().to_string(),
        uid: spec.get("uid").and_then(Value::as_str).unwrap_or_default().to_string(),
        groups: strings("groups"),
        extra: spec.get("extra").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default(),
    }
}

/// What `user` may do in `namespace`, as a SelfSubjectRulesReview's status.
async fn rules(server: &ApiServer, user: &UserInfo, namespace: &str) -> ApiResult<Value> {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in rbac::rules_for(server, user, namespace).await?.iter().cloned() {
        if let Some(urls) = rule.non_resource_urls.filter(|u| !u.is_empty()) {
            non_resource_rules.push(json!({"verbs": rule.verbs, "nonResourceURLs": urls}));
        }
        if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
            let mut r = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups.unwrap_or_default(), "resources": rule.resources});
            if let Some(names) = rule.resource_names.filter(|n| !n.is_empty()) {
                r["resourceNames"] = json!(names);
            }
            resource_rules.push(r);
        }
    }
    Ok(json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false}))
}
