//! Node certificates through CertificateSigningRequests, as kube-controller-manager's
//! csrapproving and csrsigning controllers give them. A request for signer
//! `kubernetes.io/kube-apiserver-client-kubelet` whose subject is a node
//! (`O=system:nodes`, `CN=system:node:NAME`) and whose usages are a client's is approved
//! when its requester may create `certificatesigningrequests/nodeclient` (a bootstrap
//! token's user, for a new node) or `/selfnodeclient` (the node itself, renewing), asked
//! through a SubjectAccessReview. A request for `kubernetes.io/kubelet-serving` is
//! approved when the node asks for itself (or someone who may `approve` that signer asks, as
//! an agent running with the cluster's token does) and every name it carries is the node's name or
//! one of the addresses in its Node's status (Kubernetes leaves these to an administrator
//! or an add-on approver; Skiff's agents ask for them at every start, so it approves the
//! ones it can check). An approved request is signed with the cluster CA. Requests are
//! deleted an hour after they were decided, or after a day pending, as csrcleaner does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use rcgen::{CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType};
use serde_json::json;

use crate::Error;
use crate::children::ignore_gone;
use crate::support::retry;

/// The signer of node client certificates.
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of node serving certificates.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// A certificate's longest life, as kube-controller-manager's default: a year.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest life a request may ask for.
const MIN_LIFE: Duration = Duration::from_secs(600);

/// The cluster CA, PEM, which signs, and the longest life it gives a certificate
/// (kube-controller-manager's `--cluster-signing-duration`; a request's
/// `expirationSeconds` may ask for less).
#[derive(Clone)]
pub struct Signer {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub duration: Duration,
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
            .run(crate::metrics::metered("csrsigning", reconcile), retry, Arc::new(Ctx { client: client.clone(), signer }))
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
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let left = kept_for(&csr, jiff::Timestamp::now());
    if left.is_zero() {
        ignore_gone(api.delete(&csr.name_any(), &Default::default()).await)?;
        return Ok(Action::await_change());
    }
    approve_and_sign(&csr, &ctx, &api).await?;
    Ok(Action::requeue(left))
}

