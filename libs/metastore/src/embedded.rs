//! The embedded backend: one process, state in memory, optionally persisted
//! to a JSON file after every change.
//!
//! It follows etcd's model closely so code tested against it behaves the same
//! on etcd:
//! - the store revision starts at 0 and every write (put, CAS, delete, a
//!   `delete_prefix` or a lease expiry/revoke) bumps it by one; a write that
//!   deletes several keys (prefix delete, lease revoke or expiry) does so at a
//!   single revision, and a delete that finds nothing does not bump it;
//! - each key carries `create_revision` and `mod_revision`;
//! - watches replay the recent history (the last [`HISTORY_LIMIT`] events)
//!   and then follow live changes; older starting points get
//!   [`MetaError::Compacted`], as does a watcher that falls
//!   [`WATCH_QUEUE_LIMIT`] events behind;
//! - leases expire `ttl` after their last keep-alive; expiry is checked
//!   before every operation and by a background task, and deletes the leased
//!   keys with `Delete` events.
//!
//! Persistence (`open`): every change writes the whole snapshot (revision,
//! next lease id, keys without a lease) to a temporary file, fsyncs it,
//! renames it over the old one and fsyncs the directory, before the operation
//! returns. Concurrent writers share one file write (group commit). Leased
//! keys are not persisted: their owners are gone after a restart. Changes are
//! visible to readers and watchers of this process before they are durable;
//! since all of them live in this one process, a crash loses them together.
//! If writing the file fails, the operation returns [`MetaError::Io`] but its
//! change stays in memory; the next successful write persists it.
//! One file must be opened by one store at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    CasOutcome, KeyValue, LeaseId, MetaError, MetaStore, Result, Revision, WatchEvent, WatchStream,
};

/// How many recent events are kept for watches that start in the past.
pub const HISTORY_LIMIT: usize = 10_000;

/// How many undelivered events a watcher may have queued before it is cut
/// off with [`MetaError::Compacted`].
pub const WATCH_QUEUE_LIMIT: usize = 65_536;

/// Longest sleep of the lease-expiry task (it also wakes for each deadline).
const TICK: Duration = Duration::from_secs(1);

/// Snapshot file format version.
const FORMAT_VERSION: u32 = 1;

/// The embedded store. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    file: Option<FileSink>,
    /// Wakes the lease-expiry task when a lease is granted.
    lease_notify: Arc<Notify>,
}

struct FileSink {
    path: PathBuf,
    /// The generation last written to the file.
    written: tokio::sync::Mutex<u64>,
}

struct Entry {
    value: Bytes,
    create_revision: Revision,
    mod_revision: Revision,
    lease: Option<LeaseId>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<WatchEvent>,
    /// Set to the first revision the watcher could not be given (0: none).
    lagged_at: Arc<AtomicI64>,
}

struct State {
    kvs: BTreeMap<String, Entry>,
    revision: Revision,
    leases: HashMap<LeaseId, Lease>,
    next_lease_id: LeaseId,
    /// Recent events, in revision order.
    history: VecDeque<WatchEvent>,
    /// Every event with a revision >= this is in `history`.
    history_start: Revision,
    watchers: Vec<Watcher>,
    /// Bumped by every change that the file must reflect.
    generation: u64,
    expiry_task: Option<JoinHandle<()>>,
}

impl State {
    fn new(revision: Revision, next_lease_id: LeaseId) -> Self {
        State {
            kvs: BTreeMap::new(),
            revision,
            leases: HashMap::new(),
            next_lease_id,
            history: VecDeque::new(),
            history_start: revision + 1,
            watchers: Vec::new(),
            generation: 0,
            expiry_task: None,
        }
    }

