//! Bootstrap tokens, as Kubernetes' (`kubeadm token`): `ID.SECRET` (6 and 16 characters of
//! `[a-z0-9]`), kept as Secret `bootstrap-token-ID` of type `bootstrap.kubernetes.io/token`
//! in `kube-system`. A valid one authenticates as `system:bootstrap:ID` in
//! `system:bootstrappers` (and the token's `auth-extra-groups`), which may only ask for a
//! node's client certificate. `skiff token create` makes them.

use serde_json::Value;

use super::UserInfo;
use crate::ApiServer;

pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const NAMESPACE: &str = "kube-system";

/// The id and secret of a token in bootstrap form.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The user of a valid bootstrap token; None for any other token, an unknown, expired or
/// deleted one, or one not meant for authentication.
pub async fn authenticate(server: &ApiServer, token: &str) -> Option<UserInfo> {
    let (id, secret) = parse(token)?;
    let secrets = skiff_core::resources::find("", "v1", "secrets").expect("secrets are served");
    let stored = server.store.get(&secrets.key(Some(NAMESPACE), &format!("bootstrap-token-{id}"))).await.ok()?;
    if stored.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) || skiff_core::meta::is_terminating(&stored) {
        return None;
    }
    let field = |k: &str| -> Option<String> {
        use base64::Engine;
        let b = stored.pointer(&format!("/data/{k}")).and_then(Value::as_str)?;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).ok()?).ok()
    };
    if field("token-id").as_deref() != Some(id) || field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    if !skiff_core::credentials::same_secret(field("token-secret")?.as_bytes(), secret.as_bytes()) {
        return None;
    }
    if let Some(expiration) = field("expiration") {
        let expires: jiff::Timestamp = expiration.parse().ok()?;
        if expires <= jiff::Timestamp::now() {
            return None;
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    groups.extend(field("auth-extra-groups").unwrap_or_default().split(',').map(str::trim).filter(|g| g.starts_with("system:bootstrappers:")).map(str::to_string));
    groups.push(super::AUTHENTICATED.into());
    Some(UserInfo { name: format!("system:bootstrap:{id}"), groups, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bootstrap_form_is_a_bootstrap_token() {
        assert_eq!(parse("abcdef.0123456789abcdef"), Some(("abcdef", "0123456789abcdef")));
        assert_eq!(parse("ABCDEF.0123456789abcdef"), None);
        assert_eq!(parse("abcde.0123456789abcdef"), None);
        assert_eq!(parse("abcdef.0123456789abcde"), None);
        assert_eq!(parse("eyJhbGciOi.x.y"), None);
    }
}
