//! Endpoints and EndpointSlices: the addresses behind each Service, as kube-controller-
//! manager's endpoints, endpointslice and endpointslice-mirroring controllers keep them.
//!
//! For a Service with a selector, every pod it selects that has an IP and has not
//! finished becomes an endpoint, with each service port's `targetPort` resolved in that
//! pod (a named port the pod lacks leaves that port out for that pod). EndpointSlices
//! carry every such pod with its `ready`/`serving`/`terminating` conditions, grouped by
//! resolved ports, at most 100 to a slice; the v1 Endpoints object lists ready pods as
//! `addresses` and unready ones as `notReadyAddresses`, leaving terminating pods out.
//! `publishNotReadyAddresses` makes every such pod ready. A Service without a selector
//! keeps the Endpoints its user writes; those are mirrored into an EndpointSlice, since
//! proxies read slices. ExternalName Services have no endpoints.

use std::future::Future;
use std::time::Duration;
use futures::{FutureExt, StreamExt};
use kube::runtime::Controller;
use crate::support::Informers;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use skiff_client::events::EventType;
use skiff_client::{Recorder, SERVICE_NAME_LABEL, owners, pods};
use skiff_core::LabelSelector;

use crate::Error;

/// The label naming the controller that writes a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MIRRORED_BY: &str = "endpointslicemirroring-controller.k8s.io";
/// Kubernetes' default `--max-endpoints-per-slice`.
const MAX_PER_SLICE: usize = 100;

pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub pods: Store<Pod>,
    pub endpoints: Store<Endpoints>,
    pub slices: Store<EndpointSlice>,
}

/// One pod as an endpoint of a Service.
#[derive(Debug, Clone, PartialEq)]
pub struct PodEndpoint {
    pub ip: String,
    pub pod: String,
    pub uid: Option<String>,
    pub node: Option<String>,
    pub hostname: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// A service port resolved in a pod: name, number, protocol, appProtocol.
type ResolvedPort = (Option<String>, i32, String, Option<String>);
/// An EndpointSlice's content: its ports and endpoints.
pub type SliceContent = (Vec<EndpointPort>, Vec<Endpoint>);

/// What a Service's endpoints should be.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    /// `v1 Endpoints` subsets.
    pub subsets: Vec<EndpointSubset>,
    /// EndpointSlices by name: ports and endpoints.
    pub slices: BTreeMap<String, SliceContent>,
}

/// The pod as an endpoint, or None when it cannot be one (no IP yet, or finished).
pub fn pod_endpoint(svc: &Service, pod: &Pod) -> Option<PodEndpoint> {
    let ip = pod.status.as_ref()?.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    if pods::is_terminal(pod) {
        return None;
    }
    let publish = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let serving = publish || pods::is_ready(pod);
    let spec = pod.spec.as_ref();
    let hostname = spec.and_then(|s| s.hostname.clone()).filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == Some(svc.name_any().as_str()));
    Some(PodEndpoint {
        ip,
        pod: pod.name_any(),
        uid: pod.metadata.uid.clone(),
        node: spec.and_then(|s| s.node_name.clone()),
        hostname,
        ready: serving && (publish || !terminating),
        serving,
        terminating,
    })
}

