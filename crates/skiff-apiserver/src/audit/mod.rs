//! The audit log: one JSON line per request stage in Kubernetes' `audit.k8s.io/v1`
//! `Event` shape, at the level the policy ([`policy`]) gives the request — `Metadata`
//! (who, what, when, the answer's code), `Request` (and the request's body),
//! `RequestResponse` (and the answer's). Long-running requests (watches, log streams,
//! exec) get a `ResponseStarted` event when their answer begins and `ResponseComplete`
//! when it ends. Written by [`file`] off the request path.

pub mod file;
pub mod policy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use crate::authz::{Attributes, UserInfo};
pub use file::{AuditFile, Rotation};
pub use policy::{Level, Policy, Stage};

/// The policy and the file events go to.
pub struct Auditor {
    policy: Policy,
    file: AuditFile,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").finish_non_exhaustive()
    }
}

impl Auditor {
    pub fn new(policy: Policy, file: AuditFile) -> Auditor {
        Auditor { policy, file }
    }

    /// Writes out what is queued, at a clean stop; later events are not written.
    pub fn close(&self) {
        self.file.close();
    }
}

/// What a handler tells its request's audit event, in the response's extensions: the
/// name of the object it wrote (a create's path names none), and admission's annotations
/// (PodSecurity's audit mode).
#[derive(Clone, Default)]
pub struct Noted {
    pub name: Option<String>,
    pub annotations: Vec<(&'static str, String)>,
}

/// Subresources whose requests last as long as their stream (as kube-apiserver's
/// long-running check names them).
const LONG_RUNNING: [&str; 5] = ["log", "exec", "attach", "portforward", "proxy"];

/// One request's audit record, begun when it arrives and written as it goes through its
/// stages. `None` level requests make no `Entry` at all.
pub struct Entry {
    auditor: Arc<Auditor>,
    decision: policy::Decision,
    event: Event,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Event {
    kind: &'static str,
    api_version: &'static str,
    level: Level,
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: Stage,
    #[serde(rename = "requestURI")]
    request_uri: String,
    verb: String,
    user: User,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_user: Option<User>,
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    source_ips: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_object: Option<Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize, Default, Clone)]
struct User {
    #[serde(skip_serializing_if = "String::is_empty")]
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: BTreeMap<String, Vec<String>>,
}

impl From<&UserInfo> for User {
    fn from(u: &UserInfo) -> User {
        User { username: u.name.clone(), uid: u.uid.clone(), groups: u.groups.clone(), extra: u.extra.clone() }
    }
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    api_group: String,
    api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    subresource: String,
}

/// Kubernetes' MicroTime: RFC 3339 with microseconds, in UTC.
fn micro_time(t: jiff::Timestamp) -> String {
    format!("{t:.6}")
}

/// What of a request is known when it arrives, before anything is decided.
pub struct Arrival {
    pub received: jiff::Timestamp,
    pub uri: String,
    pub user_agent: Option<String>,
    pub source: Option<SocketAddr>,
}

impl Arrival {
    pub fn of(request: &axum::extract::Request) -> Arrival {
        Arrival {
            received: jiff::Timestamp::now(),
            uri: request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            user_agent: request.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string),
            source: request.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0),
        }
    }
}

impl Auditor {
    /// Begins the record of a request by `user` (`None`: not authenticated), or `None`
    /// when the policy logs nothing of it. The `RequestReceived` event is written now.
    pub fn begin(self: &Arc<Self>, arrival: Arrival, user: Option<&UserInfo>, a: &Attributes) -> Option<Entry> {
        let anonymous = UserInfo::default();
        let decision = self.policy.decide(user.unwrap_or(&anonymous), a);
        if decision.level == Level::None {
            return None;
        }
        let object_ref = a.resource_request.then(|| ObjectRef {
            resource: a.resource.clone(),
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            api_group: a.api_group.clone(),
            api_version: api_version(&a.path),
            subresource: a.subresource.clone(),
        });
        let received = micro_time(arrival.received);
        let event = Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: decision.level,
            audit_id: uuid::Uuid::new_v4().to_string(),
            stage: Stage::RequestReceived,
            request_uri: arrival.uri,
            verb: a.verb.clone(),
            user: user.map(User::from).unwrap_or_default(),
            impersonated_user: None,
            source_ips: arrival.source.map(|s| vec![s.ip().to_string()]).unwrap_or_default(),
            user_agent: arrival.user_agent,
            object_ref,
            response_status: None,
            request_object: None,
            response_object: None,
            stage_timestamp: received.clone(),
            request_received_timestamp: received,
            annotations: BTreeMap::new(),
        };
        let mut entry = Entry { auditor: self.clone(), decision, event };
        entry.write(Stage::RequestReceived);
        Some(entry)
    }
}

/// `v1` of `/api/v1/...`, `apps/v1` → `v1` of `/apis/apps/v1/...`.
pub(crate) fn api_version(path: &str) -> String {
    let mut segments = path.trim_start_matches('/').split('/');
    match segments.next() {
        Some("api") => segments.next(),
        Some("apis") => segments.nth(1),
        _ => None,
    }
    .unwrap_or_default()
    .to_string()
}

