//! Revisioned object storage for the Skiff API server.
//!
//! Objects are JSON documents under string keys (`/group/plural/namespace/name`). Every
//! write bumps one cluster-wide revision, atomically with the write (as etcd does); the
//! revision becomes the object's `metadata.resourceVersion`. Recent changes stay in an
//! event log, so a watch can resume from any revision still retained and gets
//! [`StoreError::Expired`] for one compacted away.
//!
//! [`RedbStore`] is the embedded backend. Its writes are durable when acknowledged, and
//! concurrent writes share one commit (group commit), so throughput grows with concurrency.

pub mod continue_token;
pub mod encrypted;
pub mod metrics;
mod redb_store;
mod watch;

use std::sync::Arc;

use serde_json::Value;
use skiff_core::{FieldSelector, LabelSelector};

pub use redb_store::{RedbStore, StoreOptions};
pub use encrypted::EncryptedSecrets;
pub use watch::Watch;

/// What happened to an object at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as the event log and watchers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub revision: u64,
    pub kind: EventType,
    pub key: String,
    /// The object after the change (for a deletion: its last state, at the deletion revision).
    pub object: Arc<Value>,
    /// The object before the change, when there was one.
    pub prev: Option<Arc<Value>>,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// At most this many items; the rest through [`ListResult::continue_token`].
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<Value>,
    /// The revision the list was read at.
    pub revision: u64,
    pub continue_token: Option<String>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("the object has been modified; please apply your changes to the latest version and try again (expected resourceVersion {expected}, found {actual})")]
    Conflict { expected: u64, actual: u64 },
    #[error("too old resource version: {requested} (oldest retained: {oldest})")]
    Expired { requested: u64, oldest: u64 },
    #[error("invalid continue token: {0}")]
    InvalidContinue(String),
    #[error("storage error: {0}")]
    Backend(String),
}

/// The storage contract every backend (redb, etcd) fulfils.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Value, StoreError>;

    /// Objects whose keys start with `prefix`, filtered and paginated.
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError>;

    /// Stores a new object; fails if the key exists. Returns it with its resourceVersion set.
    async fn create(&self, key: &str, object: Value) -> Result<Value, StoreError>;

    /// Replaces an existing object. With `expected_revision`, fails with
    /// [`StoreError::Conflict`] unless the stored object is still at that revision.
    async fn update(&self, key: &str, object: Value, expected_revision: Option<u64>) -> Result<Value, StoreError>;

    /// Removes an object (optionally only at `expected_revision`); returns its last state,
    /// stamped with the deletion revision.
    async fn delete(&self, key: &str, expected_revision: Option<u64>) -> Result<Value, StoreError>;

    /// Changes to keys under `prefix` after revision `after` (or from now when `None`).
    fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watch, StoreError>;

    /// The newest committed revision.
    fn current_revision(&self) -> u64;
}

/// Parses a `resourceVersion` string into a revision.
pub fn parse_revision(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

/// The revision an object carries in `metadata.resourceVersion`.
pub fn object_revision(object: &Value) -> Option<u64> {
    skiff_core::meta::resource_version(object).and_then(parse_revision)
}