/// Every endpoint of `svc` among `pods` (which must be the pods its selector matches).
pub fn desired<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Desired {
    let ns = svc.namespace().unwrap_or_default();
    let service_ports = svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    let publish = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    // Pods grouped by the ports they resolve to, in name order so the result is stable.
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<PodEndpoint>> = BTreeMap::new();
    let mut sorted: Vec<&Pod> = pods.into_iter().collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    for pod in sorted {
        let Some(ep) = pod_endpoint(svc, pod) else { continue };
        let ports = service_ports
            .iter()
            .filter_map(|p| pods::resolve_target_port(p, pod).map(|n| (p.name.clone(), n, p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.app_protocol.clone())))
            .collect();
        groups.entry(ports).or_default().push(ep);
    }
    let target = |ep: &PodEndpoint| ObjectReference { kind: Some("Pod".into()), namespace: Some(ns.clone()), name: Some(ep.pod.clone()), uid: ep.uid.clone(), ..Default::default() };
    let mut out = Desired::default();
    for (ports, eps) in &groups {
        let address = |ep: &PodEndpoint| EndpointAddress { ip: ep.ip.clone(), hostname: ep.hostname.clone(), node_name: ep.node.clone(), target_ref: Some(target(ep)) };
        // Terminating pods leave Endpoints (unless published regardless), as in Kubernetes.
        let listed = eps.iter().filter(|e| publish || !e.terminating);
        let (ready, unready): (Vec<_>, Vec<_>) = listed.partition(|e| e.ready);
        if !ports.is_empty() || svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            let core_ports: Vec<CorePort> = ports.iter().map(|(name, port, protocol, app)| CorePort { name: name.clone(), port: *port, protocol: Some(protocol.clone()), app_protocol: app.clone() }).collect();
            if !ready.is_empty() || !unready.is_empty() {
                out.subsets.push(EndpointSubset {
                    addresses: Some(ready.into_iter().map(address).collect()).filter(|v: &Vec<_>| !v.is_empty()),
                    not_ready_addresses: Some(unready.into_iter().map(address).collect()).filter(|v: &Vec<_>| !v.is_empty()),
                    ports: Some(core_ports).filter(|v| !v.is_empty()),
                });
            }
        }
        let slice_ports: Vec<EndpointPort> = ports.iter().map(|(name, port, protocol, app)| EndpointPort { name: name.clone(), port: Some(*port), protocol: Some(protocol.clone()), app_protocol: app.clone() }).collect();
        let key = serde_json::to_vec(ports).unwrap_or_default();
        let base = format!("{}-{}", svc.name_any(), skiff_core::names::safe_hash(&key));
        for (i, chunk) in eps.chunks(MAX_PER_SLICE).enumerate() {
            let name = if i == 0 { base.clone() } else { format!("{base}-{i}") };
            let endpoints = chunk
                .iter()
                .map(|ep| Endpoint {
                    addresses: vec![ep.ip.clone()],
                    conditions: Some(EndpointConditions { ready: Some(ep.ready), serving: Some(ep.serving), terminating: Some(ep.terminating) }),
                    hostname: ep.hostname.clone(),
                    node_name: ep.node.clone(),
                    target_ref: Some(target(ep)),
                    ..Default::default()
                })
                .collect();
            out.slices.insert(name, (slice_ports.clone(), endpoints));
        }
    }
    if out.slices.is_empty() {
        // A Service with no endpoints keeps one empty slice, as in Kubernetes.
        out.slices.insert(format!("{}-{}", svc.name_any(), skiff_core::names::safe_hash(b"[]")), (Vec::new(), Vec::new()));
    }
    out
}

