//! A JSON object to its protobuf message, as Go's API types would read it from JSON.

use base64::Engine;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value as PValue};
use serde_json::Value;

// The apimachinery types whose JSON form is not an object of their fields.
pub(super) const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
pub(super) const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
pub(super) const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
pub(super) const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
pub(super) const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
pub(super) const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";

/// Go structs embedded with `json:",inline"`: their fields sit in the parent's JSON object,
/// but the protobuf message has them as one field (field name, message name).
const INLINE: &[(&str, &str)] = &[
    ("localObjectReference", "LocalObjectReference"),
    ("volumeSource", "VolumeSource"),
    ("persistentVolumeSource", "PersistentVolumeSource"),
    ("handler", "ProbeHandler"),
    ("ephemeralContainerCommon", "EphemeralContainerCommon"),
    ("ingressRuleValue", "IngressRuleValue"),
];

/// The message an inline field embeds, if `field` is one.
pub(super) fn inline_message(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(m) if !field.is_list() && INLINE.contains(&(field.name(), m.name())) => Some(m),
        _ => None,
    }
}

/// Go slice types with a protobuf form of their own (`ExtraValue`, `Verbs`): a message
/// with only `repeated items`, written in JSON as the bare list.
pub(super) fn is_list_wrapper(desc: &MessageDescriptor) -> bool {
    let mut fields = desc.fields();
    fields.len() == 1 && fields.next().is_some_and(|f| f.name() == "items" && f.is_list()) && !desc.name().ends_with("List")
}

/// The message of `desc` from its JSON form. Kubernetes objects carry `apiVersion` and
/// `kind` in JSON but not in their messages (the envelope names them): those are skipped
/// where the message has no such field. Any other field the schema lacks is an error.
pub(super) fn message(desc: &MessageDescriptor, json: &Value) -> Result<DynamicMessage, String> {
    let mut message = DynamicMessage::new(desc.clone());
    match desc.full_name() {
        TIME | MICRO_TIME => {
            let text = json.as_str().ok_or_else(|| format!("a time must be a string, not {json}"))?;
            let t: jiff::Timestamp = text.parse().map_err(|e| format!("time {text:?}: {e}"))?;
            message.set_field_by_name("seconds", PValue::I64(t.as_second()));
            if desc.full_name() == MICRO_TIME {
                message.set_field_by_name("nanos", PValue::I32(t.subsec_nanosecond()));
            }
            return Ok(message);
        }
        INT_OR_STRING => {
            match json {
                Value::String(s) => {
                    message.set_field_by_name("type", PValue::I64(1));
                    message.set_field_by_name("strVal", PValue::String(s.clone()));
                }
                n => {
                    message.set_field_by_name("type", PValue::I64(0));
                    message.set_field_by_name("intVal", PValue::I32(integer(n)?.try_into().map_err(|_| format!("{n} is out of range"))?));
                }
            }
            return Ok(message);
        }
        QUANTITY => {
            let text = match json {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(format!("a quantity must be a string or number, not {other}")),
            };
            message.set_field_by_name("string", PValue::String(text));
            return Ok(message);
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let raw = serde_json::to_vec(json).map_err(|e| e.to_string())?;
            let field = desc.fields().next().expect("raw field");
            message.set_field(&field, PValue::Bytes(raw.into()));
            return Ok(message);
        }
        _ if is_list_wrapper(desc) => {
            let items = desc.get_field_by_name("items").expect("wrapper has items");
            message.set_field(&items, repeated(&items, json)?);
            return Ok(message);
        }
        _ => {}
    }
    let object = json.as_object().ok_or_else(|| format!("{} must be an object, not {json}", desc.name()))?;
    let inline: Vec<(FieldDescriptor, MessageDescriptor)> = desc.fields().filter_map(|f| inline_message(&f).map(|m| (f, m))).collect();
    let mut embedded: Vec<serde_json::Map<String, Value>> = vec![Default::default(); inline.len()];
    for (name, value) in object {
        if value.is_null() {
            continue;
        }
        let Some(field) = desc.get_field_by_name(name) else {
            if let Some(i) = inline.iter().position(|(_, m)| m.get_field_by_name(name).is_some()) {
                embedded[i].insert(name.clone(), value.clone());
                continue;
            }
            if name == "apiVersion" || name == "kind" {
                continue;
            }
            return Err(format!("{} has no field {name:?}", desc.name()));
        };
        let value = if field.is_list() || field.is_map() { repeated(&field, value)? } else { single(&field.kind(), value)? };
        message.set_field(&field, value);
    }
    for ((field, inner), fields) in inline.iter().zip(embedded) {
        if !fields.is_empty() {
            message.set_field(field, PValue::Message(self::message(inner, &Value::Object(fields))?));
        }
    }
    Ok(message)
}

fn repeated(field: &FieldDescriptor, json: &Value) -> Result<PValue, String> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { return Err(format!("{}: map without an entry type", field.name())) };
        let value_kind = entry.map_entry_value_field().kind();
        let object = json.as_object().ok_or_else(|| format!("{} must be an object", field.name()))?;
        let mut map = std::collections::HashMap::with_capacity(object.len());
        for (k, v) in object {
            if !v.is_null() {
                map.insert(MapKey::String(k.clone()), single(&value_kind, v)?);
            }
        }
        return Ok(PValue::Map(map));
    }
    let items = json.as_array().ok_or_else(|| format!("{} must be a list", field.name()))?;
    items.iter().map(|v| single(&field.kind(), v)).collect::<Result<_, _>>().map(PValue::List)
}

fn single(kind: &Kind, json: &Value) -> Result<PValue, String> {
    let out_of_range = || format!("{json} is out of range for {kind:?}");
    Ok(match kind {
        Kind::Message(desc) => PValue::Message(message(desc, json)?),
        Kind::String => PValue::String(json.as_str().ok_or_else(|| format!("expected a string, not {json}"))?.to_string()),
        Kind::Bool => PValue::Bool(json.as_bool().ok_or_else(|| format!("expected true or false, not {json}"))?),
        Kind::Bytes => {
            let text = json.as_str().ok_or_else(|| format!("expected base64 bytes, not {json}"))?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("bytes are not base64: {e}"))?;
            PValue::Bytes(bytes.into())
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => PValue::I32(integer(json)?.try_into().map_err(|_| out_of_range())?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(integer(json)?),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(integer(json)?.try_into().map_err(|_| out_of_range())?),
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(integer(json)?.try_into().map_err(|_| out_of_range())?),
        Kind::Double => PValue::F64(json.as_f64().ok_or_else(|| format!("expected a number, not {json}"))?),
        Kind::Float => PValue::F32(json.as_f64().ok_or_else(|| format!("expected a number, not {json}"))? as f32),
        Kind::Enum(_) => return Err("enums are not used by the Kubernetes API".into()),
    })
}

/// An integer, also from a float with no fraction (YAML and some clients write `3.0`).
fn integer(json: &Value) -> Result<i64, String> {
    json.as_i64()
        .or_else(|| json.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
        .ok_or_else(|| format!("expected an integer, not {json}"))
}
