//! The pods a node runs that are ready to serve, known the moment its agent knows it —
//! before their status has been written to the API and the EndpointSlices follow. The
//! node's proxy sends connections held for a Service at zero straight to such a pod
//! (scale from zero), skipping two writes and two watches on the first request's path.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use kube::ResourceExt;

#[derive(Debug, Default)]
pub struct LocalReadyPods {
    /// By pod uid.
    ready: Mutex<HashMap<String, ReadyPod>>,
    changed: tokio::sync::watch::Sender<()>,
}

/// What of a ready pod tells which Services it serves, and where: not the pod itself,
/// which would be one more copy of every running pod.
#[derive(Debug)]
struct ReadyPod {
    namespace: String,
    labels: BTreeMap<String, String>,
    /// Its containers' declared ports: name, number, protocol.
    ports: Vec<(Option<String>, i32, Option<String>)>,
    address: IpAddr,
}

impl LocalReadyPods {
    /// The pod `uid` is ready at `address`, or (None) is not ready, or gone.
    pub fn set(&self, uid: &str, ready: Option<(&Pod, IpAddr)>) {
        let mut all = self.ready.lock().unwrap();
        let changed = match ready {
            Some(_) if all.contains_key(uid) => false,
            Some((pod, address)) => {
                let ports = pod.spec.iter().flat_map(|s| s.containers.iter().flat_map(|c| c.ports.iter().flatten()));
                let ports = ports.map(|p| (p.name.clone(), p.container_port, p.protocol.clone())).collect();
                let entry = ReadyPod { namespace: pod.namespace().unwrap_or_default(), labels: pod.labels().clone(), ports, address };
                all.insert(uid.to_string(), entry);
                true
            }
            None => all.remove(uid).is_some(),
        };
        drop(all);
        if changed {
            self.changed.send_replace(());
        }
    }

    /// Changes: a pod became ready, or stopped being ready.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Where this node's ready pods serve the port of `service` that `is_port` picks, as
    /// the EndpointSlice controller would list them.
    pub fn endpoints(&self, service: &Service, is_port: impl Fn(&ServicePort) -> bool) -> Vec<SocketAddr> {
        let Some(spec) = service.spec.as_ref() else { return Vec::new() };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else { return Vec::new() };
        let Some(port) = spec.ports.iter().flatten().find(|p| is_port(p)) else { return Vec::new() };
        let namespace = service.namespace().unwrap_or_default();
        let all = self.ready.lock().unwrap();
        all.values()
            .filter(|pod| pod.namespace == namespace && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
            .filter_map(|pod| {
                let declared = pod.ports.iter().map(|(name, number, protocol)| (name.as_deref(), *number, protocol.as_deref()));
                crate::pods::resolve_target_port_in(port, declared).map(|p| SocketAddr::new(pod.address, p as u16))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}})).unwrap()
    }

    #[test]
    fn ready_pods_serve_the_services_that_select_them() {
        let pods = LocalReadyPods::default();
        let mut changes = pods.changes();
        let ip: IpAddr = "10.42.0.7".parse().unwrap();
        pods.set("u1", Some((&pod("shop", json!({"app": "fn", "tier": "web"})), ip)));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let service = |ns: &str, selector: serde_json::Value, target: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "fn", "namespace": ns},
                "spec": {"selector": selector, "ports": [{"name": "web", "port": 80, "targetPort": target}]}})).unwrap()
        };
        let addr = |port| vec![SocketAddr::new(ip, port)];
        assert_eq!(pods.endpoints(&service("shop", json!({"app": "fn"}), json!(8080)), |p| p.name.as_deref() == Some("web")), addr(8080));
        assert_eq!(pods.endpoints(&service("shop", json!({"app": "fn"}), json!("http")), |p| p.name.as_deref() == Some("web")), addr(8080));
        assert!(pods.endpoints(&service("shop", json!({"app": "fn"}), json!("grpc")), |p| p.name.as_deref() == Some("web")).is_empty());
        assert!(pods.endpoints(&service("other", json!({"app": "fn"}), json!(8080)), |p| p.name.as_deref() == Some("web")).is_empty());
        assert!(pods.endpoints(&service("shop", json!({"app": "db"}), json!(8080)), |p| p.name.as_deref() == Some("web")).is_empty());
        // No selector: endpoints are someone else's to say.
        assert!(pods.endpoints(&service("shop", json!({}), json!(8080)), |p| p.name.as_deref() == Some("web")).is_empty());
        pods.set("u1", None);
        assert!(changes.has_changed().unwrap());
        assert!(pods.endpoints(&service("shop", json!({"app": "fn"}), json!(8080)), |p| p.name.as_deref() == Some("web")).is_empty());
    }
}
