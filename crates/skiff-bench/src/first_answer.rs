//! The `tour` bench: the README tour's first minute, on a fresh cluster. `skiff up` starts
//! on an empty data directory; `examples/hello.yaml` is created as soon as the API
//! answers; the clock stops when its Service first answers on its ClusterIP, port 80. The
//! image comes from the cluster's embedded registry, as in the tour. Building skiff is not
//! part of it (the README states that apart). No reference runs beside it: k3s cannot be
//! installed on this offline machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, PostParams};
use serde_json::Value;

use crate::registry::{free_port, skiff_binary, spawn_skiff, wait_for_api, wait_for_kubeconfig};
use crate::report::{Row, percentile};

/// The tour's first manifest, as the repository has it.
fn hello_manifest() -> anyhow::Result<Vec<Value>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(serde_saphyr::from_multiple::<Value>(&text)?.into_iter().filter(|d| !d.is_null()).collect())
}

/// One fresh cluster: (start → API answering, start → the Service answering).
async fn once(binary: &std::path::Path, docs: &[Value]) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("up");
    let listen = format!("127.0.0.1:{}", free_port()?);
    let args = ["up", "--listen", &listen, "--agent-port", "0", "--node-name", "tour", "--node-ip", "127.0.0.1", "--cluster-cidr", "10.246.0.0/16",
        "--service-cidr", "10.247.0.0/16", "--ingress-http-port", "0", "--ingress-https-port", "0", "--data-dir"];
    let started = Instant::now();
    let _cluster = spawn_skiff(binary, &args, &data)?;
    let kubeconfig = wait_for_kubeconfig(&data).await?;
    let client = wait_for_api(&kubeconfig, Duration::from_millis(10)).await?;
    let api_ready = started.elapsed();
    let post = PostParams::default();
    for doc in docs {
        match doc["kind"].as_str().unwrap_or_default() {
            "ConfigMap" => drop(Api::<ConfigMap>::namespaced(client.clone(), "default").create(&post, &serde_json::from_value(doc.clone())?).await?),
            "Deployment" => drop(Api::<Deployment>::namespaced(client.clone(), "default").create(&post, &serde_json::from_value(doc.clone())?).await?),
            "Service" => drop(Api::<Service>::namespaced(client.clone(), "default").create(&post, &serde_json::from_value(doc.clone())?).await?),
            other => anyhow::bail!("examples/hello.yaml holds a {other}, which this bench does not create"),
        }
    }
    let service = Api::<Service>::namespaced(client.clone(), "default").get("hello").await?;
    let vip: std::net::IpAddr = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default().parse()?;
    crate::serve::wait_answering(SocketAddr::new(vip, 80), "the hello Service").await?;
    Ok((api_ready, started.elapsed()))
}

pub async fn run(quick: bool, runs: usize, binary: Option<PathBuf>) -> anyhow::Result<Vec<Row>> {
    let runs = if quick { 1 } else { runs.max(1) };
    let binary = skiff_binary(binary)?;
    let docs = hello_manifest()?;
    let (mut api, mut answer) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (a, b) = once(&binary, &docs).await?;
        api.push(a);
        answer.push(b);
    }
    api.sort();
    answer.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("tour: {runs} fresh `skiff up` runs ({}), examples/hello.yaml created once the API answers", binary.display());
    println!("{:<52} {:>9} {:>9}", "what", "p50", "max");
    println!("{:<52} {:>9} {:>9}", "start → API answering", ms(percentile(&api, 0.5)), ms(*api.last().expect("runs ≥ 1")));
    println!("{:<52} {:>9} {:>9}", "start → hello Service answering on ClusterIP:80", ms(percentile(&answer, 0.5)), ms(*answer.last().expect("runs ≥ 1")));
    let none = "no reference run here (k3s cannot be installed offline)";
    Ok(vec![
        Row::new(format!("fresh `skiff up` → API answering (p50 of {runs})"), ms(percentile(&api, 0.5)), none, None),
        Row::new(format!("fresh `skiff up` → hello.yaml's Service answering (p50 of {runs})"), ms(percentile(&answer, 0.5)), none, None),
    ])
}
