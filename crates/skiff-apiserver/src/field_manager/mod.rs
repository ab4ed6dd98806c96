//! Field management, the bookkeeping of server-side apply: `metadata.managedFields` says
//! which manager set which fields. Every write records the fields it changed for its
//! manager (operation `Update`); an apply (`application/apply-patch+yaml`) merges its
//! configuration into the live object, drops the fields its manager applied before and
//! no longer does, and refuses to change fields another manager owns unless forced
//! (409 with the conflicting managers and fields).
//!
//! No maintained Rust port of Kubernetes' structured-merge-diff exists, so this is ours:
//! field sets in `fieldset`, the schema-aware walks in `walk`.

mod fieldset;
mod walk;

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use fieldset::FieldSet;

/// Who a write's changes belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A create, update or patch by this manager: its changes are recorded as its own.
    Update(String),
    /// An apply: the object's managedFields were computed by [`apply`] and stand.
    Applied,
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    set: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == subresource
    }

    /// How a conflict names the manager: `"kubectl"`, or `"kubectl-edit" using v1` for an
    /// update.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn decode(v: &Value) -> Result<Self, String> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        let operation = text("operation").ok_or("an entry has no operation")?;
        if operation != "Apply" && operation != "Update" {
            return Err(format!("operation must be Apply or Update, not {operation:?}"));
        }
        if text("fieldsType").is_some_and(|t| t != "FieldsV1") {
            return Err("fieldsType must be FieldsV1".into());
        }
        Ok(Entry {
            manager: text("manager").unwrap_or_default(),
            operation,
            api_version: text("apiVersion").unwrap_or_default(),
            time: text("time"),
            subresource: text("subresource").filter(|s| !s.is_empty()),
            set: FieldSet::from_fields_v1(v.get("fieldsV1").unwrap_or(&json!({})))?,
        })
    }

    fn encode(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), json!(s));
        }
        Value::Object(m)
    }
}

fn decode(object: &Value) -> Result<Vec<Entry>, String> {
    match object.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(entries)) => entries.iter().map(Entry::decode).collect(),
        Some(_) => Err("managedFields must be a list".into()),
    }
}

fn store(object: &mut Value, entries: &[Entry]) {
    let meta = skiff_core::meta::metadata_mut(object);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries.iter().map(Entry::encode).collect()));
    }
}

/// Metadata no manager owns: identity, versions and the bookkeeping itself.
const UNOWNED_METADATA: [&str; 8] = ["name", "namespace", "creationTimestamp", "selfLink", "uid", "generation", "managedFields", "resourceVersion"];

/// The part of an object managers own: no `apiVersion`, `kind` or server metadata; for a
/// status write only the status, otherwise no status where a status subresource exists.
fn owned_part(object: &Value, subresource: Option<&str>, has_status: bool) -> Value {
    let Some(map) = object.as_object() else { return json!({}) };
    let mut out = Map::new();
    for (k, v) in map {
        let keep = match (k.as_str(), subresource) {
            (_, Some("status")) => k == "status",
            ("apiVersion" | "kind", _) => false,
            ("status", _) => !has_status,
            _ => true,
        };
        if keep {
            out.insert(k.clone(), v.clone());
        }
    }
    if let Some(Value::Object(meta)) = out.get_mut("metadata") {
        meta.retain(|k, _| !UNOWNED_METADATA.contains(&k.as_str()));
        if meta.is_empty() {
            out.remove("metadata");
        }
    }
    Value::Object(out)
}

/// The entries an update starts from, as Kubernetes picks them: a subresource write
/// cannot set managedFields; a main write may (kubectl's client-side → server-side apply
/// migration does), `[{}]` resets them, and none or unreadable ones keep the live ones.
fn base_entries(old: &Value, new: &Value, subresource: Option<&str>) -> Vec<Entry> {
    let live = || decode(old).unwrap_or_default();
    if subresource.is_some() {
        return live();
    }
    match new.pointer("/metadata/managedFields") {
        Some(Value::Array(e)) if e.len() == 1 && e[0] == json!({}) => Vec::new(),
        Some(_) => match decode(new) {
            Ok(entries) if !entries.is_empty() => entries,
            _ => live(),
        },
        None => live(),
    }
}

/// Records a write by `manager` that turns `old` (none for a create) into `new`: the
/// fields it set or changed become its own and no one else's; fields it removed are no
/// one's. An update that changes nothing leaves the entries as they were.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, subresource: Option<&str>, has_status: bool, now: &str) {
    let mut entries = match old {
        Some(old) => base_entries(old, new, subresource),
        None => Vec::new(),
    };
    let before = old.map(|o| owned_part(o, subresource, has_status)).unwrap_or(json!({}));
    let (changed, removed) = walk::compare("", &before, &owned_part(new, subresource, has_status));
    if !changed.is_empty() || !removed.is_empty() {
        for e in entries.iter_mut() {
            e.set = e.set.difference(&changed).difference(&removed);
        }
        let api_version = new.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        let own = match entries.iter().position(|e| e.is(manager, "Update", subresource)) {
            Some(i) => &mut entries[i],
            None => {
                let set = FieldSet::default();
                entries.push(Entry { manager: manager.into(), operation: "Update".into(), api_version: String::new(), time: None, subresource: subresource.map(String::from), set });
                entries.last_mut().expect("just pushed")
            }
        };
        own.set.union(&changed);
        own.api_version = api_version;
        own.time = Some(now.to_string());
        // Managers left with nothing are forgotten.
        entries.retain(|e| !e.set.is_empty());
    }
    store(new, &entries);
}

