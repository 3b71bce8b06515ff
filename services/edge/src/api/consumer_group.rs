//! ConsumerGroupHeartbeat (API key 68): the next-generation consumer group
//! protocol (KIP-848), forwarded to the groups node owning the group with
//! the routing of `groups.rs` (NOT_COORDINATOR followed to the shard's new
//! owner, COORDINATOR_NOT_AVAILABLE when no owner can be reached).
//!
//! The Kafka message names topics by id, the groups service by name; the
//! edge translates with the cluster metadata (`record.topic_id`, as the
//! Metadata response shows it):
//!
//! - owned partitions of a topic id the metadata does not know (deleted, or
//!   not seen by this edge yet) are dropped: the member cannot own them;
//! - assigned partitions of a topic that has no id here (it vanished since
//!   the groups node assigned it) are dropped too. The member then reports
//!   a smaller ownership than it was given, and the groups node sends the
//!   whole assignment again on the next heartbeat.
//!
//! Versions: v0 lets the coordinator choose the member id of a joining
//! member (empty member id); v1 (KIP-1082) has the client generate it, so an
//! empty one is an invalid request, and adds `SubscribedTopicRegex` (RE2
//! syntax, whole topic names), which the groups service resolves against
//! the topics as they come and go; null means unchanged, empty means none.

use std::collections::HashMap;

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use kafka_protocol::protocol::StrBytes;
use runnel_cluster::ClusterMetadata;
use runnel_proto::groups::v1 as pb;
use uuid::Uuid;

use super::Ctx;
use super::groups::{OnTimeout, call_owner, kafka_code};
use super::metadata::topic_uuid;
use crate::error::code;
use crate::frame::str_bytes;
use crate::state::KafkaError;

/// Topic ids and names of the cluster, both ways. Topics without a valid
/// id are left out (a nil id never matches what a client sends).
struct TopicIds {
    by_id: HashMap<Uuid, String>,
    by_name: HashMap<String, Uuid>,
}

impl TopicIds {
    fn new(md: &ClusterMetadata) -> Self {
        let mut by_id = HashMap::with_capacity(md.topics.len());
        let mut by_name = HashMap::with_capacity(md.topics.len());
        for t in md.topics.values() {
            let id = topic_uuid(t);
            if id.is_nil() {
                continue;
            }
            by_id.insert(id, t.record.name.clone());
            by_name.insert(t.record.name.clone(), id);
        }
        TopicIds { by_id, by_name }
    }
}

fn opt_string(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

/// The groups-service request for a Kafka heartbeat, or the error the edge
/// answers itself.
fn heartbeat_request(
    req: &ConsumerGroupHeartbeatRequest,
    version: i16,
    topics: &TopicIds,
    client_id: String,
    client_host: String,
) -> Result<pb::ConsumerGroupHeartbeatRequest, KafkaError> {
    if req.group_id.is_empty() {
        return Err(KafkaError::new(
            code::INVALID_GROUP_ID,
            "the group id is empty",
        ));
    }
    if version >= 1 && req.member_id.is_empty() {
        // KIP-1082: from v1 the consumer generates its member id.
        return Err(KafkaError::new(
            code::INVALID_REQUEST,
            "MemberId can't be empty.",
        ));
    }
    let owned = req
        .topic_partitions
        .as_ref()
        .map(|tps| pb::OwnedPartitions {
            topics: tps
                .iter()
                .filter_map(|tp| {
                    topics
                        .by_id
                        .get(&tp.topic_id)
                        .map(|name| pb::TopicPartitions {
                            topic: name.clone(),
                            partitions: tp.partitions.clone(),
                        })
                })
                .collect(),
        });
    Ok(pb::ConsumerGroupHeartbeatRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: opt_string(&req.instance_id),
        rack_id: opt_string(&req.rack_id),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .as_ref()
            .map(|names| pb::TopicNames {
                names: names.iter().map(|n| n.to_string()).collect(),
            }),
        server_assignor: opt_string(&req.server_assignor),
        owned,
        client_id,
        client_host,
        subscribed_topic_regex: if version >= 1 {
            opt_string(&req.subscribed_topic_regex)
        } else {
            None
        },
    })
}

