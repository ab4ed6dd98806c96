//! Garbage collection: blobs no manifest of any repository refers to are removed, as the
//! distribution registry's `garbage-collect` does (mark, then sweep). Blobs younger than a
//! grace period are spared, so a push whose layers are up but whose manifest is not yet
//! cannot lose them; abandoned uploads go after the same grace period.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::storage::{Digest, Storage};

/// What a collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub blobs: usize,
    pub bytes: u64,
    pub uploads: usize,
}

/// Every blob a linked manifest refers to: the manifests themselves, their configs and
/// layers, an index's manifests, and a referrer's subject.
pub fn referenced(storage: &Storage) -> HashSet<Digest> {
    let mut marked = HashSet::new();
    for repo in storage.repositories() {
        for manifest in storage.manifests(&repo) {
            let parsed: Option<Value> = std::fs::read(storage.blob_path(&manifest)).ok().and_then(|b| serde_json::from_slice(&b).ok());
            marked.insert(manifest);
            let Some(m) = parsed else { continue };
            let descriptors = m.get("config").into_iter().chain(m.get("subject")).chain(["layers", "manifests", "blobs"].iter().flat_map(|k| m.get(*k).and_then(Value::as_array).into_iter().flatten()));
            marked.extend(descriptors.filter_map(|d| d.get("digest").and_then(Value::as_str)).filter_map(Digest::parse));
        }
    }
    marked
}

/// Removes unreferenced blobs and abandoned uploads older than `grace`.
pub fn collect(storage: &Storage, grace: Duration) -> std::io::Result<Collected> {
    let marked = referenced(storage);
    let old = |meta: &std::fs::Metadata| meta.modified().ok().and_then(|t| SystemTime::now().duration_since(t).ok()).is_some_and(|age| age >= grace);
    let mut collected = Collected::default();
    for entry in std::fs::read_dir(storage.blobs_dir())? {
        let entry = entry?;
        let Some(digest) = entry.file_name().to_str().and_then(|hex| Digest::parse(&format!("sha256:{hex}"))) else { continue };
        let meta = entry.metadata()?;
        if !marked.contains(&digest) && old(&meta) && std::fs::remove_file(entry.path()).is_ok() {
            collected.blobs += 1;
            collected.bytes += meta.len();
        }
    }
    for entry in std::fs::read_dir(storage.uploads_dir())? {
        let entry = entry?;
        if old(&entry.metadata()?) && std::fs::remove_file(entry.path()).is_ok() {
            collected.uploads += 1;
        }
    }
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_what_manifests_use_and_recent_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path().to_path_buf()).unwrap();
        let (config, layer, orphan) = (s.put_blob(b"cfg").unwrap(), s.put_blob(b"layer").unwrap(), s.put_blob(b"orphan").unwrap());
        let manifest = json!({"schemaVersion": 2, "config": {"digest": config.as_str(), "size": 3}, "layers": [{"digest": layer.as_str(), "size": 5}]});
        let m = s.put_blob(manifest.to_string().as_bytes()).unwrap();
        s.link_manifest("app", &m, "application/vnd.oci.image.manifest.v1+json", Some("v1")).unwrap();

        // Within the grace period nothing goes.
        assert_eq!(collect(&s, Duration::from_secs(3600)).unwrap(), Collected::default());
        let collected = collect(&s, Duration::ZERO).unwrap();
        assert_eq!((collected.blobs, collected.bytes), (1, 6));
        assert!(!s.blob_path(&orphan).exists());
        for kept in [&config, &layer, &m] {
            assert!(s.blob_path(kept).exists());
        }

        // Once the manifest is deleted, its blobs are garbage too.
        assert!(s.delete_manifest("app", &m));
        assert_eq!(collect(&s, Duration::ZERO).unwrap().blobs, 3);
    }
}
