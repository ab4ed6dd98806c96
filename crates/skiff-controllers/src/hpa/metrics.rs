//! What an HPA scales and what it reads: the target's scale subresource, its own pods, and
//! each metric of `spec.metrics` turned into a proposal with its `status.currentMetrics`
//! entry. Resource metrics come from `metrics.k8s.io`, the others from
//! `custom.metrics.k8s.io`, both through the API as any client would read them.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, MetricIdentifier, MetricSpec, MetricStatus, MetricValueStatus, ObjectMetricStatus, PodsMetricStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use skiff_core::LabelSelector;
use skiff_core::quantity::{parse_milli, parse_units};

use super::Ctx;
use super::replicas::{self, ObjectTarget, PodReading, PodTarget, Proposal, Tolerance};

/// The object an HPA scales, as its scale subresource shows it.
pub struct Target {
    api: Api<DynamicObject>,
    name: String,
    uid: String,
    /// `spec.replicas` of the scale.
    pub replicas: i32,
    /// `status.replicas`: pods that exist now.
    pub status_replicas: i32,
    selector: String,
}

impl Target {
    pub async fn get(client: &Client, hpa: &HorizontalPodAutoscaler) -> Result<Target, String> {
        let r = &hpa.spec.scale_target_ref;
        let api_version = r.api_version.clone().unwrap_or_default();
        let resource = skiff_core::resources::find_by_kind(&api_version, &r.kind)
            .ok_or_else(|| format!("unable to determine resource for scale target reference: no matches for kind {:?} in version {api_version:?}", r.kind))?;
        if !resource.has_subresource("scale") {
            return Err(format!("the server does not allow this method on the requested resource: {} have no scale subresource", resource.plural));
        }
        let api = crate::dynamic_api(client, resource, hpa.namespace().as_deref());
        let scale = api.get_scale(&r.name).await.map_err(|e| match e {
            kube::Error::Api(s) => format!("the HPA controller was unable to get the target's current scale: {}", s.message),
            other => format!("the HPA controller was unable to get the target's current scale: {other}"),
        })?;
        let status = scale.status.unwrap_or_default();
        Ok(Target {
            api,
            name: r.name.clone(),
            uid: scale.metadata.uid.unwrap_or_default(),
            replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
            status_replicas: status.replicas,
            selector: status.selector.unwrap_or_default(),
        })
    }

    pub async fn set_replicas(&self, replicas: i32) -> Result<(), kube::Error> {
        self.api.patch_scale(&self.name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await.map(|_| ())
    }

    /// The target's own pods: those its selector matches that it controls, directly or
    /// through a ReplicaSet it controls (a Deployment's).
    pub fn own_pods(&self, ctx: &Ctx, namespace: &str) -> Vec<Arc<Pod>> {
        let Ok(selector) = LabelSelector::parse(&self.selector) else { return Vec::new() };
        let owned_sets: Vec<String> = ctx.replica_sets.state().iter()
            .filter(|rs| rs.namespace().as_deref() == Some(namespace) && skiff_client::owners::is_controlled_by(&rs.metadata, &self.uid))
            .filter_map(|rs| rs.uid())
            .collect();
        ctx.pods.state().into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace) && selector.matches_map(p.metadata.labels.as_ref()))
            .filter(|p| skiff_client::owners::controller_of(&p.metadata).is_some_and(|o| o.uid == self.uid || owned_sets.contains(&o.uid)))
            .collect()
    }
}

/// One metric, evaluated.
pub struct Evaluated {
    /// How Kubernetes names the metric in ScalingActive's message ("cpu resource
    /// utilization (percentage of request)").
    pub description: String,
    pub proposal: Result<Proposal, String>,
    pub status: Option<MetricStatus>,
    failure: &'static str,
}

impl Evaluated {
    pub fn explanation(&self) -> String {
        match &self.proposal {
            Ok(p) => format!("{}: {} replicas ({})", self.description, p.replicas, p.why),
            Err(e) => format!("{}: {e}", self.description),
        }
    }

    /// ScalingActive's reason when this metric could not be read.
    pub fn failure_reason(&self) -> &'static str {
        self.failure
    }
}

