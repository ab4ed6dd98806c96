//! The certificates a node asks the cluster CA for through CertificateSigningRequests, as
//! kubelet does: its client certificate when it joins with a bootstrap token (signer
//! `kubernetes.io/kube-apiserver-client-kubelet`), and the serving certificate of its
//! HTTPS endpoint (signer `kubernetes.io/kubelet-serving`, naming the node's address),
//! which the API server verifies when it calls the node. Both are kept in the data
//! directory's `pki/` and asked for again when a fifth of their life is left.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::Api;
use kube::api::PostParams;

/// The signer of node client certificates.
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of node serving certificates.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// Where a node keeps its certificates, under its data directory.
pub const PKI: &str = "pki";

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Asks `signer` for a certificate of node `node` (its subject `system:node:NODE` in
/// `system:nodes`) naming `names` (addresses and host names; none for a client
/// certificate), and waits up to a minute for it to be approved and signed.
pub async fn request(client: kube::Client, signer: &str, node: &str, names: &[String]) -> anyhow::Result<Issued> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let pem = params.serialize_request(&key)?.pem()?;
    let usages = if signer == KUBELET_SERVING { ["digital signature", "server auth"] } else { ["digital signature", "client auth"] };
    let prefix = if signer == KUBELET_SERVING { "node-serving" } else { "node-csr" };
    let name = format!("{prefix}-{node}-{}", jiff::Timestamp::now().as_nanosecond());
    let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(&pem), "signerName": signer, "usages": usages},
    }))?;
    let api: Api<CertificateSigningRequest> = Api::all(client);
    api.create(&PostParams::default(), &csr).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 401 && signer == KUBELET_CLIENT => anyhow::anyhow!("the API server refused the join token (401 {}): is it right, and not expired?", s.message),
        other => anyhow::anyhow!("asking for node {node}'s certificate ({signer}): {other}"),
    })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = api.get(&name).await?.status.unwrap_or_default();
        if let Some(c) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert_pem = String::from_utf8(c.0).context("the signed certificate is not PEM")?;
            return Ok(Issued { cert_pem, key_pem: key.serialize_pem() });
        }
        if let Some(c) = status.conditions.iter().flatten().find(|c| matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True") {
            bail!("node {node}'s certificate request {name} was {}: {}", c.type_.to_lowercase(), c.message.clone().unwrap_or_default());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {node}'s certificate request {name} was not signed within a minute (are the controllers running?)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When a certificate (PEM) should be renewed: with a fifth of its life left, as kubelet
/// does (it picks a moment between 70% and 90%). None if it does not parse.
pub fn renew_at(pem: &str) -> Option<jiff::Timestamp> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    let (from, to) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    jiff::Timestamp::from_second(to - (to - from) / 5).ok()
}

/// Whether a certificate has more than a fifth of its life left.
pub fn still_good(pem: &str) -> bool {
    renew_at(pem).is_some_and(|at| jiff::Timestamp::now() < at)
}

/// Whether a certificate has not expired yet.
pub fn still_valid(pem: &str) -> bool {
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else { return false };
    block.parse_x509().is_ok_and(|cert| jiff::Timestamp::now().as_second() < cert.validity().not_after.timestamp())
}

/// The certificate `dir/NAME.crt` with its key `dir/NAME.key`, if both are there.
pub fn load(dir: &Path, name: &str) -> Option<Issued> {
    let cert_pem = std::fs::read_to_string(dir.join(format!("{name}.crt"))).ok()?;
    let key_pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).ok()?;
    Some(Issued { cert_pem, key_pem })
}

/// Keeps `issued` as `dir/NAME.crt` and `dir/NAME.key`, readable by the owner only.
pub fn store(dir: &Path, name: &str, issued: &Issued) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in [(format!("{name}.key"), &issued.key_pem), (format!("{name}.crt"), &issued.cert_pem)] {
        let path = dir.join(file);
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Whether a certificate names exactly `names` (IP addresses and DNS names).
pub fn names_match(pem: &str, names: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else { return false };
    let Ok(cert) = block.parse_x509() else { return false };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return names.is_empty() };
    let mut found: Vec<String> = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
            16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
            _ => None,
        },
        _ => None,
    }).collect();
    let mut wanted = names.to_vec();
    found.sort();
    wanted.sort();
    found == wanted
}
