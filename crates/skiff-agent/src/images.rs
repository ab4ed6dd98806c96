//! Images: Wasm OCI artifacts (the CNCF layout: config `application/vnd.wasm.config.v0+json`,
//! one `application/wasm` layer) pulled with oci-client into a content-addressed store,
//! with Kubernetes' pull policies and `imagePullSecrets`; and pushing a `.wasm` file as
//! such an artifact (`skiff push`).
//!
//! Registries on loopback are spoken to over plain HTTP, others over HTTPS unless the
//! agent is told they are insecure.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

/// The CNCF Wasm artifact's config media type.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF Wasm artifact's layer media type.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The layer media type of the older wasm-to-oci layout (Krustlet), also accepted.
const LEGACY_WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The container's policy, or Kubernetes' default: `Always` for `:latest` or no tag,
    /// else `IfNotPresent`.
    pub fn of(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let last = image.rsplit('/').next().unwrap_or(image);
                let tagged = last.contains(':') || image.contains('@');
                if !tagged || last.ends_with(":latest") { PullPolicy::Always } else { PullPolicy::IfNotPresent }
            }
        }
    }
}

/// Why an image is not available; `reason` is the container's waiting reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PullError {
    pub reason: &'static str,
    pub message: String,
}

impl PullError {
    fn pull(message: String) -> Self {
        PullError { reason: "ErrImagePull", message }
    }
}

/// A Wasm image on this node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LocalImage {
    pub reference: String,
    /// The manifest's digest: the container status's `imageID` is `reference@digest`.
    pub manifest_digest: String,
    /// Digest of the Wasm layer: the key of compiled code.
    pub wasm_digest: String,
}

/// The node's image store: `blobs/sha256/<hex>` and one record per reference pulled.
pub struct ImageStore {
    dir: PathBuf,
    insecure: Vec<String>,
    /// One pull at a time per reference; concurrent pods wait for it.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageStore {
    pub fn open(dir: PathBuf, insecure_registries: Vec<String>) -> std::io::Result<ImageStore> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::create_dir_all(dir.join("refs"))?;
        Ok(ImageStore { dir, insecure: insecure_registries, pulling: Mutex::new(HashMap::new()) })
    }

    /// Path of the Wasm for a layer digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        self.dir.join("refs").join(hex(&Sha256::digest(reference.as_bytes())))
    }

    /// The image as last pulled, if its Wasm is still here.
    pub fn present(&self, reference: &str) -> Option<LocalImage> {
        let record: LocalImage = serde_json::from_slice(&std::fs::read(self.record_path(reference)).ok()?).ok()?;
        self.blob_path(&record.wasm_digest).exists().then_some(record)
    }

    /// Makes the image present per `policy`, pulling it with `auth` if needed.
    pub async fn ensure(&self, image: &str, policy: PullPolicy, auth: &RegistryAuth) -> Result<LocalImage, PullError> {
        let reference: Reference = image.parse().map_err(|e| PullError { reason: "InvalidImageName", message: format!("Failed to apply default image tag {image:?}: {e}") })?;
        let key = reference.whole();
        if policy != PullPolicy::Always && let Some(local) = self.present(&key) {
            return Ok(local);
        }
        if policy == PullPolicy::Never {
            return Err(PullError { reason: "ErrImageNeverPull", message: format!("Container image {image:?} is not present with pull policy of Never") });
        }
        let lock = self.pulling.lock().unwrap().entry(key.clone()).or_default().clone();
        let _guard = lock.lock().await;
        self.pull(&reference, auth).await
    }

    async fn pull(&self, reference: &Reference, auth: &RegistryAuth) -> Result<LocalImage, PullError> {
        let image = reference.whole();
        let failed = |e: &dyn std::fmt::Display| PullError::pull(format!("Failed to pull image {image:?}: {e}"));
        let client = client_for(reference.resolve_registry(), &self.insecure);
        let (manifest, manifest_digest) = client.pull_image_manifest(reference, auth).await.map_err(|e| failed(&e))?;
        let layer = wasm_layer(&manifest).map_err(|why| failed(&why))?;
        let path = self.blob_path(&layer.digest);
        if !path.exists() {
            let tmp = path.with_extension("partial");
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| failed(&e))?;
            // oci-client checks the bytes against the layer's digest as they arrive.
            client.pull_blob(reference, &layer, &mut file).await.map_err(|e| failed(&e))?;
            tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| failed(&e))?;
            tokio::fs::rename(&tmp, &path).await.map_err(|e| failed(&e))?;
        }
        let local = LocalImage { reference: image.clone(), manifest_digest, wasm_digest: layer.digest.clone() };
        let record = serde_json::to_vec(&local).expect("serializable");
        let record_path = self.record_path(&image);
        if let Err(e) = std::fs::write(record_path.with_extension("tmp"), record).and_then(|_| std::fs::rename(record_path.with_extension("tmp"), &record_path)) {
            tracing::warn!(%image, error = %e, "could not record pulled image");
        }
        Ok(local)
    }

}

