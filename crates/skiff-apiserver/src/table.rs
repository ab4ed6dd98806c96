//! `meta.k8s.io/v1` Table output: the columns `kubectl get` prints for each kind, computed
//! on the server as kube-apiserver's printers do.

use serde_json::{Value, json};

/// One column: name, type, priority (0 shown always, 1 only with `-o wide`).
struct Column(&'static str, &'static str, u8);

fn columns(kind: &str) -> Vec<Column> {
    use Column as C;
    let name = C("Name", "string", 0);
    let age = C("Age", "string", 0);
    match kind {
        "Pod" => vec![name, C("Ready", "string", 0), C("Status", "string", 0), C("Restarts", "string", 0), age,
            C("IP", "string", 1), C("Node", "string", 1), C("Nominated Node", "string", 1), C("Readiness Gates", "string", 1)],
        "Deployment" => vec![name, C("Ready", "string", 0), C("Up-to-date", "integer", 0), C("Available", "integer", 0), age,
            C("Containers", "string", 1), C("Images", "string", 1), C("Selector", "string", 1)],
        "ReplicaSet" => vec![name, C("Desired", "integer", 0), C("Current", "integer", 0), C("Ready", "integer", 0), age,
            C("Containers", "string", 1), C("Images", "string", 1), C("Selector", "string", 1)],
        "StatefulSet" => vec![name, C("Ready", "string", 0), age, C("Containers", "string", 1), C("Images", "string", 1)],
        "DaemonSet" => vec![name, C("Desired", "integer", 0), C("Current", "integer", 0), C("Ready", "integer", 0),
            C("Up-to-date", "integer", 0), C("Available", "integer", 0), C("Node Selector", "string", 0), age,
            C("Containers", "string", 1), C("Images", "string", 1), C("Selector", "string", 1)],
        "Service" => vec![name, C("Type", "string", 0), C("Cluster-IP", "string", 0), C("External-IP", "string", 0),
            C("Port(s)", "string", 0), age, C("Selector", "string", 1)],
        "Node" => vec![name, C("Status", "string", 0), C("Roles", "string", 0), age, C("Version", "string", 0),
            C("Internal-IP", "string", 1), C("External-IP", "string", 1), C("OS-Image", "string", 1),
            C("Kernel-Version", "string", 1), C("Container-Runtime", "string", 1)],
        "Namespace" => vec![name, C("Status", "string", 0), age],
        "ConfigMap" => vec![name, C("Data", "integer", 0), age],
        "Secret" => vec![name, C("Type", "string", 0), C("Data", "integer", 0), age],
        "Job" => vec![name, C("Status", "string", 0), C("Completions", "string", 0), C("Duration", "string", 0), age,
            C("Containers", "string", 1), C("Images", "string", 1), C("Selector", "string", 1)],
        "CronJob" => vec![name, C("Schedule", "string", 0), C("Timezone", "string", 0), C("Suspend", "boolean", 0),
            C("Active", "integer", 0), C("Last Schedule", "string", 0), age],
        "Event" => vec![C("Last Seen", "string", 0), C("Type", "string", 0), C("Reason", "string", 0),
            C("Object", "string", 0), C("Message", "string", 0)],
        "Endpoints" => vec![name, C("Endpoints", "string", 0), age],
        "EndpointSlice" => vec![name, C("AddressType", "string", 0), C("Ports", "string", 0), C("Endpoints", "string", 0), age],
        "IngressClass" => vec![name, C("Controller", "string", 0), C("Parameters", "string", 0), age],
        "ServiceAccount" => vec![name, C("Secrets", "integer", 0), age],
        "HorizontalPodAutoscaler" => vec![name, C("Reference", "string", 0), C("Targets", "string", 0),
            C("MinPods", "string", 0), C("MaxPods", "integer", 0), C("Replicas", "integer", 0), age],
        "Ingress" => vec![name, C("Class", "string", 0), C("Hosts", "string", 0), C("Address", "string", 0),
            C("Ports", "string", 0), age],
        "Lease" => vec![name, C("Holder", "string", 0), age],
        "RuntimeClass" => vec![name, C("Handler", "string", 0), age],
        "PersistentVolumeClaim" => vec![name, C("Status", "string", 0), C("Volume", "string", 0),
            C("Capacity", "string", 0), C("Access Modes", "string", 0), C("StorageClass", "string", 0), age],
        "PersistentVolume" => vec![name, C("Capacity", "string", 0), C("Access Modes", "string", 0),
            C("Reclaim Policy", "string", 0), C("Status", "string", 0), C("Claim", "string", 0),
            C("StorageClass", "string", 0), age],
        _ => vec![name, age],
    }
}

