//! Which Ingresses Skiff serves: those of its IngressClass, `skiff`.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::ResourceExt;

/// The Ingress class the node proxies serve.
pub const INGRESS_CLASS: &str = "skiff";
/// The controller name IngressClasses of Skiff carry.
pub const INGRESS_CONTROLLER: &str = "skiff.dev/ingress";

/// True when the Ingress is Skiff's: its class names a Skiff IngressClass, or it names
/// none and a Skiff class is the default (or none is marked default at all).
pub fn is_ours(ingress: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let ours = |c: &IngressClass| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(INGRESS_CONTROLLER);
    let named = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.clone()).or_else(|| ingress.annotations().get("kubernetes.io/ingress.class").cloned());
    match named {
        Some(name) => name == INGRESS_CLASS || classes.iter().any(|c| c.name_any() == name && ours(c)),
        None => {
            let is_default = |c: &IngressClass| c.annotations().get("ingressclass.kubernetes.io/is-default-class").map(String::as_str) == Some("true");
            let defaults: Vec<&Arc<IngressClass>> = classes.iter().filter(|c| is_default(c)).collect();
            defaults.is_empty() || defaults.iter().any(|c| ours(c))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ingress_class_decides_ownership() {
        let ing = |class: Option<&str>| -> Ingress { serde_json::from_value(json!({"metadata": {"name": "i"}, "spec": {"ingressClassName": class}})).unwrap() };
        let class = |name: &str, controller: &str, default: bool| -> Arc<IngressClass> {
            Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "annotations": {"ingressclass.kubernetes.io/is-default-class": default.to_string()}}, "spec": {"controller": controller}})).unwrap())
        };
        assert!(is_ours(&ing(Some("skiff")), &[]));
        assert!(is_ours(&ing(None), &[]));
        assert!(!is_ours(&ing(Some("nginx")), &[class("nginx", "k8s.io/ingress-nginx", false)]));
        assert!(!is_ours(&ing(None), &[class("nginx", "k8s.io/ingress-nginx", true)]));
        assert!(is_ours(&ing(None), &[class("skiff", INGRESS_CONTROLLER, true), class("nginx", "k8s.io/ingress-nginx", false)]));
        assert!(is_ours(&ing(Some("edge")), &[class("edge", INGRESS_CONTROLLER, false)]));
    }
}
