//! Label selectors, in the string form clients send (`app=web,tier in (a,b),!legacy`) and
//! the structured form objects carry (`matchLabels` / `matchExpressions`).

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    pub values: Vec<String>,
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl LabelSelector {
    /// Parses the string form used in `?labelSelector=` and `kubectl -l`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError { selector: input.to_string(), reason };
        let mut requirements = Vec::new();
        for term in split_terms(input).map_err(err)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(term).map_err(err)?);
        }
        Ok(Self { requirements })
    }

    /// Builds a selector from a `metav1.LabelSelector` JSON object.
    pub fn from_json(selector: &Value) -> Result<Self, SelectorError> {
        let err = |reason: &str| SelectorError { selector: selector.to_string(), reason: reason.into() };
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                let v = v.as_str().ok_or_else(|| err("matchLabels values must be strings"))?;
                requirements.push(Requirement { key: k.clone(), op: Operator::Equals, values: vec![v.into()] });
            }
        }
        for expr in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = expr.get("key").and_then(Value::as_str).ok_or_else(|| err("matchExpressions need a key"))?;
            let values: Vec<String> = expr
                .get("values")
                .and_then(Value::as_array)
                .map(|vs| vs.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let op = match expr.get("operator").and_then(Value::as_str) {
                Some("In") => Operator::In,
                Some("NotIn") => Operator::NotIn,
                Some("Exists") => Operator::Exists,
                Some("DoesNotExist") => Operator::DoesNotExist,
                _ => return Err(err("operator must be In, NotIn, Exists or DoesNotExist")),
            };
            requirements.push(Requirement { key: key.into(), op, values });
        }
        Ok(Self { requirements })
    }

    /// The selector of a map of labels that must all match (a Service's `spec.selector`).
    pub fn from_map(labels: &std::collections::BTreeMap<String, String>) -> Self {
        let requirements = labels.iter().map(|(k, v)| Requirement { key: k.clone(), op: Operator::Equals, values: vec![v.clone()] }).collect();
        Self { requirements }
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// True when the labels (a JSON object of strings, or absent) satisfy every requirement.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.matches_with(|key| labels.and_then(|l| l.get(key)).and_then(Value::as_str))
    }

    /// True when a typed label map (as k8s-openapi objects carry) satisfies the selector.
    pub fn matches_map(&self, labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
        self.matches_with(|key| labels.and_then(|l| l.get(key)).map(String::as_str))
    }

    /// True when the labels, read through `label`, satisfy every requirement.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| {
            let value = label(&r.key);
            match r.op {
                Operator::Equals => value == Some(r.values[0].as_str()),
                Operator::NotEquals => value != Some(r.values[0].as_str()),
                Operator::In => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Operator::NotIn => value.is_none_or(|v| !r.values.iter().any(|x| x == v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }

    /// True when the object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(object.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

/// The string form, as `?labelSelector=` takes it and `kubectl` prints it.
impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let terms: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r.op {
                Operator::Equals => format!("{}={}", r.key, r.values[0]),
                Operator::NotEquals => format!("{}!={}", r.key, r.values[0]),
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        f.write_str(&terms.join(","))
    }
}

/// Splits on commas that are not inside a parenthesised value list.
fn split_terms(input: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                terms.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    terms.push(&input[start..]);
    Ok(terms)
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement { key: key.into(), op: Operator::DoesNotExist, values: vec![] });
    }
    for (token, op) in [("!=", Operator::NotEquals), ("==", Operator::Equals), ("=", Operator::Equals)] {
        if let Some((key, value)) = term.split_once(token) {
            let (key, value) = (key.trim(), value.trim());
            check_key(key)?;
            check_value(value)?;
            return Ok(Requirement { key: key.into(), op, values: vec![value.into()] });
        }
    }
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0];
        let rest = words[1].trim();
        let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
            (Operator::NotIn, l)
        } else if let Some(l) = rest.strip_prefix("in") {
            (Operator::In, l)
        } else {
            return Err(format!("expected 'in' or 'notin' after {key:?}, found {rest:?}"));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("values for {key:?} must be in parentheses"))?;
        check_key(key)?;
        let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        for v in &values {
            check_value(v)?;
        }
        return Ok(Requirement { key: key.into(), op, values });
    }
    check_key(term)?;
    Ok(Requirement { key: term.into(), op: Operator::Exists, values: vec![] })
}

fn check_key(key: &str) -> Result<(), String> {
    crate::names::validate_qualified_name(key).map_err(|e| format!("key {key:?}: {e}"))
}

fn check_value(value: &str) -> Result<(), String> {
    crate::names::validate_label_value(value).map_err(|e| format!("value {value:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_operator() {
        let l = labels(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app!=web"));
        assert!(m("tier in (front, back)"));
        assert!(!m("tier notin (front,back)"));
        assert!(m("app"));
        assert!(m("!legacy"));
        assert!(!m("!app"));
        assert!(m("app=web,tier in (front),!legacy"));
        assert!(m(""));
        assert!(m("missing notin (x)"));
        assert!(m("missing!=x"));
    }

    #[test]
    fn bad_selectors_are_errors() {
        for s in ["app in web", "tier in (a", "a)b", "app=web=x", "!", "bad key=1", "-x=1"] {
            assert!(LabelSelector::parse(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn structured_form() {
        let sel = LabelSelector::from_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]
        }))
        .unwrap();
        assert!(sel.matches(Some(&labels(json!({"app": "web", "tier": "front"})))));
        assert!(!sel.matches(Some(&labels(json!({"app": "web"})))));
    }

    #[test]
    fn display_parses_back() {
        let s = "app=web,tier!=db,zone in (a,b),env notin (x),legacy,!beta";
        let sel = LabelSelector::parse(s).unwrap();
        assert_eq!(sel.to_string(), s);
        assert_eq!(LabelSelector::parse(&sel.to_string()).unwrap(), sel);
    }
}
