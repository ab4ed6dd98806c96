//! The garbage collector: objects whose owners are all gone are deleted (background
//! propagation); an owner deleted with `foregroundDeletion` waits until its blocking
//! dependents are gone; an owner deleted with `orphan` lets go of its dependents first.
//!
//! It watches the metadata of every kind the API serves (one graph of owner → dependents
//! by uid) and checks an owner's absence against the live API before deleting anything,
//! since a cache can lag behind.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::Client;
use serde_json::json;
use skiff_core::resources::{self, ResourceType};
use tokio::sync::Semaphore;

use crate::children::ignore_gone;
use crate::{Error, api_resource, dynamic_api};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// What the graph keeps of one object.
#[derive(Debug, Clone)]
struct Vertex {
    resource: &'static ResourceType,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

/// Kinds whose objects may own or be owned: every served kind in its preferred version,
/// except Events (many, short-lived, and never owners).
fn watched_kinds() -> Vec<&'static ResourceType> {
    resources::stored().filter(|r| r.kind != "Event").collect()
}

/// The work the graph asks for.
#[derive(Debug)]
enum Work {
    /// Check whether this dependent's owners still exist; with what the graph knows of
    /// each owner (`Some(waits in foreground)` when present, `None` when not seen).
    Dependent(Vertex, String, Vec<Option<bool>>),
    /// Remove the owner's reference from its dependents, then its `orphan` finalizer.
    Orphan(Vertex, String, Vec<(Vertex, String)>),
    /// Delete the owner's dependents; drop `foregroundDeletion` once none block.
    Foreground(Vertex, String, Vec<(Vertex, String)>),
}

#[derive(Default)]
struct Graph {
    objects: HashMap<String, Vertex>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn upsert(&mut self, uid: String, v: Vertex) -> Vec<Work> {
        if let Some(old) = self.objects.get(&uid) {
            for o in &old.owners {
                if let Some(d) = self.dependents.get_mut(&o.uid) {
                    d.remove(&uid);
                }
            }
        }
        for o in &v.owners {
            self.dependents.entry(o.uid.clone()).or_default().insert(uid.clone());
        }
        self.objects.insert(uid.clone(), v.clone());
        let mut work = Vec::new();
        if !v.owners.is_empty() {
            work.push(Work::Dependent(v.clone(), uid.clone(), vec![]));
        }
        work.extend(self.owner_work(&uid));
        work
    }

    fn remove(&mut self, uid: &str) -> Vec<Work> {
        let Some(old) = self.objects.remove(uid) else { return vec![] };
        let mut work = Vec::new();
        for o in &old.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(uid);
            }
            // An owner waiting in foreground may now be free to go.
            work.extend(self.owner_work(&o.uid));
        }
        for dep in self.dependents.get(uid).cloned().unwrap_or_default() {
            if let Some(v) = self.objects.get(&dep) {
                work.push(Work::Dependent(v.clone(), dep.clone(), vec![]));
            }
        }
        work
    }

    /// Orphan or foreground work for an owner being deleted with those finalizers.
    fn owner_work(&self, uid: &str) -> Vec<Work> {
        let Some(v) = self.objects.get(uid) else { return vec![] };
        if !v.deleting {
            return vec![];
        }
        let deps: Vec<(Vertex, String)> = self.dependents.get(uid).into_iter().flatten().filter_map(|d| self.objects.get(d).map(|v| (v.clone(), d.clone()))).collect();
        let mut work = Vec::new();
        if v.finalizers.iter().any(|f| f == ORPHAN) {
            work.push(Work::Orphan(v.clone(), uid.to_string(), deps.clone()));
        }
        if v.finalizers.iter().any(|f| f == FOREGROUND) {
            work.push(Work::Foreground(v.clone(), uid.to_string(), deps));
        }
        work
    }

    /// Owner state as the graph sees it: Some(deleting in foreground) when present.
    fn owner_state(&self, uid: &str) -> Option<bool> {
        self.objects.get(uid).map(|v| v.deleting && v.finalizers.iter().any(|f| f == FOREGROUND))
    }
}

fn vertex(r: &'static ResourceType, m: &PartialObjectMeta<DynamicObject>) -> Option<(String, Vertex)> {
    let meta = &m.metadata;
    Some((
        meta.uid.clone()?,
        Vertex {
            resource: r,
            namespace: meta.namespace.clone(),
            name: meta.name.clone()?,
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        },
    ))
}

