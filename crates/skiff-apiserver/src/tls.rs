//! HTTPS for the API: a cluster CA and a serving certificate made at first start and kept
//! in the data directory, and the accept loop that serves the router over TLS (HTTP/2 and
//! HTTP/1.1 by ALPN). Kubernetes clients only send bearer tokens over TLS.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("bad PEM in {0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// PEM material of the cluster's CA and the API server's certificate.
pub struct ServingCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io { path: path.display().to_string(), source }),
    }
}

/// Writes a file only its owner can read (keys, tokens, kubeconfigs).
pub fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.display().to_string(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    std::io::Write::write_all(&mut f, contents.as_bytes()).map_err(io)
}

/// Loads the certificates from `dir`, or makes them: a CA, and a serving certificate for
/// `hosts` (names or IPs) plus localhost and the in-cluster names of the API.
pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<ServingCerts, TlsError> {
    let (ca_path, cert_path, key_path) = (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"));
    if let (Some(ca_pem), Some(cert_pem), Some(key_pem)) = (read(&ca_path)?, read(&cert_path)?, read(&key_path)?) {
        return Ok(ServingCerts { ca_pem, cert_pem, key_pem });
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "skiff-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
        .iter().map(|s| s.to_string()).collect();
    names.extend(hosts.iter().filter(|h| !h.is_empty() && h.as_str() != "0.0.0.0").cloned());
    names.dedup();
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "skiff-apiserver");
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    let certs = ServingCerts { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() };
    write_private(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    write_private(&ca_path, &certs.ca_pem)?;
    write_private(&cert_path, &certs.cert_pem)?;
    write_private(&key_path, &certs.key_pem)?;
    Ok(certs)
}

/// A client certificate the cluster CA signed, for `cn` in groups `orgs`, valid for
/// `days`: PEM certificate and key. (The admin's, and the API server's to its agents.)
pub fn client_certificate(dir: &Path, cn: &str, orgs: &[&str], days: i64) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?.ok_or_else(|| TlsError::Pem("ca.key".into()))?)?;
    let ca_pem = read(&dir.join("ca.crt"))?.ok_or_else(|| TlsError::Pem("ca.crt".into()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    // One O per group: rcgen keeps one value per attribute, so groups beyond the first
    // are not written (every certificate Skiff makes names one).
    if let Some(org) = orgs.first() {
        params.distinguished_name.push(DnType::OrganizationName, *org);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The admin's client certificate (`system:admin` in `system:masters`), made at first
/// start beside the token, for the kubeconfig.
pub fn admin_certificate(dir: &Path) -> Result<(String, String), TlsError> {
    let (cert_path, key_path) = (dir.join("admin.crt"), dir.join("admin.key"));
    if let (Some(cert), Some(key)) = (read(&cert_path)?, read(&key_path)?) {
        return Ok((cert, key));
    }
    let (cert, key) = client_certificate(dir, "system:admin", &["system:masters"], 3650)?;
    write_private(&key_path, &key)?;
    write_private(&cert_path, &cert)?;
    Ok((cert, key))
}

fn server_config(certs: &ServingCerts) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
        .collect::<Result<_, _>>().map_err(|_| TlsError::Pem("server.crt".into()))?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes()).map_err(|_| TlsError::Pem("server.key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates are asked for, not required: one the cluster CA signed names
    // its user; a client without one authenticates with a token.
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(certs.ca_pem.as_bytes()) {
        roots.add(ca.map_err(|_| TlsError::Pem("ca.crt".into()))?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Pem(format!("ca.crt: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, router: Router, certs: &ServingCerts, shutdown: impl std::future::Future<Output = ()>) -> Result<(), TlsError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(certs)?));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else { return };
            // The client's address, for the audit log, and the user its verified
            // certificate names, if it sent one.
            let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| crate::authz::ClientCertificate::of(c));
            let service = tower::ServiceExt::map_request(router, move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                if let Some(c) = &certificate {
                    request.extensions_mut().insert(c.clone());
                }
                request
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}
