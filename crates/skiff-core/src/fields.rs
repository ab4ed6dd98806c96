//! Field selectors (`?fieldSelector=metadata.name=x,status.phase!=Running`), evaluated
//! against the JSON form of an object. A field an object does not have reads as "".

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted path, e.g. `spec.nodeName`.
    pub field: String,
    pub value: String,
    pub negate: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid field selector {selector:?}: {reason}")]
pub struct FieldSelectorError {
    pub selector: String,
    pub reason: String,
}

impl FieldSelector {
    pub fn parse(input: &str) -> Result<Self, FieldSelectorError> {
        let mut requirements = Vec::new();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, negate) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, false)
            } else {
                return Err(FieldSelectorError {
                    selector: input.into(),
                    reason: format!("{term:?} is not of the form field=value or field!=value"),
                });
            };
            let field = field.trim();
            if field.is_empty() || field.split('.').any(str::is_empty) {
                return Err(FieldSelectorError { selector: input.into(), reason: format!("bad field name {field:?}") });
            }
            requirements.push(FieldRequirement { field: field.into(), value: value.trim().into(), negate });
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value required for `metadata.name`, if the selector pins one.
    pub fn required_name(&self) -> Option<&str> {
        self.requirements.iter().find(|r| r.field == "metadata.name" && !r.negate).map(|r| r.value.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(object, &r.field);
            (actual == r.value) != r.negate
        })
    }
}

/// The string value of a dotted field path; absent fields read as "".
pub fn field_value(object: &Value, path: &str) -> String {
    let mut cur = object;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_by_path() {
        let pod = json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod);
        assert!(m("metadata.name=a"));
        assert!(m("metadata.name==a,metadata.namespace=d"));
        assert!(m("spec.nodeName!=n2"));
        assert!(m("status.phase=Running"));
        assert!(!m("spec.nodeName="));
        assert!(m("spec.schedulerName="));
        assert_eq!(FieldSelector::parse("metadata.name=a").unwrap().required_name(), Some("a"));
        assert!(FieldSelector::parse("novalue").is_err());
        assert!(FieldSelector::parse("a..b=1").is_err());
    }
}
