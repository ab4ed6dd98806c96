//! Defaulting, as Kubernetes' API server applies it, for the fields later parts of Skiff
//! (controllers, scheduler, agent) and clients rely on being set.

use serde_json::{Map, Value, json};

/// Sets `obj[key] = value` unless already set (to something other than null).
fn default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), value);
    }
}

/// The object at `obj[key]`, created when missing.
fn child<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = obj.entry(key).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("object")
}

fn at<'a>(object: &'a mut Value, pointer: &str) -> Option<&'a mut Map<String, Value>> {
    object.pointer_mut(pointer).and_then(Value::as_object_mut)
}

/// Applies the defaults of `kind` to an object being created or updated.
pub fn apply(kind: &str, object: &mut Value) {
    match kind {
        "Secret" => {
            // `stringData` is write-only: its keys go into `data`, base64, over any there.
            if let Some(o) = object.as_object_mut()
                && let Some(Value::Object(strings)) = o.remove("stringData")
            {
                use base64::Engine;
                let data = child(o, "data");
                for (key, value) in strings {
                    let text = value.as_str().map(String::from).unwrap_or_else(|| value.to_string());
                    data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(text)));
                }
            }
            if let Some(o) = object.as_object_mut() {
                default(o, "type", json!("Opaque"));
            }
        }
        "LimitRange" => {
            for item in object.pointer_mut("/spec/limits").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(item) = item.as_object_mut() {
                    crate::limit_ranger::default_item(item);
                }
            }
        }
        "Pod" => {
            if let Some(spec) = at(object, "/spec") {
                pod_spec(spec);
                default_tolerations(spec);
            }
            if let Some(o) = object.as_object_mut() {
                default(child(o, "status"), "phase", json!("Pending"));
            }
        }
        "Deployment" => {
            if let Some(spec) = at(object, "/spec") {
                default(spec, "replicas", json!(1));
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
                let strategy = child(spec, "strategy");
                default(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = child(strategy, "rollingUpdate");
                    default(ru, "maxUnavailable", json!("25%"));
                    default(ru, "maxSurge", json!("25%"));
                }
            }
            template(object, "/spec/template/spec");
        }
        "ReplicaSet" => {
            if let Some(spec) = at(object, "/spec") {
                default(spec, "replicas", json!(1));
            }
            template(object, "/spec/template/spec");
        }
        "StatefulSet" => {
            if let Some(spec) = at(object, "/spec") {
                default(spec, "replicas", json!(1));
                default(spec, "podManagementPolicy", json!("OrderedReady"));
                default(spec, "revisionHistoryLimit", json!(10));
                let strategy = child(spec, "updateStrategy");
                default(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    default(child(strategy, "rollingUpdate"), "partition", json!(0));
                }
            }
            template(object, "/spec/template/spec");
        }
        "DaemonSet" => {
            if let Some(spec) = at(object, "/spec") {
                default(spec, "revisionHistoryLimit", json!(10));
                let strategy = child(spec, "updateStrategy");
                default(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = child(strategy, "rollingUpdate");
                    default(ru, "maxUnavailable", json!(1));
                    default(ru, "maxSurge", json!(0));
                }
            }
            template(object, "/spec/template/spec");
        }
        "Job" => {
            job_spec(object, "/spec");
        }
        "CronJob" => {
            if let Some(spec) = at(object, "/spec") {
                default(spec, "concurrencyPolicy", json!("Allow"));
                default(spec, "suspend", json!(false));
                default(spec, "successfulJobsHistoryLimit", json!(3));
                default(spec, "failedJobsHistoryLimit", json!(1));
            }
            job_spec(object, "/spec/jobTemplate/spec");
        }
        "Service" => {
            if let Some(spec) = at(object, "/spec") {
                service_spec(spec);
            }
        }
        "Namespace" => {
            if let Some(o) = object.as_object_mut() {
                default(child(o, "spec"), "finalizers", json!(["kubernetes"]));
                default(child(o, "status"), "phase", json!("Active"));
            }
            let name = object.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            if let Some(meta) = at(object, "/metadata") {
                child(meta, "labels").insert("kubernetes.io/metadata.name".into(), name);
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(o) = object.as_object_mut() {
                default(child(o, "spec"), "volumeMode", json!("Filesystem"));
                default(child(o, "status"), "phase", json!("Pending"));
            }
        }
        "PersistentVolume" => {
            if let Some(o) = object.as_object_mut() {
                default(child(o, "spec"), "persistentVolumeReclaimPolicy", json!("Retain"));
                default(child(o, "spec"), "volumeMode", json!("Filesystem"));
                default(child(o, "status"), "phase", json!("Pending"));
            }
        }
        "HorizontalPodAutoscaler" => {
            if let Some(spec) = at(object, "/spec") {
                default(spec, "minReplicas", json!(1));
            }
        }
        _ => {}
    }
}

