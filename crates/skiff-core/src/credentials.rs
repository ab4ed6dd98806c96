//! Reading the cluster's credential out of an `Authorization` header: a bearer token (what
//! Kubernetes clients send), or the password of HTTP Basic (what OCI registry clients such as
//! skopeo send after a `Basic` challenge), compared in constant time.

/// The secret an `Authorization` header presents: the bearer token, or with `basic` the
/// password of Basic credentials (the user name is not checked: the secret is the identity).
pub fn presented(authorization: &str, basic: bool) -> Option<String> {
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = authorization.strip_prefix("Basic ").filter(|_| basic)?;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, password)| password.to_string())
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic() {
        assert_eq!(presented("Bearer abc ", false).as_deref(), Some("abc"));
        // "skiff:s3cret" and "any:a:b" (a password may hold colons).
        assert_eq!(presented("Basic c2tpZmY6czNjcmV0", true).as_deref(), Some("s3cret"));
        assert_eq!(presented("Basic YW55OmE6Yg==", true).as_deref(), Some("a:b"));
        assert_eq!(presented("Basic c2tpZmY6czNjcmV0", false), None);
        assert_eq!(presented("Basic !!!!", true), None);
        assert_eq!(presented("Basic abc", true), None);
        assert_eq!(presented("Digest x", true), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    proptest::proptest! {
        #[test]
        fn any_header_is_read_without_panic(header in ".{0,80}", basic: bool) {
            let _ = presented(&header, basic);
        }

        #[test]
        fn basic_credentials_give_back_their_password(user in "[^:]{0,20}", password in ".{0,40}") {
            use base64::Engine;
            let header = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
            proptest::prop_assert_eq!(presented(&header, true), Some(password));
        }
    }
}
