//! Edge settings (TOML file, `RUNNEL_*` environment, CLI flags).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Address the Kafka listener binds to.
    pub listen: String,
    /// `host:port` Kafka clients are told to connect to (the broker address
    /// in Metadata); defaults to the bound address, with a wildcard host
    /// replaced by loopback.
    pub advertised_address: Option<String>,
    /// This edge's broker id, unique among the cluster's edges. Every
    /// partition's leader is reported as this id: the edge forwards to the
    /// real leader itself.
    pub node_id: i32,
    /// `etcd://host:port[,host:port]` or `file:///path` (embedded, one process only).
    pub metastore: String,
    /// Cluster name: the metastore prefix `/runnel/<cluster>/`.
    pub cluster: String,
    /// Create topics a client asks Metadata for when they do not exist (and
    /// the client allows it), as Kafka's `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// Partition count of auto-created topics (and of CreateTopics requests
    /// that leave it to the broker, `num_partitions = -1`).
    pub default_partitions: i32,
    /// A coordinator's gRPC address; when unset the active controller's
    /// address from the cluster metadata is used.
    pub coordinator_address: Option<String>,
    /// An ingest instance's gRPC address: produced batches go through it.
    pub ingest_address: String,
    /// Largest request frame accepted (Kafka's `socket.request.max.bytes`);
    /// a longer frame closes the connection.
    pub max_request_bytes: usize,
    /// Connections served at once; further connections are closed at accept.
    pub max_connections: usize,
    /// Requests of one connection read ahead while an earlier one is being
    /// served (answers still go out in order).
    pub max_queued_requests: usize,
    /// Bytes of read-ahead requests the whole edge may hold.
    pub max_queued_request_bytes: usize,
    /// A connection that sends nothing for this long is closed (Kafka's
    /// `connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// Timeout of the gRPC calls that carry no timeout of their own (metadata
    /// and admin calls).
    pub request_timeout_ms: u64,
    /// Seconds the edge's registration lease lives without a keep-alive; the
    /// other edges list this one as a broker while it lives.
    pub lease_ttl_secs: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: "0.0.0.0:9092".into(),
            advertised_address: None,
            node_id: 1,
            metastore: "etcd://127.0.0.1:2379".into(),
            cluster: "runnel".into(),
            auto_create_topics: false,
            default_partitions: 1,
            coordinator_address: None,
            ingest_address: "127.0.0.1:7600".into(),
            max_request_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_queued_requests: 16,
            max_queued_request_bytes: 256 * 1024 * 1024,
            connections_max_idle_ms: 600_000,
            request_timeout_ms: 30_000,
            lease_ttl_secs: 10,
        }
    }
}
