//! The Ingress routing table: which Service port a request for a host and path goes to,
//! by the networking.k8s.io/v1 rules of every Ingress of Skiff's class.
//!
//! Hosts: an exact host wins over a wildcard (`*.example.com` matches one label), which
//! wins over rules without a host. Paths: the longest match wins, `Exact` before
//! `Prefix` at equal length; `Prefix` matches whole path elements (`/app` matches
//! `/app` and `/app/x`, not `/apple`); `ImplementationSpecific` is a prefix here.
//! Requests no rule takes go to a default backend, if an Ingress names one.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::ResourceExt;
use skiff_client::ingress::is_ours;

/// A Service port an Ingress sends to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    /// The Service port, by number or by name.
    pub port: ServicePortRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServicePortRef {
    Number(i32),
    Name(String),
}

impl ServicePortRef {
    /// Whether `port` is the Service port this refers to.
    pub fn is(&self, port: &k8s_openapi::api::core::v1::ServicePort) -> bool {
        match self {
            ServicePortRef::Number(n) => port.port == *n,
            ServicePortRef::Name(name) => port.name.as_ref() == Some(name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Exact,
    Prefix,
}

#[derive(Debug, Clone)]
struct PathRule {
    path: String,
    kind: PathKind,
    backend: Backend,
}

/// A TLS certificate an Ingress asks for: the hosts it covers and its Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TlsEntry {
    /// The Ingress asking, `namespace/name`.
    pub ingress: String,
    pub hosts: Vec<String>,
    pub namespace: String,
    pub secret: String,
}

/// Every rule of every Ingress of Skiff's class.
#[derive(Debug, Default)]
pub struct Routes {
    /// Lower-case host (`*.example.com` for wildcards, "" for any host) → its paths.
    hosts: BTreeMap<String, Vec<PathRule>>,
    default: Option<Backend>,
    pub tls: Vec<TlsEntry>,
    /// Every backend named, with the Ingress naming it (`namespace/name`).
    pub backends: Vec<(String, Backend)>,
}

fn backend(ns: &str, b: &IngressBackend) -> Option<Backend> {
    let svc = b.service.as_ref()?;
    let port = svc.port.as_ref()?;
    let port = match (&port.name, port.number) {
        (Some(name), _) if !name.is_empty() => ServicePortRef::Name(name.clone()),
        (_, Some(n)) => ServicePortRef::Number(n),
        _ => return None,
    };
    Some(Backend { namespace: ns.to_string(), service: svc.name.clone(), port })
}

impl Routes {
    pub fn build(ingresses: &[Arc<Ingress>], classes: &[Arc<IngressClass>]) -> Routes {
        let mut routes = Routes::default();
        // Oldest first, so the oldest Ingress's default backend wins, as in ingress-nginx.
        let mut ours: Vec<&Arc<Ingress>> = ingresses.iter().filter(|i| is_ours(i, classes) && i.metadata.deletion_timestamp.is_none()).collect();
        ours.sort_by_key(|i| (i.metadata.creation_timestamp.clone().map(|t| t.0), i.name_any()));
        for ing in ours {
            let ns = ing.namespace().unwrap_or_default();
            let id = format!("{ns}/{}", ing.name_any());
            let Some(spec) = &ing.spec else { continue };
            if let Some(b) = spec.default_backend.as_ref().and_then(|b| backend(&ns, b)) {
                routes.backends.push((id.clone(), b.clone()));
                routes.default.get_or_insert(b);
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.clone().unwrap_or_default().to_lowercase();
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let Some(b) = backend(&ns, &p.backend) else { continue };
                    let kind = if p.path_type == "Exact" { PathKind::Exact } else { PathKind::Prefix };
                    let path = p.path.clone().unwrap_or_else(|| "/".into());
                    routes.backends.push((id.clone(), b.clone()));
                    routes.hosts.entry(host.clone()).or_default().push(PathRule { path, kind, backend: b });
                }
            }
            for tls in spec.tls.iter().flatten() {
                if let Some(secret) = &tls.secret_name {
                    let hosts = tls.hosts.clone().unwrap_or_default().into_iter().map(|h| h.to_lowercase()).collect();
                    routes.tls.push(TlsEntry { ingress: id.clone(), hosts, namespace: ns.clone(), secret: secret.clone() });
                }
            }
        }
        routes
    }

    /// The backend for a request to `host` (the Host header or :authority, port
    /// ignored) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = host_without_port(host).to_lowercase();
        let candidates = [Some(host.clone()), wildcard_of(&host), Some(String::new())];
        for h in candidates.iter().flatten() {
            if let Some(b) = self.hosts.get(h).and_then(|rules| best_path(rules, path)) {
                return Some(b);
            }
        }
        self.default.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.default.is_none()
    }
}

