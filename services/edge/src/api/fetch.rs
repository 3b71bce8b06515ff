//! Fetch: each partition is read from its leader's storage node, all the
//! partitions a node leads in one `Fetch` call. The long poll happens in the
//! storage node (it wakes on append); with partitions on several nodes the
//! edge first reads everything at once, and only if that is not enough waits
//! on all nodes and answers as soon as one of them has data.
//!
//! Fetch sessions (KIP-227) are not kept: every response says session id 0,
//! which tells the client to keep sending full requests.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{join_all, select_all};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use runnel_proto::storage::v1 as st;
use uuid::Uuid;

use super::Ctx;
use super::metadata::topic_uuid;
use crate::error::{code, from_runnel, from_status};
use crate::frame::str_bytes;
use crate::state::Edge;

/// Extra time given to a storage long poll beyond the client's max wait.
const CALL_MARGIN: Duration = Duration::from_secs(5);

/// One partition of the request and, once known, its answer.
struct Slot {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    /// The storage node to ask, when the partition may be read.
    leader: Option<String>,
    result: PartitionData,
}

fn failed(partition: i32, error: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(partition)
        .with_error_code(error)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_aborted_transactions(None)
        .with_records(Some(Bytes::new()))
}

fn from_storage(r: &st::FetchResult) -> PartitionData {
    let error = from_runnel(r.error);
    PartitionData::default()
        .with_partition_index(r.partition)
        .with_error_code(error)
        .with_high_watermark(r.high_watermark)
        .with_last_stable_offset(r.high_watermark)
        .with_log_start_offset(r.log_start_offset)
        .with_aborted_transactions(None)
        // Empty bytes rather than null: some clients treat null as an error.
        .with_records(Some(r.records.clone()))
}

/// One `Fetch` call to a storage node for the given slots.
async fn fetch_node(
    edge: &Edge,
    address: &str,
    slots: &[&Slot],
    max_wait_ms: u32,
    min_bytes: i32,
    max_bytes: i32,
) -> Result<Vec<st::FetchResult>, tonic::Status> {
    let mut client = edge.storage(address)?;
    let request = st::FetchRequest {
        partitions: slots
            .iter()
            .map(|s| st::PartitionFetch {
                topic: s.topic.clone(),
                partition: s.partition,
                offset: s.offset,
                max_bytes: s.max_bytes,
            })
            .collect(),
        max_wait_ms,
        min_bytes,
        max_bytes,
    };
    let mut call = tonic::Request::new(request);
    call.set_timeout(Duration::from_millis(max_wait_ms as u64) + CALL_MARGIN);
    let results = client.fetch(call).await?.into_inner().results;
    if results.len() != slots.len() {
        return Err(tonic::Status::internal(format!(
            "storage node answered {} results for {} partitions",
            results.len(),
            slots.len()
        )));
    }
    Ok(results)
}

type NodeOutcome = (Vec<usize>, Result<Vec<st::FetchResult>, tonic::Status>);

fn apply(slots: &mut [Slot], (idxs, outcome): NodeOutcome) {
    match outcome {
        Ok(results) => {
            for (i, r) in idxs.into_iter().zip(results) {
                slots[i].result = from_storage(&r);
            }
        }
        Err(status) => {
            tracing::debug!(error = %status, "fetch from storage node failed");
            let error = from_status(&status);
            for i in idxs {
                slots[i].result = failed(slots[i].partition, error);
            }
        }
    }
}

fn outcome_bytes(outcome: &NodeOutcome) -> (usize, bool) {
    match &outcome.1 {
        Ok(results) => (
            results.iter().map(|r| r.records.len()).sum(),
            results.iter().any(|r| r.error != 0),
        ),
        Err(_) => (0, true),
    }
}

