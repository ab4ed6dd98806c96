//! A real etcd (Debian's `etcd-server`) on 127.0.0.1, started by a bench as the reference
//! it measures Skiff's store against: the floor under kube-apiserver, which adds its
//! whole request path on top of etcd's puts.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::registry::{Child, free_port};

pub struct Etcd {
    _process: Child,
    pub client: etcd_client::Client,
}

/// Starts etcd with its data in `dir` and connects to it.
pub async fn start(dir: &Path) -> anyhow::Result<Etcd> {
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let process = std::process::Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}"), "--log-level", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting etcd: {e} (install Debian's etcd-server)"))?;
    let process = Child(process);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut client) = etcd_client::Client::connect([client_url.as_str()], None).await
            && client.status().await.is_ok()
        {
            return Ok(Etcd { _process: process, client });
        }
        anyhow::ensure!(Instant::now() < deadline, "etcd did not answer on {client_url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
