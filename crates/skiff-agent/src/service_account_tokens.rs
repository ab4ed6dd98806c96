//! The ServiceAccount tokens of pods' projected `serviceAccountToken` sources, kept as
//! kubelet keeps them: requested through the TokenRequest API, bound to the pod (so they
//! stop working once it is deleted), with the source's audience and lifetime, and
//! requested again once 80% of that lifetime has passed (24 h at most), so the file in the
//! volume always holds a valid token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::env::ConfigError;

/// A projection's lifetime when it names none (Kubernetes' default).
const DEFAULT_SECONDS: i64 = 3600;
/// The lifetime of a token asked for one use, such as an image pull (the API's least).
const PULL_SECONDS: i64 = 600;
/// A token is renewed after this share of its lifetime.
const RENEW_AFTER: f64 = 0.8;
/// ... or after a day, whichever is sooner.
const RENEW_AT_MOST_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Token requests in flight at once: a burst of pod starts asks for its tokens at a pace
/// the API server can take beside the burst's other writes, as kubelet's client limits
/// its request rate.
const CONCURRENT_REQUESTS: usize = 16;

/// One token a pod's volumes hold: by pod, audience and lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Wanted {
    pod_uid: String,
    audience: String,
    seconds: i64,
}

impl Wanted {
    fn of(pod: &Pod, source: &ServiceAccountTokenProjection) -> Wanted {
        Wanted { pod_uid: pod.uid().unwrap_or_default(), audience: source.audience.clone().unwrap_or_default(), seconds: source.expiration_seconds.unwrap_or(DEFAULT_SECONDS) }
    }
}

struct Issued {
    token: String,
    renew_at: Instant,
}

/// The tokens of the node's pods.
pub struct ServiceAccountTokens {
    client: Client,
    issued: Mutex<HashMap<Wanted, Issued>>,
    requests: tokio::sync::Semaphore,
}

impl ServiceAccountTokens {
    pub fn new(client: Client) -> Self {
        ServiceAccountTokens { client, issued: Mutex::default(), requests: tokio::sync::Semaphore::new(CONCURRENT_REQUESTS) }
    }

    /// Requests each token the pod's volumes need that it does not have or that is due
    /// for renewal; says whether any was. An error names the account; tokens already held
    /// stay.
    pub async fn renew(&self, pod: &Pod) -> Result<bool, ConfigError> {
        let mut renewed = false;
        for source in sources(pod) {
            renewed |= self.held_or_requested(pod, Wanted::of(pod, source)).await?.1;
        }
        Ok(renewed)
    }

    /// A token of the pod's for `audience` (as an image pull asks for the cluster's
    /// registry), requested unless one held is still fresh.
    pub async fn for_audience(&self, pod: &Pod, audience: &str) -> Result<String, ConfigError> {
        let wanted = Wanted { pod_uid: pod.uid().unwrap_or_default(), audience: audience.into(), seconds: PULL_SECONDS };
        Ok(self.held_or_requested(pod, wanted).await?.0)
    }

    /// The token held for `wanted` while it is fresh, else one requested and kept; and
    /// whether it is new.
    async fn held_or_requested(&self, pod: &Pod, wanted: Wanted) -> Result<(String, bool), ConfigError> {
        if let Some(held) = self.issued.lock().unwrap().get(&wanted).filter(|i| Instant::now() < i.renew_at) {
            return Ok((held.token.clone(), false));
        }
        // Boxed: an API call's future is kilobytes, and would otherwise be part of every
        // pod worker's and volume refresher's state for the pod's whole life.
        let issued = Box::pin(self.request(pod, &wanted)).await?;
        let token = issued.token.clone();
        self.issued.lock().unwrap().insert(wanted, issued);
        Ok((token, true))
    }

    /// The token for one of the pod's sources, once requested.
    pub fn token(&self, pod: &Pod, source: &ServiceAccountTokenProjection) -> Option<String> {
        self.issued.lock().unwrap().get(&Wanted::of(pod, source)).map(|i| i.token.clone())
    }

    /// Forgets a deleted pod's tokens.
    pub fn forget(&self, pod_uid: &str) {
        self.issued.lock().unwrap().retain(|w, _| w.pod_uid != pod_uid);
    }

    async fn request(&self, pod: &Pod, wanted: &Wanted) -> Result<Issued, ConfigError> {
        let namespace = pod.namespace().unwrap_or_default();
        let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: (!wanted.audience.is_empty()).then(|| vec![wanted.audience.clone()]),
                expiration_seconds: Some(wanted.seconds),
                bound_object_ref: Some(BoundObjectReference { api_version: Some("v1".into()), kind: Some("Pod".into()), name: Some(pod.name_any()), uid: pod.uid() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let _permit = self.requests.acquire().await.expect("the semaphore is never closed");
        let asked = Instant::now();
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &namespace);
        let answer = api.create_token_request(&account, &PostParams::default(), &request).await
            .map_err(|e| ConfigError(format!("requesting a token for service account {namespace}/{account}: {e}")))?;
        let unanswered = || ConfigError(format!("the token request for service account {namespace}/{account} was answered without a token"));
        let status = answer.status.ok_or_else(unanswered)?;
        let (token, expires) = (status.token.ok_or_else(unanswered)?, status.expiration_timestamp.ok_or_else(unanswered)?);
        // The lifetime the server granted, which may differ from the one asked for.
        let granted = (expires.0.as_second() - jiff::Timestamp::now().as_second()).max(0) as f64;
        let renew_after = Duration::from_secs_f64(granted * RENEW_AFTER).min(RENEW_AT_MOST_AFTER);
        Ok(Issued { token, renew_at: asked + renew_after })
    }
}

/// The pod's projected `serviceAccountToken` sources.
fn sources(pod: &Pod) -> impl Iterator<Item = &ServiceAccountTokenProjection> {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten())
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .filter_map(|s| s.service_account_token.as_ref())
}