    fn to_kv(key: &str, e: &Entry) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: e.value.clone(),
            create_revision: e.create_revision,
            mod_revision: e.mod_revision,
            lease: e.lease,
        }
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        self.kvs.get(key).map(|e| Self::to_kv(key, e))
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Fails unless `lease` (if any) is live.
    fn check_lease(&self, lease: Option<LeaseId>) -> Result<()> {
        match lease {
            Some(id) if !self.leases.contains_key(&id) => Err(MetaError::LeaseNotFound(id)),
            _ => Ok(()),
        }
    }

    /// Writes one key at a new revision and publishes the event.
    fn put(&mut self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Revision {
        self.revision += 1;
        let rev = self.revision;
        let (create_revision, old_lease) = self
            .kvs
            .get(key)
            .map_or((rev, None), |old| (old.create_revision, old.lease));
        if old_lease != lease {
            self.detach(key, old_lease);
        }
        if let Some(id) = lease
            && let Some(l) = self.leases.get_mut(&id)
        {
            l.keys.insert(key.to_owned());
        }
        let entry = Entry {
            value,
            create_revision,
            mod_revision: rev,
            lease,
        };
        let event = WatchEvent::Put(Self::to_kv(key, &entry));
        self.kvs.insert(key.to_owned(), entry);
        self.publish(vec![event]);
        rev
    }

    fn detach(&mut self, key: &str, lease: Option<LeaseId>) {
        if let Some(id) = lease
            && let Some(l) = self.leases.get_mut(&id)
        {
            l.keys.remove(key);
        }
    }

    /// Deletes the given keys (which must exist) at one new revision.
    fn delete_keys(&mut self, keys: Vec<String>) -> u64 {
        if keys.is_empty() {
            return 0;
        }
        self.revision += 1;
        let rev = self.revision;
        let mut events = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(old) = self.kvs.remove(&key) {
                self.detach(&key, old.lease);
                events.push(WatchEvent::Delete {
                    key,
                    mod_revision: rev,
                });
            }
        }
        let n = events.len() as u64;
        self.publish(events);
        n
    }

    /// Ends a lease, deleting its keys at one revision.
    fn end_lease(&mut self, id: LeaseId) -> bool {
        match self.leases.remove(&id) {
            Some(lease) => {
                self.delete_keys(lease.keys.into_iter().collect());
                true
            }
            None => false,
        }
    }

    /// Ends every lease whose deadline has passed; true if anything changed.
    fn expire_leases(&mut self, now: Instant) -> bool {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let before = self.revision;
        for id in expired {
            self.end_lease(id);
        }
        self.revision != before
    }

    /// Records events in the history and hands them to matching watchers.
    fn publish(&mut self, events: Vec<WatchEvent>) {
        self.generation += 1;
        self.watchers.retain(|w| {
            for event in events.iter().filter(|e| e.key().starts_with(&w.prefix)) {
                match w.tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(e)) => {
                        w.lagged_at.store(e.revision(), Ordering::Release);
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        self.history.extend(events);
        while self.history.len() > HISTORY_LIMIT {
            // Drop whole revisions so `history_start` stays exact.
            let Some(first) = self.history.front().map(WatchEvent::revision) else {
                break;
            };
            while self.history.front().is_some_and(|e| e.revision() == first) {
                self.history.pop_front();
            }
            self.history_start = first + 1;
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            format: FORMAT_VERSION,
            revision: self.revision,
            next_lease_id: self.next_lease_id,
            kvs: self
                .kvs
                .iter()
                .filter(|(_, e)| e.lease.is_none())
                .map(|(k, e)| StoredKv {
                    key: k.clone(),
                    value: StoredValue::from_bytes(&e.value),
                    create_revision: e.create_revision,
                    mod_revision: e.mod_revision,
                })
                .collect(),
        }
    }
}

/// The file format.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    revision: Revision,
    next_lease_id: LeaseId,
    kvs: Vec<StoredKv>,
}

#[derive(Serialize, Deserialize)]
struct StoredKv {
    key: String,
    value: StoredValue,
    create_revision: Revision,
    mod_revision: Revision,
}

/// Values are stored as a JSON string when they are UTF-8 (readable), else
/// as an array of bytes.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredValue {
    Text(String),
    Bytes(Vec<u8>),
}

