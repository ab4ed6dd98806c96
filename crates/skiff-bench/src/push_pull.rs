//! The `registry` bench: image push and pull throughput of the registry `skiff server`
//! embeds, against the CNCF distribution registry (Debian's `docker-registry`) in the same
//! run. Both serve HTTPS on loopback with the same certificate (the cluster's), and one
//! client drives both: oci-client, as nodes and `skiff push` use it. Each image is one
//! layer of random bytes; images are pushed and then pulled one at a time, and then a
//! burst of them at once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::registry::{free_port, skiff_binary, spawn_skiff, start_registry_with, wait_for_kubeconfig};
use crate::report::Row;

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// `len` bytes no two images share (xorshift from `seed`), so nothing is deduplicated.
fn random_layer(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Target {
    name: &'static str,
    host: String,
    auth: RegistryAuth,
    client: Client,
}

/// Pushes `count` images of `layer_bytes` each to `target`, `at_once` at a time; returns
/// the time taken.
async fn push(target: &Target, phase: &str, count: usize, layer_bytes: usize, at_once: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let pushes = futures::stream::iter(0..count).map(|i| async move {
        let reference: Reference = format!("{}/bench/{phase}-{i}:v1", target.host).parse()?;
        let layer = ImageLayer::new(random_layer((phase.len() * 1000 + i) as u64, layer_bytes), LAYER_TYPE.into(), None);
        let config = Config::new(b"{}".to_vec(), "application/vnd.oci.image.config.v1+json".into(), None);
        target.client.push(&reference, &[layer], config, &target.auth, None).await?;
        anyhow::Ok(())
    });
    let results: Vec<_> = pushes.buffer_unordered(at_once).collect().await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    Ok(started.elapsed())
}

/// Pulls the images `push` pushed, `at_once` at a time, checking each layer's size.
async fn pull(target: &Target, phase: &str, count: usize, layer_bytes: usize, at_once: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let pulls = futures::stream::iter(0..count).map(|i| async move {
        let reference: Reference = format!("{}/bench/{phase}-{i}:v1", target.host).parse()?;
        let image = target.client.pull(&reference, &target.auth, vec![LAYER_TYPE]).await?;
        anyhow::ensure!(image.layers.len() == 1 && image.layers[0].data.len() == layer_bytes, "pulled a layer of the wrong size from {}", target.name);
        anyhow::Ok(())
    });
    let results: Vec<_> = pulls.buffer_unordered(at_once).collect().await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    Ok(started.elapsed())
}

pub async fn run(quick: bool, images: usize, layer_mib: usize, at_once: usize, binary: Option<PathBuf>) -> anyhow::Result<Vec<Row>> {
    let (images, layer_bytes, at_once) = if quick { (4, 256 * 1024, 2) } else { (images.max(1), layer_mib.max(1) << 20, at_once.max(1)) };
    let binary = skiff_binary(binary)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("cluster");
    let port = free_port()?;
    let _server = spawn_skiff(&binary, &["server", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"], &data)?;
    // The server binds its port before it writes the kubeconfig: from then on requests queue.
    wait_for_kubeconfig(&data).await?;
    let token = std::fs::read_to_string(data.join("token"))?.trim().to_string();
    let ca = std::fs::read(data.join("ca.crt"))?;
    let docker = start_registry_with(dir.path(), Some((&data.join("server.crt"), &data.join("server.key")))).await?;
    let client = || {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: vec![Certificate { encoding: CertificateEncoding::Pem, data: ca.clone() }],
            ..Default::default()
        })
    };
    let skiff_target = Target { name: "skiff", host: format!("127.0.0.1:{port}"), auth: RegistryAuth::Bearer(token), client: client() };
    let docker_target = Target { name: "docker-registry", host: docker.host.clone(), auth: RegistryAuth::Anonymous, client: client() };
    let mib = (images * layer_bytes) as f64 / (1 << 20) as f64;
    println!("registry: {images} images of one {:.2} MiB layer, pushed then pulled, over HTTPS on loopback", layer_bytes as f64 / (1 << 20) as f64);
    println!("{:<28} {:>16} {:>16} {:>7}", "what", "skiff MiB/s", "docker-registry", "ratio");
    let mut rows = Vec::new();
    for (label, n) in [("one at a time", 1), ("at once", at_once)] {
        let phase = format!("c{n}");
        let label = if n == 1 { label.to_string() } else { format!("{n} {label}") };
        // docker-registry first, then skiff, each on a fresh set of images.
        let docker_push = push(&docker_target, &phase, images, layer_bytes, n).await?;
        let skiff_push = push(&skiff_target, &phase, images, layer_bytes, n).await?;
        let docker_pull = pull(&docker_target, &phase, images, layer_bytes, n).await?;
        let skiff_pull = pull(&skiff_target, &phase, images, layer_bytes, n).await?;
        for (what, ours, theirs) in [("push", skiff_push, docker_push), ("pull", skiff_pull, docker_pull)] {
            let (ours, theirs) = (mib / ours.as_secs_f64(), mib / theirs.as_secs_f64());
            println!("{:<28} {:>16.1} {:>16.1} {:>6.2}×", format!("{what}, {label}"), ours, theirs, ours / theirs);
            rows.push(Row::new(format!("image {what}, {label} ({images} × {:.0} KiB)", layer_bytes as f64 / 1024.0), format!("{ours:.1} MiB/s"), format!("docker-registry {theirs:.1} MiB/s"), Some(ours / theirs)));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn layers_differ_by_seed_and_have_their_length() {
        let (a, b) = (super::random_layer(1, 1001), super::random_layer(2, 1001));
        assert_eq!(a.len(), 1001);
        assert_ne!(a, b);
        assert_eq!(a, super::random_layer(1, 1001));
    }
}