/// How long a request is kept, as kube-controller-manager's csrcleaner keeps them: an
/// approved, denied or failed one for an hour after that, a pending one for a day.
fn kept_for(csr: &CertificateSigningRequest, now: jiff::Timestamp) -> Duration {
    let created = csr.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
    let decided = csr.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten()
        .filter(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed") && c.status == "True")
        .map(|c| c.last_update_time.as_ref().map_or(created, |t| t.0))
        .max();
    let until = match decided {
        Some(at) => at + jiff::SignedDuration::from_hours(1),
        None => created + jiff::SignedDuration::from_hours(24),
    };
    until.duration_since(now).try_into().unwrap_or(Duration::ZERO)
}

/// Approves a request of these signers that its requester may make, and signs an
/// approved one.
async fn approve_and_sign(csr: &CertificateSigningRequest, ctx: &Ctx, api: &Api<CertificateSigningRequest>) -> Result<(), Error> {
    let ours = matches!(csr.spec.signer_name.as_str(), KUBELET_CLIENT | KUBELET_SERVING);
    if !ours || condition(csr, "Denied") || condition(csr, "Failed") || csr.status.as_ref().is_some_and(|s| s.certificate.is_some()) {
        return Ok(());
    }
    let pem = String::from_utf8(csr.spec.request.0.clone()).map_err(|_| Error::Invalid("spec.request is not PEM".into()))?;
    let request = CertificateSigningRequestParams::from_pem(&pem).map_err(|e| Error::Invalid(format!("spec.request: {e}")))?;
    // These signers make node certificates only, whoever approved the request.
    let Some(purpose) = recognised(csr, &request) else { return Ok(()) };
    if !condition(csr, "Approved") {
        let message = match &purpose {
            Purpose::Client(subresource) if may(&ctx.client, csr, "create", &format!("certificatesigningrequests/{subresource}")).await? => {
                "Auto approving kubelet client certificate after SubjectAccessReview."
            }
            Purpose::Serving { node, by_itself } if names_are_the_nodes(&ctx.client, node, &request).await?
                && (*by_itself || may(&ctx.client, csr, "approve", &format!("signers/{KUBELET_SERVING}")).await?) => {
                "Auto approving kubelet serving certificate: its names are the node's own."
            }
            _ => return Ok(()),
        };
        let mut approved = csr.clone();
        let status = approved.status.get_or_insert_with(Default::default);
        status.conditions.get_or_insert_with(Vec::new).push(serde_json::from_value(json!({
            "type": "Approved", "status": "True", "reason": "AutoApproved", "message": message,
            "lastUpdateTime": jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string(),
        })).map_err(|e| Error::Invalid(e.to_string()))?);
        ignore_gone(api.replace_subresource("approval", &csr.name_any(), &PostParams::default(), &approved).await)?;
        // Signed when the approval comes back through the watch.
        return Ok(());
    }
    let asked = csr.spec.expiration_seconds.map(|s| Duration::from_secs(s.max(0) as u64).max(MIN_LIFE));
    let life = asked.map_or(ctx.signer.duration, |asked| asked.min(ctx.signer.duration));
    let certificate = sign(&ctx.signer, request, life, &purpose)?;
    let mut signed = csr.clone();
    signed.status.get_or_insert_with(Default::default).certificate = Some(k8s_openapi::ByteString(certificate.into_bytes()));
    ignore_gone(api.replace_status(&csr.name_any(), &PostParams::default(), &signed).await)?;
    Ok(())
}

fn text(value: Option<&DnValue>) -> Option<String> {
    match value? {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// What a request this controller signs is for.
#[derive(Debug, PartialEq)]
enum Purpose {
    /// A node's client certificate, whose requester must be allowed to create this
    /// subresource of `certificatesigningrequests`: `selfnodeclient` when the node asks for
    /// itself, `nodeclient` otherwise.
    Client(&'static str),
    /// Node `node`'s serving certificate, asked for by the node itself or (as for an agent
    /// that runs with the cluster's token) by someone who may approve it anyway.
    Serving { node: String, by_itself: bool },
}

/// Whether the request is a node certificate's, and which: the signer, the subject, the
/// usages and the names must all be a node client's or a node server's.
fn recognised(csr: &CertificateSigningRequest, request: &CertificateSigningRequestParams) -> Option<Purpose> {
    let dn = &request.params.distinguished_name;
    let (cn, org) = (text(dn.get(&DnType::CommonName))?, text(dn.get(&DnType::OrganizationName))?);
    let node = cn.strip_prefix("system:node:").filter(|n| !n.is_empty())?;
    let usages: Vec<&str> = csr.spec.usages.iter().flatten().map(String::as_str).collect();
    let only = |wanted: &str| usages.contains(&wanted) && usages.iter().all(|u| matches!(*u, "digital signature" | "key encipherment") || *u == wanted);
    let by_itself = csr.spec.username.as_deref() == Some(cn.as_str());
    let names = &request.params.subject_alt_names;
    if org != "system:nodes" {
        return None;
    }
    match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT if only("client auth") && names.is_empty() => Some(Purpose::Client(if by_itself { "selfnodeclient" } else { "nodeclient" })),
        KUBELET_SERVING if only("server auth") && !names.is_empty() => {
            names.iter().all(|n| matches!(n, SanType::DnsName(_) | SanType::IpAddress(_))).then(|| Purpose::Serving { node: node.to_string(), by_itself })
        }
        _ => None,
    }
}

/// Whether every name of a serving certificate's request is node `node`'s name or one of
/// the addresses (and host names) its Node's status gives.
async fn names_are_the_nodes(client: &Client, node: &str, request: &CertificateSigningRequestParams) -> Result<bool, Error> {
    let Some(found) = Api::<Node>::all(client.clone()).get_opt(node).await? else { return Ok(false) };
    let mut known: Vec<String> = found.status.and_then(|s| s.addresses).into_iter().flatten().map(|a| a.address).collect();
    known.push(node.to_string());
    Ok(request.params.subject_alt_names.iter().all(|n| match n {
        SanType::DnsName(d) => known.iter().any(|k| k == d.as_str()),
        SanType::IpAddress(ip) => known.iter().any(|k| k.parse::<std::net::IpAddr>().is_ok_and(|k| k == *ip)),
        _ => false,
    }))
}

/// Asks the API whether the requester may `verb` the `resource` (with its subresource
/// after a `/`) of group certificates.k8s.io: `create certificatesigningrequests/nodeclient`,
/// or `approve signers/SIGNER` (asked as Kubernetes asks it: the signer as the name).
async fn may(client: &Client, csr: &CertificateSigningRequest, verb: &str, resource: &str) -> Result<bool, Error> {
    let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let (subresource, name) = match resource {
        "signers" => (None, Some(sub.to_string())),
        _ => (Some(sub.to_string()).filter(|s| !s.is_empty()), None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            groups: csr.spec.groups.clone(),
            uid: csr.spec.uid.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some(resource.into()),
                subresource,
                name,
                verb: Some(verb.into()),
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

/// A certificate for the request's key, subject and names, signed by the cluster CA for a
/// client or a server as `purpose` says, valid from a minute ago (clocks differ) for `life`.
fn sign(signer: &Signer, mut request: CertificateSigningRequestParams, life: Duration, purpose: &Purpose) -> Result<String, Error> {
    let invalid = |e: rcgen::Error| Error::Invalid(format!("signing: {e}"));
    let key = KeyPair::from_pem(&signer.ca_key_pem).map_err(invalid)?;
    let issuer = Issuer::from_ca_cert_pem(&signer.ca_cert_pem, key).map_err(invalid)?;
    let now = time::OffsetDateTime::now_utc();
    let p = &mut request.params;
    p.not_before = now - time::Duration::minutes(1);
    p.not_after = now + time::Duration::seconds(life.as_secs() as i64);
    (p.key_usages, p.extended_key_usages) = match purpose {
        Purpose::Client(_) => (vec![KeyUsagePurpose::DigitalSignature], vec![ExtendedKeyUsagePurpose::ClientAuth]),
        Purpose::Serving { .. } => (vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment], vec![ExtendedKeyUsagePurpose::ServerAuth]),
    };
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
        named(cn, org, &[])
    }

    fn named(cn: &str, org: &str, names: &[&str]) -> (String, CertificateSigningRequestParams) {
        let key = KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, org);
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let parsed = CertificateSigningRequestParams::from_pem(&pem).unwrap();
        (pem, parsed)
    }

    fn csr(username: &str, usages: &[&str]) -> CertificateSigningRequest {
        for_signer(KUBELET_CLIENT, username, usages)
    }

    fn for_signer(signer: &str, username: &str, usages: &[&str]) -> CertificateSigningRequest {
        serde_json::from_value(json!({"metadata": {"name": "r"}, "spec": {"request": "", "signerName": signer, "usages": usages, "username": username}})).unwrap()
    }

    #[test]
    fn only_node_client_requests_are_recognised() {
        let (_, node) = request("system:node:edge-1", "system:nodes");
        assert_eq!(recognised(&csr("system:bootstrap:abcdef", &["digital signature", "client auth"]), &node), Some(Purpose::Client("nodeclient")));
        assert_eq!(recognised(&csr("system:node:edge-1", &["client auth"]), &node), Some(Purpose::Client("selfnodeclient")));
        assert_eq!(recognised(&csr("system:bootstrap:abcdef", &["client auth", "server auth"]), &node), None, "a client's usages only");
        let (_, admin) = request("system:admin", "system:masters");
        assert_eq!(recognised(&csr("system:bootstrap:abcdef", &["client auth"]), &admin), None);
        let (_, named_client) = named("system:node:edge-1", "system:nodes", &["10.0.0.1"]);
        assert_eq!(recognised(&csr("system:node:edge-1", &["client auth"]), &named_client), None, "a client certificate names nothing");
    }

    #[test]
    fn requests_are_kept_an_hour_after_the_decision_or_a_day_pending() {
        let now: jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let at = |t: &str| json!(t);
        let pending: CertificateSigningRequest = serde_json::from_value(json!({"metadata": {"name": "r", "creationTimestamp": at("2026-12-02T11:00:00Z")},
            "spec": {"request": "", "signerName": KUBELET_CLIENT}})).unwrap();
        assert_eq!(kept_for(&pending, now), Duration::from_secs(23 * 3600));
        let mut approved = pending.clone();
        approved.status = serde_json::from_value(json!({"conditions": [{"type": "Approved", "status": "True", "lastUpdateTime": at("2026-12-02T11:30:00Z")}]})).unwrap();
        assert_eq!(kept_for(&approved, now), Duration::from_secs(1800));
        let mut old = pending.clone();
        old.metadata.creation_timestamp = serde_json::from_value(at("2026-11-30T11:00:00Z")).unwrap();
        assert_eq!(kept_for(&old, now), Duration::ZERO);
    }

    #[test]
    fn serving_requests_say_whether_the_node_asked_for_itself() {
        let (_, serving) = named("system:node:edge-1", "system:nodes", &["10.0.0.1", "edge-1"]);
        let usages = ["digital signature", "key encipherment", "server auth"];
        assert_eq!(recognised(&for_signer(KUBELET_SERVING, "system:node:edge-1", &usages), &serving), Some(Purpose::Serving { node: "edge-1".into(), by_itself: true }));
        let by_other = Some(Purpose::Serving { node: "edge-1".into(), by_itself: false });
        assert_eq!(recognised(&for_signer(KUBELET_SERVING, "system:node:edge-2", &usages), &serving), by_other, "another node: approved only if it may approve");
        assert_eq!(recognised(&for_signer(KUBELET_SERVING, "system:node:edge-1", &["server auth", "client auth"]), &serving), None, "a server's usages only");
        let (_, unnamed) = request("system:node:edge-1", "system:nodes");
        assert_eq!(recognised(&for_signer(KUBELET_SERVING, "system:node:edge-1", &usages), &unnamed), None, "a serving certificate names the node");
    }

    #[test]
    fn a_signed_certificate_names_the_node_and_is_the_cas() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let signer = Signer { ca_cert_pem: ca_cert.pem(), ca_key_pem: ca_key.serialize_pem(), duration: DEFAULT_DURATION };
        let (_, node) = request("system:node:edge-1", "system:nodes");
        let pem = sign(&signer, node, Duration::from_secs(3600), &Purpose::Client("nodeclient")).unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let issued = block.parse_x509().unwrap();
        let (subject, issuer) = (issued.subject(), issued.issuer());
        assert_eq!(subject.iter_common_name().next().map(|v| v.as_str().unwrap()), Some("system:node:edge-1"));
        assert_eq!(subject.iter_organization().next().map(|v| v.as_str().unwrap()), Some("system:nodes"));
        assert_eq!(issuer.iter_common_name().next().map(|v| v.as_str().unwrap()), Some("test-ca"));
        let life = issued.validity().not_after.timestamp() - issued.validity().not_before.timestamp();
        assert!((3600..=3720).contains(&life), "{life}");
    }
}
