//! The embedded backend: objects, an event log and the revision counter in one redb file.
//!
//! One writer thread owns all writes. It takes every request waiting in its queue, applies
//! them in one transaction (each with its own revision and precondition check), commits
//! once with an fsync, then fans the events out to watchers and answers them all. Under
//! concurrency that is group commit: many writes per fsync.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use crate::watch::{EventLog, Watch};
use crate::{Event, EventType, ListOptions, ListResult, Store, StoreError, continue_token, object_revision};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
const COMPACTED: &str = "compacted";

/// Most write requests one commit takes.
const MAX_BATCH: usize = 2048;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How many recent events the log keeps for watches to resume from.
    pub event_retention: u64,
    /// Buffer of live events per watcher before it falls back to reading the log.
    pub watch_buffer: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { event_retention: 100_000, watch_buffer: 8192 }
    }
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A counter of the META table (`REVISION` or `COMPACTED`); 0 until first written.
fn counter(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StoreError> {
    Ok(meta.get(name).map_err(backend)?.map(|g| g.value()).unwrap_or(0))
}

enum Mutation {
    Create(Value),
    Update(Value, Option<u64>),
    Delete(Option<u64>),
}

struct WriteRequest {
    key: String,
    /// Taken by the commit (`None` after), so the writer thread never copies an object.
    mutation: Option<Mutation>,
    /// The stored object, shared with its event: the caller copies it on its own thread.
    reply: oneshot::Sender<Result<Arc<Value>, StoreError>>,
}

/// The event log's on-disk form, as read back (written by [`logged_event`]).
#[derive(serde::Deserialize)]
struct LoggedEvent {
    kind: EventType,
    key: String,
    object: Value,
    prev: Option<Value>,
}

/// A [`LoggedEvent`]'s JSON, assembled around object bytes already encoded (for the
/// objects table, or as read from it), so the single writer thread encodes each object once.
fn logged_event(kind: EventType, key: &str, object: &[u8], prev: Option<&[u8]>) -> Result<Vec<u8>, StoreError> {
    let mut record = Vec::with_capacity(object.len() + prev.map_or(0, <[u8]>::len) + key.len() + 48);
    record.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut record, &kind).map_err(backend)?;
    record.extend_from_slice(b",\"key\":");
    serde_json::to_writer(&mut record, key).map_err(backend)?;
    record.extend_from_slice(b",\"object\":");
    record.extend_from_slice(object);
    if let Some(prev) = prev {
        record.extend_from_slice(b",\"prev\":");
        record.extend_from_slice(prev);
    }
    record.push(b'}');
    Ok(record)
}

struct Shared {
    db: Database,
    revision: AtomicU64,
    events: broadcast::Sender<Arc<Event>>,
}

