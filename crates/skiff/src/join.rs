//! Joining nodes with bootstrap tokens, as kubeadm and kubelet do. `skiff token create`
//! makes a token (a Secret in `kube-system`, which the API server takes as
//! `system:bootstrap:ID`); `skiff agent --server URL --token ID.SECRET` uses it once, to
//! ask for the node's client certificate (a CertificateSigningRequest the controllers
//! approve and sign with the cluster CA), keeps the certificate and key in its data
//! directory, and from then on is `system:node:NAME`, which the Node authorizer holds to
//! its own pods' objects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;

/// Where a joined node keeps its credential, under its data directory.
const PKI: &str = "pki";
/// The signer of node client certificates.
const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
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
    let ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    token.split_once('.').is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

/// The node's client certificate and key (PEM) in `data_dir`, asked for with the
/// bootstrap token in `bootstrap` when there is none yet or the one there has less than a
/// fifth of its life left.
pub async fn node_credential(bootstrap: &kube::Config, node: &str, data_dir: &Path) -> anyhow::Result<(String, String)> {
    let dir = data_dir.join(PKI);
    let (cert_path, key_path) = (dir.join("node.crt"), dir.join("node.key"));
    if let (Ok(cert), Ok(key)) = (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path))
        && still_good(&cert)
    {
        return Ok((cert, key));
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let request = params.serialize_request(&key)?.pem()?;
    let name = format!("node-csr-{}", random(8)?);
    let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(&request),
            "signerName": KUBELET_CLIENT,
            "usages": ["digital signature", "client auth"],
        },
    }))?;
    let api: Api<CertificateSigningRequest> = Api::all(kube::Client::try_from(bootstrap.clone())?);
    api.create(&PostParams::default(), &csr).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!("the API server refused the join token (401 {}): is it right, and not expired?", s.message),
        other => anyhow::anyhow!("asking for node {node}'s certificate: {other}"),
    })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let certificate = loop {
        let got = api.get(&name).await?;
        let status = got.status.unwrap_or_default();
        if let Some(c) = status.certificate.filter(|c| !c.0.is_empty()) {
            break String::from_utf8(c.0).context("the signed certificate is not PEM")?;
        }
        if let Some(c) = status.conditions.iter().flatten().find(|c| matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True") {
            bail!("node {node}'s certificate request {name} was {}: {}", c.type_.to_lowercase(), c.message.clone().unwrap_or_default());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {node}'s certificate request {name} was not signed within a minute (are the controllers running?)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    skiff_apiserver::tls::write_private(&key_path, &key.serialize_pem())?;
    skiff_apiserver::tls::write_private(&cert_path, &certificate)?;
    Ok((certificate, key.serialize_pem()))
}

/// Whether a certificate (PEM) has more than a fifth of its life left.
fn still_good(pem: &str) -> bool {
    use x509_parser::prelude::FromDer;
    let Some(der) = crate::agent::pem_to_der(pem.as_bytes()) else { return false };
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(&der) else { return false };
    let (from, to) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    let now = jiff::Timestamp::now().as_second();
    now < to - (to - from) / 5
}
