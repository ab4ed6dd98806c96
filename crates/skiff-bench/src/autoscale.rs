//! The `autoscale` bench: a `skiff up` process reading usage every second
//! (`--metric-resolution 1s`), the http-hello function behind a Service, and an HPA on
//! requests per second with a 1 s sync period. It measures:
//! 1. first response from zero: with the function at zero replicas (no pod left), one
//!    request to the Service's ClusterIP, port 80, timed until its answer; the node proxy's
//!    activator holds it, scales the Deployment to 1 and sends it on. Many trials, each from
//!    zero again (the HPA takes the idle function back to zero after 1 s);
//! 2. load step to new replicas serving: the function at one replica, then a load of
//!    `connections` keep-alive clients starts; the clock stops when a second replica is
//!    Ready in the Service's endpoints.
//!
//! The references are published figures (Knative's and the KEDA HTTP add-on's cold start,
//! Kubernetes' 15 s sync and 15 s metrics chain): neither can be installed on this
//! offline machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::registry::{free_port, skiff_binary, spawn_skiff, wait_for_node};
use crate::report::{Row, percentile};

const NAME: &str = "fn";

async fn create_function(client: &kube::Client, min_replicas: i32, idle: &str) -> anyhow::Result<SocketAddr> {
    let post = PostParams::default();
    let deployment: Deployment = serde_json::from_value(json!({"metadata": {"name": NAME}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": NAME}},
        "template": {"metadata": {"labels": {"app": NAME}}, "spec": {"runtimeClassName": "wasmtime",
            "containers": [{"name": "fn", "image": "registry.skiff.internal/http-hello:v1", "ports": [{"containerPort": 8080}]}]}}}}))?;
    Api::<Deployment>::namespaced(client.clone(), "default").create(&post, &deployment).await?;
    let service: Service = serde_json::from_value(json!({"metadata": {"name": NAME}, "spec": {"selector": {"app": NAME}, "ports": [{"port": 80, "targetPort": 8080}]}}))?;
    let service = Api::<Service>::namespaced(client.clone(), "default").create(&post, &service).await?;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({"metadata": {"name": NAME, "annotations": {"skiff.dev/hpa-sync-period": "1s", "skiff.dev/scale-to-zero-after": idle}},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}, "minReplicas": min_replicas, "maxReplicas": 4,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "50"}}}]}}))?;
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), "default").create(&post, &hpa).await?;
    let ip: std::net::IpAddr = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default().parse()?;
    Ok(SocketAddr::new(ip, 80))
}

/// Waits until the function has no replica wanted and no pod left.
async fn wait_at_zero(client: &kube::Client) -> anyhow::Result<()> {
    let (deployments, pods) = (Api::<Deployment>::namespaced(client.clone(), "default"), Api::<Pod>::namespaced(client.clone(), "default"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let wanted = deployments.get(NAME).await?.spec.replicas.unwrap_or(1);
        if wanted == 0 && pods.list(&ListParams::default().labels(&format!("app={NAME}"))).await?.items.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the function did not go to zero within 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request from zero: its time to a 200 answer, or what went wrong.
async fn first_answer(addr: SocketAddr) -> anyhow::Result<Duration> {
    use http_body_util::BodyExt;
    let sent = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/").header("host", "bench").body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await.map_err(|e| anyhow::anyhow!("a request from zero failed after {:?}: {e}", sent.elapsed()))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "a request from zero was answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(sent.elapsed())
}

async fn ready_replicas(client: &kube::Client) -> anyhow::Result<i32> {
    Ok(Api::<Deployment>::namespaced(client.clone(), "default").get(NAME).await?.status.and_then(|s| s.ready_replicas).unwrap_or(0))
}

/// The function at one replica under a step of load: load start → a second replica ready.
async fn load_step(client: &kube::Client, addr: SocketAddr, connections: usize) -> anyhow::Result<Duration> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready_replicas(client).await? != 1 || deployments.get(NAME).await?.spec.replicas != Some(1) {
        anyhow::ensure!(Instant::now() < deadline, "the function did not settle at one replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let load = tokio::spawn(crate::serve::load(addr, connections, Duration::from_secs(30)));
    let result = loop {
        if ready_replicas(client).await? >= 2 {
            break Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            break Err(anyhow::anyhow!("no second replica within 30 s of the load step"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    load.abort();
    result
}

pub async fn run(quick: bool, trials: usize, steps: usize, connections: usize, binary: Option<PathBuf>) -> anyhow::Result<Vec<Row>> {
    let (trials, steps) = if quick { (3, 1) } else { (trials.max(1), steps.max(1)) };
    let binary = skiff_binary(binary)?;
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let args = ["up", "--listen", &listen, "--agent-port", "0", "--node-name", "autoscale", "--node-ip", "127.0.0.1", "--cluster-cidr", "10.248.0.0/16",
        "--service-cidr", "10.249.0.0/16", "--ingress-http-port", "0", "--ingress-https-port", "0", "--metric-resolution", "1s", "--data-dir"];
    let _cluster = spawn_skiff(&binary, &args, &dir.path().join("up"))?;
    let kubeconfig = crate::registry::wait_for_kubeconfig(&dir.path().join("up")).await?;
    let client = wait_for_node(&kubeconfig, "autoscale").await?;
    let addr = create_function(&client, 0, "1s").await?;
    crate::serve::wait_answering(addr, "the function").await?;
    let mut cold = Vec::new();
    for _ in 0..trials {
        wait_at_zero(&client).await?;
        cold.push(first_answer(addr).await?);
    }
    cold.sort();
    // The load step: the same function kept at one replica at least.
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), "default");
    hpas.patch(NAME, &PatchParams::default(), &Patch::Merge(json!({"spec": {"minReplicas": 1}}))).await?;
    let mut step = Vec::new();
    for _ in 0..steps {
        step.push(load_step(&client, addr, connections).await?);
    }
    step.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("autoscale ({}): http-hello behind a Service, HPA on requests_per_second, 1 s sync and metric resolution", binary.display());
    println!("| what | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!("| first response from zero ({trials} trials) | {} | {} | {} |", ms(percentile(&cold, 0.5)), ms(percentile(&cold, 0.99)), ms(*cold.last().expect("trials ≥ 1")));
    println!("| load step ({connections} clients) → second replica ready ({steps} steps) | {} | — | {} |", ms(percentile(&step, 0.5)), ms(*step.last().expect("steps ≥ 1")));
    Ok(vec![
        Row::new(format!("first response from zero, p50 / p99 ({trials} trials)"), format!("{} / {}", ms(percentile(&cold, 0.5)), ms(percentile(&cold, 0.99))),
            "Knative 2–4 s, KEDA HTTP add-on 1.5–3.4 s (published); goal p99 ≤ 50 ms", None),
        Row::new(format!("load step → new replica serving, p50 ({steps} steps, 1 s sync)"), ms(percentile(&step, 0.5)),
            "Kubernetes: 15 s sync + 15 s metrics + start (published defaults); goal ≤ 3 s", None),
    ])
}