/// The wildcard name that covers `host` (`*.example.com` for `a.example.com`): it
/// stands for exactly one label.
pub fn wildcard_of(host: &str) -> Option<String> {
    host.split_once('.').map(|(_, rest)| format!("*.{rest}"))
}

/// `host` without a `:port` (IPv6 literals in brackets keep their colons).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &host[..h.len() + 1]).unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

fn best_path<'a>(rules: &'a [PathRule], path: &str) -> Option<&'a Backend> {
    rules
        .iter()
        .filter(|r| match r.kind {
            PathKind::Exact => r.path == path,
            PathKind::Prefix => prefix_matches(&r.path, path),
        })
        .max_by_key(|r| (r.path.trim_end_matches('/').len(), r.kind == PathKind::Exact))
        .map(|r| &r.backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(name: &str, spec: serde_json::Value) -> Arc<Ingress> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})).unwrap())
    }

    fn path(p: &str, kind: &str, svc: &str) -> serde_json::Value {
        json!({"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn to(routes: &Routes, host: &str, p: &str) -> Option<String> {
        routes.route(host, p).map(|b| b.service.clone())
    }

    #[test]
    fn hosts_and_paths_pick_the_most_specific_rule() {
        let routes = Routes::build(
            &[ingress("a", json!({"rules": [
                {"host": "shop.example.com", "http": {"paths": [path("/", "Prefix", "front"), path("/api", "Prefix", "api"), path("/api/v1/health", "Exact", "health")]}},
                {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
                {"http": {"paths": [path("/static", "ImplementationSpecific", "static")]}},
            ]}))],
            &[],
        );
        assert_eq!(to(&routes, "shop.example.com", "/"), Some("front".into()));
        assert_eq!(to(&routes, "SHOP.example.com:8080", "/api/orders"), Some("api".into()));
        assert_eq!(to(&routes, "shop.example.com", "/api"), Some("api".into()));
        assert_eq!(to(&routes, "shop.example.com", "/apiary"), Some("front".into()));
        assert_eq!(to(&routes, "shop.example.com", "/api/v1/health"), Some("health".into()));
        assert_eq!(to(&routes, "shop.example.com", "/api/v1/health/x"), Some("api".into()));
        assert_eq!(to(&routes, "blog.example.com", "/x"), Some("wild".into()));
        assert_eq!(to(&routes, "a.b.example.com", "/static/x.css"), Some("static".into()), "a wildcard matches one label");
        assert_eq!(to(&routes, "other.org", "/static"), Some("static".into()));
        assert_eq!(to(&routes, "other.org", "/"), None);
    }

    #[test]
    fn default_backend_tls_and_other_classes() {
        let routes = Routes::build(
            &[
                ingress("a", json!({"defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
                    "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}]})),
                ingress("b", json!({"ingressClassName": "nginx", "rules": [{"http": {"paths": [path("/", "Prefix", "theirs")]}}]})),
            ],
            &[],
        );
        assert_eq!(to(&routes, "anything", "/x"), Some("fallback".into()));
        assert_eq!(routes.route("x", "/").unwrap().port, ServicePortRef::Name("http".into()));
        assert_eq!(routes.tls, [TlsEntry { ingress: "ns/a".into(), hosts: vec!["shop.example.com".into()], namespace: "ns".into(), secret: "shop-tls".into() }]);
        assert!(routes.backends.iter().all(|(_, b)| b.service != "theirs"));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(host_without_port("a.example:443"), "a.example");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("a.example"), "a.example");
    }
}
