//! Pods as the children of a workload controller: claiming (adopt matching orphans,
//! release pods that stopped matching), creating in slow-start batches, deleting.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use skiff_client::events::EventType;
use skiff_client::expectations::Seen;
use skiff_client::{Recorder, owners, pods};
use serde::de::DeserializeOwned;
use skiff_core::LabelSelector;

use crate::Error;

/// Most pods a controller creates in one pass (kube-controller-manager's burst).
const BURST: usize = 500;

/// Collects the objects (pods, ReplicaSets, …) in `ns` controlled by `owner`; adopts
/// orphans the selector matches and `adoptable` accepts (unless the owner is being
/// deleted), and releases owned ones the selector no longer matches.
pub async fn claim<O, C>(client: &Client, owner: &O, store: &Store<C>, selector: &LabelSelector, ns: &str, recorder: &Recorder, adoptable: fn(&C) -> bool) -> Result<Vec<Arc<C>>, Error>
where
    O: Resource<DynamicType = ()>,
    C: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let api: Api<C> = Api::namespaced(client.clone(), ns);
    let mut owned = Vec::new();
    for child in store.state() {
        let meta = child.meta();
        if meta.namespace.as_deref() != Some(ns) {
            continue;
        }
        let matches = !selector.is_empty() && selector.matches_map(meta.labels.as_ref());
        match owners::controller_of(meta) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    owned.push(child);
                } else if meta.deletion_timestamp.is_none() {
                    let patch = owners::release_patch(meta, &uid);
                    ignore_gone(api.patch(&child.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await)?;
                }
            }
            None if matches && !deleting && meta.deletion_timestamp.is_none() && adoptable(&child) => {
                let patch = owners::adopt_patch(meta, owners::controller_ref(owner));
                if let Some(adopted) = ignore_gone(api.patch(&child.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await)? {
                    recorder.record(owner, EventType::Normal, "Adopted", format!("Adopted {}: {}", C::kind(&()).to_lowercase(), child.name_any()));
                    owned.push(Arc::new(adopted));
                }
            }
            _ => {}
        }
    }
    Ok(owned)
}

/// Treats "not found" and "conflict" (the pod changed or went away meanwhile) as
/// nothing to do; the next reconcile sees the new state.
pub fn ignore_gone<T>(r: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What the cache shows of pod `name` in `ns`, for expectations.
pub fn seen(store: &Store<Pod>, ns: &str, name: &str) -> Seen {
    match store.get(&ObjectRef::new(name).within(ns)) {
        None => Seen::Absent,
        Some(p) if p.metadata.deletion_timestamp.is_some() => Seen::Terminating,
        Some(_) => Seen::Present,
    }
}

/// Creates a pod for `owner`, recording the outcome; returns its name.
pub async fn create_pod<K: Resource<DynamicType = ()>>(client: &Client, owner: &K, pod: &Pod, recorder: &Recorder) -> Option<String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), pod).await {
        Ok(created) => {
            recorder.record(owner, EventType::Normal, "SuccessfulCreate", format!("Created pod: {}", created.name_any()));
            Some(created.name_any())
        }
        Err(e) => {
            let message = match &e {
                kube::Error::Api(s) => s.message.clone(),
                other => other.to_string(),
            };
            recorder.record(owner, EventType::Warning, "FailedCreate", format!("Error creating: {message}"));
            None
        }
    }
}

/// Creates up to `count` pods of `template` in slow-start batches (1, 2, 4, …), stopping
/// after a batch with a failure, as Kubernetes does so a broken template does not flood
/// the API. Returns the names created.
pub async fn create_pods<K: Resource<DynamicType = ()>>(client: &Client, owner: &K, template: &PodTemplateSpec, ns: &str, count: usize, recorder: &Recorder) -> Vec<String> {
    let prefix = pods::generate_name_prefix(&owner.meta().name.clone().unwrap_or_default());
    let pod = pods::from_template(template, ns, owners::controller_ref(owner), None, &prefix);
    let mut made = Vec::new();
    let mut batch = 1;
    let mut left = count.min(BURST);
    while left > 0 {
        let n = batch.min(left);
        let results: Vec<Option<String>> = futures::stream::iter(0..n).map(|_| create_pod(client, owner, &pod, recorder)).buffer_unordered(n).collect().await;
        let failed = results.iter().any(Option::is_none);
        made.extend(results.into_iter().flatten());
        if failed {
            break;
        }
        left -= n;
        batch *= 2;
    }
    made
}

/// Deletes the named pods of `owner`; returns the names whose deletion was accepted.
pub async fn delete_pods<K: Resource<DynamicType = ()>>(client: &Client, owner: &K, ns: &str, names: &[String], recorder: &Recorder) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let results: Vec<Option<String>> = futures::stream::iter(names.to_vec())
        .map(|name: String| {
            let api = api.clone();
            async move {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        recorder.record(owner, EventType::Normal, "SuccessfulDelete", format!("Deleted pod: {name}"));
                        Some(name)
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => Some(name),
                    Err(e) => {
                        recorder.record(owner, EventType::Warning, "FailedDelete", format!("Error deleting pod {name}: {e}"));
                        None
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// Deletes one pod guarded by its uid (a pod of the same name made since is spared).
pub async fn delete_pod_exact(client: &Client, pod: &Pod) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams { preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
    ignore_gone(api.delete(&pod.name_any(), &dp).await)?;
    Ok(())
}