/// The Kafka answer for the groups node's, topics named by id.
fn heartbeat_response(
    a: pb::ConsumerGroupHeartbeatResponse,
    topics: &TopicIds,
) -> ConsumerGroupHeartbeatResponse {
    let assignment = a.assignment.map(|o| {
        Assignment::default().with_topic_partitions(
            o.topics
                .into_iter()
                .filter_map(|t| {
                    let id = topics.by_name.get(&t.topic)?;
                    Some(
                        TopicPartitions::default()
                            .with_topic_id(*id)
                            .with_partitions(t.partitions),
                    )
                })
                .collect(),
        )
    });
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(kafka_code(a.error_code))
        .with_error_message((!a.error_message.is_empty()).then(|| str_bytes(a.error_message)))
        .with_member_id((!a.member_id.is_empty()).then(|| str_bytes(a.member_id)))
        .with_member_epoch(a.member_epoch)
        .with_heartbeat_interval_ms(a.heartbeat_interval_ms)
        .with_assignment(assignment)
}

/// An answer the edge makes itself (or for a groups node it could not
/// ask): the member keeps the id it sent.
fn heartbeat_error(
    req: &ConsumerGroupHeartbeatRequest,
    e: &KafkaError,
) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(e.code)
        .with_error_message(Some(str_bytes(e.message.clone())))
        .with_member_id((!req.member_id.is_empty()).then(|| req.member_id.clone()))
        .with_member_epoch(-1)
        .with_heartbeat_interval_ms(0)
        .with_assignment(None)
}

