//! The registry's files, content-addressed as the distribution registry keeps them:
//!
//! ```text
//! blobs/sha256/<hex>                        every blob and manifest, by digest
//! uploads/<id>                              blob uploads in progress
//! repositories/<name>/_manifests/<hex>      a manifest of the repository (holds its media type)
//! repositories/<name>/_tags/<tag>           a tag (holds the manifest's digest)
//! ```
//!
//! Blobs are shared by every repository. Writes go to a temporary name and are renamed into
//! place, so a reader never sees half a file. Names, tags and digests are checked against
//! the distribution spec's grammar before they become paths, so none can leave the root.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` digest, the only algorithm served.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| Digest(text.to_string()))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex(&hasher.finalize())))
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A repository name as the distribution spec allows: path components of lowercase
/// letters and digits joined by `.`, `_`, `__` or runs of `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|component| {
            let b = component.as_bytes();
            let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
                return false;
            }
            // Separators: one '.', one or two '_', or any run of '-'; never mixed or leading.
            let mut i = 0;
            while i < b.len() {
                if alnum(b[i]) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < b.len() && !alnum(b[i]) {
                    i += 1;
                }
                let sep = &component[start..i];
                let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
                if !ok {
                    return false;
                }
            }
            true
        })
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty() && b.len() <= 128 && (b[0].is_ascii_alphanumeric() || b[0] == b'_') && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The registry's directory.
#[derive(Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    pub fn open(root: PathBuf) -> std::io::Result<Storage> {
        for dir in ["blobs/sha256", "uploads", "repositories"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Storage { root })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn upload_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    fn repo_dir(&self, name: &str) -> PathBuf {
        self.root.join("repositories").join(name)
    }

    /// The blob's size if it is here. A blob found is touched, so garbage collection
    /// (which spares recent blobs) does not take it while a client that saw it pushes the
    /// manifest that refers to it.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        let file = std::fs::File::options().append(true).open(self.blob_path(digest)).ok()?;
        let _ = file.set_modified(std::time::SystemTime::now());
        file.metadata().ok().map(|m| m.len())
    }

    /// Moves a finished upload into place as `digest`, its bytes on disk first: a blob
    /// acknowledged is a blob kept.
    pub fn commit_upload(&self, id: &str, digest: &Digest) -> std::io::Result<()> {
        std::fs::File::open(self.upload_path(id))?.sync_all()?;
        std::fs::rename(self.upload_path(id), self.blob_path(digest))
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> std::io::Result<Digest> {
        let digest = Digest::of(bytes);
        if self.blob_size(&digest).is_none() {
            write_atomic(&self.blob_path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// Links a stored manifest into repository `name`, and tags it if `tag` is given.
    pub fn link_manifest(&self, name: &str, digest: &Digest, media_type: &str, tag: Option<&str>) -> std::io::Result<()> {
        let repo = self.repo_dir(name);
        std::fs::create_dir_all(repo.join("_manifests"))?;
        std::fs::create_dir_all(repo.join("_tags"))?;
        write_atomic(&repo.join("_manifests").join(digest.hex()), media_type.as_bytes())?;
        if let Some(tag) = tag {
            write_atomic(&repo.join("_tags").join(tag), digest.as_str().as_bytes())?;
        }
        Ok(())
    }

    /// A manifest of repository `name` by tag or digest: its digest and media type.
    pub fn resolve(&self, name: &str, reference: &str) -> Option<(Digest, String)> {
        let repo = self.repo_dir(name);
        let digest = match Digest::parse(reference) {
            Some(d) => d,
            None if valid_tag(reference) => Digest::parse(std::fs::read_to_string(repo.join("_tags").join(reference)).ok()?.trim())?,
            None => return None,
        };
        let media_type = std::fs::read_to_string(repo.join("_manifests").join(digest.hex())).ok()?;
        Some((digest, media_type))
    }

    /// The manifests linked in repository `name`.
    pub fn manifests(&self, name: &str) -> Vec<Digest> {
        list(&self.repo_dir(name).join("_manifests")).iter().filter_map(|hex| Digest::parse(&format!("sha256:{hex}"))).collect()
    }

    /// The tags of repository `name`, sorted; `None` if there is no such repository.
    pub fn tags(&self, name: &str) -> Option<Vec<String>> {
        let repo = self.repo_dir(name);
        repo.join("_manifests").is_dir().then(|| list(&repo.join("_tags")))
    }

    /// Removes a tag; whether it was there.
    pub fn delete_tag(&self, name: &str, tag: &str) -> bool {
        std::fs::remove_file(self.repo_dir(name).join("_tags").join(tag)).is_ok()
    }

    /// Unlinks a manifest from repository `name` with every tag pointing at it; whether it
    /// was linked. Its blobs go at the next garbage collection if nothing else uses them.
    pub fn delete_manifest(&self, name: &str, digest: &Digest) -> bool {
        let repo = self.repo_dir(name);
        for tag in list(&repo.join("_tags")) {
            if self.resolve(name, &tag).is_some_and(|(d, _)| &d == digest) {
                self.delete_tag(name, &tag);
            }
        }
        std::fs::remove_file(repo.join("_manifests").join(digest.hex())).is_ok()
    }

    /// Every repository, sorted by name.
    pub fn repositories(&self) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            for entry in list(dir) {
                if entry.starts_with('_') {
                    continue;
                }
                let name = if prefix.is_empty() { entry.clone() } else { format!("{prefix}/{entry}") };
                let path = dir.join(&entry);
                if path.join("_manifests").is_dir() {
                    out.push(name.clone());
                }
                walk(&path, &name, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.root.join("repositories"), "", &mut out);
        out.sort();
        out
    }
}

/// The names in a directory, sorted (none if it does not exist).
fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| !n.ends_with(".tmp")).collect();
    names.sort();
    names
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_distribution_grammar() {
        for ok in ["hello", "a/b/c", "hello-wasm", "a__b", "a.b", "a---b", "x9/y_z"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Hello", "../etc", "a//b", "/a", "a/", "a..b", "a_-b", "-a", "a.", "a/../b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_tag("v1.0_rc-1") && valid_tag("_x"));
        assert!(!valid_tag("") && !valid_tag(".x") && !valid_tag("a/b") && !valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn digests_are_sha256_lowercase() {
        let d = Digest::of(b"hello");
        assert_eq!(d.as_str(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(Digest::parse(d.as_str()), Some(d.clone()));
        assert!(Digest::parse(&d.as_str().to_uppercase()).is_none());
        assert!(Digest::parse("sha512:abc").is_none());
        assert!(Digest::parse("sha256:../../etc").is_none());
    }

    #[test]
    fn manifests_link_tag_and_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path().to_path_buf()).unwrap();
        let d = s.put_blob(b"{}").unwrap();
        s.link_manifest("a/b", &d, "application/vnd.oci.image.manifest.v1+json", Some("v1")).unwrap();
        assert_eq!(s.resolve("a/b", "v1"), Some((d.clone(), "application/vnd.oci.image.manifest.v1+json".into())));
        assert_eq!(s.resolve("a/b", d.as_str()).map(|r| r.0), Some(d.clone()));
        assert_eq!(s.repositories(), ["a/b"]);
        assert_eq!(s.tags("a/b"), Some(vec!["v1".to_string()]));
        assert_eq!(s.tags("a"), None);
        assert!(s.delete_manifest("a/b", &d));
        assert_eq!(s.resolve("a/b", "v1"), None);
        assert_eq!(s.tags("a/b"), Some(vec![]));
    }
}
