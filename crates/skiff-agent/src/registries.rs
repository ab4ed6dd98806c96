//! Where a node pulls each registry's images from, as k3s's `registries.yaml` says it:
//! mirrors tried in order before the registry itself, and per-endpoint credentials and TLS.
//! Beside those, the cluster's own registry has a fixed name, [`CLUSTER_REGISTRY`], that
//! every node maps to the registry its control plane embeds, so an image name never
//! depends on the API server's address.
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["http://127.0.0.1:5000"]
//! configs:
//!   "127.0.0.1:5000":
//!     auth: {username: me, password: secret}
//!     tls: {ca_file: /etc/ssl/mirror-ca.pem, insecure_skip_verify: false}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// The name images in the cluster's own registry go by, on every node.
pub const CLUSTER_REGISTRY: &str = "registry.skiff.internal";

/// How the node reaches registries.
#[derive(Clone, Default)]
pub struct Registries {
    /// Endpoints to try, in order, for a registry name (`*`: every registry).
    mirrors: BTreeMap<String, Vec<Endpoint>>,
    /// Credentials and TLS by endpoint `host[:port]`.
    hosts: BTreeMap<String, HostConfig>,
    /// Registries reached over plain HTTP besides those on loopback.
    insecure: Vec<String>,
}

/// A registry endpoint: `host[:port]`, and plain HTTP if its URL said `http://`.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    host: String,
    plain_http: Option<bool>,
}

#[derive(Clone, Default)]
struct HostConfig {
    auth: Option<RegistryAuth>,
    ca: Vec<Certificate>,
    insecure_skip_verify: bool,
}

/// One place to pull an image from (or push it to): the reference as that endpoint
/// names it, how to reach the endpoint, and the endpoint's own credentials.
pub struct Source {
    pub reference: Reference,
    pub auth: Option<RegistryAuth>,
    plain_http: bool,
    host: HostConfig,
}

impl Source {
    /// A client set up for the endpoint.
    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: if self.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            extra_root_certificates: self.host.ca.clone(),
            accept_invalid_certificates: self.host.insecure_skip_verify,
            ..Default::default()
        })
    }
}

/// `registries.yaml` as written, before it is checked.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorFile>,
    #[serde(default)]
    configs: BTreeMap<String, ConfigFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    endpoint: Vec<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    auth: Option<AuthFile>,
    tls: Option<TlsFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    username: Option<String>,
    password: Option<String>,
    /// A bearer token for the endpoint.
    token: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

impl Registries {
    /// No mirrors; `insecure` registries over plain HTTP.
    pub fn new(insecure: Vec<String>) -> Registries {
        Registries { insecure, ..Default::default() }
    }

