//! Pod volumes as directories on the node, which Wasm guests see as WASI preopens at each
//! `volumeMount.mountPath`: emptyDir (tmpfs for `medium: Memory`), configMap, secret,
//! downwardAPI and projected (files kept up to date as their sources change; ServiceAccount
//! tokens renewed), hostPath, and persistentVolumeClaims bound to local or hostPath
//! PersistentVolumes. Secret and projected volumes live in memory (tmpfs), as kubelet
//! keeps them, so no credential is written to the node's disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Volume};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::env::{ConfigError, ConfigSources, PodFacts};
use crate::runtime::Mount;
use crate::service_account_tokens::ServiceAccountTokens;

/// A pod's volume on the node.
#[derive(Debug, Clone)]
pub struct VolumeDir {
    pub path: PathBuf,
    /// Volumes Kubernetes always mounts read-only (configMap, secret, downwardAPI, projected).
    pub read_only: bool,
}

/// Where a pod's volumes live: `<root>/<uid>/<volume>`, and for memory-backed emptyDirs
/// `<memory_root>/<uid>/<volume>` (tmpfs).
#[derive(Debug, Clone)]
pub struct VolumeRoots {
    pub root: PathBuf,
    pub memory_root: PathBuf,
}

impl VolumeRoots {
    pub fn new(data_dir: &Path) -> Self {
        let shm = Path::new("/dev/shm");
        let memory_root = if shm.is_dir() { shm.join("skiff").join(data_dir.to_string_lossy().replace('/', "_")) } else { data_dir.join("memory-volumes") };
        VolumeRoots { root: data_dir.join("pods"), memory_root }
    }

    /// Removes everything a pod's volumes left on the node (not hostPath or PV contents).
    pub fn clean_up(&self, uid: &str) {
        for dir in [self.root.join(uid), self.memory_root.join(uid)] {
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "removing pod volumes");
            }
        }
    }
}

/// Makes every volume of the pod ready. An error names the volume, as kubelet's
/// `FailedMount` events do.
pub async fn prepare(client: &Client, roots: &VolumeRoots, facts: &PodFacts<'_>, sources: &ConfigSources, tokens: &ServiceAccountTokens) -> Result<HashMap<String, VolumeDir>, ConfigError> {
    let pod = facts.pod;
    let uid = pod.uid().unwrap_or_default();
    tokens.renew(pod).await?;
    let mut out = HashMap::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let failed = |why: String| ConfigError(format!("MountVolume.SetUp failed for volume {:?} : {why}", v.name));
        let dir = roots.root.join(&uid).join("volumes").join(&v.name);
        let volume = if let Some(e) = &v.empty_dir {
            let path = if e.medium.as_deref() == Some("Memory") { roots.memory_root.join(&uid).join(&v.name) } else { dir };
            std::fs::create_dir_all(&path).map_err(|e| failed(e.to_string()))?;
            VolumeDir { path, read_only: false }
        } else if let Some(h) = &v.host_path {
            VolumeDir { path: host_path(&h.path, h.type_.as_deref().unwrap_or("")).map_err(failed)?, read_only: false }
        } else if let Some(claim) = &v.persistent_volume_claim {
            let ns = pod.namespace().unwrap_or_default();
            let path = claimed_path(client, &ns, &claim.claim_name).await.map_err(failed)?;
            VolumeDir { path, read_only: claim.read_only == Some(true) }
        } else if is_projected(v) {
            let path = if v.secret.is_some() || v.projected.is_some() { roots.memory_root.join(&uid).join(&v.name) } else { dir };
            std::fs::create_dir_all(&path).map_err(|e| failed(e.to_string()))?;
            let files = projected_files(v, facts, sources, tokens).map_err(|e| failed(e.0))?;
            write_files(&path, &files).map_err(|e| failed(e.to_string()))?;
            VolumeDir { path, read_only: true }
        } else {
            return Err(failed("this volume type is not supported on Skiff nodes".into()));
        };
        out.insert(v.name.clone(), volume);
    }
    Ok(out)
}

/// Rewrites the files of configMap, secret, downwardAPI and projected volumes whose
/// sources changed. Errors (a source deleted meanwhile) leave the old files, as kubelet does.
pub fn refresh(volumes: &HashMap<String, VolumeDir>, facts: &PodFacts, sources: &ConfigSources, tokens: &ServiceAccountTokens) {
    for v in facts.pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten().filter(|v| is_projected(v)) {
        let (Some(dir), Ok(files)) = (volumes.get(&v.name), projected_files(v, facts, sources, tokens)) else { continue };
        if let Err(e) = write_files(&dir.path, &files) {
            tracing::warn!(volume = %v.name, error = %e, "refreshing volume");
        }
    }
}

