//! The pods a node runs that are ready to serve, known the moment its agent knows it —
//! before their status has been written to the API and the EndpointSlices follow. The
//! node's proxy sends connections held for a Service at zero straight to such a pod
//! (scale from zero), skipping two writes and two watches on the first request's path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use kube::ResourceExt;

#[derive(Debug, Default)]
pub struct LocalReadyPods {
    /// By pod uid: the pod and its address.
    ready: Mutex<HashMap<String, (Arc<Pod>, IpAddr)>>,
    changed: tokio::sync::watch::Sender<()>,
}

impl LocalReadyPods {
    /// The pod `uid` is ready at `address`, or (None) is not ready, or gone.
    pub fn set(&self, uid: &str, ready: Option<(Arc<Pod>, IpAddr)>) {
        let mut all = self.ready.lock().unwrap();
        let changed = match ready {
            Some(entry) => all.insert(uid.to_string(), entry).is_none(),
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
        let namespace = service.namespace();
        let all = self.ready.lock().unwrap();
        all.values()
            .filter(|(pod, _)| pod.namespace() == namespace && pod.metadata.deletion_timestamp.is_none())
            .filter(|(pod, _)| selector.iter().all(|(k, v)| pod.labels().get(k) == Some(v)))
            .filter_map(|(pod, ip)| crate::pods::resolve_target_port(port, pod).map(|p| SocketAddr::new(*ip, p as u16)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}})).unwrap())
    }

    #[test]
    fn ready_pods_serve_the_services_that_select_them() {
        let pods = LocalReadyPods::default();
        let mut changes = pods.changes();
        let ip: IpAddr = "10.42.0.7".parse().unwrap();
        pods.set("u1", Some((pod("shop", json!({"app": "fn", "tier": "web"})), ip)));
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