pub struct RedbStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<WriteRequest>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbStore {
    /// Stops the writer and waits for it, so the file is closed (and may be opened again)
    /// once the store is gone.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.writes, mpsc::channel().0));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let revision = {
            let txn = db.begin_write().map_err(backend)?;
            let revision = {
                txn.open_table(OBJECTS).map_err(backend)?;
                txn.open_table(EVENTS).map_err(backend)?;
                counter(&txn.open_table(META).map_err(backend)?, REVISION)?
            };
            txn.commit().map_err(backend)?;
            revision
        };
        let (events, _) = broadcast::channel(options.watch_buffer.max(16));
        let shared = Arc::new(Shared { db, revision: AtomicU64::new(revision), events });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("skiff-store-writer".into())
            .spawn(move || writer_loop(writer_shared, rx, options.event_retention))
            .map_err(backend)?;
        Ok(Self { shared, writes: tx, writer: Some(writer) })
    }

    async fn write(&self, key: &str, mutation: Mutation) -> Result<Value, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriteRequest { key: key.to_string(), mutation: Some(mutation), reply })
            .map_err(|_| StoreError::Backend("store writer stopped".into()))?;
        let stored = answer.await.map_err(|_| StoreError::Backend("store writer stopped".into()))??;
        Ok(Arc::try_unwrap(stored).unwrap_or_else(|shared| (*shared).clone()))
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared)).await.map_err(backend)?
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Value, StoreError> {
        // One key is a few page reads, mostly from redb's cache: cheaper in place than the
        // hand-off to a blocking thread (which cost more than the read on every create's
        // namespace check).
        let txn = self.shared.db.begin_read().map_err(backend)?;
        let table = txn.open_table(OBJECTS).map_err(backend)?;
        let guard = table.get(key).map_err(backend)?.ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        serde_json::from_slice(guard.value()).map_err(backend)
    }

    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError> {
        let prefix = prefix.to_string();
        let options = options.clone();
        self.read(move |s| list_blocking(s, &prefix, &options)).await
    }

    async fn create(&self, key: &str, object: Value) -> Result<Value, StoreError> {
        self.write(key, Mutation::Create(object)).await
    }

    async fn update(&self, key: &str, object: Value, expected_revision: Option<u64>) -> Result<Value, StoreError> {
        self.write(key, Mutation::Update(object, expected_revision)).await
    }

    async fn delete(&self, key: &str, expected_revision: Option<u64>) -> Result<Value, StoreError> {
        self.write(key, Mutation::Delete(expected_revision)).await
    }

    fn watch(&self, prefix: &str, after: Option<u64>) -> Result<Watch, StoreError> {
        let live = self.shared.events.subscribe();
        let after = after.unwrap_or_else(|| self.current_revision());
        Watch::start(prefix, after, live, self.shared.clone())
    }

    fn current_revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Acquire)
    }
}

impl EventLog for Shared {
    fn events_after(&self, prefix: &str, after: u64) -> Result<Vec<Arc<Event>>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let compacted = counter(&txn.open_table(META).map_err(backend)?, COMPACTED)?;
        if after < compacted {
            return Err(StoreError::Expired { requested: after, oldest: compacted });
        }
        let table = txn.open_table(EVENTS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.range(after + 1..).map_err(backend)? {
            let (rev, bytes) = entry.map_err(backend)?;
            let logged: LoggedEvent = serde_json::from_slice(bytes.value()).map_err(backend)?;
            if logged.key.starts_with(prefix) {
                out.push(Arc::new(Event {
                    revision: rev.value(),
                    kind: logged.kind,
                    key: logged.key,
                    object: Arc::new(logged.object),
                    prev: logged.prev.map(Arc::new),
                }));
            }
        }
        Ok(out)
    }
}

