//! Joining nodes with bootstrap tokens, as kubeadm and kubelet do. `skiff token create`
//! makes a token (a Secret in `kube-system`, which the API server takes as
//! `system:bootstrap:ID`); `skiff agent --server URL --token ID.SECRET` uses it once, to
//! ask for the node's client certificate (a CertificateSigningRequest the controllers
//! approve and sign with the cluster CA), keeps the certificate and key in its data
//! directory, and from then on is `system:node:NAME`, which the Node authorizer holds to
//! its own pods' objects.

use std::path::{Path, PathBuf};

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
/// bootstrap token in `bootstrap` when there is none yet or the one there has less than a
/// fifth of its life left.
pub async fn node_credential(bootstrap: &kube::Config, node: &str, data_dir: &Path) -> anyhow::Result<(String, String)> {
    let dir = data_dir.join(node_certificates::PKI);
    let issued = match node_certificates::load(&dir, CLIENT) {
        Some(issued) => issued,
        None => {
            let issued = node_certificates::request(kube::Client::try_from(bootstrap.clone())?, node_certificates::KUBELET_CLIENT, node, &[]).await?;
            node_certificates::store(&dir, CLIENT, &issued)?;
            issued
        }
    };
    Ok((issued.cert_pem, issued.key_pem))
}
