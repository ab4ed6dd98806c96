//! A JSON object to protobuf wire bytes, as Go's API types would read it from JSON and
//! write it: straight from the JSON tree into the output, no intermediate message.

use base64::Engine;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use serde_json::{Map, Value};

use super::schema::{Field, MessageId, SCHEMA, Scalar, Special};

/// Writes the message `id` from its JSON form. Kubernetes objects carry `apiVersion` and
/// `kind` in JSON but not in their messages (the envelope names them): those are skipped
/// where the message has no such field. Any other field the schema lacks is an error.
pub(super) fn message(id: MessageId, json: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let message = SCHEMA.message(id);
    if let Some(special) = message.special {
        return special_message(special, id, json, out);
    }
    let object = json.as_object().ok_or_else(|| format!("{} must be an object, not {json}", message.name))?;
    fields(id, object, out, false)
}

/// The fields of message `id` found in `object`. An inline field's message takes its
/// fields from the same object; `only_own` (for such a message) ignores the others.
fn fields(id: MessageId, object: &Map<String, Value>, out: &mut Vec<u8>, only_own: bool) -> Result<(), String> {
    let message = SCHEMA.message(id);
    let inline = message.inline.iter().map(|&i| &message.fields[i]);
    for (name, value) in object {
        if value.is_null() {
            continue;
        }
        match message.field_named(name) {
            Some(f) if !f.inline => field(f, value, out)?,
            _ if only_own || name == "apiVersion" || name == "kind" => {}
            _ if inline.clone().any(|f| embedded(f).is_some_and(|m| SCHEMA.message(m).field_named(name).is_some())) => {}
            _ => return Err(format!("{} has no field {name:?}", message.name)),
        }
    }
    for f in inline {
        let Some(m) = embedded(f) else { continue };
        if object.keys().any(|k| SCHEMA.message(m).field_named(k).is_some()) {
            encode_key(f.number, WireType::LengthDelimited, out);
            delimited(out, |out| fields(m, object, out, true))?;
        }
    }
    Ok(())
}

fn embedded(f: &Field) -> Option<MessageId> {
    match f.kind {
        Scalar::Message(m) => Some(m),
        _ => None,
    }
}

fn field(f: &Field, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    if let Some(value_kind) = f.map_value {
        let object = value.as_object().ok_or_else(|| format!("{} must be an object", f.name))?;
        for (k, v) in object {
            if v.is_null() {
                continue;
            }
            encode_key(f.number, WireType::LengthDelimited, out);
            delimited(out, |out| {
                single(1, Scalar::String, &Value::String(k.clone()), out)?;
                single(2, value_kind, v, out)
            })?;
        }
        return Ok(());
    }
    if f.list {
        let items = value.as_array().ok_or_else(|| format!("{} must be a list", f.name))?;
        return items.iter().try_for_each(|v| single(f.number, f.kind, v, out));
    }
    single(f.number, f.kind, value, out)
}

/// Writes a length-delimited body produced by `body`, its length first. Two bytes are kept
/// for the length up front (any body under 16 KiB); the body moves only when its length
/// needs another width, which for a short body is a short move.
pub(super) fn delimited(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>) -> Result<(), String>) -> Result<(), String> {
    const RESERVED: usize = 2;
    let at = out.len();
    out.extend_from_slice(&[0; RESERVED]);
    body(out)?;
    let len = out.len() - at - RESERVED;
    let width = encoded_len_varint(len as u64);
    match width.cmp(&RESERVED) {
        std::cmp::Ordering::Less => {
            out.copy_within(at + RESERVED.., at + width);
            out.truncate(at + width + len);
        }
        std::cmp::Ordering::Greater => {
            out.splice(at + RESERVED..at + RESERVED, std::iter::repeat_n(0, width - RESERVED));
        }
        std::cmp::Ordering::Equal => {}
    }
    let mut prefix = &mut out[at..at + width];
    encode_varint(len as u64, &mut prefix);
    Ok(())
}