impl StoredValue {
    fn from_bytes(b: &Bytes) -> Self {
        match std::str::from_utf8(b) {
            Ok(s) => StoredValue::Text(s.to_owned()),
            Err(_) => StoredValue::Bytes(b.to_vec()),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            StoredValue::Text(s) => Bytes::from(s),
            StoredValue::Bytes(b) => Bytes::from(b),
        }
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.file.as_ref().map(|f| &f.path))
            .field("revision", &st.revision)
            .field("keys", &st.kvs.len())
            .field("leases", &st.leases.len())
            .finish()
    }
}

impl EmbeddedStore {
    /// A store that lives only in memory (for tests).
    pub fn in_memory() -> Self {
        Self::from_state(State::new(0, 1), None)
    }

    /// Opens (or creates) a file-backed store at `path`, loading its snapshot
    /// if the file exists. Keys that had a lease are not in the file.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let load_path = path.clone();
        let snapshot = tokio::task::spawn_blocking(move || load(&load_path))
            .await
            .map_err(|e| MetaError::Io(std::io::Error::other(e)))??;
        let state = match snapshot {
            None => State::new(0, 1),
            Some(snap) => {
                if snap.format != FORMAT_VERSION {
                    return Err(MetaError::Corrupt(format!(
                        "{}: unknown format version {}",
                        path.display(),
                        snap.format
                    )));
                }
                let mut state = State::new(snap.revision, snap.next_lease_id);
                for kv in snap.kvs {
                    if kv.mod_revision > snap.revision || kv.create_revision > kv.mod_revision {
                        return Err(MetaError::Corrupt(format!(
                            "{}: key {:?} has revisions beyond the store's",
                            path.display(),
                            kv.key
                        )));
                    }
                    state.kvs.insert(
                        kv.key,
                        Entry {
                            value: kv.value.into_bytes(),
                            create_revision: kv.create_revision,
                            mod_revision: kv.mod_revision,
                            lease: None,
                        },
                    );
                }
                state
            }
        };
        Ok(Self::from_state(
            state,
            Some(FileSink {
                path,
                written: tokio::sync::Mutex::new(0),
            }),
        ))
    }

    fn from_state(state: State, file: Option<FileSink>) -> Self {
        EmbeddedStore {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                file,
                lease_notify: Arc::new(Notify::new()),
            }),
        }
    }

    /// The current store revision.
    pub fn revision(&self) -> Revision {
        self.inner.state.lock().revision
    }

    /// Runs `f` on the state after expiring overdue leases, then makes the
    /// change durable if the state changed.
    async fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T> {
        let (out, changed_to) = {
            let mut st = self.inner.state.lock();
            let before = st.generation;
            st.expire_leases(Instant::now());
            let out = f(&mut st);
            let changed_to = (st.generation != before).then_some(st.generation);
            (out, changed_to)
        };
        if let Some(generation) = changed_to {
            self.persist(generation).await?;
        }
        Ok(out)
    }

    /// Makes sure the file reflects at least `generation`.
    async fn persist(&self, generation: u64) -> Result<()> {
        let Some(file) = &self.inner.file else {
            return Ok(());
        };
        let mut written = file.written.lock().await;
        if *written >= generation {
            return Ok(()); // someone else wrote a newer snapshot
        }
        let (latest, bytes) = {
            let st = self.inner.state.lock();
            let bytes = serde_json::to_vec_pretty(&st.snapshot())
                .map_err(|e| MetaError::Corrupt(format!("serializing the snapshot: {e}")))?;
            (st.generation, bytes)
        };
        let path = file.path.clone();
        tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(|e| MetaError::Io(std::io::Error::other(e)))??;
        *written = latest;
        Ok(())
    }

    /// Starts the lease-expiry task unless it runs already.
    fn ensure_expiry_task(&self, st: &mut State) {
        if st.expiry_task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        // Without a runtime, expiry still happens lazily on each operation.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let notify = self.inner.lease_notify.clone();
        st.expiry_task = Some(handle.spawn(expiry_task(weak, notify)));
    }
}

