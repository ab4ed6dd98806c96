//! A container's environment as Kubernetes builds it: `envFrom` sources, then `env`
//! (plain values with `$(VAR)` expansion, and `valueFrom` ConfigMap and Secret keys, pod
//! fields and resource fields); and the expansion of `$(VAR)` in command and args.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service};
use kube::ResourceExt;
use std::sync::Arc;

use kube::runtime::reflector::Store;

use crate::referenced::Referenced;

/// ConfigMaps and Secrets as the agent's watches last saw them: those the node's pods
/// name, each watched while a pod names it ([`Referenced`]).
#[derive(Clone)]
pub struct ConfigSources {
    pub config_maps: Arc<Referenced<ConfigMap>>,
    pub secrets: Arc<Referenced<Secret>>,
    /// For the `*_SERVICE_HOST`/`*_SERVICE_PORT` variables.
    pub services: Store<Service>,
    /// How many ConfigMap and Secret changes the watches have seen: volumes whose pod and
    /// tokens are unchanged need no rewrite while it stays the same.
    pub changes: Arc<std::sync::atomic::AtomicU64>,
}

impl ConfigSources {
    /// Watches what a pod the node just took names.
    pub fn hold(&self, pod: &Pod) {
        let (namespace, refs) = references(pod);
        refs.config_maps.iter().for_each(|n| self.config_maps.hold(&namespace, n));
        refs.secrets.iter().for_each(|n| self.secrets.hold(&namespace, n));
    }

    /// The pod is gone from the node: what only it named is watched no more.
    pub fn release(&self, pod: &Pod) {
        let (namespace, refs) = references(pod);
        refs.config_maps.iter().for_each(|n| self.config_maps.release(&namespace, n));
        refs.secrets.iter().for_each(|n| self.secrets.release(&namespace, n));
    }

    /// Waits until everything the pod names has been listed once (found or not).
    pub async fn listed_for(&self, pod: &Pod) {
        let (namespace, refs) = references(pod);
        let maps = refs.config_maps.iter().map(|n| self.config_maps.listed(&namespace, n));
        let secrets = refs.secrets.iter().map(|n| self.secrets.listed(&namespace, n));
        futures::future::join(futures::future::join_all(maps), futures::future::join_all(secrets)).await;
    }

    /// The count of ConfigMap and Secret changes seen so far.
    pub fn changes_seen(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps.get(namespace, name)
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(namespace, name)
    }

    /// The keys of a ConfigMap as bytes (`data` and `binaryData`).
    pub fn config_map_data(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let cm = self.config_map(namespace, name)?;
        let mut out: BTreeMap<String, Vec<u8>> = cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
        out.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
        Some(out)
    }

    /// The keys of a Secret as bytes (`data`, and `stringData` if a client left it).
    pub fn secret_data(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = self.secret(namespace, name)?;
        let mut out: BTreeMap<String, Vec<u8>> = s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        out.extend(s.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
        Some(out)
    }
}

/// A pod's namespace and the objects it names.
fn references(pod: &Pod) -> (String, skiff_core::pod_refs::PodReferences) {
    let refs = serde_json::to_value(pod).map(|p| skiff_core::pod_refs::of(&p)).unwrap_or_default();
    (pod.namespace().unwrap_or_default(), refs)
}

/// Why a container's configuration cannot be built (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What of the pod and its node a container's environment may refer to.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: String,
    pub host_ip: &'a str,
    /// The node's allocatable cpu (millicores) and memory (bytes): the default of unset limits.
    pub node_cpu_milli: i64,
    pub node_memory: i64,
}

