//! OpenAPI documents generated from the k8s-openapi types: `/openapi/v3` (an index plus a
//! document per group/version) and `/openapi/v2`. kubectl reads them to learn that the
//! server validates fields itself (`fieldValidation` on PATCH), so `kubectl apply`
//! validates with its default flags.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use skiff_core::resources::{self, RESOURCES, ResourceType};

use crate::{patch, typed};

struct Documents {
    v2: Vec<u8>,
    /// The v2 document as gnostic protobuf, what kubectl fetches to validate.
    v2_protobuf: Vec<u8>,
    v3_index: Vec<u8>,
    /// Keyed by `api/v1` or `apis/{group}/{version}`.
    v3: BTreeMap<String, Vec<u8>>,
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn schemas(settings: SchemaSettings) -> (Map<String, Value>, BTreeMap<(String, String), String>) {
    let mut generator = settings.into_generator();
    let names = typed::register_schemas(&mut generator)
        .into_iter()
        .map(|(av, kind, name)| ((av.to_string(), kind.to_string()), name))
        .collect();
    (generator.take_definitions(true), names)
}

fn parameter(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
    } else {
        json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
    }
}

/// The operations of one resource's collection and item paths.
fn paths(r: &ResourceType, schema_ref: &str, v3: bool) -> Vec<(String, Value)> {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let body_ref = json!({"$ref": schema_ref});
    let response = |code: &str| {
        if v3 {
            json!({code: {"description": "OK", "content": {"application/json": {"schema": body_ref}}}})
        } else {
            json!({code: {"description": "OK", "schema": body_ref}})
        }
    };
    let writes = ["dryRun", "fieldManager", "fieldValidation"].map(|p| parameter(p, v3));
    let op = |verb: &str, action: &str, params: &[Value], code: &str| {
        let mut o = json!({
            "operationId": format!("{verb}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": response(code),
        });
        if matches!(action, "post" | "put" | "patch") {
            if v3 {
                let media = if action == "patch" {
                    json!({"application/merge-patch+json": {"schema": {"type": "object"}},
                        "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
                        "application/json-patch+json": {"schema": {"type": "object"}}})
                } else {
                    json!({"application/json": {"schema": body_ref}})
                };
                o["requestBody"] = json!({"content": media, "required": true});
            } else {
                let mut ps = o["parameters"].as_array().cloned().unwrap_or_default();
                ps.push(json!({"name": "body", "in": "body", "required": true, "schema": body_ref}));
                o["parameters"] = Value::Array(ps);
            }
        }
        o
    };
    let base = format!("/{}", gv_path(r.group, r.version));
    let collection = if r.namespaced { format!("{base}/namespaces/{{namespace}}/{}", r.plural) } else { format!("{base}/{}", r.plural) };
    let item = format!("{collection}/{{name}}");
    let mut out = vec![
        (collection.clone(), json!({
            "get": op("list", "list", &[parameter("labelSelector", v3), parameter("fieldSelector", v3), parameter("limit", v3), parameter("continue", v3), parameter("watch", v3)], "200"),
            "post": op("create", "post", &writes, "201"),
            "delete": op("deletecollection", "deletecollection", &[], "200"),
        })),
        (item.clone(), json!({
            "get": op("read", "get", &[], "200"),
            "put": op("replace", "put", &writes, "200"),
            "patch": op("patch", "patch", &writes, "200"),
            "delete": op("delete", "delete", &[], "200"),
        })),
    ];
    if r.has_subresource("status") {
        out.push((format!("{item}/status"), json!({
            "get": op("read", "get", &[], "200"),
            "put": op("replace", "put", &writes, "200"),
            "patch": op("patch", "patch", &writes, "200"),
        })));
    }
    let mut with_params = Vec::new();
    for (path, mut ops) in out {
        let mut params = vec![];
        if r.namespaced {
            params.push(path_param("namespace", v3));
        }
        if path.contains("{name}") {
            params.push(path_param("name", v3));
        }
        ops["parameters"] = Value::Array(params);
        with_params.push((path, ops));
    }
    with_params
}

fn path_param(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
    } else {
        json!({"name": name, "in": "path", "required": true, "type": "string"})
    }
}

/// Adds the list merge rules the server applies ([`patch::list_strategy`]) to every list
/// property: `x-kubernetes-patch-strategy`/`-patch-merge-key` (what kubectl's client-side
/// apply computes patches with) and `x-kubernetes-list-type`/`-list-map-keys`.
fn annotate_lists(defs: &mut Map<String, Value>, ref_prefix: &str) {
    let item_properties = |defs: &Map<String, Value>, items: &Value| -> Vec<String> {
        let name = items.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(ref_prefix));
        let schema = name.and_then(|n| defs.get(n)).unwrap_or(items);
        schema.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default()
    };
    let names: Vec<String> = defs.keys().cloned().collect();
    for name in names {
        let Some(properties) = defs.get(&name).and_then(|d| d.get("properties")).and_then(Value::as_object) else { continue };
        let mut rules = Vec::new();
        for (field, prop) in properties {
            let Some(items) = prop.get("items").filter(|_| prop.get("type").and_then(Value::as_str) == Some("array")) else { continue };
            let have = item_properties(defs, items);
            let rule = match patch::list_strategy(field, |f| have.iter().any(|h| h == f)) {
                patch::ListStrategy::ByKey(key) => json!({"x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": key,
                    "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": patch::list_map_keys(field, key)}),
                patch::ListStrategy::Primitives => json!({"x-kubernetes-patch-strategy": "merge", "x-kubernetes-list-type": "set"}),
                patch::ListStrategy::Replace => continue,
            };
            rules.push((field.clone(), rule));
        }
        if let Some(Value::Object(properties)) = defs.get_mut(&name).and_then(|d| d.get_mut("properties")) {
            for (field, rule) in rules {
                if let (Some(Value::Object(prop)), Value::Object(rule)) = (properties.get_mut(&field), rule) {
                    prop.extend(rule);
                }
            }
        }
    }
}

