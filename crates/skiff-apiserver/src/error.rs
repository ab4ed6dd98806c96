//! API errors as Kubernetes `Status` objects, with the code, reason and message clients
//! (kubectl, client-go, the Python client) act on.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use skiff_store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// `resource` is the plural, optionally with its group (`deployments.apps`).
    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "NotFound", format!("{resource} \"{name}\" not found"));
        e.details = Some(details(resource, name));
        e
    }

    pub fn no_route(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        let mut e = Self::new(StatusCode::CONFLICT, "AlreadyExists", format!("{resource} \"{name}\" already exists"));
        e.details = Some(details(resource, name));
        e
    }

    pub fn conflict(resource: &str, name: &str, why: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        );
        e.details = Some(details(resource, name));
        e
    }

    /// A 409 whose `details` say more (server-side apply's field conflicts).
    pub fn conflict_with_details(message: impl Into<String>, details: Value) -> Self {
        let mut e = Self::new(StatusCode::CONFLICT, "Conflict", message);
        e.details = Some(details);
        e
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
        )
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", message)
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// 422 with one cause per invalid field.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<FieldError>) -> Self {
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind}.{} \"{name}\" is invalid: {}", if group.is_empty() { "" } else { group }, summary.join(", "))
                .replace(". \"", " \""),
        );
        e.details = Some(json!({
            "name": name,
            "group": group,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({
                "reason": c.reason, "message": c.message, "field": c.field,
            })).collect::<Vec<_>>(),
        }));
        e
    }

    /// The Status object for this error.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    /// Maps a storage error on `resource`/`name` to what Kubernetes answers.
    pub fn from_store(e: StoreError, resource: &str, name: &str) -> Self {
        match e {
            StoreError::NotFound(_) => Self::not_found(resource, name),
            StoreError::AlreadyExists(_) => Self::already_exists(resource, name),
            StoreError::Conflict { .. } => Self::conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
            StoreError::Expired { requested, oldest } => Self::gone(format!(
                "too old resource version: {requested} ({oldest})"
            )),
            StoreError::InvalidContinue(why) => Self::bad_request(format!("invalid continue token: {why}")),
            StoreError::Backend(why) => Self::internal(why),
        }
    }
}

fn details(resource: &str, name: &str) -> Value {
    let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
    json!({"name": name, "group": group, "kind": kind})
}

/// One invalid field of a 422 answer.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn required(field: &str) -> Self {
        Self { field: field.into(), reason: "FieldValueRequired", message: "Required value".into() }
    }

    pub fn invalid(field: &str, value: &str, why: impl Into<String>) -> Self {
        Self { field: field.into(), reason: "FieldValueInvalid", message: format!("Invalid value: {value:?}: {}", why.into()) }
    }

    /// An invalid number, unquoted as Kubernetes prints integers.
    pub fn invalid_number(field: &str, value: i64, why: impl Into<String>) -> Self {
        Self { field: field.into(), reason: "FieldValueInvalid", message: format!("Invalid value: {value}: {}", why.into()) }
    }

    pub fn forbidden(field: &str, why: impl Into<String>) -> Self {
        Self { field: field.into(), reason: "FieldValueForbidden", message: format!("Forbidden: {}", why.into()) }
    }

    pub fn unsupported(field: &str, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {value:?}: supported values: {}", list.join(", ")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        (self.code, [(http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}
