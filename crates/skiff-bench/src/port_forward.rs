//! The `port-forward` bench: bytes through `kubectl port-forward` (kubectl → API server →
//! the node's agent over SPDY → the pod's listener) against the same bytes sent straight to
//! the pod's address, in the same run. The pod is the http-hello example from the cluster's
//! embedded registry; each round sends one large body to its `/echo` and reads it back, so
//! the bytes cross both ways.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::registry::{free_port, skiff_binary, spawn_skiff, wait_for_kubeconfig, wait_for_node};
use crate::report::Row;

/// POSTs `size` bytes to `/echo` at `addr` over one connection and reads them back: the
/// time from the first byte written to the answer's end.
async fn echo(addr: SocketAddr, size: usize) -> anyhow::Result<Duration> {
    let conn = tokio::net::TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    let started = Instant::now();
    let head = format!("POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
    let (mut read, mut write) = conn.into_split();
    let sending = async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 256 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            write.write_all(&chunk[..n]).await?;
            left -= n;
        }
        anyhow::Ok(write)
    };
    let receiving = async {
        let mut answer = Vec::with_capacity(size + 1024);
        read.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let (_write, answer) = tokio::try_join!(sending, receiving)?;
    anyhow::ensure!(answer.starts_with(b"HTTP/1.1 200"), "the pod answered {:?}", String::from_utf8_lossy(&answer[..answer.len().min(64)]));
    anyhow::ensure!(answer.len() > size, "the pod echoed {} bytes of {size}", answer.len());
    Ok(started.elapsed())
}

/// Starts `kubectl port-forward pod/NAME :8080`; returns it (killed when dropped) and the
/// local port it took.
async fn start_port_forward(kubeconfig: &Path, pod: &str) -> anyhow::Result<(tokio::process::Child, u16)> {
    let mut child = tokio::process::Command::new("kubectl")
        .args(["port-forward", &format!("pod/{pod}"), ":8080"])
        .env("KUBECONFIG", kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                return Ok(rest.split_whitespace().next().unwrap_or_default().parse::<u16>()?);
            }
        }
        anyhow::bail!("kubectl port-forward ended before forwarding")
    })
    .await??;
    // kubectl keeps writing a line per connection: keep reading so it never blocks.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, port))
}

pub async fn run(quick: bool, mib: usize, rounds: usize, binary: Option<PathBuf>) -> anyhow::Result<Vec<Row>> {
    let (mib, rounds) = if quick { (4, 2) } else { (mib, rounds.max(1)) };
    let binary = skiff_binary(binary)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("up");
    let listen = format!("127.0.0.1:{}", free_port()?);
    let args = ["up", "--listen", &listen, "--agent-port", "0", "--node-name", "pf", "--node-ip", "127.0.0.1", "--cluster-cidr", "10.248.0.0/16",
        "--service-cidr", "10.249.0.0/16", "--ingress-http-port", "0", "--ingress-https-port", "0", "--data-dir"];
    let _cluster = spawn_skiff(&binary, &args, &data)?;
    let kubeconfig = wait_for_kubeconfig(&data).await?;
    let client = wait_for_node(&kubeconfig, "pf").await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pf"}, "spec": {"runtimeClassName": "wasmtime",
        "containers": [{"name": "fn", "image": "registry.skiff.internal/http-hello:v1", "ports": [{"containerPort": 8080}]}]}});
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?).await?;
    let ip = loop {
        let p = pods.get("pf").await?;
        if let Some(s) = p.status.filter(|s| s.phase.as_deref() == Some("Running")).and_then(|s| s.pod_ip) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let direct: SocketAddr = format!("{ip}:8080").parse()?;
    crate::serve::wait_answering(direct, "the pod").await?;
    let (forward, local) = start_port_forward(&kubeconfig, "pf").await?;
    let forwarded: SocketAddr = ([127, 0, 0, 1], local).into();
    let size = mib * 1024 * 1024;
    // Warm both paths, then alternate them round by round.
    echo(direct, 1024).await?;
    echo(forwarded, 1024).await?;
    let (mut straight, mut through) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        straight.push(echo(direct, size).await?);
        through.push(echo(forwarded, size).await?);
    }
    drop(forward);
    straight.sort();
    through.sort();
    // Each round moves the body both ways.
    let rate = |d: &Duration| 2.0 * size as f64 / d.as_secs_f64() / (1024.0 * 1024.0);
    let (s, t) = (rate(&straight[straight.len() / 2]), rate(&through[through.len() / 2]));
    println!("port-forward bench: {rounds} echoes of {mib} MiB (up and back), median ({})", crate::report::machine());
    println!("| path | MiB/s |\n|---|---|\n| straight to the pod's address | {s:.0} |\n| kubectl port-forward (API server, agent, SPDY) | {t:.0} |");
    Ok(vec![Row::new(format!("kubectl port-forward, {mib} MiB echoed (median MiB/s, both ways)"), format!("{t:.0} MiB/s"),
        format!("straight to the pod, same run: {s:.0} MiB/s"), Some(t / s))])
}
