//! Storage node settings (TOML file, `RUNNEL_*` environment, CLI flags).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::FlushPolicy;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// This node's id, unique in the cluster and stable across restarts.
    pub node_id: i32,
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Address other roles and clients dial; defaults to `listen`.
    pub advertised_address: Option<String>,
    /// Where partition logs live.
    pub data_dir: PathBuf,
    /// `etcd://host:port[,host:port]` or `file:///path` (embedded, one process only).
    pub metastore: String,
    /// Cluster name: the metastore prefix `/runnel/<cluster>/`.
    pub cluster: String,
    pub rack: String,
    /// Seconds the node's registration lease lives without a keep-alive;
    /// after that the controller considers the node gone.
    pub lease_ttl_secs: u64,
    /// `always` (fsync before acknowledging, with group commit), `interval`
    /// (fsync every `flush_interval_ms` in the background) or `os` (leave it to
    /// the page cache).
    pub flush: String,
    pub flush_interval_ms: u64,
    /// Upper bound on how long a fetch may wait for data.
    pub max_fetch_wait_ms: u32,
    /// How often the node applies retention (`retention.ms`,
    /// `retention.bytes`) to its partitions (Kafka's
    /// `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// How often the cleaner looks for compacted topics' partitions dirty
    /// enough to compact (Kafka's `log.cleaner.backoff.ms`).
    pub log_cleaner_interval_ms: u64,
    /// A follower that has not caught up with its leader for this long
    /// leaves the in-sync replica set (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// Longest a follower's fetch waits at the leader for new data.
    pub replica_fetch_wait_max_ms: u32,
    /// Bytes a follower fetches per partition per request.
    pub replica_fetch_max_bytes: i32,
    /// An idempotent producer silent this long is forgotten (its retries are
    /// no longer recognised), checked with retention (Kafka's
    /// `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: i64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            node_id: 1,
            listen: "0.0.0.0:7500".into(),
            advertised_address: None,
            data_dir: PathBuf::from("data/storage"),
            metastore: "etcd://127.0.0.1:2379".into(),
            cluster: "runnel".into(),
            rack: String::new(),
            lease_ttl_secs: 10,
            flush: "always".into(),
            flush_interval_ms: 1000,
            max_fetch_wait_ms: 30_000,
            retention_check_interval_ms: 60_000,
            log_cleaner_interval_ms: 15_000,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1 << 20,
            producer_id_expiration_ms: 86_400_000,
        }
    }
}

impl StorageConfig {
    pub fn flush_policy(&self) -> Result<FlushPolicy, String> {
        match self.flush.as_str() {
            "always" => Ok(FlushPolicy::EveryAppend),
            "interval" => Ok(FlushPolicy::Interval(Duration::from_millis(
                self.flush_interval_ms.max(1),
            ))),
            "os" => Ok(FlushPolicy::Os),
            other => Err(format!(
                "invalid flush policy {other:?}: expected always, interval or os"
            )),
        }
    }
}