/// Whether the pod has volumes whose files follow their sources.
pub fn has_projected(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten().any(is_projected)
}

fn is_projected(v: &Volume) -> bool {
    v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some() || v.projected.is_some()
}

/// The directories a container sees, from its `volumeMounts`.
pub fn mounts(container: &Container, volumes: &HashMap<String, VolumeDir>) -> Result<Vec<Mount>, ConfigError> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume = volumes.get(&m.name).ok_or_else(|| ConfigError(format!("volumeMount {:?}: no volume of that name in the pod", m.name)))?;
        if !m.mount_path.starts_with('/') {
            return Err(ConfigError(format!("volumeMount {:?}: mountPath {:?} is not absolute", m.name, m.mount_path)));
        }
        let mut host_path = volume.path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host_path = host_path.join(relative(sub).map_err(|e| ConfigError(format!("volumeMount {:?}: subPath {e}", m.name)))?);
            if !host_path.exists() {
                std::fs::create_dir_all(&host_path).map_err(|e| ConfigError(format!("volumeMount {:?}: creating subPath: {e}", m.name)))?;
            }
        }
        if !host_path.is_dir() {
            return Err(ConfigError(format!("volumeMount {:?}: {} is not a directory; Wasm guests mount directories only", m.name, host_path.display())));
        }
        out.push(Mount { host_path, guest_path: m.mount_path.clone(), read_only: volume.read_only || m.read_only == Some(true) });
    }
    Ok(out)
}

fn host_path(path: &str, kind: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    match kind {
        "DirectoryOrCreate" => std::fs::create_dir_all(&p).map_err(|e| format!("creating {path}: {e}"))?,
        "" | "Directory" => {
            if !p.is_dir() {
                return Err(format!("hostPath {path} is not a directory"));
            }
        }
        other => return Err(format!("hostPath type {other} cannot be mounted into a Wasm guest: WASI mounts directories")),
    }
    Ok(p)
}

async fn claimed_path(client: &Client, namespace: &str, claim: &str) -> Result<PathBuf, String> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get_opt(claim)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty())
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound to a volume"))?;
    let pv = Api::<PersistentVolume>::all(client.clone()).get_opt(&volume).await.map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolume {volume:?} of claim {claim:?} not found"))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(local) = spec.local {
        return host_path(&local.path, "Directory");
    }
    if let Some(h) = spec.host_path {
        return host_path(&h.path, h.type_.as_deref().unwrap_or("DirectoryOrCreate"));
    }
    Err(format!("persistentvolume {volume:?} is neither local nor hostPath; Skiff nodes mount only those"))
}

/// A relative path inside a volume: no `..`, not absolute.
fn relative(path: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    if path.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("{path:?} must be a relative path without '..'"));
    }
    Ok(p)
}

/// The files a configMap, secret, downwardAPI or projected volume holds.
fn projected_files(v: &Volume, facts: &PodFacts, sources: &ConfigSources, tokens: &ServiceAccountTokens) -> Result<BTreeMap<PathBuf, Vec<u8>>, ConfigError> {
    let ns = facts.pod.namespace().unwrap_or_default();
    let mut files = BTreeMap::new();
    if let Some(c) = &v.config_map {
        keyed(&mut files, sources.config_map_data(&ns, &c.name), "configmap", &c.name, &c.items, c.optional)?;
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        keyed(&mut files, sources.secret_data(&ns, &name), "secret", &name, &s.items, s.optional)?;
    }
    if let Some(d) = &v.downward_api {
        downward_files(d.items.iter().flatten(), facts, &mut files)?;
    }
    for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
        if let Some(c) = &source.config_map {
            keyed(&mut files, sources.config_map_data(&ns, &c.name), "configmap", &c.name, &c.items, c.optional)?;
        }
        if let Some(s) = &source.secret {
            keyed(&mut files, sources.secret_data(&ns, &s.name), "secret", &s.name, &s.items, s.optional)?;
        }
        if let Some(d) = &source.downward_api {
            downward_files(d.items.iter().flatten(), facts, &mut files)?;
        }
        if let Some(t) = &source.service_account_token {
            let token = tokens.token(facts.pod, t).ok_or_else(|| ConfigError("the ServiceAccount token has not been issued yet".into()))?;
            files.insert(relative(&t.path).map_err(ConfigError)?, token.into_bytes());
        }
        if source.cluster_trust_bundle.is_some() || source.pod_certificate.is_some() {
            return Err(ConfigError("projected clusterTrustBundle and podCertificate sources are not supported on Skiff nodes yet".into()));
        }
    }
    Ok(files)
}

