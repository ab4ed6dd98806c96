//! Secrets encrypted at rest: a [`Store`] in front of another that seals every Secret
//! with AES-256-GCM before it is written (the object, its event-log entry, every copy on
//! disk) and opens it when read or watched. Kubernetes' `aescbc` is the provider
//! upstream rates weak; AES-GCM with a fresh random nonce per write is its `aesgcm`.
//!
//! A sealed Secret keeps what the store itself reads in the clear, its `apiVersion`,
//! `kind`, `type` and its metadata but the annotations (kubectl's last-applied
//! annotation holds the whole Secret), so keys, label and field selectors and revisions
//! work as before; everything else lives only in `sealed`, `KEYID:base64(nonce ‖
//! ciphertext ‖ tag)`. The keys file names several keys; the first seals, any opens,
//! so a rotation adds a key in front and re-seals (see [`reseal_all`]).

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use crate::{Event, ListOptions, ListResult, Store, StoreError, Watch};

/// Storage keys of Secrets.
const SECRETS: &str = "/core/secrets/";
/// The field a sealed Secret carries its ciphertext in.
const SEALED: &str = "sealed";

/// The encryption keys, by id; the first seals.
pub struct Keys {
    keys: Vec<(String, LessSafeKey)>,
    random: SystemRandom,
}

impl Keys {
    /// The keys in `path` (one `ID:base64(32 bytes)` per line, the sealing key first),
    /// made with one fresh key when missing.
    pub fn load_or_create(path: &Path) -> Result<Keys, String> {
        if !path.exists() {
            write_keys(path, &[new_key_line(&SystemRandom::new(), "k1")?])?;
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (id, b64) = line.split_once(':').ok_or_else(|| format!("{}: a line is not ID:KEY", path.display()))?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("{}: key {id}: {e}", path.display()))?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| format!("{}: key {id} is not 32 bytes", path.display()))?;
            keys.push((id.to_string(), LessSafeKey::new(key)));
        }
        if keys.is_empty() {
            return Err(format!("{} holds no key", path.display()));
        }
        Ok(Keys { keys, random: SystemRandom::new() })
    }

    fn seal(&self, plain: &[u8], key: &str) -> Result<String, StoreError> {
        let (id, sealing) = &self.keys[0];
        let mut nonce = [0u8; 12];
        self.random.fill(&mut nonce).map_err(|_| StoreError::Backend("no randomness for a nonce".into()))?;
        let mut sealed = plain.to_vec();
        // The storage key is bound in as associated data: a sealed Secret copied under
        // another name does not open.
        sealing.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut sealed)
            .map_err(|_| StoreError::Backend("sealing a Secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(out)))
    }

    fn open(&self, sealed: &str, key: &str) -> Result<Vec<u8>, StoreError> {
        let fail = |why: &str| StoreError::Backend(format!("the Secret at {key} cannot be opened: {why}"));
        let (id, b64) = sealed.split_once(':').ok_or_else(|| fail("not KEYID:DATA"))?;
        let (_, opening) = self.keys.iter().find(|(k, _)| k == id).ok_or_else(|| fail(&format!("key {id} is not in the keys file")))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| fail("not base64"))?;
        if bytes.len() < 12 {
            return Err(fail("too short"));
        }
        let (nonce, rest) = bytes.split_at(12);
        let mut rest = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail("bad nonce"))?;
        let plain = opening.open_in_place(nonce, Aad::from(key.as_bytes()), &mut rest).map_err(|_| fail("wrong key or altered data"))?;
        Ok(plain.to_vec())
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> &str {
        &self.keys[0].0
    }
}

