//! Namespace: a namespace being deleted is emptied (every namespaced kind is deleted in
//! it), then its `kubernetes` finalizer is removed through the `finalize` subresource
//! and the API server lets it go. Creating objects in it meanwhile is refused by the API
//! server.

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::Recorder;
use skiff_core::resources;

use crate::children::ignore_gone;
use crate::{Error, dynamic_api};

pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
}

/// The controller: Namespaces.
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Ctx { client: client.clone(), recorder: Recorder::new(client.clone(), "namespace-controller") };
    Controller::for_shared_stream(i.namespaces.subscribe(), i.namespaces.store()).run(crate::metrics::metered("namespace", reconcile), retry, Arc::new(ctx)).for_each(|_| async {})
}

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let mut remaining = Vec::new();
    for r in resources::stored().filter(|r| r.namespaced) {
        let api = dynamic_api(&ctx.client, r, Some(&name));
        let left = api.list_metadata(&ListParams::default()).await?;
        if left.items.is_empty() {
            continue;
        }
        remaining.push(format!("{}: {}", r.plural, left.items.len()));
        if left.items.iter().any(|o| o.metadata.deletion_timestamp.is_none()) {
            ignore_gone(api.delete_collection(&DeleteParams::background(), &ListParams::default()).await)?;
        }
    }
    let nsapi: Api<Namespace> = Api::all(ctx.client.clone());
    if !remaining.is_empty() {
        let message = format!("Some resources are remaining: {}", remaining.join(", "));
        let patch = json!({"status": {"conditions": [{"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain", "message": message, "lastTransitionTime": skiff_client::now()}]}});
        ignore_gone(nsapi.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await)?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Empty: drop the `kubernetes` finalizer so the API server removes the namespace.
    let mut finalized = (*ns).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(spec.finalizers.iter().flatten().filter(|f| *f != "kubernetes").cloned().collect());
    }
    ignore_gone(nsapi.replace_subresource("finalize", &name, &PostParams::default(), &finalized).await)?;
    Ok(Action::await_change())
}