pub async fn handle(ctx: &mut Ctx<'_>, req: FetchRequest, version: i16) -> FetchResponse {
    let edge = ctx.edge;
    // Sessions: the edge never creates one, so any session id is unknown.
    if version >= 7 && req.session_id != 0 {
        ctx.note(code::FETCH_SESSION_ID_NOT_FOUND);
        return FetchResponse::default().with_error_code(code::FETCH_SESSION_ID_NOT_FOUND);
    }
    if version >= 7 && req.session_epoch > 0 {
        ctx.note(code::INVALID_FETCH_SESSION_EPOCH);
        return FetchResponse::default().with_error_code(code::INVALID_FETCH_SESSION_EPOCH);
    }
    let md = edge.metadata();
    let by_id = version >= 13;
    let ids: BTreeMap<Uuid, &str> = if by_id {
        md.topics
            .values()
            .map(|t| (topic_uuid(t), t.record.name.as_str()))
            .collect()
    } else {
        BTreeMap::new()
    };

    // Resolve every partition to its leader, or to an error.
    let mut slots: Vec<Slot> = Vec::new();
    let mut topics: Vec<(TopicName, Uuid, std::ops::Range<usize>)> = Vec::new();
    for t in &req.topics {
        let start = slots.len();
        let name = if by_id {
            ids.get(&t.topic_id).map(|n| n.to_string())
        } else {
            Some(t.topic.0.to_string())
        };
        for p in &t.partitions {
            let mut slot = Slot {
                topic: name.clone().unwrap_or_default(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
                leader: None,
                result: failed(p.partition, code::NONE),
            };
            let error = match name.as_deref().and_then(|n| md.topic(n)) {
                None if by_id => code::UNKNOWN_TOPIC_ID,
                None => code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(topic) => match topic.partitions.get(&p.partition) {
                    None => code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(state) => match md.nodes.get(&state.leader) {
                        None => code::NOT_LEADER_OR_FOLLOWER,
                        Some(_)
                            if p.current_leader_epoch >= 0
                                && p.current_leader_epoch < state.leader_epoch =>
                        {
                            code::FENCED_LEADER_EPOCH
                        }
                        Some(_) if p.current_leader_epoch > state.leader_epoch => {
                            code::UNKNOWN_LEADER_EPOCH
                        }
                        Some(node) => {
                            slot.leader = Some(node.address.clone());
                            code::NONE
                        }
                    },
                },
            };
            if error != code::NONE {
                slot.result = failed(p.partition, error);
            }
            slots.push(slot);
        }
        let name = TopicName(str_bytes(name.unwrap_or_default()));
        let name = if by_id { TopicName::default() } else { name };
        topics.push((name, t.topic_id, start..slots.len()));
    }

    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in slots.iter().enumerate() {
        if let Some(leader) = &s.leader {
            by_node.entry(leader.clone()).or_default().push(i);
        }
    }
    let any_error = slots.iter().any(|s| s.result.error_code != 0);
    let max_wait = if any_error {
        0
    } else {
        req.max_wait_ms.max(0) as u32
    };
    let min_bytes = req.min_bytes.max(1);
    let max_bytes = if req.max_bytes > 0 {
        req.max_bytes
    } else {
        i32::MAX
    };
    let call = |address: String, idxs: Vec<usize>, wait: u32| {
        let picked: Vec<&Slot> = idxs.iter().map(|&i| &slots[i]).collect();
        async move {
            let outcome = fetch_node(edge, &address, &picked, wait, min_bytes, max_bytes).await;
            (idxs, outcome)
        }
        .boxed()
    };
    let outcomes: Vec<NodeOutcome> = if by_node.len() <= 1 {
        // One node: the storage node does the whole long poll.
        join_all(
            by_node
                .into_iter()
                .map(|(address, idxs)| call(address, idxs, max_wait)),
        )
        .await
    } else {
        // Several nodes: read everything at once; wait only if that is not
        // enough, and take the first node that has something.
        let first: Vec<NodeOutcome> = join_all(
            by_node
                .iter()
                .map(|(address, idxs)| call(address.clone(), idxs.clone(), 0)),
        )
        .await;
        let (total, errors) = first
            .iter()
            .map(outcome_bytes)
            .fold((0, false), |a, b| (a.0 + b.0, a.1 || b.1));
        if total >= min_bytes as usize || errors || max_wait == 0 {
            first
        } else {
            let waits = by_node
                .into_iter()
                .map(|(address, idxs)| call(address, idxs, max_wait));
            let (woken, _, _) = select_all(waits).await;
            let mut outcomes = first;
            outcomes.push(woken);
            outcomes
        }
    };
    for outcome in outcomes {
        apply(&mut slots, outcome);
    }

    // Keep the whole response within max_bytes (the first non-empty
    // partition always gets its data, as Kafka does).
    let mut total = 0usize;
    for s in &mut slots {
        let len = s.result.records.as_ref().map_or(0, Bytes::len);
        if len == 0 {
            continue;
        }
        if total > 0 && total + len > max_bytes as usize {
            s.result.records = Some(Bytes::new());
            continue;
        }
        total += len;
    }
    metrics::counter!("runnel_edge_fetch_bytes_total").increment(total as u64);

    let mut responses = Vec::with_capacity(topics.len());
    for (name, id, range) in topics {
        let partitions = slots[range]
            .iter()
            .map(|s| {
                ctx.note(s.result.error_code);
                s.result.clone()
            })
            .collect();
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(name)
                .with_topic_id(if by_id { id } else { Uuid::nil() })
                .with_partitions(partitions),
        );
    }
    FetchResponse::default()
        .with_error_code(code::NONE)
        .with_session_id(0)
        .with_responses(responses)
}
