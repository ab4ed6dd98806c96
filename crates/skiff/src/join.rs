//! Joining nodes with bootstrap tokens, as kubeadm and kubelet do. `skiff token create`
//! makes a token (a Secret in `kube-system`, which the API server takes as
//! `system:bootstrap:ID`); `skiff agent --server URL --token ID.SECRET` uses it once, to
//! ask for the node's client certificate (a CertificateSigningRequest the controllers
//! approve and sign with the cluster CA), keeps the certificate and key in its data
//! directory, and from then on is `system:node:NAME`, which the Node authorizer holds to
//! its own pods' objects.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use skiff_agent::node_certificates;

/// The node's client certificate's file name under its data directory's `pki/`.
const CLIENT: &str = "node";
/// A token's extra group, as kubeadm's default token has its own.
const TOKEN_GROUP: &str = "system:bootstrappers:skiff:default-node-token";

/// `n` characters of `[a-z0-9]` from the OS's randomness.
fn random(n: usize) -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::new();
    while out.len() < n {
        let mut bytes = vec![0u8; n];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes).context("reading /dev/urandom")?;
        // 256 is not a multiple of 36: bytes from 252 up are drawn again, so each
        // character is equally likely.
        out.extend(bytes.into_iter().filter(|b| *b < 252).map(|b| ALPHABET[(b % 36) as usize] as char).take(n - out.len()));
    }
    Ok(out)
}

/// `skiff token create`: a bootstrap token valid for `ttl` (as `24h`, `90m`; 0 never
/// expires), printed as `ID.SECRET`.
pub async fn create_token(kubeconfig: Option<PathBuf>, ttl: &str, description: Option<String>) -> anyhow::Result<()> {
    let span: jiff::Span = ttl.parse().with_context(|| format!("--ttl {ttl:?} is not a duration such as 24h or 90m"))?;
    let ttl = jiff::SignedDuration::try_from(span).with_context(|| format!("--ttl {ttl:?} is not a fixed duration"))?;
    anyhow::ensure!(!ttl.is_negative(), "--ttl must not be negative");
    let config = crate::client::kube_config(kubeconfig).await?;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)?;
    let (id, secret) = (random(6)?, random(16)?);
    let mut data = serde_json::json!({
        "token-id": id, "token-secret": secret,
        "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
        "auth-extra-groups": TOKEN_GROUP,
    });
    if !ttl.is_zero() {
        data["expiration"] = serde_json::json!(jiff::Timestamp::now().checked_add(ttl)?.round(jiff::Unit::Second)?.to_string());
    }
    if let Some(d) = description {
        data["description"] = serde_json::json!(d);
    }
    let object: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": data,
    }))?;
    Api::<Secret>::namespaced(client, "kube-system").create(&PostParams::default(), &object).await
        .map_err(|e| anyhow::anyhow!("creating the token at {server}: {e}"))?;
    println!("{id}.{secret}");
    eprintln!("join a node with: skiff agent --server {server} --token {id}.{secret} --certificate-authority CA.crt");
    Ok(())
}

/// Whether `token` has the bootstrap form `ID.SECRET`.
pub fn is_bootstrap_token(token: &str) -> bool {
    skiff_apiserver::authz::bootstrap_tokens::parse(token).is_some()
}

/// The node's client certificate and key (PEM) in `data_dir`, asked for with the
/// bootstrap token in `bootstrap` when there is none yet or the one there has expired
/// (one due for renewal is renewed by [`NodeClient::keep_renewed`], as the node itself).
pub async fn node_credential(bootstrap: &kube::Config, node: &str, data_dir: &Path) -> anyhow::Result<node_certificates::Issued> {
    let dir = data_dir.join(node_certificates::PKI);
    if let Some(issued) = node_certificates::load(&dir, CLIENT).filter(|i| node_certificates::still_valid(&i.cert_pem)) {
        return Ok(issued);
    }
    let issued = node_certificates::request(kube::Client::try_from(bootstrap.clone())?, node_certificates::KUBELET_CLIENT, node, &[]).await?;
    node_certificates::store(&dir, CLIENT, &issued)?;
    Ok(issued)
}

/// `config` presenting `issued` as its client certificate, in place of any token.
fn with_certificate(mut config: kube::Config, issued: &node_certificates::Issued) -> kube::Config {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    config.auth_info.token = None;
    config.auth_info.client_certificate_data = Some(b64(&issued.cert_pem));
    config.auth_info.client_key_data = Some(b64(&issued.key_pem).into());
    config
}

/// A joined node's API client, which keeps its client certificate renewed while the agent
/// runs, as kubelet's certificate manager does: every request goes through the client of
/// the newest certificate (connections already open keep the one they were made with).
#[derive(Clone)]
pub struct NodeClient {
    current: Arc<RwLock<kube::Client>>,
    config: kube::Config,
    node: String,
    dir: PathBuf,
}

/// How long to wait before asking again when a renewal failed.
const RETRY: Duration = Duration::from_secs(30);

impl NodeClient {
    /// The node's client from `config` (its server, CA and headers) and its certificate.
    pub fn new(config: kube::Config, issued: &node_certificates::Issued, node: &str, data_dir: &Path) -> anyhow::Result<NodeClient> {
        let client = kube::Client::try_from(with_certificate(config.clone(), issued))?;
        Ok(NodeClient { current: Arc::new(RwLock::new(client)), config, node: node.into(), dir: data_dir.join(node_certificates::PKI) })
    }

    /// A `kube::Client` whose requests go to whichever client is current.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), self.config.default_namespace.clone())
    }

    /// Asks for a new certificate (as the node, which the controllers approve as
    /// `selfnodeclient`) with a fifth of the current one's life left, keeps it and swaps
    /// it in; runs while the agent does.
    pub async fn keep_renewed(self) {
        loop {
            let current = std::fs::read_to_string(self.dir.join(format!("{CLIENT}.crt"))).unwrap_or_default();
            let at = node_certificates::renew_at(&current).unwrap_or_else(jiff::Timestamp::now);
            let wait = at.duration_since(jiff::Timestamp::now());
            if wait.is_positive() {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
            match self.renew().await {
                Ok(()) => tracing::info!(node = %self.node, "renewed the node's client certificate"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not renew the node's client certificate; asking again soon");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    async fn renew(&self) -> anyhow::Result<()> {
        let asking = self.current.read().unwrap().clone();
        let issued = node_certificates::request(asking, node_certificates::KUBELET_CLIENT, &self.node, &[]).await?;
        let client = kube::Client::try_from(with_certificate(self.config.clone(), &issued))?;
        node_certificates::store(&self.dir, CLIENT, &issued)?;
        *self.current.write().unwrap() = client;
        Ok(())
    }
}

impl tower::Service<http::Request<kube::client::Body>> for NodeClient {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, kube::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), kube::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let client = self.current.read().unwrap().clone();
        Box::pin(async move { client.send(request).await })
    }
}