/// Expires leases at their deadlines until the store is dropped.
async fn expiry_task(weak: Weak<Inner>, notify: Arc<Notify>) {
    loop {
        let wait = {
            let Some(inner) = weak.upgrade() else { return };
            let st = inner.state.lock();
            let now = Instant::now();
            st.leases
                .values()
                .map(|l| l.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(TICK)
                .min(TICK)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = notify.notified() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let store = EmbeddedStore { inner };
        let changed_to = {
            let mut st = store.inner.state.lock();
            st.expire_leases(Instant::now()).then_some(st.generation)
        };
        if let Some(generation) = changed_to
            && let Err(e) = store.persist(generation).await
        {
            tracing::warn!(error = %e, "embedded metastore: persisting lease expiry failed");
        }
    }
}

fn load(path: &Path) -> Result<Option<Snapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| MetaError::Corrupt(format!("{}: {e}", path.display())))
}

/// Replaces `path` with `bytes` atomically and durably.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.with_state(|st| st.get(key)).await
    }

    async fn put(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<Revision> {
        self.with_state(|st| {
            st.check_lease(lease)?;
            Ok(st.put(key, value, lease))
        })
        .await?
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome> {
        self.with_state(|st| {
            let current = st.get(key);
            let actual = current.as_ref().map_or(0, |kv| kv.mod_revision);
            if actual != expected {
                return Ok(CasOutcome::Conflict(current));
            }
            st.check_lease(lease)?;
            Ok(CasOutcome::Swapped(st.put(key, value, lease)))
        })
        .await?
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.with_state(|st| {
            if st.kvs.contains_key(key) {
                st.delete_keys(vec![key.to_owned()]) > 0
            } else {
                false
            }
        })
        .await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool> {
        self.with_state(|st| match st.kvs.get(key) {
            Some(e) if e.mod_revision == expected => st.delete_keys(vec![key.to_owned()]) > 0,
            _ => false,
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.with_state(|st| {
            let keys = st.keys_with_prefix(prefix);
            st.delete_keys(keys)
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.with_state(|st| {
            let kvs = st
                .kvs
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, e)| State::to_kv(k, e))
                .collect();
            (kvs, st.revision)
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let lagged_at = Arc::new(AtomicI64::new(0));
        let (tx, rx) = mpsc::channel(WATCH_QUEUE_LIMIT);
        let replay = self
            .with_state(|st| {
                if after + 1 < st.history_start {
                    return Err(MetaError::Compacted(after + 1));
                }
                let replay: Vec<WatchEvent> = st
                    .history
                    .iter()
                    .filter(|e| e.revision() > after && e.key().starts_with(prefix))
                    .cloned()
                    .collect();
                st.watchers.retain(|w| !w.tx.is_closed());
                st.watchers.push(Watcher {
                    prefix: prefix.to_owned(),
                    tx,
                    lagged_at: lagged_at.clone(),
                });
                Ok(replay)
            })
            .await??;
        let live = ReceiverStream::new(rx)
            .filter(move |e| std::future::ready(e.revision() > after))
            .map(Ok);
        // When the channel closes: either this watcher fell behind, or the
        // store was dropped.
        let end = futures::stream::once(async move {
            match lagged_at.load(Ordering::Acquire) {
                0 => Err(MetaError::Unavailable("embedded metastore closed".into())),
                missed => Err(MetaError::Compacted(missed)),
            }
        });
        Ok(futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .chain(end)
            .boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl = ttl.max(Duration::from_millis(1));
        let id = self
            .with_state(|st| {
                let id = st.next_lease_id;
                st.next_lease_id += 1;
                st.leases.insert(
                    id,
                    Lease {
                        ttl,
                        deadline: Instant::now() + ttl,
                        keys: BTreeSet::new(),
                    },
                );
                st.generation += 1; // the next lease id must survive a restart
                self.ensure_expiry_task(st);
                id
            })
            .await?;
        self.inner.lease_notify.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.with_state(|st| match st.leases.get_mut(&lease) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(MetaError::LeaseNotFound(lease)),
        })
        .await?
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.with_state(|st| {
            if st.end_lease(lease) {
                Ok(())
            } else {
                Err(MetaError::LeaseNotFound(lease))
            }
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn first_write_is_revision_one() {
        let store = EmbeddedStore::in_memory();
        assert_eq!(store.range("").await.unwrap().1, 0);
        assert_eq!(store.put("a", Bytes::from("1"), None).await.unwrap(), 1);
        assert_eq!(store.put("b", Bytes::from("2"), None).await.unwrap(), 2);
        // Deleting nothing is not a write.
        assert_eq!(store.delete_prefix("zzz").await.unwrap(), 0);
        assert!(!store.delete("zzz").await.unwrap());
        assert_eq!(store.revision(), 2);
        // A prefix delete is one write.
        assert_eq!(store.delete_prefix("").await.unwrap(), 2);
        assert_eq!(store.revision(), 3);
    }

    #[tokio::test]
    async fn watch_older_than_history_is_compacted() {
        let store = EmbeddedStore::in_memory();
        for i in 0..HISTORY_LIMIT + 10 {
            store
                .put("k", Bytes::from(i.to_string()), None)
                .await
                .unwrap();
        }
        match store.watch("k", 0).await {
            Err(MetaError::Compacted(1)) => {}
            Err(e) => panic!("expected Compacted(1), got {e}"),
            Ok(_) => panic!("expected Compacted(1), got a stream"),
        }
        // The oldest retained revision still works.
        let first_kept = (HISTORY_LIMIT + 10 - HISTORY_LIMIT) as Revision + 1;
        let mut w = store.watch("k", first_kept - 1).await.unwrap();
        let e = w.next().await.unwrap().unwrap();
        assert_eq!(e.revision(), first_kept);
    }

    #[tokio::test]
    async fn slow_watcher_is_cut_off_with_compacted() {
        let store = EmbeddedStore::in_memory();
        let (_, rev) = store.range("").await.unwrap();
        let mut w = store.watch("", rev).await.unwrap();
        let n = WATCH_QUEUE_LIMIT + 5;
        for i in 0..n {
            store
                .put("k", Bytes::from(i.to_string()), None)
                .await
                .unwrap();
        }
        let mut seen = 0;
        loop {
            match w.next().await.unwrap() {
                Ok(_) => seen += 1,
                Err(MetaError::Compacted(r)) => {
                    assert_eq!(r, seen as Revision + 1);
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(seen, WATCH_QUEUE_LIMIT);
        assert!(w.next().await.is_none());
    }

    #[tokio::test]
    async fn watch_ends_with_error_when_store_dropped() {
        let store = EmbeddedStore::in_memory();
        let mut w = store.watch("", 0).await.unwrap();
        store.put("a", Bytes::from("1"), None).await.unwrap();
        drop(store);
        assert!(matches!(w.next().await, Some(Ok(WatchEvent::Put(_)))));
        assert!(matches!(
            w.next().await,
            Some(Err(MetaError::Unavailable(_)))
        ));
        assert!(w.next().await.is_none());
    }

    #[tokio::test]
    async fn lease_expires_without_other_operations() {
        let store = EmbeddedStore::in_memory();
        let lease = store.grant_lease(Duration::from_millis(200)).await.unwrap();
        let rev = store.put("l", Bytes::from("x"), Some(lease)).await.unwrap();
        let mut w = store.watch("", rev).await.unwrap();
        // Only the background task can produce this event: nothing else runs.
        let e = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .expect("expiry event")
            .unwrap()
            .unwrap();
        assert_eq!(
            e,
            WatchEvent::Delete {
                key: "l".into(),
                mod_revision: rev + 1
            }
        );
    }

    #[tokio::test]
    async fn binary_values_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("meta.json");
        let bin = Bytes::from_static(&[0xff, 0x00, 0xfe]);
        {
            let store = EmbeddedStore::open(&path).await.unwrap();
            store.put("bin", bin.clone(), None).await.unwrap();
            store.put("text", Bytes::from("héllo"), None).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).await.unwrap();
        assert_eq!(store.get("bin").await.unwrap().unwrap().value, bin);
        assert_eq!(
            store.get("text").await.unwrap().unwrap().value,
            Bytes::from("héllo")
        );
    }

    #[tokio::test]
    async fn corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            EmbeddedStore::open(&path).await,
            Err(MetaError::Corrupt(_))
        ));
    }
}
