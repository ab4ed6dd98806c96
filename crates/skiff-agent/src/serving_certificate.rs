//! The certificate the agent's HTTPS endpoint serves: the one the cluster CA signed for
//! this node, asked for through a CertificateSigningRequest ([`crate::node_certificates`])
//! once the Node is registered, and asked for again with a fifth of its life left, swapped
//! in while the endpoint serves. The API server verifies it against the cluster CA; until
//! the first is signed, a self-signed stand-in is served (and refused by the API server).

use std::sync::Arc;
use std::time::Duration;

use crate::{Agent, node_certificates};

/// The names the endpoint's certificate carries: the node's address and its name.
fn serving_names(agent: &Agent) -> Vec<String> {
    vec![agent.config.node_ip.clone(), agent.config.node_name.clone()]
}

/// The serving certificate's file name under the data directory's `pki/`.
const SERVING: &str = "serving";
/// How long to wait before asking again when a request for a certificate failed.
const RETRY: Duration = Duration::from_secs(30);

/// The certificate the endpoint presents, replaced while it serves.
#[derive(Debug)]
pub struct ServingCertificate(std::sync::RwLock<(Arc<rustls::sign::CertifiedKey>, String)>);

impl ServingCertificate {
    /// The certificate kept from an earlier start, if it has not expired and names this
    /// node as it is now (one due is renewed by [`keep`]); otherwise a self-signed
    /// stand-in until the CA signs one.
    pub fn at_start(agent: &Agent) -> anyhow::Result<Self> {
        let names = serving_names(agent);
        let stored = node_certificates::load(&agent.config.data_dir.join(node_certificates::PKI), SERVING)
            .filter(|c| node_certificates::still_valid(&c.cert_pem) && node_certificates::names_match(&c.cert_pem, &names));
        let first = match stored {
            Some(issued) => issued,
            None => {
                let cert = rcgen::generate_simple_self_signed(names)?;
                node_certificates::Issued { cert_pem: cert.cert.pem(), key_pem: cert.signing_key.serialize_pem() }
            }
        };
        Self::new(&first)
    }

    fn new(issued: &node_certificates::Issued) -> anyhow::Result<Self> {
        Ok(Self(std::sync::RwLock::new((certified_key(issued)?, issued.cert_pem.clone()))))
    }

    fn set(&self, issued: &node_certificates::Issued) -> anyhow::Result<()> {
        *self.0.write().expect("certificate lock") = (certified_key(issued)?, issued.cert_pem.clone());
        Ok(())
    }

    fn pem(&self) -> String {
        self.0.read().expect("certificate lock").1.clone()
    }
}

impl rustls::server::ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().expect("certificate lock").0.clone())
    }
}

fn certified_key(issued: &node_certificates::Issued) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls::crypto::ring::default_provider().key_provider.load_private_key(PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, key)))
}

/// Asks the cluster CA for the endpoint's certificate (once the Node is registered, with
/// its address, which the approver checks), serves it, and asks again when a fifth of its
/// life is left. A node whose certificate is not signed keeps the one it has.
pub async fn keep(agent: Arc<Agent>, certificate: Arc<ServingCertificate>) {
    let (names, dir) = (serving_names(&agent), agent.config.data_dir.join(node_certificates::PKI));
    // The one served at start may be the self-signed stand-in, or one kept from before.
    let mut from_the_ca = signed_by_cluster(&agent, &certificate.pem());
    loop {
        let current = certificate.pem();
        if from_the_ca && node_certificates::still_good(&current) && node_certificates::names_match(&current, &names) {
            let at = node_certificates::renew_at(&current).unwrap_or_else(jiff::Timestamp::now);
            let wait = at.duration_since(jiff::Timestamp::now()).unsigned_abs();
            tokio::time::sleep(wait).await;
            continue;
        }
        let asked = node_certificates::request(agent.client.clone(), node_certificates::KUBELET_SERVING, &agent.config.node_name, &names).await;
        match asked.and_then(|issued| {
            certificate.set(&issued)?;
            node_certificates::store(&dir, SERVING, &issued)
        }) {
            Ok(()) => {
                from_the_ca = true;
                tracing::info!(node = %agent.config.node_name, "serving with the certificate the cluster CA signed");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no serving certificate from the cluster CA yet; asking again soon");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Whether a certificate is the cluster CA's (its issuer is the CA), not the self-signed
/// stand-in; the API server's handshake checks the signature itself.
fn signed_by_cluster(agent: &Agent, pem: &str) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else { return false };
    let Ok(cert) = block.parse_x509() else { return false };
    agent.config.cluster_ca.iter().any(|ca| x509_parser::certificate::X509Certificate::from_der(ca).is_ok_and(|(_, ca)| ca.subject() == cert.issuer()))
}
