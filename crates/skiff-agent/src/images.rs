//! Images, pulled with oci-client into one content-addressed store (every blob checked
//! against its digest as it arrives), with Kubernetes' pull policies and
//! `imagePullSecrets`: Wasm OCI artifacts (the CNCF layout: config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer) and container
//! images (an index resolved to this node's platform; tar, gzip and zstd layers, fetched
//! at once). Also pushing a `.wasm` file as such an artifact (`skiff push`).
//!
//! Where each registry's images come from (mirrors, the cluster's own registry, plain HTTP
//! or HTTPS) is [`crate::registries`]'s business.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use sha2::{Digest, Sha256};

/// How long garbage collection spares a downloaded blob no image record names yet.
const PULL_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

use crate::registries::{Registries, Source};

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
    pub fn pull(message: String) -> Self {
        PullError { reason: "ErrImagePull", message }
    }
}

/// An image on this node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LocalImage {
    pub reference: String,
    /// The manifest's digest: the container status's `imageID` is `reference@digest`.
    pub manifest_digest: String,
    pub kind: ImageKind,
}

/// What an image holds, which decides the runtime that runs it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ImageKind {
    /// A Wasm artifact; its layer's digest is the key of compiled code.
    Wasm { wasm_digest: String },
    /// A container image: its config blob and its layers, bottom first.
    Container { config_digest: String, layers: Vec<Layer> },
}

/// A container image layer blob.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
}

impl LocalImage {
    /// The blobs the image needs on this node.
    fn blobs(&self) -> Vec<&str> {
        match &self.kind {
            ImageKind::Wasm { wasm_digest } => vec![wasm_digest],
            ImageKind::Container { config_digest, layers } => std::iter::once(config_digest.as_str()).chain(layers.iter().map(|l| l.digest.as_str())).collect(),
        }
    }
}

/// What is done with a container image's layers as their bytes arrive (the OCI runtime
/// unpacks them), so that work overlaps the download.
pub trait LayerSink: Send + Sync {
    /// A layer's blob has begun to arrive; `blob` reads it as it grows.
    fn layer_arriving(&self, digest: &str, media_type: &str, blob: GrowingBlob);
}

/// A blob being downloaded, read as it grows: a read at the end waits for more bytes
/// until the download is over, and then ends, or fails if the download did (a digest
/// that did not match, a broken connection).
pub struct GrowingBlob {
    file: std::fs::File,
    download: Arc<Download>,
}

#[derive(Default)]
struct Download {
    /// `None` while the blob arrives; then how the download ended.
    outcome: Mutex<Option<Result<(), String>>>,
    ended: std::sync::Condvar,
}

impl Download {
    fn end(&self, outcome: Result<(), String>) {
        *self.outcome.lock().unwrap() = Some(outcome);
        self.ended.notify_all();
    }
}

impl Read for GrowingBlob {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let outcome = self.download.outcome.lock().unwrap();
            match &*outcome {
                // Whole: what was written before the end is read first.
                Some(Ok(())) => return self.file.read(buf),
                Some(Err(e)) => return Err(std::io::Error::other(e.clone())),
                // The downloader writes in 1 MiB pieces and says only when it ends.
                None => drop(self.download.ended.wait_timeout(outcome, std::time::Duration::from_millis(2)).unwrap()),
            }
        }
    }
}