/// The artifact's Wasm layer, or why it is not a Wasm artifact.
fn wasm_layer(manifest: &oci_client::manifest::OciImageManifest) -> Result<oci_client::manifest::OciDescriptor, String> {
    let wasm: Vec<_> = manifest.layers.iter().filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE || l.media_type == LEGACY_WASM_LAYER_MEDIA_TYPE).collect();
    match wasm.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "not a Wasm artifact (config {}, layers {}); this node runs Wasm images only",
            manifest.config.media_type,
            manifest.layers.iter().map(|l| l.media_type.as_str()).collect::<Vec<_>>().join(", ")
        )),
        _ => Err(format!("the artifact has {} Wasm layers; a Wasm image has exactly one", wasm.len())),
    }
}

/// Whether a registry (`host[:port]`) is on this machine's loopback.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn client_for(registry: &str, insecure: &[String]) -> Client {
    let plain = is_loopback(registry) || insecure.iter().any(|r| r == registry);
    let protocol = if plain { ClientProtocol::Http } else { ClientProtocol::Https };
    Client::new(ClientConfig { protocol, ..Default::default() })
}

/// Registry credentials for `registry` from a `kubernetes.io/dockerconfigjson` Secret's
/// `.dockerconfigjson` (or a legacy `.dockercfg`).
pub fn auth_from_docker_config(config: &[u8], registry: &str) -> Option<RegistryAuth> {
    let json: serde_json::Value = serde_json::from_slice(config).ok()?;
    let auths = json.get("auths").unwrap_or(&json).as_object()?;
    let host_of = |key: &str| key.trim_start_matches("https://").trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
    let (_, entry) = auths.iter().find(|(k, _)| host_of(k) == registry)?;
    let field = |f: &str| entry.get(f).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    if let (Some(u), Some(p)) = (field("username"), field("password")) {
        return Some(RegistryAuth::Basic(u.into(), p.into()));
    }
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(field("auth")?).ok()?;
    let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(RegistryAuth::Basic(u.into(), p.into()))
}

/// Pushes a `.wasm` module or component to `reference` as a CNCF Wasm artifact; returns
/// the manifest's URL.
pub async fn push(file: &Path, reference: &str, auth: &RegistryAuth, insecure: &[String]) -> anyhow::Result<String> {
    use anyhow::Context;
    let reference: Reference = reference.parse().with_context(|| format!("{reference:?} is not an image reference"))?;
    let wasm = tokio::fs::read(file).await.with_context(|| format!("reading {}", file.display()))?;
    anyhow::ensure!(wasm.starts_with(b"\0asm"), "{} is not a WebAssembly binary", file.display());
    let component = crate::runtime::wasm::is_component(&wasm);
    let layer_digest = format!("sha256:{}", hex(&Sha256::digest(&wasm)));
    // The config the CNCF Wasm OCI artifact layout describes.
    let config = serde_json::json!({
        "created": jiff::Timestamp::now().to_string(),
        "architecture": "wasm",
        "os": if component { "wasip2" } else { "wasip1" },
        "layerDigests": [layer_digest],
    });
    let title = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "module.wasm".into());
    let layer = ImageLayer::new(wasm, WASM_LAYER_MEDIA_TYPE.into(), Some(BTreeMap::from([("org.opencontainers.image.title".to_string(), title)])));
    let config = Config::new(serde_json::to_vec(&config)?, WASM_CONFIG_MEDIA_TYPE.into(), None);
    let client = client_for(reference.resolve_registry(), insecure);
    let pushed = client.push(&reference, &[layer], config, auth, None).await.with_context(|| format!("pushing to {reference}"))?;
    Ok(pushed.manifest_url)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pull_policy_follows_the_tag() {
        assert_eq!(PullPolicy::of(None, "127.0.0.1:5000/app"), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, "127.0.0.1:5000/app:latest"), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, "127.0.0.1:5000/app:v1"), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::of(Some("Never"), "app:v1"), PullPolicy::Never);
    }

    #[test]
    fn loopback_registries_are_recognised() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.8.0.2"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn docker_config_credentials() {
        let json = br#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYXNz"},"other.io":{"username":"a","password":"b"}}}"#;
        assert!(matches!(auth_from_docker_config(json, "reg.example:5000"), Some(RegistryAuth::Basic(u, p)) if u == "user" && p == "pass"));
        assert!(matches!(auth_from_docker_config(json, "other.io"), Some(RegistryAuth::Basic(u, p)) if u == "a" && p == "b"));
        assert!(auth_from_docker_config(json, "nowhere.io").is_none());
        assert!(auth_from_docker_config(b"not json", "other.io").is_none());
    }

    #[tokio::test]
    async fn never_pull_of_an_absent_image_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().to_path_buf(), vec![]).unwrap();
        let err = store.ensure("127.0.0.1:1/app:v1", PullPolicy::Never, &RegistryAuth::Anonymous).await.unwrap_err();
        assert_eq!(err.reason, "ErrImageNeverPull");
    }
}