/// Runs the collector until the process ends.
pub async fn run(client: Client) {
    let kinds = watched_kinds();
    let streams = kinds.iter().enumerate().map(|(i, r)| {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), &api_resource(r));
        watcher(api, watcher::Config::default()).default_backoff().map(move |e| (i, e)).boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut graph = Graph::default();
    let mut synced = vec![false; kinds.len()];
    let mut held: Vec<Work> = Vec::new();
    let limit = Arc::new(Semaphore::new(32));
    while let Some((i, event)) = events.next().await {
        let r = kinds[i];
        let Ok(event) = event else { continue };
        let work = match event {
            watcher::Event::Apply(m) | watcher::Event::InitApply(m) => vertex(r, &m).map(|(uid, v)| graph.upsert(uid, v)).unwrap_or_default(),
            watcher::Event::Delete(m) => m.metadata.uid.as_deref().map(|uid| graph.remove(uid)).unwrap_or_default(),
            watcher::Event::InitDone => {
                synced[i] = true;
                vec![]
            }
            watcher::Event::Init => vec![],
        };
        // Nothing is collected until every kind has been listed once: before that, a
        // missing owner may just not be listed yet.
        held.extend(work);
        if !synced.iter().all(|s| *s) {
            continue;
        }
        for w in held.drain(..) {
            let w = match w {
                Work::Dependent(v, uid, _) => {
                    let seen: Vec<Option<bool>> = v.owners.iter().map(|o| graph.owner_state(&o.uid)).collect();
                    // The common case: every owner is there and not waiting; nothing to do.
                    if seen.iter().all(|s| *s == Some(false)) {
                        continue;
                    }
                    Work::Dependent(v, uid, seen)
                }
                other => other,
            };
            let (client, limit) = (client.clone(), limit.clone());
            let queued = crate::metrics::queued("garbagecollector");
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                drop(queued);
                if let Err(e) = crate::metrics::pass("garbagecollector", process(&client, w)).await {
                    tracing::debug!(error = %e, "garbage collection step failed; the next change retries it");
                }
            });
        }
    }
}

async fn process(client: &Client, work: Work) -> Result<(), Error> {
    match work {
        Work::Dependent(v, uid, seen) => {
            let mut solid = false;
            let mut dangling = Vec::new();
            let mut waiting = Vec::new();
            for (o, cached) in v.owners.iter().zip(seen) {
                let present_foreground = match cached {
                    Some(fg) => Some(fg),
                    None => owner_live(client, o, v.namespace.as_deref()).await?,
                };
                match present_foreground {
                    None => dangling.push(o.uid.clone()),
                    Some(true) => waiting.push(o.uid.clone()),
                    Some(false) => solid = true,
                }
            }
            let api = dynamic_api(client, v.resource, v.namespace.as_deref());
            if solid {
                if dangling.is_empty() && waiting.is_empty() {
                    return Ok(());
                }
                let keep: Vec<&OwnerReference> = v.owners.iter().filter(|o| !dangling.contains(&o.uid) && !waiting.contains(&o.uid)).collect();
                let patch = json!({"metadata": {"ownerReferences": keep, "uid": uid}});
                ignore_gone(api.patch(&v.name, &PatchParams::default(), &Patch::Merge(&patch)).await)?;
                return Ok(());
            }
            if v.deleting && waiting.is_empty() {
                return Ok(());
            }
            let policy = if waiting.is_empty() { PropagationPolicy::Background } else { PropagationPolicy::Foreground };
            let dp = DeleteParams { propagation_policy: Some(policy), preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }), ..Default::default() };
            ignore_gone(api.delete(&v.name, &dp).await)?;
        }
        Work::Orphan(owner, uid, deps) => {
            for (d, duid) in deps {
                let keep: Vec<&OwnerReference> = d.owners.iter().filter(|o| o.uid != uid).collect();
                let patch = json!({"metadata": {"ownerReferences": keep, "uid": duid}});
                ignore_gone(dynamic_api(client, d.resource, d.namespace.as_deref()).patch(&d.name, &PatchParams::default(), &Patch::Merge(&patch)).await)?;
            }
            drop_finalizer(client, &owner, ORPHAN).await?;
        }
        Work::Foreground(owner, uid, deps) => {
            let mut blocking = 0;
            for (d, duid) in deps {
                let blocks = d.owners.iter().any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
                if blocks {
                    blocking += 1;
                }
                if !d.deleting {
                    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), preconditions: Some(Preconditions { uid: Some(duid), resource_version: None }), ..Default::default() };
                    ignore_gone(dynamic_api(client, d.resource, d.namespace.as_deref()).delete(&d.name, &dp).await)?;
                }
            }
            if blocking == 0 {
                drop_finalizer(client, &owner, FOREGROUND).await?;
            }
        }
    }
    Ok(())
}

/// Whether the owner exists (`Some`, with whether it waits for dependents in the
/// foreground), asked of the API itself.
async fn owner_live(client: &Client, owner: &OwnerReference, namespace: Option<&str>) -> Result<Option<bool>, Error> {
    let Some(r) = resources::find_by_kind(&owner.api_version, &owner.kind) else {
        // An owner of a kind Skiff does not serve cannot exist here.
        return Ok(None);
    };
    let api = dynamic_api(client, r, if r.namespaced { namespace } else { None });
    match api.get_metadata_opt(&owner.name).await? {
        Some(m) if m.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
            let fg = m.metadata.deletion_timestamp.is_some() && m.metadata.finalizers.iter().flatten().any(|f| f == FOREGROUND);
            Ok(Some(fg))
        }
        _ => Ok(None),
    }
}

/// Removes one finalizer, guarded by the resource version it was read at.
async fn drop_finalizer(client: &Client, v: &Vertex, finalizer: &str) -> Result<(), Error> {
    let api = dynamic_api(client, v.resource, v.namespace.as_deref());
    let Some(current) = api.get_metadata_opt(&v.name).await? else { return Ok(()) };
    let finalizers: Vec<&String> = current.metadata.finalizers.iter().flatten().filter(|f| *f != finalizer).collect();
    if finalizers.len() == current.metadata.finalizers.as_ref().map_or(0, Vec::len) {
        return Ok(());
    }
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": current.metadata.resource_version}});
    ignore_gone(api.patch(&v.name, &PatchParams::default(), &Patch::Merge(&patch)).await)?;
    Ok(())
}