/// A field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// The 409 Kubernetes answers an apply with when it conflicts.
pub fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let message = if let [one] = conflicts {
        format!("Apply failed with 1 conflict: conflict with {}: {}", one.manager, one.field)
    } else {
        let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
        managers.sort();
        managers.dedup();
        let mut lines = Vec::new();
        for m in managers {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(conflicts.iter().filter(|c| c.manager == m).map(|c| format!("- {}", c.field)));
        }
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", c.manager), "field": c.field}))
        .collect();
    ApiError::conflict_with_details(message, json!({"causes": causes}))
}

/// True for the error [`conflict_error`] makes (a retry cannot resolve it).
pub fn is_field_conflict(e: &ApiError) -> bool {
    e.details.as_ref().and_then(|d| d.get("causes")).and_then(Value::as_array).is_some_and(|c| c.iter().any(|c| c["reason"] == "FieldManagerConflict"))
}

/// What an apply asks for.
pub struct Apply<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub subresource: Option<&'a str>,
    pub has_status: bool,
    pub now: &'a str,
}

/// The manager `kubectl apply --server-side` applies as.
const KUBECTL: &str = "kubectl";
/// Where client-side apply keeps the configuration it last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The fields of the live object's last client-side applied configuration.
fn last_applied_fields(live: &Value, a: &Apply) -> Option<FieldSet> {
    let text = live.pointer("/metadata/annotations")?.get(LAST_APPLIED)?.as_str()?;
    let last: Value = serde_json::from_str(text).ok()?;
    Some(walk::set_of("", &owned_part(&walk::without_nulls(&last), a.subresource, a.has_status)))
}

/// Applies `config` for `manager` to `live` (none: the apply creates the object). The
/// result carries its new managedFields; conflicts are refused unless forced, and then
/// taken from their owners.
pub fn apply(live: Option<&Value>, config: &Value, a: &Apply) -> Result<Value, Vec<Conflict>> {
    let config = walk::without_nulls(config);
    let applied = walk::set_of("", &owned_part(&config, a.subresource, a.has_status));
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let mut entries = decode(live).unwrap_or_default();
    let mut merged = walk::merge("", live, &config);
    if let Some(last) = entries.iter().find(|e| e.is(a.manager, "Apply", a.subresource)) {
        // What this manager applied before and applies no more goes, unless another
        // manager owns it too.
        let mut others = FieldSet::default();
        for e in entries.iter().filter(|e| !e.is(a.manager, "Apply", a.subresource)) {
            others.union(&e.set);
        }
        walk::remove(&mut merged, &last.set.difference(&applied), &others, &mut Vec::new());
    }
    let (changed, _) = walk::compare("", &owned_part(live, a.subresource, a.has_status), &owned_part(&merged, a.subresource, a.has_status));
    // kubectl moving from client-side to server-side apply takes over, without a
    // conflict, what its last client-side apply set (kubectl then moves the old
    // manager's entries to its own).
    let last_applied = (a.manager == KUBECTL).then(|| last_applied_fields(live, a)).flatten().unwrap_or_default();
    let mut conflicts = Vec::new();
    let mut taken = Vec::new();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| !e.is(a.manager, "Apply", a.subresource)) {
        let fields = e.set.intersection(&changed);
        conflicts.extend(fields.difference(&last_applied).paths().iter().map(|p| Conflict { manager: e.describe(), field: fieldset::display(p) }));
        taken.push((i, fields));
    }
    if !conflicts.is_empty() && !a.force {
        return Err(conflicts);
    }
    for (i, fields) in taken {
        entries[i].set = entries[i].set.difference(&fields);
    }
    if a.manager == KUBECTL && let Some(Value::Object(notes)) = merged.pointer_mut("/metadata/annotations")
        && notes.contains_key(LAST_APPLIED)
    {
        // Kept current, so a later client-side apply still computes the right patch.
        let mut config = config.clone();
        if let Some(Value::Object(n)) = config.pointer_mut("/metadata/annotations") {
            n.remove(LAST_APPLIED);
        }
        notes.insert(LAST_APPLIED.into(), json!(config.to_string()));
    }
    let api_version = config.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let own = Entry { manager: a.manager.into(), operation: "Apply".into(), api_version, time: Some(a.now.into()), subresource: a.subresource.map(String::from), set: applied };
    match entries.iter_mut().find(|e| e.is(a.manager, "Apply", a.subresource)) {
        Some(e) => *e = own,
        None => entries.push(own),
    }
    entries.retain(|e| !e.set.is_empty() || e.is(a.manager, "Apply", a.subresource));
    store(&mut merged, &entries);
    Ok(merged)
}

#[cfg(test)]
mod tests;