/// Adds the files of a ConfigMap's or Secret's keys (`items` picks and renames them).
fn keyed(files: &mut BTreeMap<PathBuf, Vec<u8>>, data: Option<BTreeMap<String, Vec<u8>>>, what: &str, name: &str, items: &Option<Vec<KeyToPath>>, optional: Option<bool>) -> Result<(), ConfigError> {
    let Some(data) = data else {
        return if optional == Some(true) { Ok(()) } else { Err(ConfigError(format!("{what} {name:?} not found"))) };
    };
    match items {
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(bytes) => {
                        files.insert(relative(&item.path).map_err(ConfigError)?, bytes.clone());
                    }
                    None if optional == Some(true) => {}
                    None => return Err(ConfigError(format!("configuration key {:?} not found in {what} {name:?}", item.key))),
                }
            }
        }
        None => files.extend(data.into_iter().map(|(k, bytes)| (PathBuf::from(k), bytes))),
    }
    Ok(())
}

fn downward_files<'a>(items: impl Iterator<Item = &'a DownwardAPIVolumeFile>, facts: &PodFacts, files: &mut BTreeMap<PathBuf, Vec<u8>>) -> Result<(), ConfigError> {
    let containers = facts.pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            crate::env::field(f, facts)?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or_default();
            let c = containers.iter().find(|c| c.name == name).ok_or_else(|| ConfigError(format!("downwardAPI item {:?}: no container {name:?}", item.path)))?;
            crate::env::resource_field(r, c, facts)?
        } else {
            continue;
        };
        files.insert(relative(&item.path).map_err(ConfigError)?, value.into_bytes());
    }
    Ok(())
}

/// Makes `dir` hold exactly `files`: changed files are replaced whole (write, then
/// rename), so a guest never reads half a file; files no longer wanted are removed.
fn write_files(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> std::io::Result<()> {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if std::fs::read(&path).is_ok_and(|old| old == *bytes) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_file_name(format!(".{}.tmp", rel.file_name().unwrap_or_default().to_string_lossy()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
    }
    remove_unwanted(dir, dir, files)
}

fn remove_unwanted(root: &Path, dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if path.is_dir() {
            remove_unwanted(root, &path, files)?;
            if !files.keys().any(|f| f.starts_with(&rel)) {
                std::fs::remove_dir_all(&path)?;
            }
        } else if !files.contains_key(&rel) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_replaced_and_stale_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::from([(PathBuf::from("a"), b"1".to_vec()), (PathBuf::from("sub/b"), b"2".to_vec())]);
        write_files(dir.path(), &files).unwrap();
        assert_eq!(std::fs::read(dir.path().join("sub/b")).unwrap(), b"2");
        files.remove(&PathBuf::from("sub/b"));
        files.insert(PathBuf::from("a"), b"changed".to_vec());
        write_files(dir.path(), &files).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"changed");
        assert!(!dir.path().join("sub").exists());
    }

    #[test]
    fn paths_may_not_escape_the_volume() {
        assert!(relative("../etc/passwd").is_err());
        assert!(relative("/etc/passwd").is_err());
        assert!(relative("a/../../b").is_err());
        assert!(relative("conf/app.toml").is_ok());
    }

    proptest::proptest! {
        /// An accepted path never leaves the volume.
        #[test]
        fn accepted_paths_stay_inside(path in "[a-z./]{0,20}") {
            if let Ok(p) = relative(&path) {
                proptest::prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }
    }

    #[test]
    fn host_files_are_refused_for_wasm_mounts() {
        assert!(host_path("/etc/hostname", "File").unwrap_err().contains("WASI mounts directories"));
        assert!(host_path("/etc/hostname", "").unwrap_err().contains("not a directory"));
        assert_eq!(host_path("/tmp", "Directory").unwrap(), PathBuf::from("/tmp"));
    }
}
