//! Output in kubectl's shapes: aligned tables from the server's Table, YAML and JSON.

use serde_json::Value;

/// Renders a `meta.k8s.io/v1` Table as kubectl does: upper-case headers, columns padded
/// to their widest cell and three spaces apart. `wide` adds the priority > 0 columns;
/// `namespace_column` prefixes each row with its object's namespace.
pub fn table(t: &Value, wide: bool, namespace_column: bool, header: bool) -> String {
    let defs: Vec<&Value> = t["columnDefinitions"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let shown: Vec<usize> = defs.iter().enumerate()
        .filter(|(_, d)| wide || d["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    if header {
        let mut h: Vec<String> = shown.iter().map(|i| defs[*i]["name"].as_str().unwrap_or_default().to_uppercase()).collect();
        if namespace_column {
            h.insert(0, "NAMESPACE".into());
        }
        rows.push(h);
    }
    for row in t["rows"].as_array().into_iter().flatten() {
        let cells = row["cells"].as_array().cloned().unwrap_or_default();
        let mut r: Vec<String> = shown.iter().map(|i| cell(cells.get(*i).unwrap_or(&Value::Null))).collect();
        if namespace_column {
            r.insert(0, row.pointer("/object/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string());
        }
        rows.push(r);
    }
    align(&rows)
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

pub fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, s) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(s);
            } else {
                line.push_str(&format!("{s:<w$}   ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn yaml(v: &Value) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string(v)?)
}

pub fn json(v: &Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aligns_like_kubectl() {
        let t = json!({"columnDefinitions": [{"name": "Name", "priority": 0}, {"name": "Age", "priority": 0}, {"name": "IP", "priority": 1}],
            "rows": [{"cells": ["a-long-name", "5s", "10.0.0.1"], "object": {"metadata": {"namespace": "default"}}}]});
        assert_eq!(table(&t, false, false, true), "NAME          AGE\na-long-name   5s\n");
        assert_eq!(table(&t, true, true, true), "NAMESPACE   NAME          AGE   IP\ndefault     a-long-name   5s    10.0.0.1\n");
    }
}
