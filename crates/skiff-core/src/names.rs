//! Validation of names, label keys and label values as Kubernetes defines them.

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// A short stable hash of `bytes` (FNV-1a, 32 bits) for generated names, written in
/// Kubernetes' "safe" alphabet: no vowels, so no words, and valid in any name.
pub fn safe_hash(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut v = h;
    while v > 0 || out.is_empty() {
        out.push(ALPHABET[(v % ALPHABET.len() as u32) as usize] as char);
        v /= ALPHABET.len() as u32;
    }
    out
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// RFC 1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
pub fn validate_dns1123_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > DNS1123_LABEL_MAX {
        return Err(format!("must be 1 to {DNS1123_LABEL_MAX} characters"));
    }
    if !name.chars().all(is_label_char) || name.starts_with('-') || name.ends_with('-') {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc')".into());
    }
    Ok(())
}

/// RFC 1035 label (Service names): an RFC 1123 label that starts with a letter.
pub fn validate_dns1035_label(name: &str) -> Result<(), String> {
    validate_dns1123_label(name)?;
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("a DNS-1035 label must start with an alphabetic character (e.g. 'my-name' or 'abc-123')".into());
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn validate_dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!("must be 1 to {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    if name.split('.').any(|part| validate_dns1123_label(part).is_err()) {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')".into());
    }
    Ok(())
}

/// A label key or annotation key: `[prefix/]name`.
pub fn validate_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        validate_dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 || !ok_chars || !ok_ends {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters".into());
    }
    Ok(())
}

/// A label value: empty, or up to 63 alphanumerics, '-', '_', '.', alphanumeric at both ends.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let ok_chars = value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_ends = value.starts_with(|c: char| c.is_ascii_alphanumeric()) && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if value.len() > 63 || !ok_chars || !ok_ends {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, at most 63 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_dns1123_subdomain("my-app.v1").is_ok());
        assert!(validate_dns1123_subdomain("My_App").is_err());
        assert!(validate_dns1123_subdomain("-x").is_err());
        assert!(validate_dns1123_subdomain("").is_err());
        assert!(validate_dns1035_label("1abc").is_err());
        assert!(validate_dns1123_label("1abc").is_ok());
        assert!(validate_qualified_name("app.kubernetes.io/name").is_ok());
        assert!(validate_qualified_name("a/b/c").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("x y").is_err());
    }
}
