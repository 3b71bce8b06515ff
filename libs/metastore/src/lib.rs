//! The metastore: where runnel keeps its small control data (nodes, topics,
//! partition state, controller election). One trait, [`MetaStore`], with two
//! backends: [`EtcdStore`] for deployments and [`EmbeddedStore`] (a single
//! process, file-backed) for `runnel dev` and tests. The [`conformance`] suite
//! runs against both so they behave the same.
//!
//! The model is etcd's: every write bumps a store-wide revision; each key
//! remembers the revision of its last write (`mod_revision`), which is what
//! compare-and-swap checks; keys may be attached to a lease and vanish when
//! the lease is not kept alive; a watch streams the changes under a prefix
//! after a given revision, so "range, then watch from the range's revision"
//! never misses an event.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub mod conformance;
mod embedded;
mod etcd;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

/// A store-wide, monotonically increasing write counter.
pub type Revision = i64;

/// A lease id; keys put with a lease are deleted when it expires.
pub type LeaseId = i64;

/// One key and its value as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: Revision },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Result of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write happened at this revision.
    Swapped(Revision),
    /// The key's revision did not match; this is what is there now (None if
    /// the key does not exist).
    Conflict(Option<KeyValue>),
}

/// A stream of watch events, in revision order.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, MetaError>>;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metastore unavailable: {0}")]
    Unavailable(String),
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    /// The watch start revision was compacted away; range again.
    #[error("revision {0} has been compacted")]
    Compacted(Revision),
    #[error("metastore file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("metastore data corrupt: {0}")]
    Corrupt(String),
    #[error("invalid metastore URL {0:?}: {1}")]
    InvalidUrl(String, String),
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// The operations runnel needs from its metadata store.
#[async_trait]
pub trait MetaStore: Send + Sync + Debug + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Write unconditionally; returns the revision of the write.
    async fn put(&self, key: &str, value: Bytes, lease: Option<LeaseId>) -> Result<Revision>;

    /// Write only if the key's `mod_revision` equals `expected`; `expected = 0`
    /// means "only if the key does not exist".
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome>;

    /// Delete a key; true if it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Delete a key only if its `mod_revision` equals `expected`; true if deleted.
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool>;

    /// Delete every key under a prefix; returns how many.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64>;

    /// Every key under a prefix in key order, and the store revision the
    /// snapshot was taken at.
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// Changes under `prefix` with revision > `after`, in revision order. The
    /// stream ends with an error if the store goes away.
    ///
    /// If the store no longer has the history after `after` (or the watcher
    /// falls too far behind), the error is [`MetaError::Compacted`]: returned
    /// here, or as the stream's first item (etcd reports it on the stream).
    /// Range again and watch from the new revision.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// A new lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Refresh a lease once; `LeaseNotFound` if it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// End a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
}

/// Opens a store from a URL: `etcd://host:port[,host:port…]` or
/// `file:///path/to/metastore.json` (embedded).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn MetaStore>> {
    if let Some(rest) = url.strip_prefix("etcd://") {
        let endpoints: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| format!("http://{s}"))
            .collect();
        if endpoints.is_empty() {
            return Err(MetaError::InvalidUrl(url.into(), "no endpoints".into()));
        }
        Ok(std::sync::Arc::new(EtcdStore::connect(&endpoints).await?))
    } else if let Some(path) = url.strip_prefix("file://") {
        Ok(std::sync::Arc::new(EmbeddedStore::open(path).await?))
    } else {
        Err(MetaError::InvalidUrl(
            url.into(),
            "expected etcd://host:port or file:///path".into(),
        ))
    }
}
