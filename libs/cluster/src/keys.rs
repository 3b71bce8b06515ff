//! The metastore key layout. Everything of one cluster lives under
//! `/runnel/<cluster>/`:
//!
//! | key | value |
//! |---|---|
//! | `cluster_id` | the cluster's UUID, written once |
//! | `controller` | [`ControllerRecord`](crate::ControllerRecord), under the active controller's lease |
//! | `nodes/<id>` | [`NodeRecord`](crate::NodeRecord), under the node's lease |
//! | `topics/<name>` | [`TopicRecord`](crate::TopicRecord) |
//! | `partitions/<name>/<p>` | [`PartitionRecord`](crate::PartitionRecord) |
//! | `edges/<id>` | [`EdgeRecord`](crate::model::EdgeRecord), under the Kafka edge's lease |
//! | `groups/nodes/<id>` | [`GroupsNodeRecord`](crate::model::GroupsNodeRecord), under the groups node's lease |
//! | `groups/shards/<k>` | [`GroupsNodeRecord`](crate::model::GroupsNodeRecord) of the node that owns shard `k` (partition `k` of `__consumer_offsets`), under its lease |

#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Self {
        Keys {
            root: format!("/runnel/{cluster}/"),
        }
    }
    /// The prefix holding all of this cluster's keys.
    pub fn root(&self) -> &str {
        &self.root
    }
    pub fn cluster_id(&self) -> String {
        format!("{}cluster_id", self.root)
    }
    pub fn controller(&self) -> String {
        format!("{}controller", self.root)
    }
    pub fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.root)
    }
    pub fn node(&self, id: i32) -> String {
        format!("{}nodes/{id}", self.root)
    }
    pub fn topics_prefix(&self) -> String {
        format!("{}topics/", self.root)
    }
    pub fn topic(&self, name: &str) -> String {
        format!("{}topics/{name}", self.root)
    }
    pub fn partitions_prefix(&self) -> String {
        format!("{}partitions/", self.root)
    }
    /// Prefix of one topic's partitions (trailing slash: "t" must not match "t2").
    pub fn topic_partitions_prefix(&self, topic: &str) -> String {
        format!("{}partitions/{topic}/", self.root)
    }
    pub fn partition(&self, topic: &str, partition: i32) -> String {
        format!("{}partitions/{topic}/{partition}", self.root)
    }

    /// Prefix of the live Kafka edges (each edge instance is one broker to
    /// Kafka clients).
    pub fn edges_prefix(&self) -> String {
        format!("{}edges/", self.root)
    }
    /// A Kafka edge's registration, by its broker id.
    pub fn edge(&self, id: i32) -> String {
        format!("{}edges/{id}", self.root)
    }

    /// Prefix of the live groups nodes.
    pub fn groups_nodes_prefix(&self) -> String {
        format!("{}groups/nodes/", self.root)
    }
    pub fn groups_node(&self, id: i32) -> String {
        format!("{}groups/nodes/{id}", self.root)
    }
    /// Prefix of the group-coordinator shard owners.
    pub fn group_shards_prefix(&self) -> String {
        format!("{}groups/shards/", self.root)
    }
    /// The owner of one shard of the consumer groups.
    pub fn group_shard(&self, shard: i32) -> String {
        format!("{}groups/shards/{shard}", self.root)
    }

    /// Classifies a key under the root.
    pub fn parse<'a>(&self, key: &'a str) -> Option<KeyKind<'a>> {
        let rest = key.strip_prefix(self.root.as_str())?;
        if rest == "cluster_id" {
            return Some(KeyKind::ClusterId);
        }
        if rest == "controller" {
            return Some(KeyKind::Controller);
        }
        if let Some(id) = rest.strip_prefix("nodes/") {
            return id.parse().ok().map(KeyKind::Node);
        }
        if let Some(name) = rest.strip_prefix("topics/") {
            return Some(KeyKind::Topic(name));
        }
        if let Some(tp) = rest.strip_prefix("partitions/") {
            let (topic, p) = tp.rsplit_once('/')?;
            return p.parse().ok().map(|p| KeyKind::Partition(topic, p));
        }
        if let Some(id) = rest.strip_prefix("edges/") {
            return id.parse().ok().map(KeyKind::Edge);
        }
        if let Some(id) = rest.strip_prefix("groups/nodes/") {
            return id.parse().ok().map(KeyKind::GroupsNode);
        }
        if let Some(shard) = rest.strip_prefix("groups/shards/") {
            return shard.parse().ok().map(KeyKind::GroupShard);
        }
        None
    }
}

/// What a metastore key refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind<'a> {
    ClusterId,
    Controller,
    Node(i32),
    Topic(&'a str),
    Partition(&'a str, i32),
    /// A Kafka edge, by broker id.
    Edge(i32),
    /// A live groups node, by id.
    GroupsNode(i32),
    /// The owner of a consumer-group shard.
    GroupShard(i32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let k = Keys::new("c1");
        assert_eq!(k.parse(&k.node(3)), Some(KeyKind::Node(3)));
        assert_eq!(k.parse(&k.topic("a.b")), Some(KeyKind::Topic("a.b")));
        assert_eq!(
            k.parse(&k.partition("a-b", 11)),
            Some(KeyKind::Partition("a-b", 11))
        );
        assert_eq!(k.parse(&k.controller()), Some(KeyKind::Controller));
        assert_eq!(k.parse(&k.edge(7)), Some(KeyKind::Edge(7)));
        assert_eq!(k.parse(&k.groups_node(2)), Some(KeyKind::GroupsNode(2)));
        assert_eq!(k.parse(&k.group_shard(49)), Some(KeyKind::GroupShard(49)));
        assert!(k.group_shard(1).starts_with(&k.group_shards_prefix()));
        assert!(k.edge(7).starts_with(&k.edges_prefix()));
        assert_eq!(k.parse(&format!("{}x", k.edges_prefix())), None);
        assert_eq!(k.parse("/runnel/other/nodes/1"), None);
    }
}