fn s<'a>(o: &'a Value, pointer: &str) -> &'a str {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn i(o: &Value, pointer: &str) -> i64 {
    o.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// One metric as kubectl's HPA printer shows it: `cpu: 40%/50%`, `250m/500m`,
/// `12/10 (avg)`; `<unknown>` for a current value not read yet.
fn hpa_target(spec: &Value, status: Option<&Value>) -> String {
    let kind = s(spec, "/type");
    let key = match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        _ => "external",
    };
    let target = &spec[key]["target"];
    let current = status.filter(|c| s(c, "/type") == kind).map(|c| &c[key]["current"]);
    let shown = |field: &str, suffix: &str| {
        let want = target.get(field).map(|v| v.as_str().map_or_else(|| v.to_string(), String::from));
        let have = current.and_then(|c| c.get(field)).map(|v| v.as_str().map_or_else(|| v.to_string(), String::from)).unwrap_or_else(|| "<unknown>".into());
        want.map(|w| format!("{have}{}/{w}{suffix}", if have == "<unknown>" { "" } else { suffix }))
    };
    let value = shown("averageUtilization", "%").or_else(|| shown("averageValue", "")).or_else(|| shown("value", "")).unwrap_or_else(|| "<unknown>".into());
    let averaged = matches!(kind, "Object" | "External") && target.get("averageValue").is_some();
    match kind {
        "Resource" | "ContainerResource" => format!("{}: {value}", s(&spec[key], "/name")),
        _ if averaged => format!("{value} (avg)"),
        _ => value,
    }
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn list<'a>(o: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    o.pointer(pointer).and_then(Value::as_array).into_iter().flatten()
}

/// Kubernetes' short human durations: 45s, 3m20s, 5h, 2d3h, 400d.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => if s % 60 == 0 { format!("{}m", s / 60) } else { format!("{}m{}s", s / 60, s % 60) },
        600..=10799 => format!("{}m", s / 60),
        10800..=28799 => if s % 3600 / 60 == 0 { format!("{}h", s / 3600) } else { format!("{}h{}m", s / 3600, s % 3600 / 60) },
        28800..=172799 => format!("{}h", s / 3600),
        172800..=691199 => if s % 86400 / 3600 == 0 { format!("{}d", s / 86400) } else { format!("{}d{}h", s / 86400, s % 86400 / 3600) },
        691200..=31535999 => format!("{}d", s / 86400),
        _ => format!("{}y{}d", s / 31536000, s % 31536000 / 86400),
    }
}

