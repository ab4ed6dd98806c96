//! Protobuf wire bytes to the JSON Go's API types would write for them: straight from the
//! bytes into the JSON tree. A zero scalar reads as unset unless its field is a pointer
//! whose zero is a choice (see `schema::ZERO_IS_SET`).

use base64::Engine;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::{Map, Value, json};

use super::schema::{Field, MessageId, SCHEMA, Scalar, Special};

/// One field's raw value on the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn next<'a>(buf: &mut &'a [u8]) -> Result<(u32, Wire<'a>), String> {
    let (number, wire_type) = decode_key(buf).map_err(|e| e.to_string())?;
    let value = match wire_type {
        WireType::Varint => Wire::Varint(decode_varint(buf).map_err(|e| e.to_string())?),
        WireType::SixtyFourBit => Wire::Fixed64(take(buf, 8)?.try_into().expect("8 bytes")),
        WireType::ThirtyTwoBit => Wire::Fixed32(take(buf, 4)?.try_into().expect("4 bytes")),
        WireType::LengthDelimited => {
            let len = decode_varint(buf).map_err(|e| e.to_string())?;
            Wire::Bytes(take(buf, usize::try_from(len).map_err(|_| "length overflows")?)?)
        }
        WireType::StartGroup | WireType::EndGroup => return Err("groups are not used by the Kubernetes API".into()),
    };
    Ok((number, value))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err("the message is truncated".into());
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// How deeply messages may nest: far beyond any Kubernetes object, and short of a stack
/// overflow on a crafted body.
const MAX_DEPTH: usize = 64;

/// The JSON form of message `id` read from `buf`, `depth` messages down.
pub(super) fn message(id: MessageId, mut buf: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("messages nest deeper than {MAX_DEPTH}"));
    }
    let message = SCHEMA.message(id);
    if let Some(special) = message.special {
        return special_message(special, id, buf, depth);
    }
    let mut out = Map::new();
    while !buf.is_empty() {
        let (number, wire) = next(&mut buf)?;
        let Some(f) = message.field_numbered(number) else { continue };
        if let Some(value_kind) = f.map_value {
            let Wire::Bytes(entry) = wire else { return Err(format!("{}: a map entry must be length-delimited", f.name)) };
            let (key, value) = map_entry(entry, value_kind, depth)?;
            if let Value::Object(map) = out.entry(f.name.clone()).or_insert_with(|| Value::Object(Map::new())) {
                map.insert(key, value);
            }
        } else if f.list {
            let items = out.entry(f.name.clone()).or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = items else { continue };
            match (wire, f.kind) {
                // A packed run of numbers.
                (Wire::Bytes(mut packed), kind) if !matches!(kind, Scalar::String | Scalar::Bytes | Scalar::Message(_)) => {
                    while !packed.is_empty() {
                        let value = match kind {
                            Scalar::Double => Wire::Fixed64(take(&mut packed, 8)?.try_into().expect("8 bytes")),
                            Scalar::Float => Wire::Fixed32(take(&mut packed, 4)?.try_into().expect("4 bytes")),
                            _ => Wire::Varint(decode_varint(&mut packed).map_err(|e| e.to_string())?),
                        };
                        items.push(single(kind, value, depth)?);
                    }
                }
                (wire, kind) => items.push(single(kind, wire, depth)?),
            }
        } else {
            let value = single(f.kind, wire, depth)?;
            if f.inline {
                if let Value::Object(fields) = value {
                    out.extend(fields);
                }
            } else if f.zero_is_set || !reads_as_unset(f, &value) {
                out.insert(f.name.clone(), value);
            } else {
                out.remove(&f.name);
            }
        }
    }
    Ok(Value::Object(out))
}

/// Whether a present singular value is absent in Go's JSON: a zero scalar of a non-pointer
/// field, or a zero time (Go writes `null` for it).
fn reads_as_unset(f: &Field, value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() && !matches!(f.kind, Scalar::Message(_)),
        _ => false,
    }
}

