//! ResourceQuota admission, as kube-apiserver's plugin: a create in a namespace with
//! quotas is charged to every quota that limits what it uses; one that would go over a
//! `hard` limit is refused (403, Kubernetes' words), and a pod that leaves out a compute
//! value a quota limits is refused too. The charge is written into the quota's
//! `status.used` before the object is created, with the quota's resourceVersion, so
//! concurrent creates are counted one after the other and `used` never passes `hard`.
//! The quota controller recounts `used` from what exists (so a deletion frees its share).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value, json};
use skiff_core::{ResourceType, meta, quota, resources};
use skiff_store::{ListOptions, StoreError, object_revision};

use crate::ApiServer;
use crate::error::{ApiError, ApiResult};

/// How often a charge is tried again after losing a race for the quota.
const CHARGE_RETRIES: usize = 16;

/// Which namespaces have quotas, read once per change of a quota: most have none, and
/// listing a namespace's quotas on every create cost a fifth of the create rate. Moved by
/// every quota write through this server before it answers, and by [`follow`] for
/// writes through other servers on one etcd.
#[derive(Default)]
pub struct QuotaNamespaces {
    generation: AtomicU64,
    known: RwLock<Option<(u64, Arc<HashSet<String>>)>>,
}

impl QuotaNamespaces {
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    async fn has_quota(&self, server: &ApiServer, ns: &str) -> ApiResult<bool> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some((g, set)) = &*self.known.read().unwrap_or_else(|e| e.into_inner())
            && *g == generation
        {
            return Ok(set.contains(ns));
        }
        let listed = server.store.list(&quotas().list_prefix(None), &ListOptions::default()).await.map_err(|e| ApiError::internal(e.to_string()))?;
        let set: HashSet<String> = listed.items.iter().filter_map(|q| meta::namespace(q).map(str::to_string)).collect();
        let found = set.contains(ns);
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = Some((generation, Arc::new(set)));
        Ok(found)
    }
}

/// Moves [`QuotaNamespaces`]' generation on every quota change in the store.
pub async fn follow(server: Arc<ApiServer>) {
    crate::store_follow::follow(server, "/core/resourcequotas/", |s| s.quotas.changed()).await
}

fn quotas() -> &'static ResourceType {
    resources::find("", "v1", "resourcequotas").expect("resourcequotas")
}

/// Charges the create of `object` (named `name`) to the quotas of `ns`.
pub async fn admit(server: &ApiServer, r: &ResourceType, ns: &str, name: &str, object: &Value) -> ApiResult<()> {
    if !server.quotas.has_quota(server, ns).await? {
        return Ok(());
    }
    let quotas = quotas();
    let listed = server.store.list(&quotas.list_prefix(Some(ns)), &ListOptions::default()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    if listed.items.is_empty() {
        return Ok(());
    }
    let used = quota::usage(r.group, r.plural, object);
    let what = if r.group.is_empty() { r.plural.to_string() } else { format!("{}.{}", r.plural, r.group) };
    let forbidden = |why: String| ApiError::forbidden(format!("{what} {name:?} is forbidden: {why}"));
    for mut q in listed.items {
        for attempt in 0.. {
            if !quota::scopes_match(&q, r.group, r.plural, object) {
                break;
            }
            let quota_name = meta::name(&q).unwrap_or_default().to_string();
            let hard = amounts(q.pointer("/spec/hard"));
            let limited: Vec<&str> = hard.keys().map(String::as_str).collect();
            if r.group.is_empty() && r.plural == "pods" {
                let missing = quota::unspecified(object, &limited);
                if !missing.is_empty() {
                    let parts: Vec<String> = missing.iter().map(|(res, names)| format!("{res} for: {}", names.join(","))).collect();
                    return Err(forbidden(format!("failed quota: {quota_name}: must specify {}", parts.join("; "))));
                }
            }
            let charged: Vec<(&String, i64)> = used.iter().filter(|(k, _)| hard.contains_key(*k)).map(|(k, v)| (k, *v)).collect();
            if charged.is_empty() {
                break;
            }
            let mut now_used = amounts(q.pointer("/status/used"));
            if charged.iter().any(|(k, _)| !now_used.contains_key(*k)) {
                // A quota the controller has not counted yet: counted here, from what exists.
                let existing = count(server, r, ns).await?;
                for (k, _) in &charged {
                    now_used.entry((*k).clone()).or_insert_with(|| existing.get(*k).copied().unwrap_or(0));
                }
            }
            let over: Vec<&(&String, i64)> = charged.iter().filter(|(k, v)| now_used.get(*k).copied().unwrap_or(0) + v > hard[*k]).collect();
            if !over.is_empty() {
                let list = |f: &dyn Fn(&str, i64) -> i64| over.iter().map(|(k, v)| format!("{k}={}", quota::format(k, f(k, *v)))).collect::<Vec<_>>().join(",");
                return Err(forbidden(format!(
                    "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                    list(&|_, v| v),
                    list(&|k, _| now_used.get(k).copied().unwrap_or(0)),
                    list(&|k, _| hard[k]),
                )));
            }
            for (k, v) in &charged {
                *now_used.entry((*k).clone()).or_insert(0) += v;
            }
            let key = quotas.key(Some(ns), &quota_name);
            let mut charged_quota = q.clone();
            charged_quota["status"] = json!({"hard": q.pointer("/spec/hard").cloned().unwrap_or(json!({})), "used": quantities(&now_used)});
            match server.store.update(&key, charged_quota, object_revision(&q)).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) if attempt < CHARGE_RETRIES => {
                    q = server.store.get(&key).await.map_err(|e| ApiError::internal(e.to_string()))?;
                }
                Err(e) => return Err(ApiError::internal(format!("charging quota {quota_name}: {e}"))),
            }
        }
    }
    Ok(())
}

/// What the objects of `r` in `ns` use together.
async fn count(server: &ApiServer, r: &ResourceType, ns: &str) -> ApiResult<quota::Usage> {
    let listed = server.store.list(&r.list_prefix(Some(ns)), &ListOptions::default()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let mut total = quota::Usage::new();
    for object in &listed.items {
        for (k, v) in quota::usage(r.group, r.plural, object) {
            *total.entry(k).or_insert(0) += v;
        }
    }
    Ok(total)
}

/// A `hard` or `used` map as amounts; a value that is no quantity counts as nothing.
fn amounts(map: Option<&Value>) -> quota::Usage {
    map.and_then(Value::as_object).into_iter().flatten()
        .filter_map(|(k, v)| Some((k.clone(), quota::parse(k, v.as_str()?).ok()?)))
        .collect()
}

/// Amounts as a quota's quantity map.
pub fn quantities(used: &quota::Usage) -> Value {
    Value::Object(used.iter().map(|(k, v)| (k.clone(), json!(quota::format(k, *v)))).collect::<Map<_, _>>())
}