/// CPU in millicores, anything else in units (bytes).
fn amount(resource: &str, q: &Quantity) -> Option<f64> {
    let parsed = if resource == "cpu" { parse_milli(&q.0) } else { parse_units(&q.0) };
    parsed.ok().map(|v| v as f64)
}

fn quantity(resource: &str, value: f64) -> Quantity {
    Quantity(if resource == "cpu" { format!("{}m", value.round() as i64) } else { format!("{}", value.round() as i64) })
}

/// Usage per pod and container from `metrics.k8s.io`, for pods the selector matches.
async fn pod_usage(client: &Client, namespace: &str, selector: &str) -> Result<HashMap<String, HashMap<String, HashMap<String, Quantity>>>, String> {
    let url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={}", skiff_core::urlencode(selector));
    let request = http::Request::get(url).body(Vec::new()).map_err(|e| e.to_string())?;
    let list: Value = client.request(request).await.map_err(|e| format!("unable to get metrics for resource: unable to fetch metrics from resource metrics API: {e}"))?;
    let mut out = HashMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let Some(pod) = item.pointer("/metadata/name").and_then(Value::as_str) else { continue };
        let containers = item["containers"].as_array().into_iter().flatten().filter_map(|c| {
            let usage: HashMap<String, Quantity> = serde_json::from_value(c["usage"].clone()).ok()?;
            Some((c["name"].as_str()?.to_string(), usage))
        }).collect();
        out.insert(pod.to_string(), containers);
    }
    Ok(out)
}

/// Whether the calculator may count this pod's reading: pending pods, and for CPU pods
/// that are not ready, cannot report a representative value yet.
fn ready_for(resource: &str, pod: &Pod) -> bool {
    let phase = skiff_client::pods::phase(pod);
    phase != "Pending" && (resource != "cpu" || skiff_client::pods::is_ready(pod))
}

fn counted(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && skiff_client::pods::phase(pod) != "Failed" && skiff_client::pods::phase(pod) != "Succeeded"
}

/// Every metric of the HPA, evaluated against the target.
pub async fn evaluate(ctx: &Ctx, hpa: &HorizontalPodAutoscaler, target: &Target, tolerance: Tolerance) -> Vec<Evaluated> {
    let ns = hpa.namespace().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = target.own_pods(ctx, &ns).into_iter().filter(|p| counted(p)).collect();
    let specs = hpa.spec.metrics.clone().unwrap_or_default();
    let mut usage = None;
    let mut out = Vec::new();
    for spec in &specs {
        out.push(match spec.type_.as_str() {
            "Resource" | "ContainerResource" => {
                if usage.is_none() {
                    usage = Some(pod_usage(&ctx.client, &ns, &target.selector).await);
                }
                resource_metric(spec, &pods, usage.as_ref().expect("read above"), target.replicas, tolerance)
            }
            "Pods" => pods_metric(ctx, spec, &pods, &ns, target, tolerance).await,
            "Object" => object_metric(ctx, spec, &pods, &ns, target.replicas, tolerance).await,
            other => Evaluated {
                description: format!("{other} metric"),
                proposal: Err(format!("{other} metrics are not served by this cluster (Resource, ContainerResource, Pods and Object are)")),
                status: None,
                failure: "InvalidMetricSourceType",
            },
        });
    }
    out
}

type Usage = Result<HashMap<String, HashMap<String, HashMap<String, Quantity>>>, String>;