/// Lists under `prefix`. A later page (`continue`) reads the snapshot of the first page's
/// revision, as etcd-backed Kubernetes does: objects written since are read as they were
/// then, from the event log (410 once the log no longer reaches back that far).
fn list_blocking(s: &Shared, prefix: &str, options: &ListOptions) -> Result<ListResult, StoreError> {
    let txn = s.db.begin_read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let mut revision = counter(&meta, REVISION)?;
    let mut start = prefix.to_string();
    let mut then = BTreeMap::new();
    if let Some(token) = &options.continue_token {
        let (rv, from) = continue_token::decode(token)?;
        let compacted = counter(&meta, COMPACTED)?;
        if rv < compacted {
            return Err(StoreError::Expired { requested: rv, oldest: compacted });
        }
        if !from.starts_with(prefix) {
            return Err(StoreError::InvalidContinue("token is for another list".into()));
        }
        if rv > revision {
            return Err(StoreError::InvalidContinue("token is from the future".into()));
        }
        // Later pages report the first page's revision, as Kubernetes does.
        then = written_since(&txn, prefix, &from, rv)?;
        revision = rv;
        start = from;
    }
    let table = txn.open_table(OBJECTS).map_err(backend)?;
    let limit = options.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut continue_token = None;
    // A pinned name (kubectl's `fieldSelector=metadata.name=x`) skips parsing others.
    let name_only = options.fields.required_name().map(|n| format!("/{n}"));
    let wanted = |key: &str| name_only.as_ref().is_none_or(|n| key.ends_with(n.as_str()));
    // Takes one object in key order; false once the page is full.
    let mut take = |key: &str, object: Value| -> bool {
        if !options.labels.matches_object(&object) || !options.fields.matches(&object) {
            return true;
        }
        if items.len() == limit {
            continue_token = Some(continue_token::encode(revision, key));
            return false;
        }
        items.push(object);
        true
    };
    let mut past = then.into_iter().peekable();
    let mut full = false;
    'current: for entry in table.range(start.as_str()..).map_err(backend)? {
        let (key, bytes) = entry.map_err(backend)?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        // Objects deleted since the snapshot that sort before this key come first.
        while let Some((gone, then)) = past.next_if(|(k, _)| k.as_str() < key) {
            if let Some(object) = then.filter(|_| wanted(&gone))
                && !take(&gone, object)
            {
                full = true;
                break 'current;
            }
        }
        let object = match past.next_if(|(k, _)| k == key) {
            Some((_, then)) => match then {
                Some(object) if wanted(key) => object,
                _ => continue,
            },
            None if wanted(key) => serde_json::from_slice(bytes.value()).map_err(backend)?,
            None => continue,
        };
        if !take(key, object) {
            full = true;
            break;
        }
    }
    // Objects deleted since the snapshot after the last one there is now.
    if !full {
        for (gone, then) in past {
            if let Some(object) = then.filter(|_| wanted(&gone))
                && !take(&gone, object)
            {
                break;
            }
        }
    }
    Ok(ListResult { items, revision, continue_token })
}

/// Keys under `prefix` from `start` on that were written after revision `rv`, each with
/// what it held at `rv` (`None`: it did not exist): the `prev` of its first later event.
fn written_since(txn: &redb::ReadTransaction, prefix: &str, start: &str, rv: u64) -> Result<BTreeMap<String, Option<Value>>, StoreError> {
    /// Only the key of a logged event, to skip others' without building their objects.
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        key: String,
    }
    let log = txn.open_table(EVENTS).map_err(backend)?;
    let mut then = BTreeMap::new();
    for entry in log.range(rv + 1..).map_err(backend)? {
        let (_, bytes) = entry.map_err(backend)?;
        let KeyOnly { key } = serde_json::from_slice(bytes.value()).map_err(backend)?;
        if key.starts_with(prefix) && key.as_str() >= start && !then.contains_key(&key) {
            let logged: LoggedEvent = serde_json::from_slice(bytes.value()).map_err(backend)?;
            then.insert(key, logged.prev);
        }
    }
    Ok(then)
}