fn new_key_line(random: &SystemRandom, id: &str) -> Result<String, String> {
    let mut bytes = [0u8; 32];
    random.fill(&mut bytes).map_err(|_| "no randomness for a key".to_string())?;
    Ok(format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

fn write_keys(path: &Path, lines: &[String]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    f.write_all((lines.join("\n") + "\n").as_bytes()).and_then(|_| f.sync_all()).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Puts a new sealing key in front of the keys file, keeping the old ones for opening.
/// Returns the new key's id.
pub fn add_sealing_key(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let old: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    let next = (1..).map(|n| format!("k{n}")).find(|id| !old.iter().any(|l| l.starts_with(&format!("{id}:")))).expect("an unused id");
    let mut lines = vec![new_key_line(&SystemRandom::new(), &next)?];
    lines.extend(old);
    write_keys(path, &lines)?;
    Ok(next)
}

/// A store that seals Secrets on their way into `inner` and opens them on the way out.
pub struct EncryptedSecrets {
    inner: Arc<dyn Store>,
    keys: Arc<Keys>,
}

impl EncryptedSecrets {
    pub fn new(inner: Arc<dyn Store>, keys: Keys) -> EncryptedSecrets {
        EncryptedSecrets { inner, keys: Arc::new(keys) }
    }
}

/// The metadata fields a sealed Secret keeps in the clear.
fn clear_metadata(object: &Value) -> Value {
    let mut metadata = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if let Some(m) = metadata.as_object_mut() {
        m.remove("annotations");
        m.remove("managedFields");
    }
    metadata
}

fn seal(keys: &Keys, key: &str, object: Value) -> Result<Value, StoreError> {
    if !key.starts_with(SECRETS) {
        return Ok(object);
    }
    let plain = serde_json::to_vec(&object).map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(json!({"apiVersion": object["apiVersion"], "kind": object["kind"], "type": object.get("type").cloned().unwrap_or(Value::Null),
              "metadata": clear_metadata(&object), SEALED: keys.seal(&plain, key)?}))
}

fn open(keys: &Keys, key: &str, stored: Value) -> Result<Value, StoreError> {
    let Some(sealed) = stored.get(SEALED).and_then(Value::as_str) else { return Ok(stored) };
    let mut object: Value = serde_json::from_slice(&keys.open(sealed, key)?).map_err(|e| StoreError::Backend(e.to_string()))?;
    // The store stamps the revision (and a deletion's) on what it holds.
    if let (Some(rv), Some(m)) = (stored.pointer("/metadata/resourceVersion").cloned(), object.get_mut("metadata").and_then(Value::as_object_mut)) {
        m.insert("resourceVersion".into(), rv);
    }
    Ok(object)
}

fn open_event(keys: &Keys, event: Arc<Event>) -> Result<Arc<Event>, StoreError> {
    if !event.key.starts_with(SECRETS) {
        return Ok(event);
    }
    let object = Arc::new(open(keys, &event.key, (*event.object).clone())?);
    let prev = match &event.prev {
        Some(p) => Some(Arc::new(open(keys, &event.key, (**p).clone())?)),
        None => None,
    };
    Ok(Arc::new(Event { revision: event.revision, kind: event.kind, key: event.key.clone(), object, prev }))
}

#[async_trait::async_trait]
impl Store for EncryptedSecrets {
    async fn get(&self, key: &str) -> Result<Value, StoreError> {
        open(&self.keys, key, self.inner.get(key).await?)
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError> {
        let mut listed = self.inner.list(prefix, options).await?;
        if prefix.starts_with(SECRETS) || SECRETS.starts_with(prefix) {
            listed.items = listed.items.into_iter().map(|o| {
                let key = item_key(&o);
                open(&self.keys, &key, o)
            }).collect::<Result<_, _>>()?;
        }
        Ok(listed)
    }

    async fn create(&self, key: &str, object: Value) -> Result<Value, StoreError> {
        let stored = self.inner.create(key, seal(&self.keys, key, object)?).await?;
        open(&self.keys, key, stored)
    }

    async fn update(&self, key: &str, object: Value, expected_revision: Option<u64>) -> Result<Value, StoreError> {
        let stored = self.inner.update(key, seal(&self.keys, key, object)?, expected_revision).await?;
        open(&self.keys, key, stored)
    }

    async fn delete(&self, key: &str, expected_revision: Option<u64>) -> Result<Value, StoreError> {
        open(&self.keys, key, self.inner.delete(key, expected_revision).await?)
    }

    fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watch, StoreError> {
        let watch = self.inner.watch(prefix, after)?;
        let keys = self.keys.clone();
        Ok(watch.mapped(Arc::new(move |event| open_event(&keys, event))))
    }

    fn current_revision(&self) -> u64 {
        self.inner.current_revision()
    }
}

/// A listed Secret's storage key, from its namespace and name.
fn item_key(object: &Value) -> String {
    let field = |f: &str| object.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default().to_string();
    format!("{SECRETS}{}/{}", field("namespace"), field("name"))
}

/// Re-seals every Secret with the sealing key (after [`add_sealing_key`]); returns how
/// many. Each is rewritten at its current revision, so a concurrent change wins and is
/// sealed by its own write.
pub async fn reseal_all(store: &EncryptedSecrets) -> Result<usize, StoreError> {
    let listed = store.list(SECRETS, &ListOptions::default()).await?;
    let mut count = 0;
    for secret in listed.items {
        let key = item_key(&secret);
        let revision = crate::object_revision(&secret);
        match store.update(&key, secret, revision).await {
            Ok(_) => count += 1,
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RedbStore, StoreOptions};

    fn store(dir: &Path) -> EncryptedSecrets {
        let inner: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("db"), StoreOptions::default()).unwrap());
        EncryptedSecrets::new(inner, Keys::load_or_create(&dir.join("keys")).unwrap())
    }

    fn secret(name: &str, value: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": name, "namespace": "shop", "labels": {"app": "db"}, "annotations": {"note": value}},
               "data": {"password": value}})
    }

    #[tokio::test]
    async fn secrets_are_sealed_on_disk_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut watch = s.watch("/core/secrets/", Some(0)).unwrap();
        let created = s.create("/core/secrets/shop/db", secret("db", "hunter2-plaintext")).await.unwrap();
        assert_eq!(created["data"]["password"], "hunter2-plaintext");
        let got = s.get("/core/secrets/shop/db").await.unwrap();
        assert_eq!(got["metadata"]["annotations"]["note"], "hunter2-plaintext");
        assert_eq!(got["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
        let labelled = ListOptions { labels: skiff_core::LabelSelector::parse("app=db").unwrap(), ..Default::default() };
        assert_eq!(s.list("/core/secrets/shop/", &labelled).await.unwrap().items[0]["data"]["password"], "hunter2-plaintext");
        let event = watch.next().await.unwrap().unwrap();
        assert_eq!(event.object["data"]["password"], "hunter2-plaintext");
        // What the store underneath holds is sealed; other kinds are not.
        let raw = s.inner.get("/core/secrets/shop/db").await.unwrap();
        assert!(raw.get("data").is_none() && raw["sealed"].as_str().unwrap().starts_with("k1:"), "{raw}");
        assert!(!raw.to_string().contains("hunter2"));
        let cm = s.create("/core/configmaps/shop/c", json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).await.unwrap();
        assert_eq!(s.inner.get("/core/configmaps/shop/c").await.unwrap()["data"], cm["data"]);
        drop(s);
        let on_disk = std::fs::read(dir.path().join("db")).unwrap();
        assert!(!on_disk.windows(7).any(|w| w == b"hunter2"), "the plain text is nowhere in the file");
    }

    #[tokio::test]
    async fn a_new_key_reseals_and_old_secrets_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.create("/core/secrets/shop/a", secret("a", "one")).await.unwrap();
        drop(s);
        assert_eq!(add_sealing_key(&dir.path().join("keys")).unwrap(), "k2");
        let s = store(dir.path());
        assert_eq!(s.get("/core/secrets/shop/a").await.unwrap()["data"]["password"], "one", "k1 still opens");
        assert_eq!(reseal_all(&s).await.unwrap(), 1);
        assert!(s.inner.get("/core/secrets/shop/a").await.unwrap()["sealed"].as_str().unwrap().starts_with("k2:"));
        // A sealed Secret moved under another key does not open.
        let raw = s.inner.get("/core/secrets/shop/a").await.unwrap();
        s.inner.create("/core/secrets/shop/b", raw).await.unwrap();
        assert!(s.get("/core/secrets/shop/b").await.is_err());
    }
}