pub async fn heartbeat(
    ctx: &mut Ctx<'_>,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
) -> ConsumerGroupHeartbeatResponse {
    let edge = ctx.edge;
    let client_id = ctx.conn.client_id.clone().unwrap_or_default();
    // The peer as Kafka reports a member's host (`InetAddress.toString()`).
    let client_host = format!("/{}", ctx.conn.peer.ip());
    let topics = TopicIds::new(&edge.metadata());
    let response = match heartbeat_request(&req, version, &topics, client_id, client_host) {
        Err(e) => {
            tracing::debug!(group_id = %req.group_id.as_str(), code = e.code, message = %e.message, "consumer group heartbeat refused");
            heartbeat_error(&req, &e)
        }
        Ok(request) => {
            let outcome = call_owner(
                edge,
                &request.group_id,
                edge.rpc_timeout(),
                OnTimeout::Refind,
                |a: &pb::ConsumerGroupHeartbeatResponse| a.error_code,
                |mut client, left| {
                    let mut call = tonic::Request::new(request.clone());
                    call.set_timeout(left);
                    async move { client.consumer_group_heartbeat(call).await }
                },
            )
            .await;
            match outcome {
                // The metadata again: a topic the groups node just assigned
                // may have arrived here during the call.
                Ok(a) => heartbeat_response(a, &TopicIds::new(&edge.metadata())),
                Err(e) => heartbeat_error(&req, &e),
            }
        }
    };
    ctx.note(response.error_code);
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::api::groups::tests::wire;
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions as OwnedTopic;
    use kafka_protocol::messages::{GroupId, TopicName};
    use runnel_cluster::{TopicRecord, TopicState};

    const ORDERS: &str = "6b3c1f7e-2d4a-4c8b-9e1f-0a1b2c3d4e5f";
    const PAYMENTS: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn uuid(s: &str) -> Uuid {
        Uuid::parse_str(s).unwrap()
    }

    /// "orders" and "payments" with ids, "legacy" without one.
    fn metadata() -> ClusterMetadata {
        let mut md = ClusterMetadata::default();
        for (name, id) in [("orders", ORDERS), ("payments", PAYMENTS), ("legacy", "")] {
            md.topics.insert(
                name.to_string(),
                TopicState {
                    record: TopicRecord {
                        name: name.to_string(),
                        topic_id: id.to_string(),
                        partitions: 6,
                        replication_factor: 1,
                        configs: Default::default(),
                        created_at_ms: 0,
                    },
                    config: Default::default(),
                    partitions: Default::default(),
                },
            );
        }
        md
    }

    fn request(version: i16) -> ConsumerGroupHeartbeatRequest {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_member_id(str_bytes("m-1"))
            .with_member_epoch(4)
            .with_instance_id(Some(str_bytes("i-1")))
            .with_rack_id(Some(str_bytes("r-1")))
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(Some(vec![
                TopicName(str_bytes("orders")),
                TopicName(str_bytes("payments")),
            ]))
            .with_subscribed_topic_regex((version >= 1).then(|| str_bytes("")))
            .with_server_assignor(Some(str_bytes("uniform")))
            .with_topic_partitions(Some(vec![
                OwnedTopic::default()
                    .with_topic_id(uuid(ORDERS))
                    .with_partitions(vec![0, 3]),
                // Unknown id: dropped.
                OwnedTopic::default()
                    .with_topic_id(Uuid::from_u128(7))
                    .with_partitions(vec![1]),
                // Nil never matches the topic without an id.
                OwnedTopic::default()
                    .with_topic_id(Uuid::nil())
                    .with_partitions(vec![2]),
                OwnedTopic::default()
                    .with_topic_id(uuid(PAYMENTS))
                    .with_partitions(vec![5]),
            ]))
    }

    #[test]
    fn request_names_topics_and_drops_unknown_ids() {
        let topics = TopicIds::new(&metadata());
        for v in 0..=1 {
            // What a client sends at that version, as the edge decodes it.
            let req = wire(&request(v), v);
            let r = heartbeat_request(&req, v, &topics, "app".into(), "/10.0.0.9".into()).unwrap();
            assert_eq!(
                (r.group_id.as_str(), r.member_id.as_str(), r.member_epoch),
                ("g", "m-1", 4)
            );
            assert_eq!(r.instance_id.as_deref(), Some("i-1"));
            assert_eq!(r.rack_id.as_deref(), Some("r-1"));
            assert_eq!(r.rebalance_timeout_ms, 30_000);
            assert_eq!(r.server_assignor.as_deref(), Some("uniform"));
            assert_eq!(
                r.subscribed_topic_names.unwrap().names,
                ["orders", "payments"]
            );
            let owned: Vec<(String, Vec<i32>)> = r
                .owned
                .unwrap()
                .topics
                .into_iter()
                .map(|t| (t.topic, t.partitions))
                .collect();
            assert_eq!(
                owned,
                [("orders".into(), vec![0, 3]), ("payments".into(), vec![5])],
                "v{v}"
            );
            assert_eq!(
                (r.client_id.as_str(), r.client_host.as_str()),
                ("app", "/10.0.0.9")
            );
        }
    }

    #[test]
    fn unchanged_fields_stay_unset() {
        let topics = TopicIds::new(&metadata());
        for v in 0..=1 {
            let req = ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(str_bytes("g")))
                .with_member_id(str_bytes("m-1"))
                .with_member_epoch(7);
            let req = wire(&req, v);
            let r = heartbeat_request(&req, v, &topics, String::new(), String::new()).unwrap();
            assert_eq!(r.rebalance_timeout_ms, -1);
            assert!(r.subscribed_topic_names.is_none());
            assert!(r.owned.is_none());
            assert!(r.instance_id.is_none() && r.rack_id.is_none());
            assert!(r.server_assignor.is_none());
            // Owning nothing is not "unchanged".
            let none = wire(&req.clone().with_topic_partitions(Some(vec![])), v);
            let r = heartbeat_request(&none, v, &topics, String::new(), String::new()).unwrap();
            assert_eq!(r.owned, Some(pb::OwnedPartitions::default()));
        }
    }

    #[test]
    fn member_id_rules_follow_the_version() {
        let topics = TopicIds::new(&metadata());
        let joining = request(0)
            .with_member_id(StrBytes::default())
            .with_member_epoch(0);
        // v0: the coordinator chooses the id of a joining member.
        let r = heartbeat_request(&wire(&joining, 0), 0, &topics, String::new(), String::new());
        assert_eq!(r.unwrap().member_id, "");
        // v1 (KIP-1082): the client must send one.
        let joining = joining.with_subscribed_topic_regex(None);
        let e = heartbeat_request(&wire(&joining, 1), 1, &topics, String::new(), String::new())
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);
        // No group id.
        let e = heartbeat_request(
            &request(1).with_group_id(GroupId(StrBytes::default())),
            1,
            &topics,
            String::new(),
            String::new(),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_GROUP_ID);
    }

    fn answer(assignment: Option<pb::OwnedPartitions>) -> pb::ConsumerGroupHeartbeatResponse {
        pb::ConsumerGroupHeartbeatResponse {
            error_code: 0,
            error_message: String::new(),
            member_id: "m-1".into(),
            member_epoch: 5,
            heartbeat_interval_ms: 500,
            assignment,
        }
    }

    #[test]
    fn regex_subscriptions_are_passed_on() {
        let topics = TopicIds::new(&metadata());
        let req = wire(
            &request(1).with_subscribed_topic_regex(Some(str_bytes("orders.*"))),
            1,
        );
        let r = heartbeat_request(&req, 1, &topics, String::new(), String::new()).unwrap();
        assert_eq!(r.subscribed_topic_regex.as_deref(), Some("orders.*"));
        // Null stays "unchanged"; v0 has no regex at all.
        let plain = wire(&request(1).with_subscribed_topic_regex(None), 1);
        let r = heartbeat_request(&plain, 1, &topics, String::new(), String::new()).unwrap();
        assert_eq!(r.subscribed_topic_regex, None);
    }

    #[test]
    fn response_names_topics_by_id_at_every_version() {
        let topics = TopicIds::new(&metadata());
        let assigned = pb::OwnedPartitions {
            topics: vec![
                pb::TopicPartitions {
                    topic: "orders".into(),
                    partitions: vec![1, 4],
                },
                // Vanished since it was assigned, or has no id: dropped.
                pb::TopicPartitions {
                    topic: "gone".into(),
                    partitions: vec![0],
                },
                pb::TopicPartitions {
                    topic: "legacy".into(),
                    partitions: vec![0],
                },
                pb::TopicPartitions {
                    topic: "payments".into(),
                    partitions: vec![2],
                },
            ],
        };
        for v in 0..=1 {
            let r = wire(
                &heartbeat_response(answer(Some(assigned.clone())), &topics),
                v,
            );
            assert_eq!((r.error_code, r.member_epoch), (0, 5));
            assert_eq!(r.member_id.as_deref(), Some("m-1"));
            assert_eq!(r.heartbeat_interval_ms, 500);
            assert!(r.error_message.is_none());
            let got: Vec<(Uuid, Vec<i32>)> = r
                .assignment
                .unwrap()
                .topic_partitions
                .into_iter()
                .map(|t| (t.topic_id, t.partitions))
                .collect();
            assert_eq!(
                got,
                [(uuid(ORDERS), vec![1, 4]), (uuid(PAYMENTS), vec![2])],
                "v{v}"
            );
            // No assignment: unchanged since the last heartbeat.
            let r = wire(&heartbeat_response(answer(None), &topics), v);
            assert!(r.assignment.is_none());
            // An empty one is an assignment of nothing.
            let r = wire(
                &heartbeat_response(answer(Some(pb::OwnedPartitions::default())), &topics),
                v,
            );
            assert_eq!(r.assignment.unwrap().topic_partitions.len(), 0);
        }
    }

    #[test]
    fn errors_pass_through() {
        let topics = TopicIds::new(&metadata());
        for (code, message) in [(110, "fenced"), (23, "the group uses the classic protocol")] {
            let a = pb::ConsumerGroupHeartbeatResponse {
                error_code: code,
                error_message: message.into(),
                member_id: "m-1".into(),
                member_epoch: -1,
                ..Default::default()
            };
            for v in 0..=1 {
                let r = wire(&heartbeat_response(a.clone(), &topics), v);
                assert_eq!(r.error_code, code as i16);
                assert_eq!(r.error_message.as_deref(), Some(message));
                assert_eq!(r.member_epoch, -1);
            }
        }
        // The groups node could not be asked.
        let e = KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "down");
        let r = wire(&heartbeat_error(&request(0), &e), 0);
        assert_eq!(r.error_code, 15);
        // A v0 joining member has no id yet: null, as Kafka answers.
        let joining = request(0).with_member_id(StrBytes::default());
        assert!(wire(&heartbeat_error(&joining, &e), 0).member_id.is_none());
    }
}