/// The named target ports of `svc` that none of `pods` (those with an address) declares.
pub fn unresolved_ports<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<String> {
    let candidates: Vec<&Pod> = pods.into_iter().filter(|p| pod_endpoint(svc, p).is_some()).collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    svc.spec.iter().flat_map(|s| s.ports.iter().flatten())
        .filter(|port| matches!(port.target_port, Some(IntOrString::String(_))))
        .filter(|port| candidates.iter().all(|pod| pods::resolve_target_port(port, pod).is_none()))
        .filter_map(|port| match &port.target_port {
            Some(IntOrString::String(name)) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// A manually written Endpoints object as slices (the mirroring controller's job).
pub fn mirrored(svc: &Service, endpoints: &Endpoints) -> BTreeMap<String, SliceContent> {
    let mut out = BTreeMap::new();
    for (i, subset) in endpoints.subsets.iter().flatten().enumerate() {
        let ports: Vec<EndpointPort> = subset.ports.iter().flatten().map(|p| EndpointPort { name: p.name.clone(), port: Some(p.port), protocol: p.protocol.clone(), app_protocol: p.app_protocol.clone() }).collect();
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let unready = subset.not_ready_addresses.iter().flatten().map(|a| (a, false));
        let eps: Vec<Endpoint> = ready
            .chain(unready)
            .map(|(a, ok)| Endpoint {
                addresses: vec![a.ip.clone()],
                conditions: Some(EndpointConditions { ready: Some(ok), serving: Some(ok), terminating: Some(false) }),
                hostname: a.hostname.clone(),
                node_name: a.node_name.clone(),
                target_ref: a.target_ref.clone(),
                ..Default::default()
            })
            .collect();
        for (j, chunk) in eps.chunks(MAX_PER_SLICE).enumerate() {
            out.insert(format!("{}-mirror-{i}-{j}", svc.name_any()), (ports.clone(), chunk.to_vec()));
        }
    }
    out
}

/// The Services in the pod's namespace whose selector picks it.
pub fn services_selecting(services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace();
    services
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| selector(s).is_some_and(|sel| sel.matches_map(pod.metadata.labels.as_ref())))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// The Services whose slices list `pod` now (so a pod whose labels stopped matching
/// still leaves them).
pub fn services_listing(slices: &Store<EndpointSlice>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let (ns, name) = (pod.namespace(), pod.name_any());
    slices
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && s.endpoints.iter().flatten().any(|e| e.target_ref.as_ref().and_then(|t| t.name.as_deref()) == Some(name.as_str())))
        .filter_map(|s| Some(ObjectRef::new(s.labels().get(SERVICE_NAME_LABEL)?).within(ns.as_deref()?)))
        .collect()
}

/// The Service's selector; None for a Service without one (its Endpoints are the user's).
fn selector(svc: &Service) -> Option<LabelSelector> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let labels = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    Some(LabelSelector::from_map(labels))
}

/// A write whose object (or namespace) went away meanwhile is done with; a conflict is
/// an error, so the Service is looked at again with a fresher cache.
fn not_found_ok<T>(r: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The controller: Services, woken by the pods they select (and those their slices still
/// list), and by their own Endpoints and slices (user-written Endpoints are mirrored;
/// slices changed or deleted by someone else are put back).
pub fn controller(i: &Informers, client: &Client) -> impl Future<Output = ()> + Send + use<> {
    let (selecting, listing) = (i.services.store(), i.slices.store());
    let ctx = Ctx { client: client.clone(), recorder: Recorder::new(client.clone(), "endpoint-controller"), pods: i.pods.store(), endpoints: i.endpoints.store(), slices: i.slices.store() };
    Controller::for_shared_stream(i.services.subscribe(), i.services.store())
        .watches_shared_stream(i.pods.changes(), move |pod| {
            let mut refs = services_selecting(&selecting, &pod);
            refs.extend(services_listing(&listing, &pod));
            refs
        })
        .watches_shared_stream(i.endpoints.subscribe(), |e| {
            let ns = e.metadata.namespace.clone().unwrap_or_default();
            e.metadata.name.as_deref().map(|n| ObjectRef::new(n).within(&ns))
        })
        .watches_shared_stream(i.slices.subscribe(), |s| {
            let ns = s.metadata.namespace.clone();
            s.metadata.labels.as_ref().and_then(|l| l.get(skiff_client::SERVICE_NAME_LABEL)).map(|n| ObjectRef::new(n).within(ns.as_deref().unwrap_or_default()))
        })
        // Conflicts with a newer cache are common; look again soon, as proxies wait.
        .run(crate::metrics::metered("endpointslice", reconcile), |_, _, _| Action::requeue(Duration::from_secs(1)), Arc::new(ctx))
        .for_each(|_| async {})
}

pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let external_name = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let Some(sel) = selector(&svc) else {
        // No selector: the slices mirror the Endpoints someone wrote (none for ExternalName).
        let manual = if external_name { None } else { ctx.endpoints.get(&ObjectRef::new(&name).within(&ns)) };
        write_slices(&ctx, &svc, manual.map(|e| mirrored(&svc, &e)).unwrap_or_default(), MIRRORED_BY).await?;
        return Ok(Action::await_change());
    };
    let matching: Vec<Arc<Pod>> = ctx.pods.state().into_iter().filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && sel.matches_map(p.metadata.labels.as_ref())).collect();
    let want = desired(&svc, matching.iter().map(Arc::as_ref));
    // The two views are independent objects: written together, so the slices the
    // proxies follow never wait for the Endpoints.
    let (changed, ()) = futures::try_join!(write_endpoints(&ctx, &svc, want.subsets), write_slices(&ctx, &svc, want.slices, MANAGED_BY))?;
    let unresolved = unresolved_ports(&svc, matching.iter().map(Arc::as_ref));
    if changed && !unresolved.is_empty() {
        ctx.recorder.record(svc.as_ref(), EventType::Warning, "TargetPortNotFound",
            format!("no selected pod declares the named port {} (spec.ports[].targetPort): those ports have no endpoints", unresolved.join(", ")));
    }
    Ok(Action::await_change())
}

/// Creates or replaces the Service's Endpoints when they differ from `subsets`; true when
/// it wrote.
async fn write_endpoints(ctx: &Ctx, svc: &Service, subsets: Vec<EndpointSubset>) -> Result<bool, Error> {
    let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = ctx.endpoints.get(&ObjectRef::new(&name).within(&ns));
    let subsets = Some(subsets).filter(|s| !s.is_empty());
    let labels = svc.metadata.labels.clone();
    if let Some(e) = &existing
        && e.subsets == subsets
        && e.metadata.labels == labels
    {
        return Ok(false);
    }
    let object = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels,
            owner_references: Some(vec![owners::controller_ref(svc)]),
            resource_version: existing.as_ref().and_then(|e| e.resource_version()),
            ..Default::default()
        },
        subsets,
    };
    match existing {
        Some(_) => not_found_ok(api.replace(&name, &PostParams::default(), &object).await)?,
        None => not_found_ok(api.create(&PostParams::default(), &object).await)?,
    };
    Ok(true)
}