/// The container's environment, in order, later entries overriding earlier ones.
pub fn container_env(container: &Container, facts: &PodFacts, sources: &ConfigSources) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = facts.pod.namespace().unwrap_or_default();
    let links = facts.pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
    let mut env: Vec<(String, String)> = service_env(&sources.services.state(), &ns, links);
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            match sources.config_map_data(&ns, &r.name) {
                Some(d) => d,
                None if r.optional == Some(true) => continue,
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
            }
        } else if let Some(r) = &from.secret_ref {
            match sources.secret_data(&ns, &r.name) {
                Some(d) => d,
                None if r.optional == Some(true) => continue,
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            set(&mut env, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => Some(expand(var.value.as_deref().unwrap_or_default(), &env)),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    Some(field(f, facts)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource_field(r, container, facts)?)
                } else if let Some(k) = &from.config_map_key_ref {
                    key_value(sources.config_map_data(&ns, &k.name), ("configmap", "ConfigMap"), &ns, &k.name, &k.key, k.optional)?
                } else if let Some(k) = &from.secret_key_ref {
                    key_value(sources.secret_data(&ns, &k.name), ("secret", "Secret"), &ns, &k.name, &k.key, k.optional)?
                } else {
                    None
                }
            }
        };
        if let Some(v) = value {
            set(&mut env, var.name.clone(), v);
        }
    }
    Ok(env)
}

