//! ListOffsets: earliest, latest, max timestamp and offset-for-time, asked
//! of each partition's leader (one `ListOffsets` call per storage node).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use runnel_proto::storage::v1 as st;

use super::Ctx;
use crate::error::{code, from_runnel, from_status};

/// Kafka's special timestamps.
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
/// KIP-1005: the earliest offset still on local disk (no tiering yet: the
/// earliest offset).
const EARLIEST_LOCAL: i64 = -4;
/// KIP-1005: the latest offset in remote storage (no tiering yet: none).
const LATEST_TIERED: i64 = -5;

struct Query {
    topic: usize,
    result: ListOffsetsPartitionResponse,
    leader: Option<String>,
    timestamp: i64,
}

fn partition(index: i32, error: i16) -> ListOffsetsPartitionResponse {
    ListOffsetsPartitionResponse::default()
        .with_partition_index(index)
        .with_error_code(error)
        .with_timestamp(-1)
        .with_offset(-1)
        .with_leader_epoch(-1)
}

pub async fn handle(
    ctx: &mut Ctx<'_>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let edge = ctx.edge;
    let md = edge.metadata();
    let mut queries: Vec<Query> = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let name = t.name.0.as_str();
        for p in &t.partitions {
            let mut q = Query {
                topic: ti,
                result: partition(p.partition_index, code::NONE),
                leader: None,
                timestamp: match p.timestamp {
                    EARLIEST_LOCAL => EARLIEST,
                    ts => ts,
                },
            };
            let error = match md
                .topic(name)
                .and_then(|t| t.partitions.get(&p.partition_index))
            {
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
                    Some(_) if q.timestamp == LATEST_TIERED => code::NONE,
                    Some(_)
                        if q.timestamp < MAX_TIMESTAMP
                            || (q.timestamp == MAX_TIMESTAMP && version < 7) =>
                    {
                        code::INVALID_REQUEST
                    }
                    Some(node) => {
                        q.leader = Some(node.address.clone());
                        code::NONE
                    }
                },
            };
            q.result.error_code = error;
            queries.push(q);
        }
    }

    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, q) in queries.iter().enumerate() {
        if let Some(leader) = &q.leader {
            by_node.entry(leader.clone()).or_default().push(i);
        }
    }
    let timeout = if version >= 10 && req.timeout_ms > 0 {
        Duration::from_millis(req.timeout_ms as u64)
    } else {
        edge.rpc_timeout()
    };
    let calls = by_node.into_iter().map(|(address, idxs)| {
        let request = st::ListOffsetsRequest {
            queries: idxs
                .iter()
                .map(|&i| st::OffsetQuery {
                    topic: req.topics[queries[i].topic].name.0.to_string(),
                    partition: queries[i].result.partition_index,
                    timestamp: queries[i].timestamp,
                })
                .collect(),
        };
        async move {
            let outcome = async {
                let mut client = edge.storage(&address)?;
                let mut call = tonic::Request::new(request);
                call.set_timeout(timeout);
                let results = client.list_offsets(call).await?.into_inner().results;
                if results.len() != idxs.len() {
                    return Err(tonic::Status::internal(
                        "storage answered a different count",
                    ));
                }
                Ok(results)
            }
            .await;
            (idxs, outcome)
        }
    });
    for (idxs, outcome) in join_all(calls).await {
        match outcome {
            Ok(results) => {
                for (i, r) in idxs.into_iter().zip(results) {
                    let q = &mut queries[i].result;
                    q.error_code = from_runnel(r.error);
                    if q.error_code == 0 {
                        q.offset = r.offset;
                        q.timestamp = r.timestamp;
                        q.leader_epoch = if version >= 4 { r.leader_epoch } else { -1 };
                    }
                }
            }
            Err(status) => {
                tracing::debug!(error = %status, "list offsets on storage node failed");
                let error = from_status(&status);
                for i in idxs {
                    queries[i].result.error_code = error;
                }
            }
        }
    }

    let mut topics: Vec<ListOffsetsTopicResponse> = req
        .topics
        .iter()
        .map(|t| ListOffsetsTopicResponse::default().with_name(t.name.clone()))
        .collect();
    for q in queries {
        ctx.note(q.result.error_code);
        topics[q.topic].partitions.push(q.result);
    }
    ListOffsetsResponse::default().with_topics(topics)
}