impl Entry {
    fn write(&mut self, stage: Stage) {
        if self.decision.omit_stages.contains(&stage) {
            return;
        }
        self.event.stage = stage;
        self.event.stage_timestamp = micro_time(jiff::Timestamp::now());
        match serde_json::to_vec(&self.event) {
            Ok(line) => self.auditor.file.write(line),
            Err(e) => tracing::warn!(error = %e, "encoding an audit event"),
        }
    }

    /// The request acts as another user (impersonation).
    pub fn impersonating(&mut self, user: &UserInfo) {
        self.event.impersonated_user = Some(User::from(user));
    }

    /// The authorizer's answer, as kube-apiserver annotates it.
    pub fn authorized(&mut self, allowed: bool) {
        self.event.annotations.insert("authorization.k8s.io/decision", if allowed { "allow" } else { "forbid" }.into());
    }

    /// At `Request` level and above, reads the request's body (up to `limit` bytes) to
    /// keep it, and gives back the request with it.
    pub async fn keep_request_body(&mut self, request: axum::extract::Request, limit: usize) -> Result<axum::extract::Request, crate::error::ApiError> {
        if self.decision.level < Level::Request {
            return Ok(request);
        }
        let (parts, body) = request.into_parts();
        let bytes = crate::rest::read_body(body, limit).await?;
        if !bytes.is_empty() {
            self.event.request_object = crate::rest::parse_body(&parts.headers, &bytes).ok().map(|o| self.trimmed(o));
        }
        Ok(axum::extract::Request::from_parts(parts, Body::from(bytes)))
    }

    fn trimmed(&self, mut object: Value) -> Value {
        if self.decision.omit_managed_fields
            && let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("managedFields");
        }
        object
    }

    /// The answer: its code (and for a failure, its Status) and, at `RequestResponse`, its
    /// body; `ResponseComplete` is written now, or for a long-running request
    /// `ResponseStarted` now and `ResponseComplete` when its stream ends.
    pub async fn respond(mut self, response: Response) -> Response {
        let code = response.status().as_u16();
        if let Some(noted) = response.extensions().get::<Noted>() {
            self.event.annotations.extend(noted.annotations.iter().cloned());
            if let (Some(name), Some(o)) = (&noted.name, self.event.object_ref.as_mut())
                && o.name.is_empty()
            {
                o.name = name.clone();
            }
        }
        let long_running = self.event.verb == "watch" || self.event.object_ref.as_ref().is_some_and(|o| LONG_RUNNING.contains(&o.subresource.as_str()));
        self.event.response_status = Some(serde_json::json!({"metadata": {}, "code": code}));
        if long_running {
            self.write(Stage::ResponseStarted);
            let (parts, body) = response.into_parts();
            let completion = Completion(Some(self));
            let body = Body::from_stream(futures::StreamExt::map(body.into_data_stream(), move |chunk| {
                let _ = &completion;
                chunk
            }));
            return Response::from_parts(parts, body);
        }
        // A body is read only when kept, or for a failure's Status (small; it says why).
        if code < 400 && self.decision.level < Level::RequestResponse {
            self.write(Stage::ResponseComplete);
            return response;
        }
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
        let object = if bytes.is_empty() { None } else { crate::rest::parse_body(&parts.headers, &bytes).ok() };
        if code >= 400
            && let Some(Value::Object(status)) = &object
        {
            let mut s = serde_json::json!({"metadata": {}, "code": code});
            for field in ["status", "message", "reason", "details"] {
                if let Some(v) = status.get(field) {
                    s[field] = v.clone();
                }
            }
            self.event.response_status = Some(s);
        }
        if self.decision.level >= Level::RequestResponse {
            self.event.response_object = object.map(|o| self.trimmed(o));
        }
        self.write(Stage::ResponseComplete);
        Response::from_parts(parts, Body::from(bytes))
    }

    /// Refused before reaching a handler (401, 403): the error is the answer.
    pub fn refused(mut self, error: &crate::error::ApiError) {
        self.event.response_status = Some(serde_json::json!({"metadata": {}, "status": "Failure", "message": error.message, "reason": error.reason, "code": error.code.as_u16()}));
        self.write(Stage::ResponseComplete);
    }
}

/// Writes a long-running request's `ResponseComplete` when its stream is dropped: ended,
/// or the client gone.
struct Completion(Option<Entry>);

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(mut entry) = self.0.take() {
            entry.write(Stage::ResponseComplete);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_kubernetes_micro_times() {
        let t: jiff::Timestamp = "2026-12-02T13:33:04.9195267Z".parse().unwrap();
        assert_eq!(super::micro_time(t), "2026-12-02T13:33:04.919526Z");
        assert_eq!(super::micro_time("2026-12-02T13:33:04Z".parse().unwrap()), "2026-12-02T13:33:04.000000Z");
    }

    #[test]
    fn api_versions_are_read_from_the_path() {
        assert_eq!(super::api_version("/api/v1/namespaces/a/pods"), "v1");
        assert_eq!(super::api_version("/apis/apps/v1/deployments"), "v1");
        assert_eq!(super::api_version("/healthz"), "");
    }
}
