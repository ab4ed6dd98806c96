//! Discovery documents: `/api`, `/apis`, `/apis/{group}`, `/api/v1`, `/apis/{group}/{version}`.

use serde_json::{Value, json};
use skiff_core::resources::{self, RESOURCES, ResourceType};

const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// A group/version the API server answers itself rather than from the store, as an
/// aggregated API server would in Kubernetes (metrics-server's `metrics.k8s.io`), or as
/// kube-apiserver answers the access reviews (create only, never stored): listed in
/// discovery beside the stored groups.
pub struct ServedApi {
    pub group: &'static str,
    pub version: &'static str,
    /// (plural, kind, namespaced).
    pub resources: &'static [(&'static str, &'static str, bool)],
    pub verbs: &'static [&'static str],
}

pub const SERVED_APIS: &[ServedApi] = &[
    ServedApi { group: crate::metrics_api::GROUP, version: crate::metrics_api::VERSION, resources: crate::metrics_api::RESOURCES, verbs: READ_VERBS },
    ServedApi { group: crate::metrics_api::custom::GROUP, version: crate::metrics_api::custom::VERSION, resources: crate::metrics_api::custom::RESOURCES, verbs: READ_VERBS },
    ServedApi { group: crate::authz::identity::GROUP, version: crate::authz::identity::VERSION, resources: crate::authz::identity::RESOURCES, verbs: &["create"] },
    ServedApi { group: crate::authz::reviews::GROUP, version: crate::authz::reviews::VERSION, resources: crate::authz::reviews::RESOURCES, verbs: &["create"] },
];

const READ_VERBS: &[&str] = &["get", "list"];

fn served(group: &str) -> Option<&'static ServedApi> {
    SERVED_APIS.iter().find(|a| a.group == group)
}

fn served_group(a: &ServedApi) -> Value {
    let gv = format!("{}/{}", a.group, a.version);
    json!({"name": a.group, "versions": [{"groupVersion": gv, "version": a.version}], "preferredVersion": {"groupVersion": gv, "version": a.version}})
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
}

fn group(name: &str) -> Value {
    let versions: Vec<Value> = resources::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == name)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = resources::preferred_version(name).unwrap_or("v1");
    json!({"name": name, "versions": versions, "preferredVersion": {"groupVersion": format!("{name}/{preferred}"), "version": preferred}})
}

pub fn group_list() -> Value {
    let mut names: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !names.contains(&r.group) {
            names.push(r.group);
        }
    }
    let mut groups: Vec<Value> = names.into_iter().map(group).collect();
    groups.extend(SERVED_APIS.iter().map(served_group));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(name: &str) -> Option<Value> {
    let mut g = match served(name) {
        Some(a) => served_group(a),
        None => {
            resources::preferred_version(name)?;
            group(name)
        }
    };
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

fn entries(r: &ResourceType) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
        "shortNames": r.short_names,
        "categories": r.categories,
    })];
    for sub in r.subresources {
        let (group, version, kind, verbs) = subresource(r, sub);
        let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced,
            "kind": kind, "verbs": verbs});
        // The group and version are given where they differ from the resource's.
        if (group, version) != (r.group, r.version) {
            e["group"] = json!(group);
            e["version"] = json!(version);
        }
        out.push(e);
    }
    out
}

/// The APIResourceList of one group/version, if served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if let Some(a) = served(group).filter(|a| a.version == version) {
        let resources: Vec<Value> = a.resources.iter()
            .map(|(plural, kind, namespaced)| json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": a.verbs}))
            .collect();
        return Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"), "resources": resources}));
    }
    let served: Vec<&ResourceType> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": served.into_iter().flat_map(entries).collect::<Vec<_>>(),
    }))
}

/// The media type of aggregated discovery in the given version (`v2` or `v2beta1`).
pub fn aggregated_media_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// Which aggregated discovery version the client's Accept header asks for first, if any
/// (kubectl 1.30+ lists v2, then v2beta1, then the plain documents).
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    for media in accept.split(',') {
        let media = media.replace(' ', "");
        if media.contains("as=APIGroupDiscoveryList") && media.contains("g=apidiscovery.k8s.io") && media.starts_with("application/json") {
            if media.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if media.contains("v=v2") {
                return Some("v2");
            }
        }
        if media.starts_with("application/json") && !media.contains(";as=") || media.starts_with("*/*") {
            return None;
        }
    }
    None
}