fn resource_metric(spec: &MetricSpec, pods: &[Arc<Pod>], usage: &Usage, current: i32, tolerance: Tolerance) -> Evaluated {
    let (name, container, target) = match (&spec.resource, &spec.container_resource) {
        (Some(r), _) => (r.name.clone(), None, r.target.clone()),
        (None, Some(c)) => (c.name.clone(), Some(c.container.clone()), c.target.clone()),
        _ => {
            return Evaluated { description: "resource metric".into(), proposal: Err("the metric names no resource".into()), status: None, failure: "InvalidMetricSourceType" };
        }
    };
    let utilization = target.average_utilization;
    let description = match (&container, utilization) {
        (None, Some(_)) => format!("{name} resource utilization (percentage of request)"),
        (None, None) => format!("{name} resource"),
        (Some(c), Some(_)) => format!("{name} container resource utilization (percentage of request) of container {c}"),
        (Some(c), None) => format!("{name} container resource of container {c}"),
    };
    let failure = if container.is_some() { "FailedGetContainerResourceMetric" } else { "FailedGetResourceMetric" };
    let usage = match usage {
        Ok(u) => u,
        Err(e) => return Evaluated { description, proposal: Err(e.clone()), status: None, failure },
    };
    let pod_target = match (utilization, target.average_value.as_ref().and_then(|q| amount(&name, q))) {
        (Some(u), _) if u > 0 => PodTarget::Utilization(u as f64),
        (None, Some(v)) if v > 0.0 => PodTarget::AverageValue(v),
        _ => return Evaluated { description, proposal: Err("the target needs a positive averageUtilization or averageValue".into()), status: None, failure },
    };
    let in_scope = |c: &str| container.as_deref().is_none_or(|want| want == c);
    let readings: Vec<PodReading> = pods.iter().map(|p| {
        let value = usage.get(&p.name_any()).map(|cs| cs.iter().filter(|(c, _)| in_scope(c)).filter_map(|(_, u)| u.get(&name).and_then(|q| amount(&name, q))).sum());
        let requests: Option<f64> = p.spec.iter().flat_map(|s| &s.containers).filter(|c| in_scope(&c.name))
            .map(|c| c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(&name)).and_then(|q| amount(&name, q)))
            .sum();
        PodReading { ready: ready_for(&name, p), value, request: requests }
    }).collect();
    let proposal = replicas::for_pods(current, &readings, pod_target, tolerance);
    let status = proposal.as_ref().ok().map(|p| {
        let average: f64 = {
            let values: Vec<f64> = readings.iter().filter(|r| r.ready).filter_map(|r| r.value).collect();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        let current = MetricValueStatus {
            average_utilization: utilization.map(|_| p.current.round() as i32),
            average_value: Some(quantity(&name, average)),
            value: None,
        };
        let mut s = MetricStatus { type_: spec.type_.clone(), ..Default::default() };
        match &container {
            None => s.resource = Some(k8s_openapi::api::autoscaling::v2::ResourceMetricStatus { name: name.clone(), current }),
            Some(c) => s.container_resource = Some(k8s_openapi::api::autoscaling::v2::ContainerResourceMetricStatus { name: name.clone(), container: c.clone(), current }),
        }
        s
    });
    Evaluated { description, proposal, status, failure }
}

/// A plain number as a quantity in milli-units (1.5 is `1500m`).
fn milli_quantity(v: f64) -> Quantity {
    Quantity(format!("{}m", (v * 1000.0).round() as i64))
}

/// A plain number from a quantity (`1500m` is 1.5).
fn number(q: &Quantity) -> Option<f64> {
    parse_milli(&q.0).ok().map(|m| m as f64 / 1000.0)
}