fn single(number: u32, kind: Scalar, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let out_of_range = || format!("{value} is out of range for {kind:?}");
    match kind {
        Scalar::Message(id) => {
            encode_key(number, WireType::LengthDelimited, out);
            delimited(out, |out| message(id, value, out))
        }
        Scalar::String => {
            let s = value.as_str().ok_or_else(|| format!("expected a string, not {value}"))?;
            bytes(number, s.as_bytes(), out);
            Ok(())
        }
        Scalar::Bytes => {
            let text = value.as_str().ok_or_else(|| format!("expected base64 bytes, not {value}"))?;
            let b = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("bytes are not base64: {e}"))?;
            bytes(number, &b, out);
            Ok(())
        }
        Scalar::Bool => {
            let b = value.as_bool().ok_or_else(|| format!("expected true or false, not {value}"))?;
            varint(number, u64::from(b), out);
            Ok(())
        }
        Scalar::Int32 => {
            let n = i32::try_from(integer(value)?).map_err(|_| out_of_range())?;
            varint(number, i64::from(n) as u64, out);
            Ok(())
        }
        Scalar::Int64 => {
            varint(number, integer(value)? as u64, out);
            Ok(())
        }
        Scalar::Uint32 | Scalar::Uint64 => {
            let n = u64::try_from(integer(value)?).map_err(|_| out_of_range())?;
            if kind == Scalar::Uint32 && n > u64::from(u32::MAX) {
                return Err(out_of_range());
            }
            varint(number, n, out);
            Ok(())
        }
        Scalar::Double | Scalar::Float => {
            let f = value.as_f64().ok_or_else(|| format!("expected a number, not {value}"))?;
            if kind == Scalar::Double {
                encode_key(number, WireType::SixtyFourBit, out);
                out.extend_from_slice(&f.to_le_bytes());
            } else {
                encode_key(number, WireType::ThirtyTwoBit, out);
                out.extend_from_slice(&(f as f32).to_le_bytes());
            }
            Ok(())
        }
    }
}

fn varint(number: u32, value: u64, out: &mut Vec<u8>) {
    encode_key(number, WireType::Varint, out);
    encode_varint(value, out);
}

fn bytes(number: u32, value: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

fn special_message(special: Special, id: MessageId, json: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match special {
        Special::Time | Special::MicroTime => {
            let text = json.as_str().ok_or_else(|| format!("a time must be a string, not {json}"))?;
            let t: jiff::Timestamp = text.parse().map_err(|e| format!("time {text:?}: {e}"))?;
            varint(1, t.as_second() as u64, out);
            if special == Special::MicroTime && t.subsec_nanosecond() != 0 {
                varint(2, i64::from(t.subsec_nanosecond()) as u64, out);
            }
        }
        Special::IntOrString => match json {
            Value::String(s) => {
                varint(1, 1, out);
                bytes(3, s.as_bytes(), out);
            }
            n => {
                let v = i32::try_from(integer(n)?).map_err(|_| format!("{n} is out of range"))?;
                varint(1, 0, out);
                varint(2, i64::from(v) as u64, out);
            }
        },
        Special::Quantity => match json {
            Value::String(s) => bytes(1, s.as_bytes(), out),
            Value::Number(n) => bytes(1, n.to_string().as_bytes(), out),
            other => return Err(format!("a quantity must be a string or number, not {other}")),
        },
        Special::Raw => bytes(1, &serde_json::to_vec(json).map_err(|e| e.to_string())?, out),
        Special::ListWrapper => {
            let f = &SCHEMA.message(id).fields[0];
            field(f, json, out)?;
        }
    }
    Ok(())
}

/// An integer, also from a float with no fraction (YAML and some clients write `3.0`).
fn integer(json: &Value) -> Result<i64, String> {
    json.as_i64()
        .or_else(|| json.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
        .ok_or_else(|| format!("expected an integer, not {json}"))
}