/// What a subresource answers with: (group, version, kind, verbs).
fn subresource(r: &ResourceType, sub: &str) -> (&'static str, &'static str, &'static str, &'static [&'static str]) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale", &["get", "patch", "update"]),
        "binding" => ("", "v1", "Binding", &["create"]),
        "log" => ("", "v1", "Pod", &["get"]),
        "exec" => ("", "v1", "PodExecOptions", &["create", "get"]),
        "portforward" => ("", "v1", "PodPortForwardOptions", &["create", "get"]),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest", &["create"]),
        _ => (r.group, r.version, r.kind, &["get", "patch", "update"]),
    }
}

fn aggregated_resource(r: &ResourceType) -> Value {
    let scope = if r.namespaced { "Namespaced" } else { "Cluster" };
    let subresources: Vec<Value> = r.subresources.iter().map(|sub| {
        let (group, version, kind, verbs) = subresource(r, *sub);
        json!({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs})
    }).collect();
    let mut out = json!({"resource": r.plural, "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": scope, "singularResource": r.singular, "verbs": VERBS});
    if !r.short_names.is_empty() {
        out["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        out["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        out["subresources"] = Value::Array(subresources);
    }
    out
}

/// The aggregated discovery document (`APIGroupDiscoveryList`) of the core group (`/api`)
/// or of every named group (`/apis`): all resources of all versions in one answer, the
/// preferred version first.
pub fn aggregated(core: bool, version: &str) -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group.is_empty() == core) {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    let items: Vec<Value> = groups.into_iter().map(|g| {
        let versions: Vec<Value> = resources::group_versions().into_iter().filter(|(group, _)| *group == g).map(|(_, v)| {
            let resources: Vec<Value> = RESOURCES.iter().filter(|r| r.group == g && r.version == v).map(aggregated_resource).collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        }).collect();
        json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
    }).collect();
    let mut items = items;
    if !core {
        items.extend(SERVED_APIS.iter().map(|a| {
            let resources: Vec<Value> = a.resources.iter().map(|(plural, kind, namespaced)| json!({"resource": plural,
                "responseKind": {"group": a.group, "version": a.version, "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" }, "singularResource": "", "verbs": a.verbs})).collect();
            json!({"metadata": {"name": a.group, "creationTimestamp": null}, "versions": [{"version": a.version, "resources": resources, "freshness": "Current"}]})
        }));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(wants_aggregated(kubectl), Some("v2"));
        assert_eq!(wants_aggregated("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"), Some("v2beta1"));
        assert_eq!(wants_aggregated("application/json, */*"), None);
        assert_eq!(wants_aggregated(""), None);
    }

    #[test]
    fn aggregated_lists_every_served_resource_once() {
        let apis = aggregated(false, "v2");
        let autoscaling = apis["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == "autoscaling").unwrap();
        let versions: Vec<&str> = autoscaling["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
        assert_eq!(versions, ["v2", "v1"], "preferred version first");
        let core = aggregated(true, "v2");
        let pods = core["items"][0]["versions"][0]["resources"].as_array().unwrap().iter().find(|r| r["resource"] == "pods").unwrap();
        assert_eq!(pods["scope"], "Namespaced");
        assert!(pods["subresources"].as_array().unwrap().iter().any(|s| s["subresource"] == "log"));
        let count: usize = [&core, &apis].iter().flat_map(|d| d["items"].as_array().unwrap()).flat_map(|g| g["versions"].as_array().unwrap())
            .map(|v| v["resources"].as_array().unwrap().len()).sum();
        let served: usize = SERVED_APIS.iter().map(|a| a.resources.len()).sum();
        assert_eq!(count, RESOURCES.len() + served);
        let metrics = apis["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == "metrics.k8s.io").unwrap();
        assert_eq!(metrics["versions"][0]["resources"][1]["responseKind"]["kind"], "PodMetrics");
    }
}
