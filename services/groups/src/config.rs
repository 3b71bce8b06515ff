//! Groups settings (TOML file, `RUNNEL_*` environment, CLI flags). The
//! names of the Kafka-equivalent settings are given with each field.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Identifies this groups node among its peers.
    pub node_id: i32,
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Address the edge and clients dial; defaults to the bound address.
    pub advertised_address: Option<String>,
    /// `etcd://host:port[,host:port]` or `file:///path` (embedded, one process only).
    pub metastore: String,
    /// Cluster name: the metastore prefix `/runnel/<cluster>/`.
    pub cluster: String,
    /// A coordinator's gRPC address (to create `__consumer_offsets`); when
    /// unset the active controller from the cluster metadata is used.
    pub coordinator_address: Option<String>,
    /// Partitions of `__consumer_offsets`, i.e. the number of group shards,
    /// when this node has to create the topic (`offsets.topic.num.partitions`).
    pub offsets_topic_partitions: i32,
    /// Replication factor of `__consumer_offsets` when created
    /// (`offsets.topic.replication.factor`).
    pub offsets_topic_replication_factor: i32,
    /// Seconds the node's lease (and so its shard ownership) lives without a
    /// keep-alive; a failed node's shards move after this long.
    pub lease_ttl_secs: u64,
    /// How long a new group waits for more members before its first
    /// generation (`group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
    /// Session timeouts a member may ask for (`group.min.session.timeout.ms`,
    /// `group.max.session.timeout.ms`).
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// Members per group (`group.max.size`).
    pub max_group_size: usize,
    /// Largest metadata string of a committed offset
    /// (`offset.metadata.max.bytes`).
    pub offset_metadata_max_bytes: usize,
    /// Offsets of a group that has been empty this long are deleted
    /// (`offsets.retention.minutes`, KIP-211).
    pub offsets_retention_minutes: u64,
    /// How often offsets past retention are looked for
    /// (`offsets.retention.check.interval.ms`).
    pub offsets_retention_check_interval_ms: u64,
    /// How often consumer lag is computed and exported, in seconds (0 = never).
    pub lag_interval_secs: u64,
    /// KIP-848 groups: a member that does not heartbeat for this long is
    /// removed (`group.consumer.session.timeout.ms`).
    pub consumer_session_timeout_ms: u64,
    /// KIP-848 groups: how often members heartbeat
    /// (`group.consumer.heartbeat.interval.ms`).
    pub consumer_heartbeat_interval_ms: i32,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            node_id: 1,
            listen: "0.0.0.0:7700".into(),
            advertised_address: None,
            metastore: "etcd://127.0.0.1:2379".into(),
            cluster: "runnel".into(),
            coordinator_address: None,
            offsets_topic_partitions: 50,
            offsets_topic_replication_factor: 1,
            lease_ttl_secs: 10,
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_group_size: 1_000,
            offset_metadata_max_bytes: 4096,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
            lag_interval_secs: 30,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
        }
    }
}

impl GroupsConfig {
    /// Refuses settings that cannot work, with the reason.
    pub fn check(&self) -> Result<(), String> {
        if self.node_id < 0 {
            return Err(format!("node_id must be >= 0, not {}", self.node_id));
        }
        if self.offsets_topic_partitions < 1 {
            return Err(format!(
                "offsets_topic_partitions must be >= 1, not {}",
                self.offsets_topic_partitions
            ));
        }
        if self.min_session_timeout_ms > self.max_session_timeout_ms {
            return Err("min_session_timeout_ms exceeds max_session_timeout_ms".into());
        }
        Ok(())
    }
}
