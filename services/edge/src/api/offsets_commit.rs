//! Committed offsets: OffsetCommit, OffsetFetch and OffsetDelete, forwarded
//! to the groups node that owns the group (routing as in `groups.rs`).
//!
//! The version differences handled here: OffsetCommit carries a leader
//! epoch from v6 and a group instance id from v7, and its retention time
//! (v2-4) is ignored as Kafka has done since 2.1. OffsetFetch v1 has no
//! top-level error (a group error goes into every requested partition), v2+
//! accepts null topics for "every topic", v5+ returns leader epochs, and v8+
//! asks about several groups at once.
//!
//! v9 of both is what KIP-848 consumers send. OffsetCommit v9 has the v8
//! layout; for a KIP-848 group its `generation_id_or_member_epoch` is the
//! member epoch, which the groups node checks (it passes as the generation
//! id). OffsetFetch v9 adds the asking member's id and epoch per group;
//! they are not checked (the committed offsets are answered to anyone, as
//! for older versions).

use std::collections::HashMap;

use futures::StreamExt;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    GroupId, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use runnel_cluster::ClusterMetadata;
use runnel_proto::groups::v1 as pb;

use super::Ctx;
use super::groups::{OnTimeout, call_owner, kafka_code, owner};
use crate::error::code;
use crate::frame::str_bytes;
use crate::state::{Edge, KafkaError};

/// Groups of an OffsetFetch v8 request asked at once.
const FETCH_CONCURRENCY: usize = 16;

/// Kafka answers a partition of an unknown topic itself, before asking the
/// coordinator; so does the edge.
fn known_partition(md: &ClusterMetadata, topic: &str, partition: i32) -> bool {
    md.topic(topic)
        .is_some_and(|t| (0..t.record.partitions).contains(&partition))
}

// ---- OffsetCommit ----

