//! The root CA publisher: every active namespace has a `kube-root-ca.crt` ConfigMap whose
//! `ca.crt` is the certificate authority of the API server's serving certificate, so
//! pods can verify the API they reach with their ServiceAccount token (it is part of the
//! `kube-api-access-*` volume every pod mounts). A changed or deleted one is put back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use crate::Error;
use crate::children::ignore_gone;
use crate::support::{Informers, retry};

/// The ConfigMap's name in every namespace.
pub const NAME: &str = "kube-root-ca.crt";

pub struct Ctx {
    pub client: Client,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// The controller: Namespaces, for their `kube-root-ca.crt` ConfigMap, which wakes its
/// namespace when changed or deleted. Without a CA to publish, nothing runs.
pub fn controller(i: &Informers, client: &Client, ca_pem: Option<String>) -> impl Future<Output = ()> + Send + use<> {
    let run = ca_pem.map(|ca_pem| {
        Controller::for_shared_stream(i.namespaces.subscribe(), i.namespaces.store())
            .watches_shared_stream(i.root_ca_maps.changes(), |cm: Arc<ConfigMap>| Some(ObjectRef::new(&cm.namespace().unwrap_or_default())))
            .run(crate::metrics::metered("root-ca-cert-publisher", reconcile), retry, Arc::new(Ctx { client: client.clone(), ca_pem }))
            .for_each(|_| async {})
    });
    async move {
        if let Some(run) = run {
            run.await
        }
    }
}

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns.name_any());
    let wanted = ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            annotations: Some([("kubernetes.io/description".to_string(), "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string())].into()),
            ..Default::default()
        },
        data: Some([("ca.crt".to_string(), ctx.ca_pem.clone())].into()),
        ..Default::default()
    };
    match api.get_opt(NAME).await? {
        None => {
            ignore_gone(api.create(&PostParams::default(), &wanted).await)?;
        }
        Some(existing) if existing.data != wanted.data => {
            let mut fixed = existing;
            fixed.data = wanted.data;
            ignore_gone(api.replace(NAME, &PostParams::default(), &fixed).await)?;
        }
        Some(_) => {}
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
