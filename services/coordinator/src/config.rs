//! Coordinator settings (TOML file, `RUNNEL_*` environment, CLI flags).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Identifies this coordinator instance among its peers.
    pub instance_id: i32,
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Address peers and clients dial; defaults to `listen`.
    pub advertised_address: Option<String>,
    /// `etcd://host:port[,host:port]` or `file:///path` (embedded, one process only).
    pub metastore: String,
    /// Cluster name: the metastore prefix `/runnel/<cluster>/`.
    pub cluster: String,
    /// Seconds the controller lease lives without a keep-alive.
    pub lease_ttl_secs: u64,
    /// Replication factor for topics created without one.
    pub default_replication_factor: i32,
    /// Upper bound on partitions per topic, against typos like 1000000.
    pub max_partitions_per_topic: i32,
    /// How often the controller gives leadership back to preferred replicas
    /// that are in sync again (Kafka's
    /// `leader.imbalance.check.interval.seconds`); 0 turns it off.
    pub leader_rebalance_interval_secs: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            instance_id: 0,
            listen: "0.0.0.0:7400".into(),
            advertised_address: None,
            metastore: "etcd://127.0.0.1:2379".into(),
            cluster: "runnel".into(),
            lease_ttl_secs: 10,
            default_replication_factor: 1,
            max_partitions_per_topic: 10_000,
            leader_rebalance_interval_secs: 300,
        }
    }
}
