//! The records stored in the metastore and the in-memory view built from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::topic_config::TopicConfig;

/// A live storage node (its key exists only while its lease is kept alive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: i32,
    /// host:port of the node's gRPC server, as clients should dial it.
    pub address: String,
    #[serde(default)]
    pub rack: String,
    pub started_at_ms: i64,
}

/// The active controller (a coordinator instance), under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    pub instance_id: i32,
    /// host:port of that coordinator's gRPC server.
    pub address: String,
    pub elected_at_ms: i64,
}

/// A live Kafka edge as clients should reach it (its key exists only while
/// the edge keeps its lease alive). Each edge is one broker to Kafka clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    /// The broker id clients see, unique among the cluster's edges.
    pub node_id: i32,
    /// Host and port of the edge's Kafka listener, as clients should dial it.
    pub host: String,
    pub port: i32,
    #[serde(default)]
    pub started_at_ms: i64,
}

/// A live groups node (consumer-group coordinator) and where to reach it.
/// The same record, stored under a shard's key, says who owns that shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupsNodeRecord {
    pub node_id: i32,
    /// host:port of the node's gRPC server.
    pub address: String,
    #[serde(default)]
    pub started_at_ms: i64,
}

/// The internal topic that holds committed offsets and group membership;
/// its partitions are the consumer-group shards.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The shard (partition of [`OFFSETS_TOPIC`]) a group belongs to: Kafka's
/// placement, `abs(javaStringHashCode(group_id)) % shards`, so a group lands
/// on the same partition number it would in Kafka.
pub fn group_shard(group_id: &str, shards: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group_id.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(unit as i32);
    }
    (h & 0x7fff_ffff) % shards.max(1)
}

/// A topic as created; partitions are stored separately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub topic_id: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Only the configs set explicitly on the topic.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    pub created_at_ms: i64,
}

/// One partition's replica set and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Node id of the leader, -1 when none is live (offline).
    pub leader: i32,
    /// Bumped on every leader change; stamped into each batch the leader writes.
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// A reassignment in progress: the replica set to end with. Until all
    /// of these are in sync, `replicas` is the old set plus the new nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_replicas: Option<Vec<i32>>,
    /// Bytes per second a replica catching up during a reassignment may
    /// copy (0: no limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttle_bytes_per_sec: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl PartitionRecord {
    /// A new partition led by the first of its replicas, all in sync.
    pub fn new(replicas: Vec<i32>) -> Self {
        PartitionRecord {
            leader: replicas.first().copied().unwrap_or(-1),
            leader_epoch: 0,
            isr: replicas.clone(),
            replicas,
            target_replicas: None,
            throttle_bytes_per_sec: 0,
        }
    }

    pub fn is_offline(&self) -> bool {
        self.leader < 0
    }
}

/// A topic with its partitions, as the watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub record: TopicRecord,
    pub config: TopicConfig,
    /// May hold fewer than `record.partitions` entries briefly while a topic
    /// is being created.
    pub partitions: BTreeMap<i32, PartitionRecord>,
}

/// Everything the metastore says about a cluster, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub revision: i64,
    pub cluster_id: Option<String>,
    pub controller: Option<ControllerRecord>,
    pub nodes: BTreeMap<i32, NodeRecord>,
    pub topics: BTreeMap<String, TopicState>,
    /// Partition records whose topic record is not (or no longer) there.
    pub orphan_partitions: BTreeMap<String, BTreeMap<i32, PartitionRecord>>,
    /// Live Kafka edges by broker id.
    pub edges: BTreeMap<i32, EdgeRecord>,
    /// Live groups nodes by id.
    pub groups_nodes: BTreeMap<i32, GroupsNodeRecord>,
    /// The owner of each consumer-group shard that has one.
    pub group_shards: BTreeMap<i32, GroupsNodeRecord>,
}

impl ClusterMetadata {
    pub fn topic(&self, name: &str) -> Option<&TopicState> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionRecord> {
        self.topics.get(topic)?.partitions.get(&partition)
    }

    /// The number of consumer-group shards (partitions of
    /// `__consumer_offsets`), if that topic exists.
    pub fn group_shard_count(&self) -> Option<i32> {
        self.topics.get(OFFSETS_TOPIC).map(|t| t.record.partitions)
    }

    /// A group's shard and the groups node that owns it (if any owns it now).
    pub fn group_coordinator(&self, group_id: &str) -> Option<(i32, Option<&GroupsNodeRecord>)> {
        let shard = group_shard(group_id, self.group_shard_count()?);
        Some((shard, self.group_shards.get(&shard)))
    }

    /// The node leading a partition, if it is live.
    pub fn leader_node(&self, topic: &str, partition: i32) -> Option<&NodeRecord> {
        let p = self.partition(topic, partition)?;
        self.nodes.get(&p.leader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_shards_match_kafka() {
        // Java: Math.abs("my-group".hashCode()) % 50 and friends.
        assert_eq!(group_shard("my-group", 50), 240_985_886 % 50);
        assert_eq!(group_shard("", 50), 0);
        // A hash whose sign bit is set: Kafka masks it, it does not negate.
        assert_eq!(group_shard("polygenelubricants", 50), 0);
        assert!((0..7).contains(&group_shard("ü-group", 7)));
    }
}