/// The offsets to store, in request order, for the partitions that exist.
fn commit_offsets(
    req: &OffsetCommitRequest,
    version: i16,
    known: impl Fn(&str, i32) -> bool,
) -> Vec<pb::PartitionOffset> {
    req.topics
        .iter()
        .flat_map(|t| {
            let topic = t.name.to_string();
            t.partitions
                .iter()
                .filter(|p| known(&topic, p.partition_index))
                .map(|p| pb::PartitionOffset {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The commit's answer in the request's shape: unknown partitions get
/// UNKNOWN_TOPIC_OR_PARTITION, the others the groups node's code (a group
/// error applies to each), or `failed` when the node could not be asked.
fn commit_response(
    req: &OffsetCommitRequest,
    known: impl Fn(&str, i32) -> bool,
    outcome: Result<pb::OffsetCommitResponse, KafkaError>,
) -> OffsetCommitResponse {
    let (group_error, by_partition) = match outcome {
        Ok(a) => (
            kafka_code(a.error_code),
            a.partitions
                .into_iter()
                .map(|p| ((p.topic, p.partition), kafka_code(p.error_code)))
                .collect::<HashMap<_, _>>(),
        ),
        Err(e) => (e.code, HashMap::new()),
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let topic = t.name.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = if !known(&topic, p.partition_index) {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    } else if group_error != code::NONE {
                        group_error
                    } else {
                        by_partition
                            .get(&(topic.clone(), p.partition_index))
                            .copied()
                            .unwrap_or(code::UNKNOWN_SERVER_ERROR)
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub async fn commit(
    ctx: &mut Ctx<'_>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let edge = ctx.edge;
    let md = edge.metadata();
    let known = |topic: &str, partition: i32| known_partition(&md, topic, partition);
    let offsets = commit_offsets(&req, version, known);
    let outcome = if offsets.is_empty() {
        // Nothing to store (Kafka does not ask the coordinator either).
        Ok(pb::OffsetCommitResponse::default())
    } else {
        let request = pb::OffsetCommitRequest {
            group_id: req.group_id.to_string(),
            generation_id: req.generation_id_or_member_epoch,
            member_id: req.member_id.to_string(),
            group_instance_id: if version >= 7 {
                req.group_instance_id.as_ref().map(|s| s.to_string())
            } else {
                None
            },
            offsets,
        };
        call_owner(
            edge,
            &request.group_id,
            edge.rpc_timeout(),
            OnTimeout::TimedOut,
            |a: &pb::OffsetCommitResponse| a.error_code,
            |mut client, left| {
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(left);
                async move { client.offset_commit(call).await }
            },
        )
        .await
    };
    let response = commit_response(&req, known, outcome);
    for t in &response.topics {
        for p in &t.partitions {
            ctx.note(p.error_code);
        }
    }
    response
}

// ---- OffsetFetch ----

/// The partitions asked for; `None` for every partition the group has.
type Wanted = Option<Vec<(String, Vec<i32>)>>;

/// One group's committed offsets from its owner.
async fn fetch_group(
    edge: &Edge,
    group_id: &str,
    wanted: &Wanted,
) -> Result<pb::OffsetFetchResponse, KafkaError> {
    if let Some(topics) = wanted
        && topics.iter().all(|(_, ps)| ps.is_empty())
    {
        // Nothing asked (the groups service reads an empty list as "all").
        owner(&edge.metadata(), group_id)?;
        return Ok(pb::OffsetFetchResponse::default());
    }
    let request = pb::OffsetFetchRequest {
        group_id: group_id.to_string(),
        topics: wanted
            .iter()
            .flatten()
            .map(|(topic, partitions)| pb::TopicPartitions {
                topic: topic.clone(),
                partitions: partitions.clone(),
            })
            .collect(),
        all_topics: wanted.is_none(),
        include_log_end: false,
    };
    call_owner(
        edge,
        group_id,
        edge.rpc_timeout(),
        OnTimeout::Refind,
        |a: &pb::OffsetFetchResponse| a.error_code,
        |mut client, left| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(left);
            async move { client.offset_fetch(call).await }
        },
    )
    .await
}

/// A group's offsets, grouped by topic in the order the node listed them.
fn by_topic(offsets: Vec<pb::CommittedOffset>) -> Vec<(String, Vec<pb::CommittedOffset>)> {
    let mut topics: Vec<(String, Vec<pb::CommittedOffset>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for o in offsets {
        let i = *index.entry(o.topic.clone()).or_insert_with(|| {
            topics.push((o.topic.clone(), Vec::new()));
            topics.len() - 1
        });
        topics[i].1.push(o);
    }
    topics
}

/// The group error of a fetch, if any.
fn fetch_error(outcome: &Result<pb::OffsetFetchResponse, KafkaError>) -> i16 {
    match outcome {
        Ok(a) => kafka_code(a.error_code),
        Err(e) => e.code,
    }
}

/// An OffsetFetch v1-7 answer for one group.
fn fetch_response_v1_7(
    outcome: Result<pb::OffsetFetchResponse, KafkaError>,
    wanted: &Wanted,
    version: i16,
) -> OffsetFetchResponse {
    let error = fetch_error(&outcome);
    let partition = |index: i32, offset: i64, epoch: i32, metadata: String, error: i16| {
        OffsetFetchResponsePartition::default()
            .with_partition_index(index)
            .with_committed_offset(offset)
            .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
            .with_metadata(Some(str_bytes(metadata)))
            .with_error_code(error)
    };
    if error != code::NONE {
        if version >= 2 {
            return OffsetFetchResponse::default().with_error_code(error);
        }
        // v1 has no top-level error: each requested partition carries it.
        let topics = wanted
            .iter()
            .flatten()
            .map(|(topic, partitions)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(str_bytes(topic.clone())))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&p| partition(p, -1, -1, String::new(), error))
                            .collect(),
                    )
            })
            .collect();
        return OffsetFetchResponse::default().with_topics(topics);
    }
    let offsets = outcome.map(|a| a.offsets).unwrap_or_default();
    let topics = by_topic(offsets)
        .into_iter()
        .map(|(topic, offsets)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(
                    offsets
                        .into_iter()
                        .map(|o| {
                            partition(
                                o.partition,
                                o.offset,
                                o.leader_epoch,
                                o.metadata,
                                kafka_code(o.error_code),
                            )
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// One group's entry of an OffsetFetch v8+ answer.
fn fetch_group_v8(
    group_id: GroupId,
    outcome: Result<pb::OffsetFetchResponse, KafkaError>,
) -> OffsetFetchResponseGroup {
    let error = fetch_error(&outcome);
    let group = OffsetFetchResponseGroup::default()
        .with_group_id(group_id)
        .with_error_code(error);
    if error != code::NONE {
        return group;
    }
    let offsets = outcome.map(|a| a.offsets).unwrap_or_default();
    let topics = by_topic(offsets)
        .into_iter()
        .map(|(topic, offsets)| {
            OffsetFetchResponseTopics::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(
                    offsets
                        .into_iter()
                        .map(|o| {
                            OffsetFetchResponsePartitions::default()
                                .with_partition_index(o.partition)
                                .with_committed_offset(o.offset)
                                .with_committed_leader_epoch(o.leader_epoch)
                                .with_metadata(Some(str_bytes(o.metadata)))
                                .with_error_code(kafka_code(o.error_code))
                        })
                        .collect(),
                )
        })
        .collect();
    group.with_topics(topics)
}

pub async fn fetch(
    ctx: &mut Ctx<'_>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let edge = ctx.edge;
    if version >= 8 {
        let asks = req.groups.into_iter().map(|g| {
            let wanted: Wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes))
                    .collect()
            });
            async move {
                let outcome = fetch_group(edge, g.group_id.as_str(), &wanted).await;
                fetch_group_v8(g.group_id, outcome)
            }
        });
        let groups: Vec<OffsetFetchResponseGroup> = futures::stream::iter(asks)
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
        for g in &groups {
            ctx.note(g.error_code);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    // Null topics (v2+) ask for every topic. v1 cannot send null (the field
    // is not nullable there); a v1 empty list asks for nothing, as in Kafka.
    let wanted: Wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let outcome = fetch_group(edge, req.group_id.as_str(), &wanted).await;
    let response = fetch_response_v1_7(outcome, &wanted, version);
    ctx.note(response.error_code);
    for t in &response.topics {
        for p in &t.partitions {
            ctx.note(p.error_code);
        }
    }
    response
}

// ---- OffsetDelete ----

/// A group-level error is the whole answer (Kafka's error response); else
/// each requested partition gets UNKNOWN_TOPIC_OR_PARTITION when it does
/// not exist, otherwise the groups node's code.
fn delete_response(
    req: &OffsetDeleteRequest,
    known: impl Fn(&str, i32) -> bool,
    outcome: Result<pb::OffsetDeleteResponse, KafkaError>,
) -> OffsetDeleteResponse {
    let a = match outcome {
        Err(e) => return OffsetDeleteResponse::default().with_error_code(e.code),
        Ok(a) if a.error_code != 0 => {
            return OffsetDeleteResponse::default().with_error_code(kafka_code(a.error_code));
        }
        Ok(a) => a,
    };
    let by_partition: HashMap<(String, i32), i16> = a
        .partitions
        .into_iter()
        .map(|p| ((p.topic, p.partition), kafka_code(p.error_code)))
        .collect();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let topic = t.name.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = if known(&topic, p.partition_index) {
                        by_partition
                            .get(&(topic.clone(), p.partition_index))
                            .copied()
                            .unwrap_or(code::UNKNOWN_SERVER_ERROR)
                    } else {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}

pub async fn delete(
    ctx: &mut Ctx<'_>,
    req: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    if req.group_id.is_empty() {
        ctx.note(code::INVALID_GROUP_ID);
        return OffsetDeleteResponse::default().with_error_code(code::INVALID_GROUP_ID);
    }
    let edge = ctx.edge;
    let md = edge.metadata();
    let known = |topic: &str, partition: i32| known_partition(&md, topic, partition);
    let request = pb::OffsetDeleteRequest {
        group_id: req.group_id.to_string(),
        topics: req
            .topics
            .iter()
            .map(|t| {
                let topic = t.name.to_string();
                pb::TopicPartitions {
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| p.partition_index)
                        .filter(|&p| known(&topic, p))
                        .collect(),
                    topic,
                }
            })
            .filter(|t| !t.partitions.is_empty())
            .collect(),
    };
    let outcome = call_owner(
        edge,
        &request.group_id,
        edge.rpc_timeout(),
        OnTimeout::Refind,
        |a: &pb::OffsetDeleteResponse| a.error_code,
        |mut client, left| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(left);
            async move { client.offset_delete(call).await }
        },
    )
    .await;
    let response = delete_response(&req, known, outcome);
    ctx.note(response.error_code);
    for t in &response.topics {
        for p in &t.partitions {
            ctx.note(p.error_code);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::api::groups::tests::wire;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };

    /// Topic "t" has partitions 0 and 1; nothing else exists.
    fn known(topic: &str, partition: i32) -> bool {
        topic == "t" && (0..2).contains(&partition)
    }

    fn commit_req() -> OffsetCommitRequest {
        let part = |i: i32, offset: i64| {
            OffsetCommitRequestPartition::default()
                .with_partition_index(i)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(5)
                .with_committed_metadata(Some(str_bytes("m")))
        };
        OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_generation_id_or_member_epoch(3)
            .with_member_id(str_bytes("m-1"))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(str_bytes("t")))
                    .with_partitions(vec![part(0, 10), part(1, 20), part(7, 1)]),
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(str_bytes("gone")))
                    .with_partitions(vec![part(0, 1)]),
            ])
    }

    #[test]
    fn commit_sends_known_partitions_with_versioned_fields() {
        let req = commit_req();
        let v5 = commit_offsets(&req, 5, known);
        assert_eq!(
            v5.iter()
                .map(|o| (o.topic.as_str(), o.partition, o.offset))
                .collect::<Vec<_>>(),
            [("t", 0, 10), ("t", 1, 20)]
        );
        // The leader epoch exists from v6.
        assert!(v5.iter().all(|o| o.leader_epoch == -1));
        let v6 = commit_offsets(&req, 6, known);
        assert!(v6.iter().all(|o| o.leader_epoch == 5));
        assert_eq!(v6[0].metadata.as_deref(), Some("m"));
        // Null metadata stays null.
        let mut null = req.clone();
        null.topics[0].partitions[0].committed_metadata = None;
        assert_eq!(commit_offsets(&null, 8, known)[0].metadata, None);
    }

    #[test]
    fn commit_answers_in_the_request_shape() {
        let req = commit_req();
        let answer = pb::OffsetCommitResponse {
            error_code: 0,
            error_message: String::new(),
            partitions: vec![
                pb::PartitionResult {
                    topic: "t".into(),
                    partition: 1,
                    error_code: 12,
                },
                pb::PartitionResult {
                    topic: "t".into(),
                    partition: 0,
                    error_code: 0,
                },
            ],
        };
        let codes = |r: &OffsetCommitResponse| {
            r.topics
                .iter()
                .map(|t| {
                    (
                        t.name.to_string(),
                        t.partitions
                            .iter()
                            .map(|p| (p.partition_index, p.error_code))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let r = commit_response(&req, known, Ok(answer));
        assert_eq!(
            codes(&r),
            [
                ("t".to_string(), vec![(0, 0), (1, 12), (7, 3)]),
                ("gone".to_string(), vec![(0, 3)]),
            ]
        );
        for v in 2..=9 {
            assert_eq!(codes(&wire(&r, v)), codes(&r));
        }
        // A group error applies to every partition that exists.
        let fenced = pb::OffsetCommitResponse {
            error_code: 22,
            ..Default::default()
        };
        let r = commit_response(&req, known, Ok(fenced));
        assert_eq!(codes(&r)[0].1, [(0, 22), (1, 22), (7, 3)]);
        // The owner could not be asked.
        let timed_out = Err(KafkaError::new(code::REQUEST_TIMED_OUT, "slow"));
        let r = commit_response(&req, known, timed_out);
        assert_eq!(codes(&r)[0].1, [(0, 7), (1, 7), (7, 3)]);
    }

    fn offsets() -> pb::OffsetFetchResponse {
        let committed = |topic: &str, partition: i32, offset: i64| pb::CommittedOffset {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: 4,
            metadata: "md".into(),
            commit_timestamp_ms: 1,
            error_code: 0,
            log_end_offset: -1,
        };
        pb::OffsetFetchResponse {
            error_code: 0,
            error_message: String::new(),
            offsets: vec![
                committed("a", 0, 5),
                committed("b", 0, 7),
                committed("a", 1, -1),
            ],
        }
    }

    #[test]
    fn fetch_groups_offsets_by_topic() {
        let wanted: Wanted = None;
        for v in 2..=7 {
            let r = wire(&fetch_response_v1_7(Ok(offsets()), &wanted, v), v);
            assert_eq!(r.error_code, 0);
            let names: Vec<String> = r.topics.iter().map(|t| t.name.to_string()).collect();
            assert_eq!(names, ["a", "b"]);
            let a: Vec<(i32, i64)> = r.topics[0]
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.committed_offset))
                .collect();
            assert_eq!(a, [(0, 5), (1, -1)]);
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.metadata.as_deref(), Some("md"));
            // Leader epochs from v5.
            assert_eq!(
                p.committed_leader_epoch,
                if v >= 5 { 4 } else { -1 },
                "v{v}"
            );
        }
    }

    #[test]
    fn fetch_group_errors_by_version() {
        let wanted: Wanted = Some(vec![("a".into(), vec![0, 1])]);
        let loading = || {
            Ok(pb::OffsetFetchResponse {
                error_code: 14,
                ..Default::default()
            })
        };
        // v1: no top-level error; every requested partition carries it.
        let r = wire(&fetch_response_v1_7(loading(), &wanted, 1), 1);
        let parts: Vec<(i32, i64, i16)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset, p.error_code))
            .collect();
        assert_eq!(parts, [(0, -1, 14), (1, -1, 14)]);
        // v2+: the top-level error, no partitions.
        for v in 2..=7 {
            let r = wire(&fetch_response_v1_7(loading(), &wanted, v), v);
            assert_eq!(r.error_code, 14);
            assert!(r.topics.is_empty());
        }
        let unreachable = Err(KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "down"));
        let r = fetch_response_v1_7(unreachable, &wanted, 3);
        assert_eq!(r.error_code, 15);
    }

    #[test]
    fn fetch_v8_answers_per_group() {
        let ok = fetch_group_v8(GroupId(str_bytes("g1")), Ok(offsets()));
        let down = fetch_group_v8(
            GroupId(str_bytes("g2")),
            Err(KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "no owner")),
        );
        for v in 8..=9 {
            let r = wire(
                &OffsetFetchResponse::default().with_groups(vec![ok.clone(), down.clone()]),
                v,
            );
            let (g1, g2) = (&r.groups[0], &r.groups[1]);
            assert_eq!((g1.group_id.as_str(), g1.error_code), ("g1", 0));
            assert_eq!(g1.topics.len(), 2);
            assert_eq!(g1.topics[0].partitions[0].committed_leader_epoch, 4);
            assert_eq!(g1.topics[1].partitions[0].committed_offset, 7);
            assert_eq!((g2.group_id.as_str(), g2.error_code), ("g2", 15));
            assert!(g2.topics.is_empty());
        }
    }

    #[test]
    fn offset_delete_answers() {
        let req = OffsetDeleteRequest::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_topics(vec![
                OffsetDeleteRequestTopic::default()
                    .with_name(TopicName(str_bytes("t")))
                    .with_partitions(vec![
                        OffsetDeleteRequestPartition::default().with_partition_index(0),
                        OffsetDeleteRequestPartition::default().with_partition_index(9),
                    ]),
            ]);
        let answer = pb::OffsetDeleteResponse {
            error_code: 0,
            error_message: String::new(),
            partitions: vec![pb::PartitionResult {
                topic: "t".into(),
                partition: 0,
                error_code: 86,
            }],
        };
        let r = wire(&delete_response(&req, known, Ok(answer)), 0);
        assert_eq!(r.error_code, 0);
        let parts: Vec<(i32, i16)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code))
            .collect();
        assert_eq!(parts, [(0, 86), (9, 3)]);
        // A group error is the whole answer.
        let missing = pb::OffsetDeleteResponse {
            error_code: 69,
            ..Default::default()
        };
        let r = wire(&delete_response(&req, known, Ok(missing)), 0);
        assert_eq!(r.error_code, 69);
        assert!(r.topics.is_empty());
    }
}