    /// Reads a `registries.yaml`; a missing file means no mirrors. Errors name the file
    /// and what is wrong in it.
    pub fn load(path: &Path, insecure: Vec<String>) -> Result<Registries, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::new(insecure)),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        Registries::parse(&text, insecure).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(text: &str, insecure: Vec<String>) -> Result<Registries, String> {
        let file: File = if text.trim().is_empty() { File::default() } else { serde_saphyr::from_str(text).map_err(|e| e.to_string())? };
        let mut registries = Registries::new(insecure);
        for (name, mirror) in file.mirrors {
            let endpoints = mirror.endpoint.iter().map(|e| Endpoint::parse(e)).collect::<Result<Vec<_>, _>>().map_err(|e| format!("mirrors.{name}: {e}"))?;
            registries.mirrors.insert(name, endpoints);
        }
        for (host, config) in file.configs {
            let auth = match config.auth {
                None => None,
                Some(AuthFile { token: Some(t), username: None, password: None }) => Some(RegistryAuth::Bearer(t)),
                Some(AuthFile { username: Some(u), password: Some(p), token: None }) => Some(RegistryAuth::Basic(u, p)),
                Some(_) => return Err(format!("configs.{host}.auth: give username and password, or token")),
            };
            let tls = config.tls.unwrap_or_default();
            let ca = match tls.ca_file {
                Some(f) => vec![Certificate { encoding: CertificateEncoding::Pem, data: std::fs::read(&f).map_err(|e| format!("configs.{host}.tls.ca_file {f}: {e}"))? }],
                None => vec![],
            };
            let host = Endpoint::parse(&host)?.host;
            registries.hosts.insert(host, HostConfig { auth, ca, insecure_skip_verify: tls.insecure_skip_verify });
        }
        Ok(registries)
    }

    /// Maps [`CLUSTER_REGISTRY`] to the cluster's registry at `endpoint` (the API server's
    /// `host:port`, over HTTPS), trusting `ca` (DER certificates; none: any certificate)
    /// and presenting the node's `token`. A node with none (one that joined with a
    /// certificate) pulls with each pod's own token ([`Registries::needs_pod_token`]).
    pub fn with_cluster(mut self, endpoint: &str, ca: Vec<Vec<u8>>, token: Option<&str>) -> Registries {
        let insecure_skip_verify = ca.is_empty();
        let ca = ca.into_iter().map(|data| Certificate { encoding: CertificateEncoding::Der, data }).collect();
        self.mirrors.insert(CLUSTER_REGISTRY.into(), vec![Endpoint { host: endpoint.into(), plain_http: Some(false) }]);
        let auth = token.map(|t| RegistryAuth::Bearer(t.into()));
        self.hosts.insert(endpoint.into(), HostConfig { auth, ca, insecure_skip_verify });
        self
    }

    /// Whether pulling `image` takes the pod's own ServiceAccount token: an image of the
    /// cluster's registry on a node that holds no credential for it.
    pub fn needs_pod_token(&self, image: &Reference) -> bool {
        image.registry() == CLUSTER_REGISTRY
            && self.mirrors.get(CLUSTER_REGISTRY).and_then(|m| m.first()).is_some_and(|e| self.hosts.get(&e.host).is_none_or(|h| h.auth.is_none()))
    }

    /// Where to pull `reference` from, in order: its mirrors, then the registry itself
    /// (the cluster's registry has no upstream to fall back on).
    pub fn pull_sources(&self, reference: &Reference) -> Vec<Source> {
        let registry = reference.registry();
        let mirrors = self.mirrors.get(registry).or_else(|| self.mirrors.get("*")).into_iter().flatten();
        let upstream = (registry != CLUSTER_REGISTRY).then(|| Endpoint { host: reference.resolve_registry().to_string(), plain_http: None });
        mirrors.cloned().chain(upstream).map(|e| self.source(reference, &e)).collect()
    }

    /// Where to push `reference`: the registry itself, or the cluster's registry for its
    /// name. Mirrors are for pulls only.
    pub fn push_target(&self, reference: &Reference) -> Source {
        let cluster = (reference.registry() == CLUSTER_REGISTRY).then(|| self.mirrors.get(CLUSTER_REGISTRY)).flatten().and_then(|m| m.first().cloned());
        let endpoint = cluster.unwrap_or_else(|| Endpoint { host: reference.resolve_registry().to_string(), plain_http: None });
        self.source(reference, &endpoint)
    }

    fn source(&self, reference: &Reference, endpoint: &Endpoint) -> Source {
        let host = self.hosts.get(&endpoint.host).cloned().unwrap_or_default();
        let plain_http = endpoint.plain_http.unwrap_or_else(|| crate::images::is_loopback(&endpoint.host) || self.insecure.contains(&endpoint.host));
        let (repository, host_name) = (reference.repository().to_string(), endpoint.host.clone());
        let reference = match (reference.tag(), reference.digest()) {
            (Some(tag), Some(digest)) => Reference::with_tag_and_digest(host_name, repository, tag.into(), digest.into()),
            (None, Some(digest)) => Reference::with_digest(host_name, repository, digest.into()),
            (tag, None) => Reference::with_tag(host_name, repository, tag.unwrap_or("latest").into()),
        };
        Source { reference, auth: host.auth.clone(), plain_http, host }
    }
}

