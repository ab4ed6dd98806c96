//! A decoded protobuf message to the JSON Go's API types would write for it.
//!
//! Go's encoder writes every non-pointer field, zero or not, so a protobuf body from
//! client-go carries `generateName: ""`, `replicas: 0` in a status, `targetPort: 0`…
//! Go's JSON omits most of these (`omitempty`), and defaulting treats them as unset; Skiff's
//! JSON pipeline treats a present field as set. So a zero scalar is dropped, unless the
//! field is one of the API's pointer fields where zero is a choice ([`ZERO_IS_SET`]).

use base64::Engine;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value as PValue};
use serde_json::{Map, Value, json};

use super::from_json::{FIELDS_V1, INT_OR_STRING, MICRO_TIME, QUANTITY, RAW_EXTENSION, TIME, inline_message, is_list_wrapper};

/// Fields that are pointers in the Go API types and whose zero value means something other
/// than "unset" (`replicas: 0`, `runAsUser: 0`, `automountServiceAccountToken: false`,
/// `maxUnavailable: 0`, `storageClassName: ""`…): kept when zero.
const ZERO_IS_SET: &[&str] = &[
    // counts and limits
    "replicas", "minReplicas", "parallelism", "completions", "backoffLimit", "backoffLimitPerIndex", "maxFailedIndexes",
    "activeDeadlineSeconds", "ttlSecondsAfterFinished", "revisionHistoryLimit", "progressDeadlineSeconds",
    "successfulJobsHistoryLimit", "failedJobsHistoryLimit", "startingDeadlineSeconds", "terminationGracePeriodSeconds",
    "gracePeriodSeconds", "deletionGracePeriodSeconds", "partition", "tolerationSeconds", "stabilizationWindowSeconds",
    "targetCPUUtilizationPercentage", "averageUtilization", "priority", "expirationSeconds", "tailLines", "limitBytes",
    "sinceSeconds", "leaseDurationSeconds", "leaseTransitions", "remainingItemCount", "minDomains",
    "maxSurge", "maxUnavailable", "minAvailable",
    // identities and file modes
    "runAsUser", "runAsGroup", "fsGroup", "defaultMode", "mode",
    // switches whose default is true, or whose explicit false is a policy
    "automountServiceAccountToken", "privileged", "allowPrivilegeEscalation", "runAsNonRoot", "readOnlyRootFilesystem",
    "hostUsers", "enableServiceLinks", "shareProcessNamespace", "setHostnameAsFQDN", "optional", "suspend",
    "allocateLoadBalancerNodePorts", "ready", "serving", "terminating", "immutable", "manualSelector",
    "blockOwnerDeletion", "controller", "started", "orphanDependents", "force",
    // an empty class name means "no class"
    "storageClassName", "volumeAttributesClassName",
];

/// The JSON object (or special JSON value) of a message.
pub(super) fn message(message: &DynamicMessage) -> Result<Value, String> {
    let desc = message.descriptor();
    match desc.full_name() {
        TIME => return Ok(time(message, false)),
        MICRO_TIME => return Ok(time(message, true)),
        INT_OR_STRING => return Ok(int_or_string(message)),
        QUANTITY => return Ok(Value::String(string(message, "string"))),
        RAW_EXTENSION | FIELDS_V1 => return raw_json(message),
        _ if is_list_wrapper(&desc) => {
            let items = desc.get_field_by_name("items").expect("wrapper has items");
            return list(&items, &message.get_field(&items));
        }
        _ => {}
    }
    let mut out = Map::new();
    for (field, value) in message.fields() {
        if is_unset(&field, value) {
            continue;
        }
        let json = if field.is_map() || field.is_list() { list(&field, value)? } else { single(&field.kind(), value)? };
        match (inline_message(&field), json) {
            // An embedded struct's fields join the parent's, as Go's `json:",inline"` writes them.
            (Some(_), Value::Object(fields)) => out.extend(fields),
            (_, json) => {
                out.insert(field.name().to_string(), json);
            }
        }
    }
    Ok(Value::Object(out))
}

/// Whether a present field reads as absent in Go's JSON: a zero scalar of a non-pointer
/// field, a zero time, an empty list or map.
fn is_unset(field: &FieldDescriptor, value: &PValue) -> bool {
    match value {
        PValue::List(l) => l.is_empty(),
        PValue::Map(m) => m.is_empty(),
        PValue::Message(m) => match m.descriptor().full_name() {
            TIME | MICRO_TIME => m.fields().all(|(_, v)| v.as_i64() == Some(0) || v.as_i32() == Some(0)),
            INT_OR_STRING => !ZERO_IS_SET.contains(&field.name()) && int_or_string(m) == json!(0),
            _ => false,
        },
        scalar => !ZERO_IS_SET.contains(&field.name()) && scalar.is_default(&field.kind()),
    }
}

fn list(field: &FieldDescriptor, value: &PValue) -> Result<Value, String> {
    match value {
        PValue::List(items) => items.iter().map(|v| single(&field.kind(), v)).collect::<Result<_, _>>().map(Value::Array),
        PValue::Map(entries) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            };
            let mut out = Map::new();
            for (key, v) in entries {
                let MapKey::String(k) = key else { return Err(format!("{}: map keys must be strings", field.name())) };
                out.insert(k.clone(), single(&value_kind, v)?);
            }
            Ok(Value::Object(out))
        }
        _ => Err(format!("{}: expected a list", field.name())),
    }
}

fn single(kind: &Kind, value: &PValue) -> Result<Value, String> {
    Ok(match value {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::I64(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::U64(n) => json!(n),
        PValue::F32(n) => json!(n),
        PValue::F64(n) => json!(n),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::Message(m) => message(m)?,
        PValue::EnumNumber(_) | PValue::List(_) | PValue::Map(_) => return Err(format!("unexpected {kind:?} value")),
    })
}

fn string(message: &DynamicMessage, name: &str) -> String {
    message.get_field_by_name(name).and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn int(message: &DynamicMessage, name: &str) -> i64 {
    message.get_field_by_name(name).and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from))).unwrap_or_default()
}

/// `Time` is RFC 3339 in whole seconds; `MicroTime` keeps microseconds.
fn time(message: &DynamicMessage, micros: bool) -> Value {
    let nanos = if micros { int(message, "nanos") } else { 0 };
    let Ok(t) = jiff::Timestamp::new(int(message, "seconds"), nanos as i32) else { return Value::Null };
    let format = if micros { "%Y-%m-%dT%H:%M:%S%.6fZ" } else { "%Y-%m-%dT%H:%M:%SZ" };
    Value::String(t.strftime(format).to_string())
}

fn int_or_string(message: &DynamicMessage) -> Value {
    if int(message, "type") == 1 { Value::String(string(message, "strVal")) } else { json!(int(message, "intVal")) }
}

/// `RawExtension` and `FieldsV1` hold JSON bytes, or an enveloped protobuf object.
fn raw_json(message: &DynamicMessage) -> Result<Value, String> {
    let raw = match message.get_field_by_name("raw").or_else(|| message.get_field_by_name("Raw")).as_deref() {
        Some(PValue::Bytes(b)) => b.clone(),
        _ => return Ok(Value::Null),
    };
    if raw.starts_with(super::MAGIC) {
        return super::decode(&raw).map_err(|e| e.to_string());
    }
    serde_json::from_slice(&raw).map_err(|e| format!("embedded object is neither JSON nor protobuf: {e}"))
}
