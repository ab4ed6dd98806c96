//! The cluster's embedded registry, as `skiff server` and `skiff up` run it: its files in
//! the data directory, the example images it starts with, and its garbage collection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use skiff_agent::images::{MANIFEST_MEDIA_TYPE, WasmArtifact};
use skiff_agent::registries::{CLUSTER_REGISTRY, Registries};
use skiff_registry::{PullTokenCheck, Registry};

/// The examples' images, carried in the binary so the README's tour runs on a fresh
/// cluster with nothing built or pushed first. Built from `examples/` by
/// `examples/artifacts/build.sh`; tagged `v1` as `registry.skiff.internal/NAME:v1`.
const EXAMPLES: [(&str, &[u8]); 2] = [
    ("http-hello", include_bytes!("../../../examples/artifacts/http-hello.wasm")),
    ("wasi-hello", include_bytes!("../../../examples/artifacts/wasi-hello.wasm")),
];

/// How often unreferenced blobs are collected, and how old they must be.
const GC_PERIOD: Duration = Duration::from_secs(3600);
const GC_GRACE: Duration = Duration::from_secs(3600);

/// Opens the registry under `data_dir`, adds the example images it lacks, and starts its
/// garbage collection. It takes the cluster's `token`, and for pulls, the tokens
/// `pull_tokens` finds valid.
pub fn start(data_dir: &Path, token: &str, pull_tokens: Option<PullTokenCheck>) -> anyhow::Result<Arc<Registry>> {
    let dir = data_dir.join("registry");
    let registry = Registry::open(dir.clone(), token.to_string(), pull_tokens).with_context(|| format!("opening the registry in {}", dir.display()))?;
    for (name, wasm) in EXAMPLES {
        // A user's own push of the same tag is left alone.
        if registry.storage().resolve(name, "v1").is_some() {
            continue;
        }
        let artifact = WasmArtifact::new(wasm.to_vec(), &format!("{name}.wasm")).map_err(anyhow::Error::msg)?;
        registry
            .put_image(name, "v1", &[&artifact.layer.data, &artifact.config.data], &artifact.manifest_bytes(), MANIFEST_MEDIA_TYPE)
            .with_context(|| format!("adding the example image {CLUSTER_REGISTRY}/{name}:v1"))?;
    }
    tokio::spawn(registry.clone().collect_garbage_every(GC_PERIOD, GC_GRACE));
    Ok(registry)
}

/// Pull tokens are the ServiceAccount tokens `api` made for the registry: audience
/// [`CLUSTER_REGISTRY`], bound to a pod that still exists.
pub fn pod_pull_tokens(api: Arc<skiff_apiserver::ApiServer>) -> PullTokenCheck {
    Arc::new(move |token: String| {
        let api = api.clone();
        Box::pin(async move {
            let user = skiff_apiserver::authz::tokens::authenticate_for(&api, &token, &[CLUSTER_REGISTRY]).await;
            user.is_some_and(|u| u.extra.contains_key(skiff_apiserver::authz::tokens::POD_UID_EXTRA))
        })
    })
}

/// `base` with the cluster's registry reached through the API server `config` points at,
/// with its CA and token (without one, as a joined node has, pods pull with their own).
pub fn with_cluster(base: Registries, config: &kube::Config) -> anyhow::Result<Registries> {
    let url = &config.cluster_url;
    let host = url.host().with_context(|| format!("the API server URL {url} has no host"))?;
    let port = url.port_u16().unwrap_or(if url.scheme_str() == Some("http") { 80 } else { 443 });
    let token = config.auth_info.token.as_ref().map(|t| secrecy::ExposeSecret::expose_secret(t).to_string());
    let ca = if config.accept_invalid_certs { vec![] } else { config.root_cert.clone().unwrap_or_default() };
    Ok(base.with_cluster(&format!("{host}:{port}"), ca, token.as_deref()))
}

/// Whether an image reference names no registry (`hello:v1`, `team/hello`), so that
/// `skiff push` sends it to the cluster's registry.
pub fn names_no_registry(reference: &str) -> bool {
    match reference.split_once('/') {
        None => true,
        Some((first, _)) => !(first.contains('.') || first.contains(':') || first == "localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_go_to_the_cluster_registry() {
        for bare in ["hello", "hello:v1", "team/hello:v1"] {
            assert!(names_no_registry(bare), "{bare}");
        }
        for named in ["127.0.0.1:5000/hello:v1", "localhost/x", "ghcr.io/a/b", "registry.skiff.internal/hello:v1"] {
            assert!(!names_no_registry(named), "{named}");
        }
    }

    #[tokio::test]
    async fn examples_are_seeded_once() {
        let dir = tempfile::tempdir().unwrap();
        let registry = start(dir.path(), "t", None).unwrap();
        let (digest, media_type) = registry.storage().resolve("http-hello", "v1").unwrap();
        assert_eq!(media_type, MANIFEST_MEDIA_TYPE);
        assert!(registry.storage().resolve("wasi-hello", "v1").is_some());
        // Same bytes, same artifact: a restart finds them and changes nothing.
        assert_eq!(start(dir.path(), "t", None).unwrap().storage().resolve("http-hello", "v1").unwrap().0, digest);
    }
}
