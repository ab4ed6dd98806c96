//! The opaque `continue` token of a paginated list: the revision the first page was read
//! at and the key to resume from.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::StoreError;

#[derive(serde::Serialize, serde::Deserialize)]
struct Token {
    rv: u64,
    start: String,
}

/// The token that resumes a list read at `revision` from key `start`.
pub fn encode(revision: u64, start: &str) -> String {
    let json = serde_json::to_vec(&Token { rv: revision, start: start.to_string() }).expect("token serializes");
    URL_SAFE_NO_PAD.encode(json)
}

/// The revision and key a token names; an error for anything [`encode`] did not make.
pub fn decode(token: &str) -> Result<(u64, String), StoreError> {
    let bad = |why: &str| StoreError::InvalidContinue(why.to_string());
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad("not base64"))?;
    let t: Token = serde_json::from_slice(&bytes).map_err(|_| bad("malformed"))?;
    Ok((t.rv, t.start))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let t = super::encode(42, "/core/pods/d/x");
        assert_eq!(super::decode(&t).unwrap(), (42, "/core/pods/d/x".to_string()));
        assert!(super::decode("!!").is_err());
        assert!(super::decode("e30").is_err());
    }
}