fn map_entry(mut buf: &[u8], value_kind: Scalar, depth: usize) -> Result<(String, Value), String> {
    let (mut key, mut value) = (String::new(), None);
    while !buf.is_empty() {
        match next(&mut buf)? {
            (1, Wire::Bytes(k)) => key = String::from_utf8(k.to_vec()).map_err(|_| "a map key is not UTF-8")?,
            (2, wire) => value = Some(single(value_kind, wire, depth)?),
            _ => {}
        }
    }
    // An absent value is the zero value of its kind.
    let value = match value {
        Some(v) => v,
        None => single(value_kind, if matches!(value_kind, Scalar::String | Scalar::Bytes | Scalar::Message(_)) { Wire::Bytes(&[]) } else { Wire::Varint(0) }, depth)?,
    };
    Ok((key, value))
}

fn single(kind: Scalar, wire: Wire, depth: usize) -> Result<Value, String> {
    let mismatch = || format!("a {kind:?} field has the wrong wire type");
    Ok(match (kind, wire) {
        (Scalar::Bool, Wire::Varint(v)) => json!(v != 0),
        (Scalar::Int32, Wire::Varint(v)) => json!(v as i32),
        (Scalar::Int64, Wire::Varint(v)) => json!(v as i64),
        (Scalar::Uint32, Wire::Varint(v)) => json!(v as u32),
        (Scalar::Uint64, Wire::Varint(v)) => json!(v),
        (Scalar::Int32 | Scalar::Uint32, Wire::Fixed32(b)) => json!(u32::from_le_bytes(b) as i32),
        (Scalar::Int64 | Scalar::Uint64, Wire::Fixed64(b)) => json!(i64::from_le_bytes(b)),
        (Scalar::Double, Wire::Fixed64(b)) => json!(f64::from_le_bytes(b)),
        (Scalar::Float, Wire::Fixed32(b)) => json!(f32::from_le_bytes(b)),
        (Scalar::String, Wire::Bytes(b)) => Value::String(String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8")?),
        (Scalar::Bytes, Wire::Bytes(b)) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        (Scalar::Message(id), Wire::Bytes(b)) => message(id, b, depth + 1)?,
        _ => return Err(mismatch()),
    })
}

fn special_message(special: Special, id: MessageId, mut buf: &[u8], depth: usize) -> Result<Value, String> {
    if special == Special::ListWrapper {
        let f = &SCHEMA.message(id).fields[0];
        let mut items = Vec::new();
        while !buf.is_empty() {
            let (number, wire) = next(&mut buf)?;
            if number == f.number {
                items.push(single(f.kind, wire, depth)?);
            }
        }
        return Ok(Value::Array(items));
    }
    // The other special messages are small: read their fields by number.
    let (mut ints, mut text): ([i64; 3], Option<&[u8]>) = ([0; 3], None);
    while !buf.is_empty() {
        match next(&mut buf)? {
            (n @ 1..=3, Wire::Varint(v)) => ints[n as usize - 1] = v as i64,
            (n, Wire::Bytes(b)) if (special == Special::IntOrString && n == 3) || n == 1 => text = Some(b),
            _ => {}
        }
    }
    Ok(match special {
        Special::Time | Special::MicroTime => {
            let (seconds, nanos) = (ints[0], if special == Special::MicroTime { ints[1] } else { 0 });
            if seconds == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            let t = jiff::Timestamp::new(seconds, nanos as i32).map_err(|e| format!("time out of range: {e}"))?;
            let format = if special == Special::MicroTime { "%Y-%m-%dT%H:%M:%S%.6fZ" } else { "%Y-%m-%dT%H:%M:%SZ" };
            Value::String(t.strftime(format).to_string())
        }
        Special::IntOrString if ints[0] == 1 => Value::String(utf8(text)?),
        Special::IntOrString => json!(ints[1] as i32),
        Special::Quantity => Value::String(utf8(text)?),
        Special::Raw => match text {
            None | Some([]) => Value::Null,
            Some(raw) if raw.starts_with(super::MAGIC) => super::decode_nested(raw, depth + 1).map_err(|e| e.to_string())?,
            Some(raw) => serde_json::from_slice(raw).map_err(|e| format!("embedded object is neither JSON nor protobuf: {e}"))?,
        },
        Special::ListWrapper => unreachable!("read above"),
    })
}

fn utf8(text: Option<&[u8]>) -> Result<String, String> {
    String::from_utf8(text.unwrap_or_default().to_vec()).map_err(|_| "a string is not UTF-8".into())
}
