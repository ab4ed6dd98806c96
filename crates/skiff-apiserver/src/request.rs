//! Parsing a resource request path (`/apis/apps/v1/namespaces/d/deployments/web/scale`)
//! into what it addresses, as kube-apiserver's RequestInfo does.

use skiff_core::{ResourceType, resources};

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone)]
pub struct Target {
    pub resource: &'static ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    /// The storage key of the named object.
    pub fn key(&self) -> String {
        self.resource.key(self.namespace.as_deref(), self.name.as_deref().unwrap_or_default())
    }

    /// `plural` or `plural.group`, as Kubernetes names a resource in messages.
    pub fn qualified(&self) -> String {
        qualified(self.resource)
    }
}

pub fn qualified(r: &ResourceType) -> String {
    if r.group.is_empty() { r.plural.to_string() } else { format!("{}.{}", r.plural, r.group) }
}

/// Parses a path under `/api/v1/` or `/apis/{group}/{version}/`.
pub fn parse(path: &str) -> ApiResult<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route(format!("the server could not find the requested resource ({path})"))),
    };
    let lookup = |plural: &str| {
        resources::find(group, version, plural).ok_or_else(|| {
            ApiError::no_route(format!("the server could not find the requested resource ({path})"))
        })
    };
    let owned = |s: &str| Some(s.to_string());
    // `namespaces/{ns}/{plural}…` addresses namespaced resources; `namespaces/{name}/status`
    // is the Namespace's own subresource.
    if let ["namespaces", ns, plural, more @ ..] = rest
        && let Some(r) = resources::find(group, version, plural).filter(|r| r.namespaced)
    {
        return match more {
            [] => Ok(Target { resource: r, namespace: owned(ns), name: None, subresource: None }),
            [name] => Ok(Target { resource: r, namespace: owned(ns), name: owned(name), subresource: None }),
            [name, sub] => Ok(Target { resource: r, namespace: owned(ns), name: owned(name), subresource: owned(sub) }),
            _ => Err(ApiError::no_route(format!("the server could not find the requested resource ({path})"))),
        };
    }
    match rest {
        [plural] => Ok(Target { resource: lookup(plural)?, namespace: None, name: None, subresource: None }),
        [plural, name] => Ok(Target { resource: lookup(plural)?, namespace: None, name: owned(name), subresource: None }),
        [plural, name, sub] => {
            Ok(Target { resource: lookup(plural)?, namespace: None, name: owned(name), subresource: owned(sub) })
        }
        _ => Err(ApiError::no_route(format!("the server could not find the requested resource ({path})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn paths() {
        let t = parse("/apis/apps/v1/namespaces/d/deployments/web/scale").unwrap();
        assert_eq!((t.resource.kind, t.namespace.as_deref(), t.name.as_deref(), t.subresource.as_deref()),
            ("Deployment", Some("d"), Some("web"), Some("scale")));
        let t = parse("/api/v1/namespaces/d/status").unwrap();
        assert_eq!((t.resource.kind, t.name.as_deref(), t.subresource.as_deref()), ("Namespace", Some("d"), Some("status")));
        let t = parse("/api/v1/namespaces/d").unwrap();
        assert_eq!((t.resource.kind, t.name.as_deref()), ("Namespace", Some("d")));
        let t = parse("/api/v1/pods").unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(parse("/api/v1/widgets").is_err());
        assert!(parse("/apis/apps/v2/deployments").is_err());
        assert!(parse("/api/v1/namespaces/d/pods/a/b/c").is_err());
    }
}