/// Brings the Service's slices to `want`: creates, replaces what changed, deletes the rest.
async fn write_slices(ctx: &Ctx, svc: &Service, want: BTreeMap<String, SliceContent>, managed_by: &str) -> Result<(), Error> {
    let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let existing: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.labels().get(SERVICE_NAME_LABEL) == Some(&name) && s.labels().get(MANAGED_BY_LABEL).is_some_and(|m| m == MANAGED_BY || m == MIRRORED_BY))
        .collect();
    let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    let mut labels = BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), name.clone()), (MANAGED_BY_LABEL.to_string(), managed_by.to_string())]);
    if headless {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    // Every create, replace and delete at once: a Service coming out of zero swaps its
    // empty slice for one with endpoints, and neither write waits for the other.
    let mut writes = Vec::new();
    for (slice_name, (ports, endpoints)) in &want {
        let current = existing.iter().find(|s| s.name_any() == *slice_name);
        if let Some(s) = current
            && s.ports.as_ref().unwrap_or(&Vec::new()) == ports
            && s.endpoints.as_ref().unwrap_or(&Vec::new()) == endpoints
            && s.metadata.labels.as_ref() == Some(&labels)
        {
            continue;
        }
        let object = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owners::controller_ref(svc)]),
                resource_version: current.and_then(|s| s.resource_version()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints.clone()),
            ports: Some(ports.clone()),
        };
        let api = api.clone();
        writes.push(async move {
            match current {
                Some(_) => not_found_ok(api.replace(&object.name_any(), &PostParams::default(), &object).await).map(drop),
                None => not_found_ok(api.create(&PostParams::default(), &object).await).map(drop),
            }
        }.boxed());
    }
    let keep: HashSet<&String> = want.keys().collect();
    for stale in existing.iter().filter(|s| !keep.contains(&s.name_any())) {
        let (api, name) = (api.clone(), stale.name_any());
        writes.push(async move { not_found_ok(api.delete(&name, &DeleteParams::default()).await).map(drop) }.boxed());
    }
    futures::future::try_join_all(writes).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default", "uid": "s1"}, "spec": spec})).unwrap()
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, deleting: bool, ports: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(skiff_client::now());
        }
        p
    }

    #[test]
    fn ready_unready_and_terminating_pods() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}));
        let pods = [
            pod("a", Some("10.42.0.2"), true, false, json!([])),
            pod("b", Some("10.42.0.3"), false, false, json!([])),
            pod("c", Some("10.42.0.4"), true, true, json!([])),
            pod("d", None, true, false, json!([])),
        ];
        let want = desired(&s, &pods);
        assert_eq!(want.subsets.len(), 1);
        let subset = &want.subsets[0];
        let ips = |v: &Option<Vec<EndpointAddress>>| v.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>();
        assert_eq!(ips(&subset.addresses), ["10.42.0.2"]);
        assert_eq!(ips(&subset.not_ready_addresses), ["10.42.0.3"]);
        assert_eq!(subset.ports.as_ref().unwrap()[0].port, 8080);
        let (ports, eps) = want.slices.values().next().unwrap();
        assert_eq!(ports[0].port, Some(8080));
        let conds: Vec<_> = eps.iter().map(|e| e.conditions.clone().unwrap()).map(|c| (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())).collect();
        // a ready, b unready, c terminating but still serving; d has no IP yet.
        assert_eq!(conds, [(true, true, false), (false, false, false), (false, true, true)]);
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_pod_ready() {
        let s = svc(json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true, "ports": [{"port": 80}]}));
        let want = desired(&s, &[pod("b", Some("10.42.0.3"), false, false, json!([]))]);
        assert!(want.subsets[0].not_ready_addresses.is_none());
        assert_eq!(want.subsets[0].addresses.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}));
        let pods = [
            pod("a", Some("10.42.0.2"), true, false, json!([{"name": "web", "containerPort": 8080}])),
            pod("b", Some("10.42.0.3"), true, false, json!([{"name": "web", "containerPort": 9090}])),
            pod("c", Some("10.42.0.4"), true, false, json!([{"name": "other", "containerPort": 1}])),
        ];
        let want = desired(&s, &pods);
        // Two port groups with one pod each, plus pod c with no ports at all.
        let mut by_port: Vec<(Option<i32>, usize)> = want.slices.values().map(|(p, e)| (p.first().and_then(|p| p.port), e.len())).collect();
        by_port.sort();
        assert_eq!(by_port, [(None, 1), (Some(8080), 1), (Some(9090), 1)]);
        // Endpoints leaves a pod without the port out.
        assert_eq!(want.subsets.len(), 2);
        assert!(unresolved_ports(&s, &pods).is_empty());
        let wrong = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "nope"}, {"port": 81, "targetPort": 81}]}));
        assert_eq!(unresolved_ports(&wrong, &pods), ["nope"]);
    }

    #[test]
    fn large_services_split_into_slices_of_a_hundred() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        let pods: Vec<Pod> = (0..250).map(|i| pod(&format!("p{i:03}"), Some(&format!("10.42.{}.{}", i / 200, i % 200 + 2)), true, false, json!([]))).collect();
        let want = desired(&s, &pods);
        let sizes: Vec<usize> = want.slices.values().map(|(_, e)| e.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert!(want.slices.keys().all(|k| k.starts_with("web-")));
    }

    #[test]
    fn manual_endpoints_are_mirrored() {
        let s = svc(json!({"ports": [{"port": 80}]}));
        let e: Endpoints = serde_json::from_value(json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 80}]}]})).unwrap();
        let slices = mirrored(&s, &e);
        let (ports, eps) = slices.values().next().unwrap();
        assert_eq!((ports[0].port, eps[0].addresses[0].as_str()), (Some(80), "192.0.2.1"));
    }

    #[test]
    fn pod_hostname_needs_the_matching_subdomain() {
        let s = svc(json!({"selector": {"app": "web"}, "clusterIP": "None"}));
        let mut p = pod("a", Some("10.42.0.2"), true, false, json!([]));
        p.spec.as_mut().unwrap().hostname = Some("a".into());
        assert_eq!(pod_endpoint(&s, &p).unwrap().hostname, None);
        p.spec.as_mut().unwrap().subdomain = Some("web".into());
        assert_eq!(pod_endpoint(&s, &p).unwrap().hostname.as_deref(), Some("a"));
        // A headless Service without ports still lists its pods.
        assert_eq!(desired(&s, &[p]).subsets.len(), 1);
    }
}