fn writer_loop(shared: Arc<Shared>, requests: mpsc::Receiver<WriteRequest>, retention: u64) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let committed = commit_batch(&shared, &mut batch, retention);
        crate::metrics::COMMIT_DURATION.observe(started.elapsed().as_secs_f64());
        crate::metrics::BATCH_SIZE.observe(batch.len() as f64);
        match committed {
            Ok((results, events)) => {
                if let Some(last) = events.last() {
                    shared.revision.store(last.revision, Ordering::Release);
                }
                // Events first: with nobody watching they are dropped here, so each caller
                // holds the only reference to its object and takes it without a copy.
                for event in events {
                    // No receivers is fine: nobody is watching.
                    let _ = shared.events.send(Arc::new(event));
                }
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                for request in batch {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

type BatchOutcome = (Vec<Result<Arc<Value>, StoreError>>, Vec<Event>);

fn commit_batch(shared: &Shared, batch: &mut [WriteRequest], retention: u64) -> Result<BatchOutcome, StoreError> {
    let txn = shared.db.begin_write().map_err(backend)?;
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    {
        let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
        let mut log = txn.open_table(EVENTS).map_err(backend)?;
        let mut meta = txn.open_table(META).map_err(backend)?;
        let mut revision = counter(&meta, REVISION)?;
        for request in batch {
            let current_bytes = objects.get(request.key.as_str()).map_err(backend)?.map(|g| g.value().to_vec());
            let current: Option<Value> = current_bytes.as_deref().map(serde_json::from_slice).transpose().map_err(backend)?;
            let mutation = request.mutation.take().expect("each request is committed once");
            let outcome = apply(&request.key, mutation, current, revision + 1);
            let (result, event) = match outcome {
                Ok(event) => {
                    revision += 1;
                    let bytes = serde_json::to_vec(&*event.object).map_err(backend)?;
                    if event.kind == EventType::Deleted {
                        objects.remove(request.key.as_str()).map_err(backend)?;
                    } else {
                        objects.insert(request.key.as_str(), bytes.as_slice()).map_err(backend)?;
                    }
                    log.insert(revision, logged_event(event.kind, &event.key, &bytes, current_bytes.as_deref())?.as_slice()).map_err(backend)?;
                    (Ok(event.object.clone()), Some(event))
                }
                Err(e) => (Err(e), None),
            };
            results.push(result);
            events.extend(event);
        }
        meta.insert(REVISION, revision).map_err(backend)?;
        // Compact in steps of a tenth of the retention, so most commits skip it.
        let compacted = counter(&meta, COMPACTED)?;
        if revision > compacted + retention + retention / 10 {
            let new_compacted = revision - retention;
            let mut doomed = Vec::new();
            for entry in log.range(..=new_compacted).map_err(backend)? {
                doomed.push(entry.map_err(backend)?.0.value());
            }
            for rev in doomed {
                log.remove(rev).map_err(backend)?;
            }
            meta.insert(COMPACTED, new_compacted).map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)?;
    Ok((results, events))
}

/// Decides one mutation against the current object; the event it makes, or why not.
fn apply(key: &str, mutation: Mutation, current: Option<Value>, revision: u64) -> Result<Event, StoreError> {
    let check = |expected: Option<u64>, current: &Value| -> Result<(), StoreError> {
        let actual = object_revision(current).unwrap_or(0);
        match expected {
            Some(e) if e != actual => Err(StoreError::Conflict { expected: e, actual }),
            _ => Ok(()),
        }
    };
    let stamp = |mut object: Value| {
        skiff_core::meta::set_resource_version(&mut object, revision);
        Arc::new(object)
    };
    let event = |kind, object, prev| Event { revision, kind, key: key.into(), object: stamp(object), prev };
    match (mutation, current) {
        (Mutation::Create(_), Some(_)) => Err(StoreError::AlreadyExists(key.to_string())),
        (Mutation::Create(object), None) => Ok(event(EventType::Added, object, None)),
        (Mutation::Update(..) | Mutation::Delete(_), None) => Err(StoreError::NotFound(key.to_string())),
        (Mutation::Update(object, expected), Some(current)) => {
            check(expected, &current)?;
            Ok(event(EventType::Modified, object, Some(Arc::new(current))))
        }
        (Mutation::Delete(expected), Some(current)) => {
            check(expected, &current)?;
            // A deletion's event carries the object's last state at the deletion revision.
            Ok(event(EventType::Deleted, current.clone(), Some(Arc::new(current))))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::json;
    use skiff_core::LabelSelector;

    fn obj(name: &str, app: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": app}}, "data": {"k": "v"}})
    }

    fn open(dir: &tempfile::TempDir, retention: u64) -> RedbStore {
        RedbStore::open(&dir.path().join("db"), StoreOptions { event_retention: retention, watch_buffer: 64 }).unwrap()
    }

    #[tokio::test]
    async fn crud_with_revisions_and_preconditions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 1000);
        let a = store.create("/core/cm/d/a", obj("a", "x")).await.unwrap();
        assert_eq!(object_revision(&a), Some(1));
        assert_eq!(store.create("/core/cm/d/a", obj("a", "x")).await, Err(StoreError::AlreadyExists("/core/cm/d/a".into())));
        let b = store.update("/core/cm/d/a", obj("a", "y"), Some(1)).await.unwrap();
        assert_eq!(object_revision(&b), Some(2));
        assert!(matches!(store.update("/core/cm/d/a", obj("a", "z"), Some(1)).await, Err(StoreError::Conflict { expected: 1, actual: 2 })));
        assert_eq!(store.get("/core/cm/d/a").await.unwrap(), b);
        let gone = store.delete("/core/cm/d/a", None).await.unwrap();
        assert_eq!(object_revision(&gone), Some(3));
        assert!(matches!(store.get("/core/cm/d/a").await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.update("/core/cm/d/a", obj("a", "y"), None).await, Err(StoreError::NotFound(_))));
        assert_eq!(store.current_revision(), 3);
    }

    #[tokio::test]
    async fn list_filters_and_paginates() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 1000);
        for i in 0..10 {
            let app = if i % 2 == 0 { "even" } else { "odd" };
            store.create(&format!("/core/cm/d/n{i}"), obj(&format!("n{i}"), app)).await.unwrap();
        }
        store.create("/core/cm/other/n0", obj("n0", "even")).await.unwrap();
        let all = store.list("/core/cm/d/", &ListOptions::default()).await.unwrap();
        assert_eq!(all.items.len(), 10);
        assert_eq!(all.revision, 11);
        let mut options = ListOptions { labels: LabelSelector::parse("app=even").unwrap(), limit: Some(2), ..Default::default() };
        let mut names = Vec::new();
        loop {
            let page = store.list("/core/cm/d/", &options).await.unwrap();
            assert_eq!(page.revision, 11);
            names.extend(page.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()));
            match page.continue_token {
                Some(t) => options.continue_token = Some(t),
                None => break,
            }
        }
        assert_eq!(names, ["n0", "n2", "n4", "n6", "n8"]);
    }

    #[tokio::test]
    async fn later_pages_read_the_first_pages_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 1000);
        for i in 0..6 {
            store.create(&format!("/core/cm/d/n{i}"), obj(&format!("n{i}"), "v1")).await.unwrap();
        }
        let first = store.list("/core/cm/d/", &ListOptions { limit: Some(2), ..Default::default() }).await.unwrap();
        // Between pages: one changed, one deleted, one created, on both sides of the cursor.
        store.update("/core/cm/d/n3", obj("n3", "v2"), None).await.unwrap();
        store.delete("/core/cm/d/n4", None).await.unwrap();
        store.delete("/core/cm/d/n5", None).await.unwrap();
        store.create("/core/cm/d/n2a", obj("n2a", "v1")).await.unwrap();
        store.update("/core/cm/d/n0", obj("n0", "v2"), None).await.unwrap();
        let rest = store.list("/core/cm/d/", &ListOptions { continue_token: first.continue_token.clone(), ..Default::default() }).await.unwrap();
        assert_eq!(rest.revision, first.revision);
        let names: Vec<&str> = rest.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["n2", "n3", "n4", "n5"]);
        assert!(rest.items.iter().all(|o| o["metadata"]["labels"]["app"] == "v1"));
        // Paged one by one, the same.
        let mut options = ListOptions { limit: Some(1), continue_token: first.continue_token, ..Default::default() };
        let mut paged = Vec::new();
        while options.continue_token.is_some() {
            let page = store.list("/core/cm/d/", &options).await.unwrap();
            paged.extend(page.items.iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()));
            options.continue_token = page.continue_token;
        }
        assert_eq!(paged, ["n2", "n3", "n4", "n5"]);
        // Once the log no longer reaches back, the token has expired.
        let small = tempfile::tempdir().unwrap();
        let store = open(&small, 10);
        for i in 0..4 {
            store.create(&format!("/core/cm/d/n{i}"), obj("n", "a")).await.unwrap();
        }
        let first = store.list("/core/cm/d/", &ListOptions { limit: Some(1), ..Default::default() }).await.unwrap();
        for i in 0..30 {
            store.update("/core/cm/d/n0", obj("n0", &format!("v{i}")), None).await.unwrap();
        }
        let expired = store.list("/core/cm/d/", &ListOptions { continue_token: first.continue_token, ..Default::default() }).await;
        assert!(matches!(expired, Err(StoreError::Expired { .. })));
    }

    #[tokio::test]
    async fn watch_resumes_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 10);
        for i in 0..5 {
            store.create(&format!("/core/cm/d/n{i}"), obj("n", "a")).await.unwrap();
        }
        let mut w = store.watch("/core/cm/", Some(2)).unwrap();
        for rev in 3..=5 {
            assert_eq!(w.next().await.unwrap().unwrap().revision, rev);
        }
        store.delete("/core/cm/d/n0", None).await.unwrap();
        let e = w.next().await.unwrap().unwrap();
        assert_eq!((e.revision, e.kind), (6, EventType::Deleted));
        for i in 0..20 {
            store.update("/core/cm/d/n1", obj("n1", &format!("v{i}")), None).await.unwrap();
        }
        assert!(matches!(store.watch("/core/cm/", Some(1)), Err(StoreError::Expired { .. })));
        assert!(store.watch("/core/cm/", Some(store.current_revision() - 5)).is_ok());
    }

    #[tokio::test]
    async fn logged_events_read_back_as_they_were_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 1000);
        let mut live = store.watch("/core/cm/", None).unwrap();
        store.create("/core/cm/d/a", obj("a", "x")).await.unwrap();
        store.update("/core/cm/d/a", obj("a", "y \"quoted\" \u{e9}"), None).await.unwrap();
        store.delete("/core/cm/d/a", None).await.unwrap();
        let mut logged = store.watch("/core/cm/", Some(0)).unwrap();
        for _ in 0..3 {
            let (sent, read) = (live.next().await.unwrap().unwrap(), logged.next().await.unwrap().unwrap());
            assert_eq!((sent.revision, sent.kind, &sent.key, &sent.object, &sent.prev), (read.revision, read.kind, &read.key, &read.object, &read.prev));
        }
    }

    #[tokio::test]
    async fn a_quiet_watch_keeps_up_with_other_prefixes() {
        // A watch of a kind nobody writes must still move its position (and so its
        // bookmarks) along, or resuming it rescans the whole log after its last event.
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 1000);
        let mut quiet = store.watch("/core/secrets/", None).unwrap();
        for i in 0..3 {
            store.create(&format!("/core/cm/d/n{i}"), obj("n", "a")).await.unwrap();
        }
        let nothing = tokio::time::timeout(Duration::from_millis(100), quiet.next()).await;
        assert!(nothing.is_err(), "no secret event was written");
        assert_eq!(quiet.last_revision(), store.current_revision());
        store.create("/core/secrets/d/s", obj("s", "a")).await.unwrap();
        let e = quiet.next().await.unwrap().unwrap();
        assert_eq!((e.key.as_str(), e.revision), ("/core/secrets/d/s", store.current_revision()));
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir, 1000));
        let mut watch = store.watch("/", None).unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move { s.create(&format!("/core/cm/d/c{i}"), obj("c", "a")).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        for rev in 1..=64 {
            assert_eq!(watch.next().await.unwrap().unwrap().revision, rev);
        }
        drop(watch);
        drop(store);
        // The writer thread lets go of the file once its queue closes.
        let reopened = loop {
            match RedbStore::open(&dir.path().join("db"), StoreOptions::default()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert_eq!(reopened.current_revision(), 64);
        assert_eq!(reopened.list("/core/cm/", &ListOptions::default()).await.unwrap().items.len(), 64);
    }
}
