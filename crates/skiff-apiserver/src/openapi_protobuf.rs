//! The OpenAPI v2 document in gnostic's protobuf form
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`), which kubectl fetches
//! to validate what it applies (a `kind: List` among others). The messages are gnostic's
//! `openapi.v2` (`OpenAPIv2.proto`): the document's definitions with every schema field
//! kubectl reads — references, types, items, properties, required fields, enums, and the
//! `x-kubernetes-*` extensions (as YAML, which JSON is). Paths are left empty: kubectl's
//! validation reads definitions only.

use serde_json::Value;

/// What kubectl asks for.
pub const MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// What the answer is labelled: the same with `.` for `@`, which Go's MIME parser (and
/// kubectl with it) refuses.
pub const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// One message being written: fields appended in order.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field << 3 | u32::from(wire_type)));
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn message(&mut self, field: u32, m: Message) {
        self.bytes(field, &m.0);
    }

    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn double(&mut self, field: u32, d: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&d.to_le_bytes());
    }
}

/// gnostic's `Any`: a value as YAML text.
fn any(v: &Value) -> Message {
    let mut m = Message::default();
    m.string(2, &v.to_string());
    m
}

fn named_any(name: &str, v: &Value) -> Message {
    let mut m = Message::default();
    m.string(1, name);
    m.message(2, any(v));
    m
}

fn named_schema(name: &str, v: &Value) -> Message {
    let mut m = Message::default();
    m.string(1, name);
    m.message(2, schema(v));
    m
}

fn schema(v: &Value) -> Message {
    let mut m = Message::default();
    let Value::Object(s) = v else { return m };
    let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
    m.string(1, text("$ref"));
    m.string(2, text("format"));
    m.string(3, text("title"));
    m.string(4, text("description"));
    if let Some(d) = s.get("default") {
        m.message(5, any(d));
    }
    for (field, key) in [(7, "maximum"), (9, "minimum")] {
        if let Some(n) = s.get(key).and_then(Value::as_f64) {
            m.double(field, n);
        }
    }
    m.string(13, text("pattern"));
    for r in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        m.string(19, r);
    }
    for e in s.get("enum").and_then(Value::as_array).into_iter().flatten() {
        m.message(20, any(e));
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Message::default();
            item.key(2, 0);
            item.varint(u64::from(*b));
            m.message(21, item);
        }
        Some(inner @ Value::Object(_)) => {
            let mut item = Message::default();
            item.message(1, schema(inner));
            m.message(21, item);
        }
        _ => {}
    }
    // A nullable type (`["string", "null"]`) is its one real type to kubectl.
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut item = Message::default();
        for t in types {
            item.string(1, t);
        }
        m.message(22, item);
    }
    if let Some(items) = s.get("items") {
        let mut item = Message::default();
        match items {
            Value::Array(each) => each.iter().for_each(|i| item.message(1, schema(i))),
            one => item.message(1, schema(one)),
        }
        m.message(23, item);
    }
    for part in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        m.message(24, schema(part));
    }
    if let Some(Value::Object(props)) = s.get("properties") {
        let mut p = Message::default();
        for (name, prop) in props {
            p.message(1, named_schema(name, prop));
        }
        m.message(25, p);
    }
    m.boolean(27, s.get("readOnly").and_then(Value::as_bool).unwrap_or(false));
    for (name, ext) in s.iter().filter(|(k, _)| k.starts_with("x-")) {
        m.message(31, named_any(name, ext));
    }
    m
}

/// The gnostic `Document` of an OpenAPI v2 document (JSON).
pub fn document(doc: &Value) -> Vec<u8> {
    let mut d = Message::default();
    d.string(1, doc.get("swagger").and_then(Value::as_str).unwrap_or("2.0"));
    let mut info = Message::default();
    info.string(1, doc.pointer("/info/title").and_then(Value::as_str).unwrap_or_default());
    info.string(2, doc.pointer("/info/version").and_then(Value::as_str).unwrap_or_default());
    d.message(2, info);
    d.message(8, Message::default());
    let mut defs = Message::default();
    for (name, s) in doc.get("definitions").and_then(Value::as_object).into_iter().flatten() {
        defs.message(1, named_schema(name, s));
    }
    d.message(9, defs);
    d.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reads the (field, wire type, payload) triples of one message.
    fn fields(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let varint = |b: &mut &[u8]| {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte < 0x80 {
                    return v;
                }
            }
        };
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let payload = match key & 7 {
                0 => varint(&mut b).to_le_bytes().to_vec(),
                1 => {
                    let p = b[..8].to_vec();
                    b = &b[8..];
                    p
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let p = b[..n].to_vec();
                    b = &b[n..];
                    p
                }
                other => panic!("unexpected wire type {other}"),
            };
            out.push(((key >> 3) as u32, payload));
        }
        out
    }

    #[test]
    fn definitions_carry_types_properties_and_extensions() {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "definitions": {
            "io.k8s.api.core.v1.ConfigMap": {"type": "object", "required": ["data"], "properties": {
                "data": {"type": "object", "additionalProperties": {"type": "string"}},
                "kind": {"type": ["string", "null"]}},
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}]}}});
        let top = fields(&document(&doc));
        assert_eq!(top[0], (1, b"2.0".to_vec()));
        let defs = &top.iter().find(|(f, _)| *f == 9).unwrap().1;
        let named = fields(&fields(defs)[0].1);
        assert_eq!(named[0], (1, b"io.k8s.api.core.v1.ConfigMap".to_vec()));
        let schema = fields(&named[1].1);
        let field = |n: u32| schema.iter().filter(|(f, _)| *f == n).map(|(_, p)| p.clone()).collect::<Vec<_>>();
        assert_eq!(field(19), [b"data".to_vec()]);
        assert_eq!(fields(&field(22)[0]), [(1, b"object".to_vec())]);
        assert_eq!(fields(&field(25)[0]).len(), 2);
        let ext = fields(&field(31)[0]);
        assert_eq!(ext[0], (1, b"x-kubernetes-group-version-kind".to_vec()));
        assert!(String::from_utf8(fields(&ext[1].1)[0].1.clone()).unwrap().contains("ConfigMap"));
    }
}
