//! The `density` bench: how little an idle HTTP function pod costs. One node in process
//! (API server, scheduler, real agent) runs N pods of the http-hello wasi:http component,
//! each listening on its own pod IP; the bench reports the process's RSS before and
//! after, per pod, and checks that a sample of the pods answer. Goal (issue 5): 10,000
//! idle pods on one 2-core node, ≤ 100 KB of agent memory each.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::registry::{example, in_process_node, rss_of, start_registry};

fn function_pod(i: usize, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("fn-{i}")},
        "spec": {"runtimeClassName": "wasmtime",
                 "containers": [{"name": "fn", "image": image, "ports": [{"containerPort": 8080}]}]}
    }))?)
}

pub async fn run(quick: bool, counts: Vec<usize>, wasm: Option<PathBuf>) -> anyhow::Result<()> {
    let counts = if quick { vec![20] } else { counts };
    let (wasm_path, _) = example(wasm, "wasm32-wasip2", "http-hello")?;
    println!("density: idle wasi:http function pods on one node in process (API server, scheduler, agent)");
    println!("{:>8} {:>14} {:>14} {:>16} {:>12}", "pods", "RSS before", "RSS after", "per pod", "to Running");
    for count in counts {
        let dir = tempfile::tempdir()?;
        let registry = start_registry(dir.path()).await?;
        let (client, agent) = in_process_node(dir.path(), 1000).await?;
        let image = format!("{}/http-hello:v1", registry.host);
        skiff_agent::images::push(&wasm_path, &image, &oci_client::secrets::RegistryAuth::Anonymous, &[]).await?;
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        // One pod first, so the pull and the compile are not counted per pod.
        api.create(&PostParams::default(), &function_pod(0, &image)?).await?;
        wait_running(&api, 1).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_of("self");
        let started = Instant::now();
        futures::stream::iter(1..count)
            .map(|i| {
                let api = api.clone();
                let image = image.clone();
                async move { api.create(&PostParams::default(), &function_pod(i, &image)?).await.map_err(anyhow::Error::from) }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        wait_running(&api, count).await?;
        let elapsed = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_of("self");
        // A sample answers on its own IP.
        let pods = api.list(&Default::default()).await?.items;
        for p in pods.iter().step_by((count / 10).max(1)) {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
            let mut stream = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(b"GET / HTTP/1.1\r\nhost: fn\r\nconnection: close\r\n\r\n").await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "pod {ip} answered {answer:?}");
        }
        let per_pod = after.saturating_sub(before) as f64 / (count - 1).max(1) as f64;
        println!("{:>8} {:>11.1} MiB {:>11.1} MiB {:>12.1} KiB {:>10.1} s", count, before as f64 / 1048576.0, after as f64 / 1048576.0, per_pod / 1024.0, elapsed.as_secs_f64());
        agent.abort();
        drop(registry);
    }
    Ok(())
}

async fn wait_running(api: &Api<Pod>, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let running = api.list(&Default::default()).await?.items.iter().filter(|p| skiff_client::pods::is_ready(p)).count();
        if running >= count {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {running} of {count} function pods ready after 600 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
