//! Node client certificates through CertificateSigningRequests, as kube-controller-manager's
//! csrapproving and csrsigning controllers give them: a request for signer
//! `kubernetes.io/kube-apiserver-client-kubelet` whose subject is a node
//! (`O=system:nodes`, `CN=system:node:NAME`) and whose usages are a client's is approved
//! when its requester may create `certificatesigningrequests/nodeclient` (a bootstrap
//! token's user, for a new node) or `/selfnodeclient` (the node itself, renewing), asked
//! through a SubjectAccessReview; an approved one is signed with the cluster CA.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use rcgen::{CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;

use crate::Error;
use crate::children::ignore_gone;
use crate::support::retry;

/// The signer of node client certificates.
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// A certificate's life when the request names none (`spec.expirationSeconds`), as
/// kube-controller-manager's default.
const DEFAULT_LIFE: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest life a request may ask for.
const MIN_LIFE: Duration = Duration::from_secs(600);

/// The cluster CA, PEM, which signs.
#[derive(Clone)]
pub struct Signer {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
}

impl std::fmt::Debug for Signer {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

struct Ctx {
    client: Client,
    signer: Signer,
}

/// The controller; without a CA to sign with, nothing runs.
pub fn controller(client: &Client, signer: Option<Signer>) -> impl Future<Output = ()> + Send + use<> {
    let run = signer.map(|signer| {
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
        Controller::new(api, watcher::Config::default())
            .run(reconcile, retry, Arc::new(Ctx { client: client.clone(), signer }))
            .for_each(|_| async {})
    });
    async move {
        if let Some(run) = run {
            run.await
        }
    }
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten().any(|c| c.type_ == kind && c.status == "True")
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if csr.spec.signer_name != KUBELET_CLIENT || condition(&csr, "Denied") || condition(&csr, "Failed") {
        return Ok(Action::await_change());
    }
    if csr.status.as_ref().is_some_and(|s| s.certificate.is_some()) {
        return Ok(Action::await_change());
    }
    let pem = String::from_utf8(csr.spec.request.0.clone()).map_err(|_| Error::Invalid("spec.request is not PEM".into()))?;
    let request = CertificateSigningRequestParams::from_pem(&pem).map_err(|e| Error::Invalid(format!("spec.request: {e}")))?;
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    // This signer makes node client certificates only, whoever approved the request.
    let Some(subresource) = recognised(&csr, &request) else { return Ok(Action::await_change()) };
    if !condition(&csr, "Approved") {
        if !may_request(&ctx.client, &csr, subresource).await? {
            return Ok(Action::await_change());
        }
        let mut approved = (*csr).clone();
        let status = approved.status.get_or_insert_with(Default::default);
        status.conditions.get_or_insert_with(Vec::new).push(serde_json::from_value(json!({
            "type": "Approved", "status": "True", "reason": "AutoApproved",
            "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
            "lastUpdateTime": jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string(),
        })).map_err(|e| Error::Invalid(e.to_string()))?);
        ignore_gone(api.replace_subresource("approval", &csr.name_any(), &PostParams::default(), &approved).await)?;
        // Signed when the approval comes back through the watch.
        return Ok(Action::await_change());
    }
    let life = csr.spec.expiration_seconds.map(|s| Duration::from_secs(s.max(0) as u64).max(MIN_LIFE)).unwrap_or(DEFAULT_LIFE);
    let certificate = sign(&ctx.signer, request, life)?;
    let mut signed = (*csr).clone();
    signed.status.get_or_insert_with(Default::default).certificate = Some(k8s_openapi::ByteString(certificate.into_bytes()));
    ignore_gone(api.replace_status(&csr.name_any(), &PostParams::default(), &signed).await)?;
    Ok(Action::await_change())
}

fn text(value: Option<&DnValue>) -> Option<String> {
    match value? {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Whether the request is a node client certificate's, and so which subresource its
/// requester must be allowed to create: `selfnodeclient` when the node asks for itself.
fn recognised(csr: &CertificateSigningRequest, request: &CertificateSigningRequestParams) -> Option<&'static str> {
    let dn = &request.params.distinguished_name;
    let (cn, org) = (text(dn.get(&DnType::CommonName))?, text(dn.get(&DnType::OrganizationName))?);
    let node = cn.strip_prefix("system:node:").filter(|n| !n.is_empty())?;
    let usages: Vec<&str> = csr.spec.usages.iter().flatten().map(String::as_str).collect();
    let client_usages = usages.contains(&"client auth") && usages.iter().all(|u| matches!(*u, "client auth" | "digital signature" | "key encipherment"));
    let no_names = request.params.subject_alt_names.is_empty();
    if org != "system:nodes" || !client_usages || !no_names {
        return None;
    }
    Some(if csr.spec.username.as_deref() == Some(format!("system:node:{node}").as_str()) { "selfnodeclient" } else { "nodeclient" })
}

/// Asks the API whether the requester may create `certificatesigningrequests/SUB`.
async fn may_request(client: &Client, csr: &CertificateSigningRequest, subresource: &str) -> Result<bool, Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            groups: csr.spec.groups.clone(),
            uid: csr.spec.uid.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A client certificate for the request's key and subject, signed by the cluster CA,
/// valid from a minute ago (clocks differ) for `life`.
fn sign(signer: &Signer, mut request: CertificateSigningRequestParams, life: Duration) -> Result<String, Error> {
    let invalid = |e: rcgen::Error| Error::Invalid(format!("signing: {e}"));
    let key = KeyPair::from_pem(&signer.ca_key_pem).map_err(invalid)?;
    let issuer = Issuer::from_ca_cert_pem(&signer.ca_cert_pem, key).map_err(invalid)?;
    let now = time::OffsetDateTime::now_utc();
    let p = &mut request.params;
    p.not_before = now - time::Duration::minutes(1);
    p.not_after = now + time::Duration::seconds(life.as_secs() as i64);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    let mut serial = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").map_err(|e| Error::Invalid(e.to_string()))?, &mut serial).map_err(|e| Error::Invalid(e.to_string()))?;
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    Ok(request.signed_by(&issuer).map_err(invalid)?.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, org: &str) -> (String, CertificateSigningRequestParams) {
        let key = KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, org);
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let parsed = CertificateSigningRequestParams::from_pem(&pem).unwrap();
        (pem, parsed)
    }

    fn csr(username: &str, usages: &[&str]) -> CertificateSigningRequest {
        serde_json::from_value(json!({"metadata": {"name": "r"}, "spec": {"request": "", "signerName": KUBELET_CLIENT, "usages": usages, "username": username}})).unwrap()
    }

    #[test]
    fn only_node_client_requests_are_recognised() {
        let (_, node) = request("system:node:edge-1", "system:nodes");
        assert_eq!(recognised(&csr("system:bootstrap:abcdef", &["digital signature", "client auth"]), &node), Some("nodeclient"));
        assert_eq!(recognised(&csr("system:node:edge-1", &["client auth"]), &node), Some("selfnodeclient"));
        assert_eq!(recognised(&csr("system:bootstrap:abcdef", &["client auth", "server auth"]), &node), None, "a client's usages only");
        let (_, admin) = request("system:admin", "system:masters");
        assert_eq!(recognised(&csr("system:bootstrap:abcdef", &["client auth"]), &admin), None);
    }

    #[test]
    fn a_signed_certificate_names_the_node_and_is_the_cas() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let signer = Signer { ca_cert_pem: ca_cert.pem(), ca_key_pem: ca_key.serialize_pem() };
        let (_, node) = request("system:node:edge-1", "system:nodes");
        let pem = sign(&signer, node, Duration::from_secs(3600)).unwrap();
        let issued = rcgen::CertificateParams::from_ca_cert_pem(&pem).unwrap();
        assert_eq!(text(issued.distinguished_name.get(&DnType::CommonName)).as_deref(), Some("system:node:edge-1"));
        assert_eq!(text(issued.distinguished_name.get(&DnType::OrganizationName)).as_deref(), Some("system:nodes"));
        let life = issued.not_after - issued.not_before;
        assert!(life >= time::Duration::minutes(60) && life <= time::Duration::minutes(62));
    }
}
