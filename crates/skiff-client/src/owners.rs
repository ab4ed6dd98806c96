//! Owner references: who controls an object, and the reference a controller stamps on
//! the children it makes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.as_deref().unwrap_or_default().iter().find(|r| r.controller == Some(true))
}

/// True when the object with this metadata is controlled by the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// The controller reference a child of `owner` carries (`controller` and
/// `blockOwnerDeletion` set, as Kubernetes' controllers do).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A merge patch that makes `owner` the controller of an orphan whose
/// `resourceVersion` and `uid` guard against adopting a changed or replaced object.
pub fn adopt_patch(child: &ObjectMeta, owner: OwnerReference) -> serde_json::Value {
    let mut refs: Vec<OwnerReference> = child.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != owner.uid);
    refs.push(owner);
    serde_json::json!({"metadata": {"ownerReferences": refs, "uid": child.uid, "resourceVersion": child.resource_version}})
}

/// A merge patch that removes the reference to `owner_uid` from a child.
pub fn release_patch(child: &ObjectMeta, owner_uid: &str) -> serde_json::Value {
    let refs: Vec<&OwnerReference> = child.owner_references.as_deref().unwrap_or_default().iter().filter(|r| r.uid != owner_uid).collect();
    serde_json::json!({"metadata": {"ownerReferences": refs, "uid": child.uid, "resourceVersion": child.resource_version}})
}
