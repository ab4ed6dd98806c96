//! ServiceAccount tokens, as Kubernetes issues them: JWTs signed with the cluster's key
//! (ES256, made at first start), from the TokenRequest subresource (`kubectl create
//! token`), naming the account, optionally bound to a pod, with an audience and an
//! expiry. A token authenticates only while its account (and its pod, when bound) still
//! exists with the uid it names, so deleting either revokes it.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::UserInfo;
use crate::ApiServer;
use crate::error::{ApiError, ApiResult, FieldError};

/// The issuer every token names, and the audience of tokens for the API itself.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// A TokenRequest without `expirationSeconds` gets an hour; fewer than ten minutes is
/// refused, as in Kubernetes.
const DEFAULT_EXPIRY_SECONDS: i64 = 3600;
const MIN_EXPIRY_SECONDS: i64 = 600;

/// The key tokens are signed and verified with.
#[derive(Clone)]
pub struct SigningKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The key's id (`kid`): a digest of its public half.
    pub kid: String,
    /// The public point's coordinates, base64url, for the JWKS document.
    pub x: String,
    pub y: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.kid)
    }
}

impl SigningKey {
    /// The key kept in `path` (PKCS#8 PEM), made there when missing.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, String> {
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(_) => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| format!("making the service account key: {e}"))?;
                let pem = key.serialize_pem();
                crate::tls::write_private(path, &pem).map_err(|e| format!("writing {}: {e}", path.display()))?;
                pem
            }
        };
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let point = key.public_key_raw();
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        if point.len() != 65 || point[0] != 4 {
            return Err(format!("{} is not a P-256 key", path.display()));
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (x, y) = (b64(&point[1..33]), b64(&point[33..]));
        let digest = ring::digest::digest(&ring::digest::SHA256, point);
        Ok(SigningKey {
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            decoding: DecodingKey::from_ec_components(&x, &y).map_err(|e| format!("{}: {e}", path.display()))?,
            kid: b64(digest.as_ref()),
            x,
            y,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: Named,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<Named>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Named {
    name: String,
    uid: String,
}

/// Answers a TokenRequest for ServiceAccount `namespace/name`: the request with its
/// `status.token` and `status.expirationTimestamp`. A node (`node`, as NodeRestriction
/// holds it) gets only tokens bound to a pod of its own that runs as the account.
pub async fn request(server: &ApiServer, namespace: &str, name: &str, mut request: Value, node: Option<&str>) -> ApiResult<Value> {
    let key = server.config.service_account_key.as_ref().ok_or_else(|| ApiError::bad_request("this server issues no service account tokens (it has no signing key)"))?;
    let invalid = |field: &str, value: &str, why: &str| ApiError::invalid("TokenRequest", "authentication.k8s.io", name, vec![FieldError::invalid(field, value, why)]);
    let account = get(server, "serviceaccounts", namespace, name).await?.ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = spec.get("expirationSeconds").and_then(Value::as_i64).unwrap_or(DEFAULT_EXPIRY_SECONDS);
    if seconds < MIN_EXPIRY_SECONDS {
        return Err(invalid("spec.expirationSeconds", &seconds.to_string(), "may not specify a duration less than 10 minutes"));
    }
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => vec![ISSUER.to_string()],
    };
    let pod = match spec.get("boundObjectRef") {
        Some(bound) => {
            let kind = bound.get("kind").and_then(Value::as_str).unwrap_or_default();
            if kind != "Pod" {
                return Err(invalid("spec.boundObjectRef.kind", kind, "tokens can be bound to a Pod"));
            }
            let pod_name = bound.get("name").and_then(Value::as_str).unwrap_or_default();
            let object = get(server, "pods", namespace, pod_name).await?.ok_or_else(|| ApiError::not_found("pods", pod_name))?;
            let uid = uid_of(&object);
            if let Some(node) = node {
                let runs_as = skiff_core::pod_refs::of(&object).service_account;
                if object.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) || runs_as != name {
                    return Err(ApiError::forbidden(format!("node '{node}' may only request tokens for the service accounts of pods bound to it")));
                }
            }
            if bound.get("uid").and_then(Value::as_str).is_some_and(|u| !u.is_empty() && u != uid) {
                return Err(ApiError::conflict("pods", pod_name, format!("the UID in the bound object reference ({}) does not match the UID in record ({uid}); the object might have been deleted and then recreated", bound["uid"])));
            }
            Some(Named { name: pod_name.to_string(), uid })
        }
        None if node.is_some() => return Err(ApiError::forbidden("a node may only request tokens bound to a pod")),
        None => None,
    };
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: super::service_account_user(namespace, name),
        aud: audiences,
        exp: now + seconds,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: KubernetesClaims { namespace: namespace.into(), serviceaccount: Named { name: name.into(), uid: uid_of(&account) }, pod },
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
    let expires = jiff::Timestamp::from_second(now + seconds).map(|t| t.to_string()).unwrap_or_default();
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["spec"] = json!({"audiences": claims.aud, "expirationSeconds": seconds, "boundObjectRef": spec.get("boundObjectRef")});
    request["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(request)
}

/// The user's extra field that names the pod a token is bound to.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// The user a ServiceAccount token names, if it is valid for one of `audiences` and its
/// account (and pod) still exist.
pub async fn authenticate_for(server: &ApiServer, token: &str, audiences: &[&str]) -> Option<UserInfo> {
    let key = server.config.service_account_key.as_ref()?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(audiences);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).ok()?.claims;
    let k = &claims.kubernetes;
    let account = get(server, "serviceaccounts", &k.namespace, &k.serviceaccount.name).await.ok()??;
    if uid_of(&account) != k.serviceaccount.uid {
        return None;
    }
    let mut extra = std::collections::BTreeMap::new();
    if let Some(pod) = &k.pod {
        let object = get(server, "pods", &k.namespace, &pod.name).await.ok()??;
        if uid_of(&object) != pod.uid {
            return None;
        }
        extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![pod.name.clone()]);
        extra.insert(POD_UID_EXTRA.to_string(), vec![pod.uid.clone()]);
    }
    Some(UserInfo {
        name: claims.sub,
        uid: k.serviceaccount.uid.clone(),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{}", k.namespace), super::AUTHENTICATED.into()],
        extra,
    })
}

/// A core object from the store, or none.
pub(crate) async fn get(server: &ApiServer, plural: &str, namespace: &str, name: &str) -> ApiResult<Option<Value>> {
    let r = skiff_core::resources::find("", "v1", plural).expect("core kinds are served");
    match server.store.get(&r.key(Some(namespace), name)).await {
        Ok(object) => Ok(Some(object)),
        Err(skiff_store::StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(ApiError::from_store(e, plural, name)),
    }
}

fn uid_of(object: &Value) -> String {
    object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// `/.well-known/openid-configuration`: how a relying party verifies the cluster's
/// ServiceAccount tokens (OIDC discovery).
pub fn openid_configuration() -> Value {
    json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/openid/v1/jwks"), "response_types_supported": ["id_token"],
           "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["ES256"]})
}

/// `/openid/v1/jwks`: the public key tokens are signed with.
pub fn jwks(key: &SigningKey) -> Value {
    json!({"keys": [{"use": "sig", "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": key.kid, "x": key.x, "y": key.y}]})
}