fn template(object: &mut Value, pointer: &str) {
    if let Some(spec) = at(object, pointer) {
        pod_spec(spec);
    }
}

fn job_spec(object: &mut Value, pointer: &str) {
    if let Some(spec) = at(object, pointer) {
        let (c, p) = (spec.get("completions").cloned(), spec.get("parallelism").cloned());
        if c.is_none() && p.is_none() {
            spec.insert("completions".into(), json!(1));
            spec.insert("parallelism".into(), json!(1));
        }
        default(spec, "parallelism", json!(1));
        default(spec, "backoffLimit", json!(6));
        default(spec, "completionMode", json!("NonIndexed"));
        default(spec, "suspend", json!(false));
        default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    }
    template(object, &format!("{pointer}/template/spec"));
}

fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(c) = c.as_object_mut() {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    // A limit with no request asks for what it limits.
    if let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut)
        && let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned()
    {
        let requests = child(resources, "requests");
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let policy = if image_tag(image).is_none_or(|t| t == "latest") { "Always" } else { "IfNotPresent" };
    default(c, "imagePullPolicy", json!(policy));
    for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(p) = p.as_object_mut() {
            default(p, "protocol", json!("TCP"));
        }
    }
}

/// The tag of an image reference, if it has one (a digest counts as pinned).
fn image_tag(image: &str) -> Option<&str> {
    if image.contains('@') {
        return Some("digest");
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map(|(_, t)| t)
}

/// Kubernetes' DefaultTolerationSeconds admission: tolerate not-ready and unreachable
/// nodes for 300 s before eviction.
fn default_tolerations(spec: &mut Map<String, Value>) {
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else { return };
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let has = list.iter().any(|t| {
            t.get("effect").and_then(Value::as_str).is_none_or(|e| e == "NoExecute")
                && t.get("key").and_then(Value::as_str).is_none_or(|k| k == key)
        });
        if !has {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    default(spec, "type", json!("ClusterIP"));
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    if kind == "ExternalName" {
        return;
    }
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    default(spec, "ipFamilies", json!(["IPv4"]));
    if kind == "NodePort" || kind == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    for p in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(p) = p.as_object_mut() {
            default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default(p, "targetPort", port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_string_data_goes_into_data() {
        let mut s = json!({"data": {"a": "b2xk", "b": "a2VlcA=="}, "stringData": {"a": "new", "c": "plain"}});
        apply("Secret", &mut s);
        assert_eq!(s, json!({"type": "Opaque", "data": {"a": "bmV3", "b": "a2VlcA==", "c": "cGxhaW4="}}));
    }

    #[test]
    fn deployment_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.27",
            "ports": [{"containerPort": 80}]}]}}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn pod_pull_policy_and_tolerations() {
        let mut p = json!({"spec": {"containers": [{"name": "c", "image": "registry:5000/app"}]}});
        apply("Pod", &mut p);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(p["status"]["phase"], "Pending");
    }
}