/// The variables naming the cluster's Services, as kubelet sets them: for each Service
/// with a ClusterIP in the pod's namespace (with `enableServiceLinks`, the default), and
/// always for `default/kubernetes`, `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT`,
/// `NAME_SERVICE_PORT_PORTNAME` and Docker-link style `NAME_PORT…` variables.
pub fn service_env(services: &[std::sync::Arc<Service>], namespace: &str, enable_links: bool) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let wanted = (enable_links && ns == namespace) || (ns == "default" && name == "kubernetes");
        let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).unwrap_or("None");
        if wanted && ip != "None" && !ip.is_empty() {
            // A namespace's own Service wins over `default/kubernetes` of the same name.
            if ns == namespace || !chosen.contains_key(&name) {
                chosen.insert(name, svc.as_ref());
            }
        }
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let prefix = name.to_uppercase().replace('-', "_");
        let spec = svc.spec.as_ref().expect("chosen Services have a spec");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in ports.iter().filter(|p| p.name.as_deref().is_some_and(|n| !n.is_empty())) {
            out.push((format!("{prefix}_SERVICE_PORT_{}", p.name.as_deref().unwrap_or_default().to_uppercase().replace('-', "_")), p.port.to_string()));
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((format!("{prefix}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port)));
        for p in &ports {
            let (proto, port) = (proto(p), p.port);
            let base = format!("{prefix}_PORT_{port}_{proto}");
            out.push((base.clone(), format!("{}://{ip}:{port}", proto.to_lowercase())));
            out.push((format!("{base}_PROTO"), proto.to_lowercase()));
            out.push((format!("{base}_PORT"), port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

/// One key of a ConfigMap's or Secret's `data`, with Kubernetes' messages when the object
/// or key is missing (`kind` as a resource and as a Kind); `None` if optional and missing.
fn key_value(data: Option<BTreeMap<String, Vec<u8>>>, kind: (&str, &str), ns: &str, name: &str, key: &str, optional: Option<bool>) -> Result<Option<String>, ConfigError> {
    let optional = optional == Some(true);
    match data {
        None if optional => Ok(None),
        None => Err(ConfigError(format!("{} {name:?} not found", kind.0))),
        Some(d) => match d.get(key) {
            Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            None if optional => Ok(None),
            None => Err(ConfigError(format!("couldn't find key {key} in {} {ns}/{name}", kind.1))),
        },
    }
}

/// A pod field named by a `fieldRef` (the paths the downward API allows).
pub fn field(selector: &ObjectFieldSelector, facts: &PodFacts) -> Result<String, ConfigError> {
    let pod = facts.pod;
    let path = selector.field_path.as_str();
    let keyed = |prefix: &str, map: &BTreeMap<String, String>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    let render = |map: &BTreeMap<String, String>| map.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join("\n");
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "metadata.labels" => render(pod.labels()),
        "metadata.annotations" => render(pod.annotations()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        _ => match keyed("metadata.labels['", pod.labels()).or_else(|| keyed("metadata.annotations['", pod.annotations())) {
            Some(v) => v,
            None => return Err(ConfigError(format!("unsupported fieldRef path {path:?}"))),
        },
    })
}

/// A container resource named by a `resourceFieldRef`, in units of its divisor (rounded
/// up, as Kubernetes does); an unset limit is the node's allocatable.
pub fn resource_field(selector: &ResourceFieldSelector, container: &Container, facts: &PodFacts) -> Result<String, ConfigError> {
    let resources = container.resources.as_ref();
    let (kind, name) = selector.resource.split_once('.').ok_or_else(|| ConfigError(format!("unsupported resourceFieldRef {:?}", selector.resource)))?;
    let list = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(ConfigError(format!("unsupported resourceFieldRef {:?}", selector.resource))),
    };
    let bad = |q: &str| ConfigError(format!("bad quantity {q:?} for {}", selector.resource));
    let divisor = selector.divisor.as_ref().map(|d| d.0.as_str());
    match name {
        "cpu" => {
            let milli = match list.and_then(|l| l.get("cpu")) {
                Some(q) => skiff_core::quantity::parse_milli(&q.0).map_err(|_| bad(&q.0))?,
                None if kind == "limits" => facts.node_cpu_milli,
                None => 0,
            };
            let div = divisor.map(|d| skiff_core::quantity::parse_milli(d).map_err(|_| bad(d))).transpose()?.filter(|d| *d > 0).unwrap_or(1000);
            Ok(((milli + div - 1) / div).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match list.and_then(|l| l.get(name)) {
                Some(q) => skiff_core::quantity::parse_units(&q.0).map_err(|_| bad(&q.0))?,
                None if kind == "limits" && name == "memory" => facts.node_memory,
                None => 0,
            };
            let div = divisor.map(|d| skiff_core::quantity::parse_units(d).map_err(|_| bad(d))).transpose()?.filter(|d| *d > 0).unwrap_or(1);
            Ok(((bytes + div - 1) / div).to_string())
        }
        _ => Err(ConfigError(format!("unsupported resourceFieldRef {:?}", selector.resource))),
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is a literal `$`,
/// and anything else is left as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMapKeySelector, EnvVar, EnvVarSource, PodSpec};
    use kube::runtime::reflector::store;

    fn sources() -> ConfigSources {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"greeting": "hi", "who": "world"}})).unwrap();
        let (services, _) = store::<Service>();
        ConfigSources { config_maps: Arc::new(Referenced::fixed([cm])), secrets: Arc::new(Referenced::fixed([])), services, changes: Default::default() }
    }

    #[test]
    fn service_variables_as_kubelet_sets_them() {
        let svc = |ns: &str, name: &str, spec: serde_json::Value| std::sync::Arc::new(serde_json::from_value::<Service>(serde_json::json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})).unwrap());
        let services = [
            svc("default", "kubernetes", serde_json::json!({"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443}]})),
            svc("ns", "web-api", serde_json::json!({"clusterIP": "10.43.0.7", "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]})),
            svc("ns", "headless", serde_json::json!({"clusterIP": "None", "ports": [{"port": 80}]})),
            svc("other", "elsewhere", serde_json::json!({"clusterIP": "10.43.0.8", "ports": [{"port": 80}]})),
        ];
        let env: BTreeMap<String, String> = service_env(&services, "ns", true).into_iter().collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.43.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["WEB_API_SERVICE_HOST"], "10.43.0.7");
        assert_eq!(env["WEB_API_SERVICE_PORT"], "80");
        assert_eq!(env["WEB_API_PORT"], "tcp://10.43.0.7:80");
        assert_eq!(env["WEB_API_PORT_53_UDP"], "udp://10.43.0.7:53");
        assert_eq!(env["WEB_API_PORT_53_UDP_ADDR"], "10.43.0.7");
        assert!(!env.keys().any(|k| k.starts_with("HEADLESS_") || k.starts_with("ELSEWHERE_")));
        let without_links: Vec<String> = service_env(&services, "ns", false).into_iter().map(|(k, _)| k).collect();
        assert!(without_links.iter().all(|k| k.starts_with("KUBERNETES_")) && !without_links.is_empty());
    }

    fn pod() -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta { name: Some("p".into()), namespace: Some("ns".into()), labels: Some([("app".to_string(), "a".to_string())].into()), ..Default::default() },
            spec: Some(PodSpec { node_name: Some("n1".into()), ..Default::default() }),
            status: None,
        }
    }

    fn var(name: &str, value: Option<&str>, from: Option<EnvVarSource>) -> EnvVar {
        EnvVar { name: name.into(), value: value.map(Into::into), value_from: from }
    }

    #[test]
    fn env_from_values_fields_and_config_maps() {
        let pod = pod();
        let facts = PodFacts { pod: &pod, pod_ip: "10.0.0.5".into(), host_ip: "10.0.0.1", node_cpu_milli: 2000, node_memory: 1 << 30 };
        let key = |k: &str, optional| EnvVarSource { config_map_key_ref: Some(ConfigMapKeySelector { name: "cfg".into(), key: k.into(), optional }), ..Default::default() };
        let field = |p: &str| EnvVarSource { field_ref: Some(ObjectFieldSelector { field_path: p.into(), api_version: None }), ..Default::default() };
        let c = Container {
            name: "c".into(),
            env: Some(vec![
                var("GREETING", None, Some(key("greeting", None))),
                var("MSG", Some("$(GREETING), $(NOPE) $$(GREETING)"), None),
                var("NODE", None, Some(field("spec.nodeName"))),
                var("APP", None, Some(field("metadata.labels['app']"))),
                var("IP", None, Some(field("status.podIP"))),
                var("GONE", None, Some(key("missing", Some(true)))),
            ]),
            ..Default::default()
        };
        let env = container_env(&c, &facts, &sources()).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GREETING"), Some("hi"));
        assert_eq!(get("MSG"), Some("hi, $(NOPE) $(GREETING)"));
        assert_eq!(get("NODE"), Some("n1"));
        assert_eq!(get("APP"), Some("a"));
        assert_eq!(get("IP"), Some("10.0.0.5"));
        assert_eq!(get("GONE"), None);
    }

    #[test]
    fn a_missing_key_or_map_is_a_config_error() {
        let pod = pod();
        let facts = PodFacts { pod: &pod, pod_ip: String::new(), host_ip: "", node_cpu_milli: 1000, node_memory: 1 };
        let from = |name: &str, key: &str| Some(EnvVarSource { config_map_key_ref: Some(ConfigMapKeySelector { name: name.into(), key: key.into(), optional: None }), ..Default::default() });
        let c = Container { name: "c".into(), env: Some(vec![var("X", None, from("cfg", "nope"))]), ..Default::default() };
        assert_eq!(container_env(&c, &facts, &sources()).unwrap_err().0, "couldn't find key nope in ConfigMap ns/cfg");
        let c = Container { name: "c".into(), env: Some(vec![var("X", None, from("absent", "k"))]), ..Default::default() };
        assert_eq!(container_env(&c, &facts, &sources()).unwrap_err().0, "configmap \"absent\" not found");
    }

    proptest::proptest! {
        /// Text without `$` is left alone; any text expands without panicking.
        #[test]
        fn expansion_is_total(text in "[a-zA-Z$()_ ]{0,60}") {
            let env = vec![("A".to_string(), "x".to_string())];
            let out = expand(&text, &env);
            if !text.contains('$') {
                proptest::prop_assert_eq!(out, text);
            }
        }
    }

    #[test]
    fn resource_fields_round_up_in_divisor_units() {
        let pod = pod();
        let facts = PodFacts { pod: &pod, pod_ip: String::new(), host_ip: "", node_cpu_milli: 2000, node_memory: 1 << 30 };
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}})).unwrap();
        let sel = |r: &str, d: Option<&str>| ResourceFieldSelector { resource: r.into(), divisor: d.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())), container_name: None };
        assert_eq!(resource_field(&sel("limits.cpu", None), &c, &facts).unwrap(), "1");
        assert_eq!(resource_field(&sel("limits.cpu", Some("1m")), &c, &facts).unwrap(), "250");
        assert_eq!(resource_field(&sel("limits.memory", Some("1Mi")), &c, &facts).unwrap(), "64");
        let bare = Container { name: "c".into(), ..Default::default() };
        assert_eq!(resource_field(&sel("limits.cpu", None), &bare, &facts).unwrap(), "2");
    }
}
