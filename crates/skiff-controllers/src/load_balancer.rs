//! The built-in load balancer, as k3s's service load balancer does it: every node's proxy
//! serves LoadBalancer Services and the `skiff` Ingress class on the node's own
//! addresses, so their `status.loadBalancer.ingress` lists the addresses of the nodes
//! that are Ready (ExternalIP where a node has one, else InternalIP).

use std::future::Future;
use futures::StreamExt;
use kube::runtime::Controller;
use crate::support::{Informers, retry};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Node, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressLoadBalancerIngress, IngressLoadBalancerStatus};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use skiff_client::ingress::is_ours;
use skiff_client::nodes::ready_status;

use crate::Error;

pub struct Ctx {
    pub client: Client,
    pub nodes: Store<Node>,
    pub classes: Store<IngressClass>,
}

/// The controllers: Services and Ingresses. Their addresses follow the nodes; node status
/// changes every few seconds, so only a change in the set of addresses wakes them all.
pub fn controllers(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let ctx = Arc::new(Ctx { client: client.clone(), nodes: i.nodes.store(), classes: i.ingress_classes.store() });
    let services = Controller::for_shared_stream(i.services.subscribe(), i.services.store())
        .reconcile_all_on(address_changes(i.nodes.subscribe(), i.nodes.store()))
        .run(crate::metrics::metered("service-lb", reconcile_service), retry, ctx.clone())
        .for_each(|_| async {});
    let ingresses = Controller::for_shared_stream(i.ingresses.subscribe(), i.ingresses.store())
        .reconcile_all_on(futures::stream::select(address_changes(i.nodes.subscribe(), i.nodes.store()), i.ingress_classes.subscribe().map(|_| ())))
        .run(crate::metrics::metered("ingress-lb", reconcile_ingress), retry, ctx)
        .for_each(|_| async {});
    async move {
        tokio::join!(services, ingresses);
    }
}

/// A tick each time the set of load balancer addresses (Ready nodes' addresses) changes.
fn address_changes(nodes: impl futures::Stream<Item = Arc<Node>> + Send + 'static, store: Store<Node>) -> impl futures::Stream<Item = ()> + Send + 'static {
    let mut last = None;
    nodes.filter_map(move |_| {
        let now = node_addresses(&store.state());
        let changed = last.as_ref() != Some(&now);
        last = Some(now);
        futures::future::ready(changed.then_some(()))
    })
}

/// The addresses of Ready nodes, sorted.
pub fn node_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| ready_status(n) == Some("True"))
        .filter_map(|n| {
            let addresses = n.status.as_ref()?.addresses.as_ref()?;
            let of = |t: &str| addresses.iter().find(|a| a.type_ == t).map(|a| a.address.clone());
            of("ExternalIP").or_else(|| of("InternalIP"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

pub async fn reconcile_service(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") || svc.spec.as_ref().and_then(|s| s.load_balancer_class.as_ref()).is_some() {
        return Ok(Action::await_change());
    }
    let want = LoadBalancerStatus {
        ingress: Some(node_addresses(&ctx.nodes.state()).into_iter().map(|ip| LoadBalancerIngress { ip: Some(ip), ip_mode: Some("VIP".into()), ..Default::default() }).collect()),
    };
    if svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) != Some(&want) {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
        api.patch_status(&svc.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": {"loadBalancer": want}}))).await?;
    }
    Ok(Action::await_change())
}

pub async fn reconcile_ingress(ingress: Arc<Ingress>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !is_ours(&ingress, &ctx.classes.state()) {
        return Ok(Action::await_change());
    }
    let want = IngressLoadBalancerStatus {
        ingress: Some(node_addresses(&ctx.nodes.state()).into_iter().map(|ip| IngressLoadBalancerIngress { ip: Some(ip), ..Default::default() }).collect()),
    };
    if ingress.status.as_ref().and_then(|s| s.load_balancer.as_ref()) != Some(&want) {
        let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), &ingress.namespace().unwrap_or_default());
        api.patch_status(&ingress.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": {"loadBalancer": want}}))).await?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str, addresses: serde_json::Value) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}, "status": {"addresses": addresses, "conditions": [{"type": "Ready", "status": ready}]}})).unwrap())
    }

    #[test]
    fn ready_nodes_prefer_external_addresses() {
        let nodes = [
            node("a", "True", json!([{"type": "InternalIP", "address": "10.0.0.2"}])),
            node("b", "True", json!([{"type": "InternalIP", "address": "10.0.0.3"}, {"type": "ExternalIP", "address": "203.0.113.3"}])),
            node("c", "Unknown", json!([{"type": "InternalIP", "address": "10.0.0.4"}])),
        ];
        assert_eq!(node_addresses(&nodes), ["10.0.0.2", "203.0.113.3"]);
    }
}
