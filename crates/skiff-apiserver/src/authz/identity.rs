//! `authentication.k8s.io/v1`, answered and never stored: TokenReview (is this token
//! valid, and whose is it: for a webhook or a relying party inside the cluster) and
//! SelfSubjectReview (who am I: `kubectl auth whoami`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{UserInfo, tokens};
use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

pub const GROUP: &str = "authentication.k8s.io";
pub const VERSION: &str = "v1";
/// (plural, kind, namespaced).
pub const RESOURCES: &[(&str, &str, bool)] = &[("selfsubjectreviews", "SelfSubjectReview", false), ("tokenreviews", "TokenReview", false)];

fn user_info(user: &UserInfo) -> Value {
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        info["extra"] = json!(user.extra);
    }
    info
}

/// Answers a request under `/apis/authentication.k8s.io/v1/`.
pub async fn handle(State(server): State<Arc<ApiServer>>, request: Request) -> Response {
    let user = request.extensions().get::<UserInfo>().cloned().unwrap_or_default();
    let (parts, body) = request.into_parts();
    let answer = async {
        let plural = parts.uri.path().trim_start_matches(&format!("/apis/{GROUP}/{VERSION}/")).trim_matches('/').to_string();
        let Some((_, kind, _)) = RESOURCES.iter().find(|(p, _, _)| *p == plural) else {
            return Err(ApiError::no_route(format!("the server could not find the requested resource ({})", parts.uri.path())));
        };
        let mut review = super::read_review(&server, &parts, body, kind).await?;
        review["status"] = match *kind {
            "SelfSubjectReview" => json!({"userInfo": user_info(&user)}),
            _ => token_review(&server, review.get("spec").unwrap_or(&Value::Null)).await?,
        };
        Ok(super::answer_review(&parts, review, &format!("{GROUP}/{VERSION}"), kind))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn token_review(server: &ApiServer, spec: &Value) -> ApiResult<Value> {
    let token = spec.get("token").and_then(Value::as_str).unwrap_or_default();
    let asked: Vec<&str> = spec.get("audiences").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let audiences = if asked.is_empty() { vec![tokens::ISSUER] } else { asked };
    Ok(match super::authenticate_bearer(server, token, &audiences).await {
        Some(user) => json!({"authenticated": true, "user": user_info(&user), "audiences": audiences}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    })
}
