//! Sets of field paths, the unit of ownership in server-side apply, and their `FieldsV1`
//! spelling: a tree of path elements — `f:<field>`, `k:<key fields as JSON>` (an item of
//! a keyed list), `v:<value as JSON>` (an item of a set), `i:<index>` — where `{}` is a
//! member with nothing below it and `".": {}` marks a member that also has children.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A set of paths: each node is one path element; `member` says the path to it is in the
/// set (not only paths below it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    pub member: bool,
    pub children: BTreeMap<String, FieldSet>,
}

/// The path element of a field.
pub fn field(name: &str) -> String {
    format!("f:{name}")
}

/// The path element of a keyed list item: its key fields, as compact JSON with sorted keys.
pub fn key(fields: &Map<String, Value>) -> String {
    format!("k:{}", Value::Object(fields.clone()))
}

/// The path element of a set item.
pub fn value(v: &Value) -> String {
    format!("v:{v}")
}

impl FieldSet {
    pub fn leaf() -> Self {
        Self { member: true, children: BTreeMap::new() }
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// Reads a `fieldsV1` tree.
    pub fn from_fields_v1(v: &Value) -> Result<Self, String> {
        let Value::Object(map) = v else { return Err(format!("expected an object, not {v}")) };
        if map.is_empty() {
            return Ok(Self::leaf());
        }
        let mut set = Self::default();
        for (element, child) in map {
            if element == "." {
                set.member = true;
                continue;
            }
            if !["f:", "k:", "v:", "i:"].iter().any(|p| element.starts_with(p)) {
                return Err(format!("unknown path element {element:?}"));
            }
            set.children.insert(element.clone(), Self::from_fields_v1(child)?);
        }
        Ok(set)
    }

    /// This set as a `fieldsV1` tree.
    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (element, child) in &self.children {
            map.insert(element.clone(), child.to_fields_v1());
        }
        Value::Object(map)
    }

    /// Adds every path of `other`.
    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (element, child) in &other.children {
            self.children.entry(element.clone()).or_default().union(child);
        }
    }

    /// The paths of this set that `other` does not have.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && !other.member, children: BTreeMap::new() };
        for (element, child) in &self.children {
            let rest = match other.children.get(element) {
                Some(o) => child.difference(o),
                None => child.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(element.clone(), rest);
            }
        }
        out
    }

    /// The paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && other.member, children: BTreeMap::new() };
        for (element, child) in &self.children {
            if let Some(o) = other.children.get(element) {
                let both = child.intersection(o);
                if !both.is_empty() {
                    out.children.insert(element.clone(), both);
                }
            }
        }
        out
    }

    /// The node at `path`, if the set has it or paths below it.
    pub fn at(&self, path: &[String]) -> Option<&FieldSet> {
        path.iter().try_fold(self, |node, element| node.children.get(element))
    }

    /// Every member path, in order.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (element, child) in &self.children {
            prefix.push(element.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }
}

/// A path as Kubernetes prints it in conflicts: `.spec.containers[name="app"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        let (kind, rest) = element.split_at(2.min(element.len()));
        match kind {
            "f:" => {
                out.push('.');
                out.push_str(rest);
            }
            "k:" => {
                let fields: Vec<String> = match serde_json::from_str::<Map<String, Value>>(rest) {
                    Ok(map) => map.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    Err(_) => vec![rest.to_string()],
                };
                out.push_str(&format!("[{}]", fields.join(",")));
            }
            "v:" => out.push_str(&format!("[={rest}]")),
            "i:" => out.push_str(&format!("[{rest}]")),
            _ => out.push_str(element),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_round_trips_and_marks_members_with_children() {
        let v = json!({"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}, "f:name": {}}}, "f:replicas": {}}});
        let set = FieldSet::from_fields_v1(&v).unwrap();
        assert_eq!(set.to_fields_v1(), v);
        assert_eq!(set.paths().len(), 4);
        assert!(FieldSet::from_fields_v1(&json!({"x:bad": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
    }

    #[test]
    fn set_algebra() {
        let a = FieldSet::from_fields_v1(&json!({"f:a": {}, "f:b": {"f:c": {}, "f:d": {}}})).unwrap();
        let b = FieldSet::from_fields_v1(&json!({"f:b": {"f:c": {}}, "f:e": {}})).unwrap();
        assert_eq!(a.difference(&b).to_fields_v1(), json!({"f:a": {}, "f:b": {"f:d": {}}}));
        assert_eq!(a.intersection(&b).to_fields_v1(), json!({"f:b": {"f:c": {}}}));
        let mut u = a.clone();
        u.union(&b);
        assert_eq!(u.paths().len(), 4);
        assert!(a.difference(&a).is_empty());
    }

    #[test]
    fn paths_print_as_kubernetes_prints_them() {
        let path = vec!["f:spec".to_string(), "k:{\"name\":\"app\"}".to_string(), "f:image".to_string()];
        assert_eq!(display(&path), ".spec[name=\"app\"].image");
        assert_eq!(display(&["f:metadata".into(), "f:finalizers".into(), "v:\"x\"".into()]), ".metadata.finalizers[=\"x\"]");
    }
}