/// The node's image store: `blobs/sha256/<hex>` and one record per reference pulled.
pub struct ImageStore {
    dir: PathBuf,
    registries: Registries,
    /// Where container image layers go as they arrive.
    layer_sink: std::sync::OnceLock<Arc<dyn LayerSink>>,
    /// One pull at a time per reference; concurrent pods wait for it.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageStore {
    pub fn open(dir: PathBuf, registries: Registries) -> std::io::Result<ImageStore> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::create_dir_all(dir.join("refs"))?;
        Ok(ImageStore { dir, registries, layer_sink: Default::default(), pulling: Mutex::new(HashMap::new()) })
    }

    /// Hands container image layers to `sink` as they arrive.
    pub fn set_layer_sink(&self, sink: Arc<dyn LayerSink>) {
        let _ = self.layer_sink.set(sink);
    }

    /// Path of a blob (a Wasm layer, a container image's config or layer) by digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        self.dir.join("refs").join(hex(&Sha256::digest(reference.as_bytes())))
    }

    /// Where the node pulls from.
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// The image as last pulled, if its blobs are still here.
    pub fn present(&self, reference: &str) -> Option<LocalImage> {
        let record: LocalImage = serde_json::from_slice(&std::fs::read(self.record_path(reference)).ok()?).ok()?;
        record.blobs().iter().all(|d| self.blob_path(d).exists()).then_some(record)
    }

    /// Makes the image present per `policy`, pulling it with the credential `auth` gives
    /// if needed (asked for only then: it may cost a token request).
    pub async fn ensure(&self, image: &str, policy: PullPolicy, auth: impl AsyncFnOnce() -> Result<RegistryAuth, PullError>) -> Result<LocalImage, PullError> {
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
        self.pull(&reference, &auth().await?).await
    }

    /// Pulls from the first of the image's sources (mirrors, then its registry) that has
    /// it. The pod's pull secrets go to the image's own registry only, never to a mirror.
    async fn pull(&self, reference: &Reference, auth: &RegistryAuth) -> Result<LocalImage, PullError> {
        let image = reference.whole();
        let mut failures = Vec::new();
        for source in self.registries.pull_sources(reference) {
            // The cluster's registry is reached at the API server's address, under its own name.
            let own = source.reference.registry() == reference.resolve_registry() || reference.registry() == crate::registries::CLUSTER_REGISTRY;
            let source_auth = source.auth.clone().unwrap_or_else(|| if own { auth.clone() } else { RegistryAuth::Anonymous });
            match self.pull_from(&source, &source_auth).await {
                Ok((manifest_digest, kind)) => return Ok(self.record(LocalImage { reference: image, manifest_digest, kind })),
                Err(e) if reference.registry() == crate::registries::CLUSTER_REGISTRY => failures.push(format!("the cluster's registry at {}: {e}", source.reference.registry())),
                Err(e) if own => failures.push(e),
                Err(e) => failures.push(format!("mirror {}: {e}", source.reference.registry())),
            }
        }
        Err(PullError::pull(format!("Failed to pull image {image:?}: {}", failures.join("; "))))
    }

    /// Fetches the manifest (this platform's, from an index) and the blobs it names;
    /// returns the manifest's digest and what the image is.
    async fn pull_from(&self, source: &Source, auth: &RegistryAuth) -> Result<(String, ImageKind), String> {
        let (client, reference) = (&source.client(), &source.reference);
        let (manifest, manifest_digest) = client.pull_image_manifest(reference, auth).await.map_err(|e| e.to_string())?;
        if let Some(layer) = wasm_layer(&manifest)? {
            self.fetch_blob(client, reference, &layer, None).await?;
            return Ok((manifest_digest, ImageKind::Wasm { wasm_digest: layer.digest }));
        }
        if ![oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE, oci_client::manifest::IMAGE_DOCKER_CONFIG_MEDIA_TYPE].contains(&manifest.config.media_type.as_str()) {
            return Err(format!(
                "neither a Wasm artifact nor a container image (config {}, layers {})",
                manifest.config.media_type,
                manifest.layers.iter().map(|l| l.media_type.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(layer) = manifest.layers.iter().find(|l| crate::runtime::oci::layers::Compression::of(&l.media_type).is_none()) {
            return Err(format!("layer {} has media type {}, which this node cannot unpack", layer.digest, layer.media_type));
        }
        self.fetch_blob(client, reference, &manifest.config, None).await?;
        let config = std::fs::read(self.blob_path(&manifest.config.digest)).map_err(|e| e.to_string())?;
        crate::runtime::oci::image_config::check_platform(&config)?;
        // Every layer at once: the registry and the network are the bound, not one stream.
        let fetches = manifest.layers.iter().map(|layer| self.fetch_blob(client, reference, layer, self.layer_sink.get()));
        futures::future::try_join_all(fetches).await?;
        let layers = manifest.layers.iter().map(|l| Layer { digest: l.digest.clone(), media_type: l.media_type.clone() }).collect();
        Ok((manifest_digest, ImageKind::Container { config_digest: manifest.config.digest.clone(), layers }))
    }

    /// Fetches a blob into the store unless it is there; oci-client checks the bytes
    /// against the digest as they arrive, and a blob is in place only once whole. A
    /// `sink` reads it as it arrives.
    async fn fetch_blob(&self, client: &oci_client::Client, reference: &Reference, blob: &oci_client::manifest::OciDescriptor, sink: Option<&Arc<dyn LayerSink>>) -> Result<(), String> {
        let path = self.blob_path(&blob.digest);
        // A manifest names blobs: one naming a path must not pick where a file goes.
        if blob.digest.contains('/') {
            return Err(format!("{} is not a digest", blob.digest));
        }
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension(format!("partial-{}", std::process::id()));
        let download = Arc::new(Download::default());
        let write = async {
            // Buffered: each write to a tokio file is a trip to the blocking pool.
            let file = tokio::fs::File::create(&tmp).await.map_err(|e| e.to_string())?;
            if let Some(sink) = sink {
                let reader = std::fs::File::open(&tmp).map_err(|e| e.to_string())?;
                sink.layer_arriving(&blob.digest, &blob.media_type, GrowingBlob { file: reader, download: download.clone() });
            }
            let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
            client.pull_blob(reference, blob, &mut file).await.map_err(|e| format!("fetching {}: {e}", blob.digest))?;
            tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| e.to_string())?;
            tokio::fs::rename(&tmp, &path).await.map_err(|e| e.to_string())
        };
        let result = write.await;
        download.end(result.clone());
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Removes the images no pod of the node uses (`in_use`: references as pods name
    /// them): their records, and the blobs no remaining image needs. Blobs still being
    /// written are spared. Returns how many images went, and the layer digests of the
    /// container images that stay (the layer store keeps those).
    pub fn remove_unused(&self, in_use: &std::collections::HashSet<String>) -> (usize, std::collections::HashSet<String>) {
        let in_use: std::collections::HashSet<String> = in_use.iter().filter_map(|i| i.parse::<Reference>().ok()).map(|r| r.whole()).collect();
        let mut removed = 0;
        let mut kept = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("refs")).into_iter().flatten().flatten() {
            let Ok(record) = std::fs::read(entry.path()).map_err(|_| ()).and_then(|b| serde_json::from_slice::<LocalImage>(&b).map_err(|_| ())) else { continue };
            if in_use.contains(&record.reference) {
                kept.push(record);
            } else if std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        let live: std::collections::HashSet<String> = kept.iter().flat_map(|r| r.blobs()).map(|d| d.trim_start_matches("sha256:").to_string()).collect();
        // Blobs of a pull in flight belong to no record yet: recent ones are spared (a
        // pull's blobs vanished between its download and its first container's start).
        let recent = |e: &std::fs::DirEntry| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age < PULL_GRACE));
        for entry in std::fs::read_dir(self.dir.join("blobs/sha256")).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.contains('.') && !live.contains(&name) && !recent(&entry) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let layers = kept.iter().filter_map(|r| match &r.kind {
            ImageKind::Container { layers, .. } => Some(layers.iter().map(|l| l.digest.clone())),
            ImageKind::Wasm { .. } => None,
        });
        (removed, layers.flatten().collect())
    }

    /// Remembers what `local.reference` resolved to, for `IfNotPresent` pulls.
    fn record(&self, local: LocalImage) -> LocalImage {
        let record = serde_json::to_vec(&local).expect("serializable");
        let record_path = self.record_path(&local.reference);
        if let Err(e) = std::fs::write(record_path.with_extension("tmp"), record).and_then(|_| std::fs::rename(record_path.with_extension("tmp"), &record_path)) {
            tracing::warn!(image = %local.reference, error = %e, "could not record pulled image");
        }
        local
    }

}

/// The artifact's Wasm layer; `None` when it has none (not a Wasm artifact).
fn wasm_layer(manifest: &oci_client::manifest::OciImageManifest) -> Result<Option<oci_client::manifest::OciDescriptor>, String> {
    let wasm: Vec<_> = manifest.layers.iter().filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE || l.media_type == LEGACY_WASM_LAYER_MEDIA_TYPE).collect();
    match wasm.as_slice() {
        [one] => Ok(Some((*one).clone())),
        [] => Ok(None),
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

/// A module or component as a CNCF Wasm artifact: its one layer, its config and the
/// manifest joining them. The config holds nothing but the Wasm's own facts, so the same
/// Wasm always makes the same artifact (and digest).
pub struct WasmArtifact {
    pub layer: ImageLayer,
    pub config: Config,
    pub manifest: OciImageManifest,
}

/// The media type of the artifact's manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

impl WasmArtifact {
    /// The artifact of `wasm`, whose file was called `title`; refuses what is not Wasm.
    pub fn new(wasm: Vec<u8>, title: &str) -> Result<WasmArtifact, String> {
        if !wasm.starts_with(b"\0asm") {
            return Err("not a WebAssembly binary".into());
        }
        let component = crate::runtime::wasm::is_component(&wasm);
        let layer_digest = format!("sha256:{}", hex(&Sha256::digest(&wasm)));
        let config = serde_json::json!({"architecture": "wasm", "os": if component { "wasip2" } else { "wasip1" }, "layerDigests": [layer_digest]});
        let layer = ImageLayer::new(wasm, WASM_LAYER_MEDIA_TYPE.into(), Some(BTreeMap::from([("org.opencontainers.image.title".to_string(), title.to_string())])));
        let config = Config::new(serde_json::to_vec(&config).expect("JSON"), WASM_CONFIG_MEDIA_TYPE.into(), None);
        let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
        manifest.media_type = Some(MANIFEST_MEDIA_TYPE.into());
        Ok(WasmArtifact { layer, config, manifest })
    }

    /// The manifest as stored and served.
    pub fn manifest_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.manifest).expect("JSON")
    }
}

/// Pushes a `.wasm` module or component to `reference` as a CNCF Wasm artifact, through
/// `registries` (so the cluster registry's name reaches the cluster's registry); returns
/// the manifest's URL.
pub async fn push(file: &Path, reference: &str, auth: &RegistryAuth, registries: &Registries) -> anyhow::Result<String> {
    use anyhow::Context;
    let reference: Reference = reference.parse().with_context(|| format!("{reference:?} is not an image reference"))?;
    let wasm = tokio::fs::read(file).await.with_context(|| format!("reading {}", file.display()))?;
    let title = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "module.wasm".into());
    let artifact = WasmArtifact::new(wasm, &title).map_err(|e| anyhow::anyhow!("{} is {e}", file.display()))?;
    let target = registries.push_target(&reference);
    let auth = target.auth.clone().unwrap_or_else(|| auth.clone());
    let pushed = target.client().push(&target.reference, &[artifact.layer], artifact.config, &auth, Some(artifact.manifest)).await.with_context(|| format!("pushing to {reference}"))?;
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

    #[test]
    fn a_growing_blob_reads_what_arrives_and_then_how_the_download_ended() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut writer = std::fs::File::create(&path).unwrap();
        for outcome in [Ok(()), Err("digest mismatch".to_string())] {
            let download = Arc::new(Download::default());
            let mut blob = GrowingBlob { file: std::fs::File::open(&path).unwrap(), download: download.clone() };
            let reader = std::thread::spawn(move || {
                let mut all = Vec::new();
                blob.read_to_end(&mut all).map(|_| all)
            });
            writer.write_all(b"abc").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            writer.write_all(b"def").unwrap();
            download.end(outcome.clone());
            match (reader.join().unwrap(), outcome) {
                (Ok(all), Ok(())) => assert!(all.ends_with(b"abcdef"), "{all:?}"),
                (Err(e), Err(why)) => assert!(e.to_string().contains(&why)),
                (got, expected) => panic!("read {got:?}, download {expected:?}"),
            }
        }
    }

    #[test]
    fn unused_images_go_with_the_blobs_only_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().to_path_buf(), Registries::default()).unwrap();
        let layer = |d: &str| Layer { digest: d.into(), media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into() };
        let images = [
            LocalImage { reference: "reg.example/app:v1".into(), manifest_digest: "sha256:m1".into(), kind: ImageKind::Container { config_digest: "sha256:c1".into(), layers: vec![layer("sha256:base"), layer("sha256:app1")] } },
            LocalImage { reference: "reg.example/app:v2".into(), manifest_digest: "sha256:m2".into(), kind: ImageKind::Container { config_digest: "sha256:c2".into(), layers: vec![layer("sha256:base"), layer("sha256:app2")] } },
            LocalImage { reference: "reg.example/fn:v1".into(), manifest_digest: "sha256:m3".into(), kind: ImageKind::Wasm { wasm_digest: "sha256:wasm".into() } },
        ];
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for image in images {
            for blob in image.blobs() {
                std::fs::write(store.blob_path(blob), b"x").unwrap();
                std::fs::File::options().write(true).open(store.blob_path(blob)).unwrap().set_modified(an_hour_ago).unwrap();
            }
            store.record(image);
        }
        std::fs::write(store.blob_path("sha256:arriving").with_extension("partial-1"), b"x").unwrap();
        // A pull in flight: downloaded, not recorded yet.
        std::fs::write(store.blob_path("sha256:downloaded"), b"x").unwrap();
        let (removed, layers) = store.remove_unused(&["reg.example/app:v2".to_string()].into());
        assert_eq!(removed, 2);
        assert_eq!(layers, ["sha256:base".to_string(), "sha256:app2".to_string()].into());
        assert!(store.present("reg.example/app:v2").is_some());
        assert!(store.present("reg.example/app:v1").is_none() && store.present("reg.example/fn:v1").is_none());
        for (blob, kept) in [("sha256:base", true), ("sha256:app2", true), ("sha256:c2", true), ("sha256:app1", false), ("sha256:c1", false), ("sha256:wasm", false)] {
            assert_eq!(store.blob_path(blob).exists(), kept, "{blob}");
        }
        assert!(store.blob_path("sha256:arriving").with_extension("partial-1").exists());
        assert!(store.blob_path("sha256:downloaded").exists());
    }

    #[tokio::test]
    async fn never_pull_of_an_absent_image_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().to_path_buf(), Registries::default()).unwrap();
        let err = store.ensure("127.0.0.1:1/app:v1", PullPolicy::Never, async || Ok(RegistryAuth::Anonymous)).await.unwrap_err();
        assert_eq!(err.reason, "ErrImageNeverPull");
    }
}
