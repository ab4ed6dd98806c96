//! Template hashes and ControllerRevisions: how Deployments name their ReplicaSets and
//! how StatefulSets and DaemonSets remember the templates they rolled out (the history
//! `kubectl rollout history` and `kubectl rollout undo` read).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use skiff_client::owners;

use crate::children::ignore_gone;
use crate::Error;

/// The label naming the revision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// A template's hash: FNV-1a over its JSON and the collision count, written in
/// Kubernetes' "safe" alphabet (no vowels, so no words).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    skiff_core::names::safe_hash(&bytes)
}

/// The ControllerRevisions `owner` controls, oldest revision first.
pub fn owned(store: &Store<ControllerRevision>, owner_uid: &str, ns: &str) -> Vec<Arc<ControllerRevision>> {
    let mut revs: Vec<Arc<ControllerRevision>> = store
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns) && owners::is_controlled_by(&r.metadata, owner_uid))
        .collect();
    revs.sort_by_key(|r| r.revision);
    revs
}

/// The template a revision holds (as written by `ensure`).
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.0.pointer("/spec/template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// The revision for `template`: the existing one with its hash (renumbered to the newest
/// if it is an older one coming back, as a rollback does), or a new one. Returns its
/// hash name suffix.
pub async fn ensure<K: Resource<DynamicType = ()>>(client: &Client, owner: &K, template: &PodTemplateSpec, existing: &[Arc<ControllerRevision>]) -> Result<String, Error> {
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let hash = template_hash(template, None);
    let name = format!("{}-{hash}", owner.meta().name.clone().unwrap_or_default());
    let newest = existing.iter().filter_map(|r| r.revision).max().unwrap_or(0);
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    if let Some(found) = existing.iter().find(|r| r.name_any() == name) {
        if found.revision.unwrap_or(0) < newest {
            let patch = json!({"revision": newest + 1});
            ignore_gone(api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await)?;
        }
        return Ok(hash);
    }
    let mut labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), hash.clone());
    let mut data = json!({"spec": {"template": template}});
    data["spec"]["template"]["$patch"] = json!("replace");
    let rev = ControllerRevision {
        metadata: ObjectMeta { name: Some(name), namespace: Some(ns), labels: Some(labels), owner_references: Some(vec![owners::controller_ref(owner)]), ..Default::default() },
        data: RawExtension(data),
        revision: Some(newest + 1),
    };
    match api.create(&PostParams::default(), &rev).await {
        Ok(_) => Ok(hash),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(hash),
        Err(e) => Err(e.into()),
    }
}

/// Deletes revisions beyond `limit`, oldest first, sparing those named in `live`.
pub async fn trim(client: &Client, existing: &[Arc<ControllerRevision>], live: &[&str], limit: usize) -> Result<(), Error> {
    let idle: Vec<&Arc<ControllerRevision>> = existing.iter().filter(|r| !live.iter().any(|l| r.name_any().ends_with(&format!("-{l}")))).collect();
    for r in idle.iter().take(idle.len().saturating_sub(limit)) {
        let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &r.namespace().unwrap_or_default());
        ignore_gone(api.delete(&r.name_any(), &DeleteParams::default()).await)?;
    }
    Ok(())
}