/// A MetricValueList from `custom.metrics.k8s.io`.
async fn custom_metric(client: &Client, path: &str) -> Result<Vec<Value>, String> {
    let url = format!("/apis/custom.metrics.k8s.io/v1beta2/{path}");
    let request = http::Request::get(url).body(Vec::new()).map_err(|e| e.to_string())?;
    let list: Value = client.request(request).await.map_err(|e| match e {
        kube::Error::Api(s) => format!("unable to get the metric from the custom metrics API: {}", s.message),
        other => format!("unable to get the metric from the custom metrics API: {other}"),
    })?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn item_value(item: &Value) -> Option<f64> {
    number(&Quantity(item["value"].as_str()?.to_string()))
}

async fn pods_metric(ctx: &Ctx, spec: &MetricSpec, pods: &[Arc<Pod>], ns: &str, target: &Target, tolerance: Tolerance) -> Evaluated {
    let failure = "FailedGetPodsMetric";
    let Some(source) = spec.pods.as_ref() else {
        return Evaluated { description: "pods metric".into(), proposal: Err("a Pods metric needs spec.metrics[].pods".into()), status: None, failure };
    };
    let name = source.metric.name.clone();
    let description = format!("pods metric {name}");
    let Some(want) = source.target.average_value.as_ref().and_then(number).filter(|v| *v > 0.0) else {
        return Evaluated { description, proposal: Err("a Pods metric's target needs a positive averageValue".into()), status: None, failure };
    };
    let items = match custom_metric(&ctx.client, &format!("namespaces/{ns}/pods/*/{name}?labelSelector={}", skiff_core::urlencode(&target.selector))).await {
        Ok(items) => items,
        Err(e) => return Evaluated { description, proposal: Err(e), status: None, failure },
    };
    let by_pod: HashMap<&str, f64> = items.iter().filter_map(|i| Some((i.pointer("/describedObject/name")?.as_str()?, item_value(i)?))).collect();
    let readings: Vec<PodReading> = pods.iter().map(|p| PodReading { ready: ready_for("", p), value: by_pod.get(p.name_any().as_str()).copied(), request: None }).collect();
    let proposal = replicas::for_pods(target.replicas, &readings, PodTarget::AverageValue(want), tolerance);
    let status = proposal.as_ref().ok().map(|p| MetricStatus {
        type_: "Pods".into(),
        pods: Some(PodsMetricStatus { metric: MetricIdentifier { name: name.clone(), selector: None }, current: MetricValueStatus { average_value: Some(milli_quantity(p.current)), ..Default::default() } }),
        ..Default::default()
    });
    Evaluated { description, proposal, status, failure }
}

async fn object_metric(ctx: &Ctx, spec: &MetricSpec, pods: &[Arc<Pod>], ns: &str, current: i32, tolerance: Tolerance) -> Evaluated {
    let failure = "FailedGetObjectMetric";
    let Some(source) = spec.object.as_ref() else {
        return Evaluated { description: "object metric".into(), proposal: Err("an Object metric needs spec.metrics[].object".into()), status: None, failure };
    };
    let (name, described) = (source.metric.name.clone(), &source.described_object);
    let description = format!("{name} metric of {} {}", described.kind, described.name);
    let want = match (source.target.type_.as_str(), source.target.value.as_ref().and_then(number), source.target.average_value.as_ref().and_then(number)) {
        ("Value", Some(v), _) if v > 0.0 => ObjectTarget::Value(v),
        ("AverageValue", _, Some(v)) if v > 0.0 => ObjectTarget::AverageValue(v),
        _ => return Evaluated { description, proposal: Err("an Object metric's target needs a positive value (type Value) or averageValue (type AverageValue)".into()), status: None, failure },
    };
    let Some(resource) = skiff_core::resources::find_by_kind(described.api_version.as_deref().unwrap_or("v1"), &described.kind) else {
        return Evaluated { description, proposal: Err(format!("no resource of kind {} in {:?}", described.kind, described.api_version)), status: None, failure };
    };
    let plural = if resource.group.is_empty() { resource.plural.to_string() } else { format!("{}.{}", resource.plural, resource.group) };
    let value = match custom_metric(&ctx.client, &format!("namespaces/{ns}/{plural}/{}/{name}", described.name)).await.map(|items| items.first().and_then(item_value)) {
        Ok(Some(v)) => v,
        Ok(None) => return Evaluated { description, proposal: Err("the custom metrics API returned no value".into()), status: None, failure },
        Err(e) => return Evaluated { description, proposal: Err(e), status: None, failure },
    };
    let ready = pods.iter().filter(|p| skiff_client::pods::is_ready(p)).count() as i32;
    let proposal = Ok(replicas::for_object(current, ready, value, want, tolerance));
    let current_value = match want {
        ObjectTarget::Value(_) => MetricValueStatus { value: Some(milli_quantity(value)), ..Default::default() },
        ObjectTarget::AverageValue(_) => MetricValueStatus { average_value: Some(milli_quantity(value / current.max(1) as f64)), ..Default::default() },
    };
    let status = Some(MetricStatus {
        type_: "Object".into(),
        object: Some(ObjectMetricStatus { described_object: described.clone(), metric: MetricIdentifier { name, selector: None }, current: current_value }),
        ..Default::default()
    });
    Evaluated { description, proposal, status, failure }
}