fn age(o: &Value, pointer: &str, now: i64) -> String {
    match o.pointer(pointer).and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration(now - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn containers_images(o: &Value, pointer: &str) -> (String, String) {
    let cs: Vec<&Value> = list(o, pointer).collect();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn selector_string(sel: Option<&Value>) -> String {
    or_none(sel.and_then(|s| skiff_core::LabelSelector::from_json(s).ok()).map(|s| s.to_string()).unwrap_or_default())
}

fn pod_status(p: &Value) -> (String, String, String) {
    let statuses: Vec<&Value> = list(p, "/status/containerStatuses").collect();
    let total = list(p, "/spec/containers").count();
    let ready = statuses.iter().filter(|c| c.get("ready") == Some(&json!(true))).count();
    let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
    let mut reason = if s(p, "/status/reason").is_empty() { s(p, "/status/phase").to_string() } else { s(p, "/status/reason").to_string() };
    for c in &statuses {
        let waiting = s(c, "/state/waiting/reason");
        let terminated = s(c, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_string();
        } else if !terminated.is_empty() {
            reason = terminated.to_string();
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    (format!("{ready}/{total}"), reason, restarts.to_string())
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = list(svc, "/spec/ports")
        .map(|p| {
            let node = p.get("nodePort").and_then(Value::as_i64).map(|n| format!(":{n}")).unwrap_or_default();
            format!("{}{node}/{}", i(p, "/port"), s(p, "/protocol"))
        })
        .collect();
    or_none(ports.join(","))
}

fn cells(kind: &str, o: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let created = json!(age(o, "/metadata/creationTimestamp", now));
    match kind {
        "Pod" => {
            let (ready, status, restarts) = pod_status(o);
            let gates: Vec<&Value> = list(o, "/spec/readinessGates").collect();
            let gates = if gates.is_empty() { "<none>".to_string() } else { format!("0/{}", gates.len()) };
            vec![name, json!(ready), json!(status), json!(restarts), created,
                json!(or_none(s(o, "/status/podIP").into())), json!(or_none(s(o, "/spec/nodeName").into())),
                json!(or_none(s(o, "/status/nominatedNodeName").into())), json!(gates)]
        }
        "Deployment" => {
            let (c, im) = containers_images(o, "/spec/template/spec/containers");
            vec![name, json!(format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas"))),
                json!(i(o, "/status/updatedReplicas")), json!(i(o, "/status/availableReplicas")), created,
                json!(c), json!(im), json!(selector_string(o.pointer("/spec/selector")))]
        }
        "ReplicaSet" => {
            let (c, im) = containers_images(o, "/spec/template/spec/containers");
            vec![name, json!(i(o, "/spec/replicas")), json!(i(o, "/status/replicas")), json!(i(o, "/status/readyReplicas")),
                created, json!(c), json!(im), json!(selector_string(o.pointer("/spec/selector")))]
        }
        "StatefulSet" => {
            let (c, im) = containers_images(o, "/spec/template/spec/containers");
            vec![name, json!(format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas"))), created, json!(c), json!(im)]
        }
        "DaemonSet" => {
            let (c, im) = containers_images(o, "/spec/template/spec/containers");
            let ns: Vec<String> = o.pointer("/spec/template/spec/nodeSelector").and_then(Value::as_object).into_iter().flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
            vec![name, json!(i(o, "/status/desiredNumberScheduled")), json!(i(o, "/status/currentNumberScheduled")),
                json!(i(o, "/status/numberReady")), json!(i(o, "/status/updatedNumberScheduled")),
                json!(i(o, "/status/numberAvailable")), json!(or_none(ns.join(","))), created, json!(c), json!(im),
                json!(selector_string(o.pointer("/spec/selector")))]
        }
        "Service" => {
            let kind = s(o, "/spec/type");
            let mut external: Vec<String> = list(o, "/status/loadBalancer/ingress")
                .map(|i| if s(i, "/ip").is_empty() { s(i, "/hostname").to_string() } else { s(i, "/ip").to_string() })
                .collect();
            external.extend(list(o, "/spec/externalIPs").filter_map(Value::as_str).map(String::from));
            let external = match (kind, external.is_empty()) {
                ("ExternalName", _) => s(o, "/spec/externalName").to_string(),
                ("LoadBalancer", true) => "<pending>".to_string(),
                (_, true) => "<none>".to_string(),
                _ => external.join(","),
            };
            let selector: Vec<String> = o.pointer("/spec/selector").and_then(Value::as_object).into_iter().flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
            vec![name, json!(kind), json!(or_none(s(o, "/spec/clusterIP").into())), json!(external),
                json!(service_ports(o)), created, json!(or_none(selector.join(",")))]
        }
        "Node" => {
            let ready = list(o, "/status/conditions").find(|c| s(c, "/type") == "Ready").map(|c| s(c, "/status"));
            let mut status = match ready {
                Some("True") => "Ready".to_string(),
                _ => "NotReady".to_string(),
            };
            if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = o.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/")).collect();
            let addr = |t: &str| or_none(list(o, "/status/addresses").find(|a| s(a, "/type") == t).map(|a| s(a, "/address").to_string()).unwrap_or_default());
            vec![name, json!(status), json!(or_none(roles.join(","))), created, json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")), json!(addr("ExternalIP")), json!(s(o, "/status/nodeInfo/osImage")),
                json!(s(o, "/status/nodeInfo/kernelVersion")), json!(s(o, "/status/nodeInfo/containerRuntimeVersion"))]
        }
        "Namespace" => vec![name, json!(s(o, "/status/phase")), created],
        "ConfigMap" => {
            let n = ["/data", "/binaryData"].iter().filter_map(|p| o.pointer(p).and_then(Value::as_object)).map(|m| m.len()).sum::<usize>();
            vec![name, json!(n), created]
        }
        "Secret" => {
            let n = o.pointer("/data").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0);
            vec![name, json!(s(o, "/type")), json!(n), created]
        }
        "Job" => {
            let cond = |t: &str| list(o, "/status/conditions").any(|c| s(c, "/type") == t && s(c, "/status") == "True");
            let status = if cond("Complete") { "Complete" } else if cond("Failed") { "Failed" } else if cond("Suspended") { "Suspended" } else { "Running" };
            let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(c) => format!("{}/{c}", i(o, "/status/succeeded")),
                None => format!("{}/1 of {}", i(o, "/status/succeeded"), i(o, "/spec/parallelism")),
            };
            let start = o.pointer("/status/startTime").and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let end = o.pointer("/status/completionTime").and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let duration = match start {
                Some(st) => human_duration(end.map(|e| e.as_second()).unwrap_or(now) - st.as_second()),
                None => String::new(),
            };
            let (c, im) = containers_images(o, "/spec/template/spec/containers");
            vec![name, json!(status), json!(completions), json!(duration), created, json!(c), json!(im),
                json!(selector_string(o.pointer("/spec/selector")))]
        }
        "CronJob" => {
            let last = if o.pointer("/status/lastScheduleTime").is_some() { age(o, "/status/lastScheduleTime", now) } else { "<none>".into() };
            vec![name, json!(s(o, "/spec/schedule")), json!(or_none(s(o, "/spec/timeZone").into())),
                json!(o.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
                json!(list(o, "/status/active").count()), json!(last), created]
        }
        "Event" => {
            let last = ["/lastTimestamp", "/eventTime", "/metadata/creationTimestamp"]
                .iter().find(|p| o.pointer(p).is_some_and(|v| !v.is_null())).copied().unwrap_or("/lastTimestamp");
            let object = format!("{}/{}", s(o, "/involvedObject/kind").to_ascii_lowercase(), s(o, "/involvedObject/name"));
            vec![json!(age(o, last, now)), json!(s(o, "/type")), json!(s(o, "/reason")), json!(object), json!(s(o, "/message"))]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for subset in list(o, "/subsets") {
                for a in list(subset, "/addresses") {
                    for p in list(subset, "/ports") {
                        eps.push(format!("{}:{}", s(a, "/ip"), i(p, "/port")));
                    }
                }
            }
            vec![name, json!(or_none(eps.join(","))), created]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = list(o, "/ports").map(|p| i(p, "/port").to_string()).collect();
            let addrs: Vec<&str> = list(o, "/endpoints").flat_map(|e| list(e, "/addresses")).filter_map(Value::as_str).collect();
            // As kubectl: the first three addresses, then how many more.
            let shown = match addrs.len() {
                0 => "<unset>".to_string(),
                n if n <= 3 => addrs.join(","),
                n => format!("{} + {} more...", addrs[..3].join(","), n - 3),
            };
            vec![name, json!(s(o, "/addressType")), json!(if ports.is_empty() { "<unset>".into() } else { ports.join(",") }), json!(shown), created]
        }
        "IngressClass" => vec![name, json!(s(o, "/spec/controller")), json!(or_none(s(o, "/spec/parameters/name").into())), created],
        "ServiceAccount" => vec![name, json!(list(o, "/secrets").count()), created],
        "HorizontalPodAutoscaler" => {
            let reference = format!("{}/{}", s(o, "/spec/scaleTargetRef/kind"), s(o, "/spec/scaleTargetRef/name"));
            let targets: Vec<String> = list(o, "/spec/metrics").enumerate().map(|(n, m)| hpa_target(m, list(o, "/status/currentMetrics").nth(n))).collect();
            vec![name, json!(reference), json!(or_none(targets.join(", "))), json!(i(o, "/spec/minReplicas").to_string()),
                json!(i(o, "/spec/maxReplicas")), json!(i(o, "/status/currentReplicas")), created]
        }
        "Ingress" => {
            let hosts: Vec<&str> = list(o, "/spec/rules").map(|r| if s(r, "/host").is_empty() { "*" } else { s(r, "/host") }).collect();
            let addrs: Vec<&str> = list(o, "/status/loadBalancer/ingress").map(|i| s(i, "/ip")).collect();
            let ports = if list(o, "/spec/tls").count() > 0 { "80, 443" } else { "80" };
            vec![name, json!(or_none(s(o, "/spec/ingressClassName").into())), json!(hosts.join(",")), json!(addrs.join(",")), json!(ports), created]
        }
        "Lease" => vec![name, json!(s(o, "/spec/holderIdentity")), created],
        "RuntimeClass" => vec![name, json!(s(o, "/handler")), created],
        "PersistentVolumeClaim" => {
            let modes: Vec<&str> = list(o, "/spec/accessModes").filter_map(Value::as_str).collect();
            vec![name, json!(s(o, "/status/phase")), json!(s(o, "/spec/volumeName")), json!(s(o, "/status/capacity/storage")),
                json!(modes.join(",")), json!(or_none(s(o, "/spec/storageClassName").into())), created]
        }
        "PersistentVolume" => {
            let modes: Vec<&str> = list(o, "/spec/accessModes").filter_map(Value::as_str).collect();
            let claim = if o.pointer("/spec/claimRef").is_some() { format!("{}/{}", s(o, "/spec/claimRef/namespace"), s(o, "/spec/claimRef/name")) } else { String::new() };
            vec![name, json!(s(o, "/spec/capacity/storage")), json!(modes.join(",")), json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(o, "/status/phase")), json!(claim), json!(s(o, "/spec/storageClassName")), created]
        }
        _ => vec![name, created],
    }
}

/// What a Table row carries of its object (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

fn row(kind: &str, o: &Value, now: i64, include: IncludeObject) -> Value {
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => o.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        }),
    };
    json!({"cells": cells(kind, o, now), "object": object})
}

/// A Table of `items` of `kind`, with list metadata (`resourceVersion`, `continue`).
pub fn table(kind: &str, items: &[Value], list_meta: Value, include: IncludeObject) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let definitions: Vec<Value> = columns(kind)
        .into_iter()
        .map(|Column(name, ty, priority)| {
            json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": items.iter().map(|o| row(kind, o, now, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoscaler_targets_read_like_kubectl() {
        let cpu = json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}});
        let rps = json!({"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "10"}}});
        let obj = json!({"type": "Object", "object": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "5"}}});
        assert_eq!(hpa_target(&cpu, Some(&json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 40}}}))), "cpu: 40%/50%");
        assert_eq!(hpa_target(&cpu, Some(&json!({"type": ""}))), "cpu: <unknown>/50%");
        assert_eq!(hpa_target(&rps, Some(&json!({"type": "Pods", "pods": {"current": {"averageValue": "12"}}}))), "12/10");
        assert_eq!(hpa_target(&obj, None), "<unknown>/5 (avg)");
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(3 * 86400), "3d");
    }

    #[test]
    fn every_row_fills_every_column() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        for kind in ["Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Service", "Node", "Namespace",
            "ConfigMap", "Secret", "Job", "CronJob", "Event", "Endpoints", "EndpointSlice", "IngressClass", "ServiceAccount", "HorizontalPodAutoscaler",
            "Ingress", "Lease", "RuntimeClass", "PersistentVolumeClaim", "PersistentVolume", "Role"] {
            let t = table(kind, std::slice::from_ref(&pod), json!({}), IncludeObject::Metadata);
            assert_eq!(t["rows"][0]["cells"].as_array().unwrap().len(), t["columnDefinitions"].as_array().unwrap().len(), "{kind}");
        }
        let t = table("Pod", &[pod], json!({}), IncludeObject::None);
        assert_eq!(t["rows"][0]["cells"][1], "1/1");
        assert_eq!(t["rows"][0]["cells"][3], "2");
    }
}
