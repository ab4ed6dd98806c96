//! CertificateSigningRequests as kube-apiserver takes them: the requester's identity is
//! written into `spec.username`, `uid`, `groups` and `extra` by the server (whatever the
//! client sent), `spec.request` must be a PEM certificate request, and approval is its own
//! subresource, which changes `status.conditions` only.

use serde_json::{Value, json};

use crate::authz::UserInfo;
use crate::error::{ApiError, ApiResult, FieldError};

pub fn admit_create(user: &UserInfo, object: &mut Value) -> ApiResult<()> {
    let spec = object.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| invalid(FieldError::required("spec")))?;
    spec.insert("username".into(), json!(user.name));
    spec.insert("groups".into(), json!(user.groups));
    if user.uid.is_empty() {
        spec.remove("uid");
    } else {
        spec.insert("uid".into(), json!(user.uid));
    }
    if user.extra.is_empty() {
        spec.remove("extra");
    } else {
        spec.insert("extra".into(), json!(user.extra));
    }
    if spec.get("signerName").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(invalid(FieldError::required("spec.signerName")));
    }
    use base64::Engine;
    let request = spec.get("request").and_then(Value::as_str).and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
    let parses = request.as_deref().and_then(|r| std::str::from_utf8(r).ok()).is_some_and(|pem| rcgen::CertificateSigningRequestParams::from_pem(pem).is_ok());
    if !parses {
        return Err(invalid(FieldError::invalid("spec.request", "<bytes>", "PEM block type must be CERTIFICATE REQUEST")));
    }
    Ok(())
}

fn invalid(e: FieldError) -> ApiError {
    ApiError::invalid("CertificateSigningRequest", "certificates.k8s.io", "", vec![e])
}

/// What an approval (`PUT .../approval`) writes: the stored request with the conditions
/// the client sent, and nothing else of its body.
pub fn approval(old: &Value, sent: &Value) -> Value {
    let mut new = old.clone();
    let conditions = sent.pointer("/status/conditions").cloned().unwrap_or(json!([]));
    match new.get_mut("status").and_then(Value::as_object_mut) {
        Some(status) => {
            status.insert("conditions".into(), conditions);
        }
        None => new["status"] = json!({"conditions": conditions}),
    }
    if let Some(rv) = sent.pointer("/metadata/resourceVersion") {
        new["metadata"]["resourceVersion"] = rv.clone();
    }
    new
}