/// Names the mirrored registries only: the rest holds credentials.
impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registries").field("mirrors", &self.mirrors.keys().collect::<Vec<_>>()).field("insecure", &self.insecure).finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `https://host:port`, `http://host:port` or `host:port`.
    fn parse(url: &str) -> Result<Endpoint, String> {
        let (plain_http, rest) = match url.split_once("://") {
            Some(("http", rest)) => (Some(true), rest),
            Some(("https", rest)) => (Some(false), rest),
            Some((scheme, _)) => return Err(format!("endpoint {url:?}: the scheme must be http or https, not {scheme:?}")),
            None => (None, url),
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!("endpoint {url:?} must be a host[:port], with no path"));
        }
        Ok(Endpoint { host: host.to_string(), plain_http })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(sources: &[Source]) -> Vec<String> {
        sources.iter().map(|s| s.reference.whole()).collect()
    }

    #[test]
    fn mirrors_come_before_the_registry() {
        let r = Registries::parse("mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\", \"mirror.example:8443\"]\n", vec![]).unwrap();
        let nginx: Reference = "nginx:1.27".parse().unwrap();
        assert_eq!(hosts(&r.pull_sources(&nginx)), ["127.0.0.1:5000/library/nginx:1.27", "mirror.example:8443/library/nginx:1.27", "index.docker.io/library/nginx:1.27"]);
        let other: Reference = "ghcr.io/a/b@sha256:0000000000000000000000000000000000000000000000000000000000000000".parse().unwrap();
        assert_eq!(r.pull_sources(&other).len(), 1);
        assert_eq!(r.push_target(&nginx).reference.whole(), "index.docker.io/library/nginx:1.27");
    }

    #[test]
    fn the_cluster_registry_maps_to_the_api_server() {
        let r = Registries::new(vec![]).with_cluster("10.0.0.5:6443", vec![], Some("tok"));
        let image: Reference = format!("{CLUSTER_REGISTRY}/hello:v1").parse().unwrap();
        let sources = r.pull_sources(&image);
        assert_eq!(hosts(&sources), ["10.0.0.5:6443/hello:v1"]);
        assert!(matches!(&sources[0].auth, Some(RegistryAuth::Bearer(t)) if t == "tok"));
        assert_eq!(r.push_target(&image).reference.whole(), "10.0.0.5:6443/hello:v1");
        assert!(!r.needs_pod_token(&image));
        // A joined node, with no cluster token: its pods' own tokens, for that registry only.
        let joined = Registries::new(vec![]).with_cluster("10.0.0.5:6443", vec![], None);
        assert!(joined.pull_sources(&image)[0].auth.is_none());
        assert!(joined.needs_pod_token(&image));
        assert!(!joined.needs_pod_token(&"ghcr.io/a/b:v1".parse().unwrap()));
    }

    #[test]
    fn configs_give_credentials_and_bad_files_say_what_is_wrong() {
        let r = Registries::parse("configs:\n  \"https://reg.example\":\n    auth: {username: u, password: p}\n", vec![]).unwrap();
        let image: Reference = "reg.example/x:v1".parse().unwrap();
        assert!(matches!(&r.pull_sources(&image)[0].auth, Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p"));
        for (bad, says) in [
            ("mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n", "scheme"),
            ("mirrors:\n  docker.io:\n    endpoint: [\"http://x/v2\"]\n", "no path"),
            ("configs:\n  x:\n    auth: {username: u}\n", "username and password"),
            ("mirror: {}\n", "unknown field"),
            ("configs:\n  x:\n    tls: {ca_file: /nonexistent/ca.pem}\n", "ca_file"),
        ] {
            let e = Registries::parse(bad, vec![]).err().unwrap_or_default();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(Registries::parse("", vec![]).is_ok());
    }

    proptest::proptest! {
        /// Any text is read as a registries.yaml or refused with a message, never a panic.
        #[test]
        fn any_file_is_read_or_refused(text in "[a-z0-9:/\\[\\]{}\" \n.*_-]{0,120}") {
            let _ = Registries::parse(&text, vec![]);
        }
    }
}
