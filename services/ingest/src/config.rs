//! Ingest settings (TOML file, `RUNNEL_*` environment, CLI flags).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Address the gRPC server listens on.
    pub listen: String,
    /// `etcd://host:port[,host:port]` or `file:///path` (embedded, one process only).
    pub metastore: String,
    /// Cluster name: the metastore prefix `/runnel/<cluster>/`.
    pub cluster: String,
    /// Create unknown topics on first produce (off by default: a typo in a
    /// topic name should be an error, not a new topic).
    pub auto_create_topics: bool,
    /// Partition count of auto-created topics.
    pub auto_create_partitions: i32,
    /// Timeout of a produce request that does not give one.
    pub default_timeout_ms: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "0.0.0.0:7600".into(),
            metastore: "etcd://127.0.0.1:2379".into(),
            cluster: "runnel".into(),
            auto_create_topics: false,
            auto_create_partitions: 1,
            default_timeout_ms: 30_000,
        }
    }
}
