//! `authentication.k8s.io/v1`, answered and never stored: TokenReview (is this token
//! valid, and whose is it: for a webhook or a relying party inside the cluster) and
//! SelfSubjectReview (who am I: `kubectl auth whoami`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
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
        if parts.method != Method::POST {
            return Err(ApiError::method_not_allowed(format!("{kind} is only created (POST), never read or stored")));
        }
        let bytes = crate::rest::read_body(body, server.config.max_body_bytes).await?;
        let mut review = crate::rest::parse_body(&parts.headers, &bytes)?;
        review["status"] = match *kind {
            "SelfSubjectReview" => json!({"userInfo": user_info(&user)}),
            _ => token_review(&server, review.get("spec").unwrap_or(&Value::Null)).await?,
        };
        review["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
        review["kind"] = json!(kind);
        let out = crate::rest::output(&parts.headers, &Default::default());
        Ok(crate::rest::respond(StatusCode::CREATED, &review, out, &[]))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn token_review(server: &ApiServer, spec: &Value) -> ApiResult<Value> {
    let token = spec.get("token").and_then(Value::as_str).unwrap_or_default();
    let asked: Vec<&str> = spec.get("audiences").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let audiences = if asked.is_empty() { vec![tokens::ISSUER] } else { asked };
    let user = if !token.is_empty() && skiff_core::credentials::same_secret(token.as_bytes(), server.config.token.as_bytes()) {
        Some(UserInfo::admin())
    } else {
        tokens::authenticate_for(server, token, &audiences).await
    };
    Ok(match user {
        Some(user) => json!({"authenticated": true, "user": user_info(&user), "audiences": audiences}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    })
}