/// Adds `x-kubernetes-group-version-kind` to each kind's top-level schema: what `kubectl
/// explain` looks up, and what tells kubectl's apply to take its merge rules from here.
fn tag_kinds(defs: &mut Map<String, Value>, names: &BTreeMap<(String, String), String>) {
    for ((api_version, kind), name) in names {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if let Some(Value::Object(schema)) = defs.get_mut(name) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([{"group": group, "version": version, "kind": kind}]));
        }
    }
}

fn build() -> Documents {
    let version_info = json!({"title": "Kubernetes", "version": crate::KUBERNETES_VERSION});
    let (mut defs3, names) = schemas(SchemaSettings::openapi3());
    annotate_lists(&mut defs3, "#/components/schemas/");
    tag_kinds(&mut defs3, &names);
    let mut v3 = BTreeMap::new();
    let mut index = Map::new();
    for (group, version) in resources::group_versions() {
        let mut paths_obj = Map::new();
        for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
            let name = &names[&(r.api_version(), r.kind.to_string())];
            for (path, ops) in paths(r, &format!("#/components/schemas/{name}"), true) {
                paths_obj.insert(path, ops);
            }
        }
        let doc = json!({"openapi": "3.0.0", "info": version_info, "paths": paths_obj, "components": {"schemas": defs3}});
        let bytes = serde_json::to_vec(&doc).expect("serializes");
        let key = gv_path(group, version);
        let hash = format!("{:016X}", fnv1a(&bytes));
        index.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}));
        v3.insert(key, bytes);
    }
    let mut settings2 = SchemaSettings::draft07();
    settings2.definitions_path = "#/definitions/".into();
    let (mut defs2, names2) = schemas(settings2);
    annotate_lists(&mut defs2, "#/definitions/");
    tag_kinds(&mut defs2, &names2);
    let mut paths2 = Map::new();
    for r in RESOURCES {
        let name = &names2[&(r.api_version(), r.kind.to_string())];
        for (path, ops) in paths(r, &format!("#/definitions/{name}"), false) {
            paths2.insert(path, ops);
        }
    }
    let v2 = json!({"swagger": "2.0", "info": version_info, "paths": paths2, "definitions": defs2});
    Documents {
        v2: serde_json::to_vec(&v2).expect("serializes"),
        v2_protobuf: crate::openapi_protobuf::document(&v2),
        v3_index: serde_json::to_vec(&json!({"paths": index})).expect("serializes"),
        v3,
    }
}

/// A stable content hash for cache-busting URLs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

fn documents() -> &'static Documents {
    static DOCS: OnceLock<Documents> = OnceLock::new();
    DOCS.get_or_init(build)
}

pub fn v2() -> &'static [u8] {
    &documents().v2
}

pub fn v2_protobuf() -> &'static [u8] {
    &documents().v2_protobuf
}

pub fn v3_index() -> &'static [u8] {
    &documents().v3_index
}

/// The document for `api/v1` or `apis/{group}/{version}`.
pub fn v3(gv: &str) -> Option<&'static [u8]> {
    documents().v3.get(gv.trim_matches('/')).map(Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_cover_every_resource() {
        let index: Value = serde_json::from_slice(v3_index()).unwrap();
        let apps = index["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
        assert!(apps.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc: Value = serde_json::from_slice(v3("apis/apps/v1").unwrap()).unwrap();
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        let r = patch["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
        let name = r.rsplit('/').next().unwrap();
        assert!(doc["components"]["schemas"][name]["properties"]["spec"].is_object());
        assert_eq!(doc["components"]["schemas"][name]["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        let core: Value = serde_json::from_slice(v3("api/v1").unwrap()).unwrap();
        let schemas = core["components"]["schemas"].as_object().unwrap();
        let pod_spec = schemas.iter().find(|(k, _)| k.ends_with("PodSpec")).map(|(_, v)| v).unwrap();
        assert_eq!(pod_spec["properties"]["containers"]["x-kubernetes-patch-merge-key"], "name");
        let container = schemas.iter().find(|(k, _)| k.ends_with(".Container") || k.as_str() == "Container").map(|(_, v)| v).unwrap();
        assert_eq!(container["properties"]["ports"]["x-kubernetes-patch-merge-key"], "containerPort");
        let service_spec = schemas.iter().find(|(k, _)| k.ends_with("ServiceSpec")).map(|(_, v)| v).unwrap();
        assert_eq!(service_spec["properties"]["ports"]["x-kubernetes-patch-merge-key"], "port");
        assert!(container["properties"]["args"].get("x-kubernetes-patch-merge-key").is_none());
        let v2: Value = serde_json::from_slice(v2()).unwrap();
        assert!(v2["definitions"].as_object().unwrap().len() > 50);
    }
}
