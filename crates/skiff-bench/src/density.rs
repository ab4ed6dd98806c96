//! The `density` bench: how little an idle HTTP function pod costs. A `skiff server` and a
//! `skiff agent` run as separate processes; the agent runs N pods of the http-hello
//! wasi:http component, each listening on its own pod IP. The bench reports the agent's
//! RSS before and after, per pod (and the control plane's growth per pod beside it), and
//! checks that a sample of the pods answer. Goal (issue 5): 10,000 idle pods on one
//! 2-core node, ≤ 100 KB of agent memory each.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::registry::{example, free_port, rss_of, skiff_binary, spawn_skiff, start_registry, wait_for_kubeconfig, wait_for_node};

fn function_pod(i: usize, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("fn-{i}")},
        "spec": {"runtimeClassName": "wasmtime",
                 "containers": [{"name": "fn", "image": image, "ports": [{"containerPort": 8080}]}]}
    }))?)
}

pub async fn run(quick: bool, counts: Vec<usize>, wasm: Option<PathBuf>, binary: Option<PathBuf>) -> anyhow::Result<Vec<crate::report::Row>> {
    let counts = if quick { vec![20] } else { counts };
    let binary = skiff_binary(binary)?;
    let (wasm_path, _) = example(wasm, "wasm32-wasip2", "http-hello")?;
    println!("density: idle wasi:http function pods; `skiff server` and `skiff agent` ({}) as separate processes", binary.display());
    println!("{:>8} {:>14} {:>14} {:>16} {:>20} {:>12}", "pods", "agent before", "agent after", "agent per pod", "control plane/pod", "to Running");
    let mut rows = Vec::new();
    for count in counts {
        let dir = tempfile::tempdir()?;
        let registry = start_registry(dir.path()).await?;
        let port = free_port()?;
        // A node's share of the pod range must hold every pod: /16 is 65,534 addresses.
        let server = spawn_skiff(&binary, &["server", "--listen", &format!("127.0.0.1:{port}"), "--cluster-cidr", "10.240.0.0/12", "--node-cidr-mask-size", "16", "--data-dir"], &dir.path().join("cp"))?;
        let kubeconfig = wait_for_kubeconfig(&dir.path().join("cp")).await?;
        let max_pods = (count + 10).to_string();
        let agent = spawn_skiff(&binary, &["agent", "--kubeconfig", &kubeconfig.to_string_lossy(), "--node-name", "density", "--node-ip", "127.0.0.1",
            "--agent-port", "0", "--max-pods", &max_pods, "--max-instances", "100", "--data-dir"], &dir.path().join("agent"))?;
        let client = wait_for_node(&kubeconfig, "density").await?;
        let image = format!("{}/http-hello:v1", registry.host);
        skiff_agent::images::push(&wasm_path, &image, &oci_client::secrets::RegistryAuth::Anonymous, &Default::default()).await?;
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        // One pod first, so the pull and the compile are not counted per pod.
        api.create(&PostParams::default(), &function_pod(0, &image)?).await?;
        wait_running(&api, 1).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (agent_pid, server_pid) = (agent.0.id().to_string(), server.0.id().to_string());
        let (agent_before, server_before) = (rss_of(&agent_pid), rss_of(&server_pid));
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
        let pods = wait_running(&api, count).await?;
        let elapsed = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (agent_after, server_after) = (rss_of(&agent_pid), rss_of(&server_pid));
        anyhow::ensure!(agent_after > 0 && server_after > 0, "a process of the node ended");
        // A sample answers on its own IP.
        for p in pods.iter().step_by((count / 10).max(1)) {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
            let mut stream = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(b"GET / HTTP/1.1\r\nhost: fn\r\nconnection: close\r\n\r\n").await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "pod {ip} answered {answer:?}");
        }
        let per_pod = |before: u64, after: u64| after.saturating_sub(before) as f64 / (count - 1).max(1) as f64 / 1024.0;
        let mib = |b: u64| b as f64 / 1048576.0;
        println!("{:>8} {:>10.1} MiB {:>10.1} MiB {:>12.1} KiB {:>16.1} KiB {:>10.1} s", count, mib(agent_before), mib(agent_after),
            per_pod(agent_before, agent_after), per_pod(server_before, server_after), elapsed.as_secs_f64());
        drop(agent);
        drop(server);
        drop(registry);
        let kib = per_pod(agent_before, agent_after);
        rows.push(crate::report::Row::new(format!("agent RSS per idle function pod, {} pods", crate::report::thousands(count as f64)),
            format!("{kib:.1} KiB (control plane {:.1} KiB)", per_pod(server_before, server_after)), "goal ≤ 100 KB at 10,000 pods", Some(100_000.0 / 1024.0 / kib)));
    }
    Ok(rows)
}

/// Waits until `count` pods are ready; returns them.
async fn wait_running(api: &Api<Pod>, count: usize) -> anyhow::Result<Vec<Pod>> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let pods = api.list(&Default::default()).await?.items;
        let running = pods.iter().filter(|p| skiff_client::pods::is_ready(p)).count();
        if running >= count {
            return Ok(pods);
        }
        anyhow::ensure!(Instant::now() < deadline, "only {running} of {count} function pods ready after 900 s");
        // Listing thousands of pods is not free: look once a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
