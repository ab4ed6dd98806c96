//! ServiceAccounts: every active namespace has a `default` ServiceAccount.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};

use crate::children::ignore_gone;
use crate::Error;

pub struct Ctx {
    pub client: Client,
}

/// The controller: Namespaces, for their `default` ServiceAccount.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    Controller::for_shared_stream(i.namespaces.subscribe(), i.namespaces.store()).run(crate::metrics::metered("serviceaccount", reconcile), retry, Arc::new(Ctx { client: client.clone() })).for_each(|_| async {})
}

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns.name_any());
    if api.get_opt("default").await?.is_none() {
        let sa = ServiceAccount { metadata: ObjectMeta { name: Some("default".into()), ..Default::default() }, ..Default::default() };
        ignore_gone(api.create(&PostParams::default(), &sa).await)?;
    }
    // Looked at again now and then, so a deleted default ServiceAccount comes back.
    Ok(Action::requeue(std::time::Duration::from_secs(60)))
}
