//! Metadata: every live edge is a broker, and every partition is led by the
//! edge that answers (it forwards to the real leader). Cluster id, topic ids
//! and leader epochs come from the cluster metadata.

use std::time::Duration;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use runnel_cluster::topic_config::{is_internal_topic, validate_topic_name};
use runnel_cluster::{ClusterMetadata, TopicState};
use runnel_proto::coordinator::v1 as coord;
use uuid::Uuid;

use super::Ctx;
use crate::error::code;
use crate::frame::str_bytes;
use crate::state::Edge;

/// No ACLs yet: every operation is allowed. Bits of Kafka's AclOperation
/// codes: READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8,
/// DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10,
/// ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12.
pub const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

/// How long Metadata waits for an auto-created topic to get its leaders.
const AUTO_CREATE_WAIT: Duration = Duration::from_secs(5);

pub fn topic_uuid(t: &TopicState) -> Uuid {
    Uuid::parse_str(&t.record.topic_id).unwrap_or(Uuid::nil())
}

pub fn brokers(edge: &Edge) -> Vec<MetadataResponseBroker> {
    edge.brokers()
        .into_values()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(str_bytes(b.host))
                .with_port(b.port)
                .with_rack(None)
        })
        .collect()
}

fn topic_entry(
    edge: &Edge,
    md: &ClusterMetadata,
    t: &TopicState,
    version: i16,
    with_operations: bool,
) -> MetadataResponseTopic {
    let me = BrokerId(edge.node_id());
    let partitions = t
        .partitions
        .iter()
        .map(|(&index, p)| {
            let live = md.nodes.contains_key(&p.leader);
            MetadataResponsePartition::default()
                .with_error_code(if live {
                    code::NONE
                } else {
                    code::LEADER_NOT_AVAILABLE
                })
                .with_partition_index(index)
                .with_leader_id(if live { me } else { BrokerId(-1) })
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(vec![me])
                .with_isr_nodes(if live { vec![me] } else { vec![] })
                .with_offline_replicas(if live { vec![] } else { vec![me] })
        })
        .collect();
    let complete = t.partitions.len() as i32 >= t.record.partitions;
    let mut entry = MetadataResponseTopic::default()
        .with_error_code(if complete {
            code::NONE
        } else {
            code::LEADER_NOT_AVAILABLE
        })
        .with_name(Some(TopicName(str_bytes(t.record.name.clone()))))
        .with_topic_id(topic_uuid(t))
        .with_is_internal(is_internal_topic(&t.record.name))
        .with_partitions(partitions);
    if version >= 8 && with_operations {
        entry.topic_authorized_operations = TOPIC_OPERATIONS;
    }
    entry
}

fn error_entry(name: Option<String>, id: Uuid, error: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error)
        .with_name(name.map(|n| TopicName(str_bytes(n))))
        .with_topic_id(id)
}

/// Creates a topic a client asked for, if the edge is configured to, and
/// waits a little for its leaders.
async fn auto_create(edge: &Edge, name: &str) -> bool {
    let request = coord::CreateTopicRequest {
        name: name.to_string(),
        partitions: edge.config.default_partitions.max(1),
        ..Default::default()
    };
    match edge.create_topic(request).await {
        Ok(_) => {}
        Err(e) if e.code == code::TOPIC_ALREADY_EXISTS => {}
        Err(e) => {
            tracing::warn!(topic = name, error = %e.message, "auto-creating topic failed");
            return false;
        }
    }
    tracing::info!(topic = name, "auto-created topic");
    edge.wait_for_topic(name, AUTO_CREATE_WAIT).await
}

pub async fn handle(ctx: &mut Ctx<'_>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let edge = ctx.edge;
    let allow_auto_create =
        edge.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let with_operations = req.include_topic_authorized_operations;
    let mut md = edge.metadata();
    let topics = match req.topics {
        // v0: an empty list means every topic.
        Some(list) if !(version == 0 && list.is_empty()) => {
            let mut out = Vec::with_capacity(list.len());
            for wanted in list {
                let name = match wanted.name {
                    Some(n) => n.0.to_string(),
                    None => match md
                        .topics
                        .values()
                        .find(|t| topic_uuid(t) == wanted.topic_id)
                    {
                        Some(t) => t.record.name.clone(),
                        None => {
                            ctx.note(code::UNKNOWN_TOPIC_ID);
                            out.push(error_entry(None, wanted.topic_id, code::UNKNOWN_TOPIC_ID));
                            continue;
                        }
                    },
                };
                if allow_auto_create
                    && md.topic(&name).is_none()
                    && validate_topic_name(&name).is_ok()
                {
                    auto_create(edge, &name).await;
                    md = edge.metadata();
                }
                match md.topic(&name) {
                    Some(t) => out.push(topic_entry(edge, &md, t, version, with_operations)),
                    None => {
                        let error = if validate_topic_name(&name).is_err() {
                            code::INVALID_TOPIC_EXCEPTION
                        } else {
                            code::UNKNOWN_TOPIC_OR_PARTITION
                        };
                        ctx.note(error);
                        out.push(error_entry(Some(name), Uuid::nil(), error));
                    }
                }
            }
            out
        }
        _ => md
            .topics
            .values()
            .map(|t| topic_entry(edge, &md, t, version, with_operations))
            .collect(),
    };
    let mut response = MetadataResponse::default()
        .with_brokers(brokers(edge))
        .with_cluster_id(md.cluster_id.clone().map(str_bytes))
        .with_controller_id(BrokerId(edge.node_id()))
        .with_topics(topics);
    if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS;
    }
    response
}
