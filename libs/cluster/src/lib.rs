//! The cluster metadata model shared by every role.
//!
//! - [`keys`]: where things live in the metastore (`/runnel/<cluster>/…`);
//! - [`model`]: the JSON records stored there (nodes, topics, partitions, the
//!   controller);
//! - [`producer_id`]: producer ids and epochs for idempotent producers;
//! - [`topic_config`]: topic names and per-topic configs, their defaults and
//!   validation (shared by the coordinator and the Kafka edge);
//! - [`watcher`]: a cache of the whole cluster metadata kept current by a
//!   metastore watch, so roles learn changes without polling.

pub mod keys;
pub mod model;
pub mod producer_id;
pub mod topic_config;
pub mod watcher;

pub use keys::Keys;
pub use model::{
    ClusterMetadata, ControllerRecord, EdgeRecord, GroupsNodeRecord, NodeRecord, OFFSETS_TOPIC,
    PartitionRecord, TopicRecord, TopicState, group_shard,
};
pub use producer_id::{ProducerIdentity, init_producer};
pub use topic_config::{ConfigError, TopicConfig};
pub use watcher::MetadataWatcher;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
