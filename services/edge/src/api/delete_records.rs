//! DeleteRecords: moves partitions' log start offsets up, asked of each
//! partition's leader (one storage `DeleteRecords` call per node), like
//! ListOffsets. The answer per partition is the new log start (the low
//! watermark) or the error the leader gave.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use runnel_proto::storage::v1 as st;

use super::Ctx;
use crate::error::{code, from_runnel, from_status};

struct Deletion {
    topic: usize,
    offset: i64,
    result: DeleteRecordsPartitionResult,
    leader: Option<String>,
}

pub async fn handle(
    ctx: &mut Ctx<'_>,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let edge = ctx.edge;
    let md = edge.metadata();
    let mut deletions: Vec<Deletion> = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        for p in &t.partitions {
            let mut d = Deletion {
                topic: ti,
                offset: p.offset,
                result: DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1)
                    .with_error_code(code::NONE),
                leader: None,
            };
            d.result.error_code = match md
                .topic(t.name.0.as_str())
                .and_then(|topic| topic.partitions.get(&p.partition_index))
            {
                None => code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(state) => match md.nodes.get(&state.leader) {
                    None => code::NOT_LEADER_OR_FOLLOWER,
                    Some(node) => {
                        d.leader = Some(node.address.clone());
                        code::NONE
                    }
                },
            };
            deletions.push(d);
        }
    }

    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in deletions.iter().enumerate() {
        if let Some(leader) = &d.leader {
            by_node.entry(leader.clone()).or_default().push(i);
        }
    }
    let timeout = if req.timeout_ms > 0 {
        Duration::from_millis(req.timeout_ms as u64)
    } else {
        edge.rpc_timeout()
    };
    let calls = by_node.into_iter().map(|(address, idxs)| {
        let request = st::DeleteRecordsRequest {
            partitions: idxs
                .iter()
                .map(|&i| st::RecordsToDelete {
                    topic: req.topics[deletions[i].topic].name.0.to_string(),
                    partition: deletions[i].result.partition_index,
                    offset: deletions[i].offset,
                })
                .collect(),
        };
        async move {
            let outcome = async {
                let mut client = edge.storage(&address)?;
                let mut call = tonic::Request::new(request);
                call.set_timeout(timeout);
                let results = client.delete_records(call).await?.into_inner().results;
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
                    let d = &mut deletions[i].result;
                    d.error_code = from_runnel(r.error);
                    if d.error_code == code::NONE {
                        d.low_watermark = r.low_watermark;
                    } else {
                        tracing::debug!(topic = %r.topic, partition = r.partition, error = %r.error_message, "delete records refused");
                    }
                }
            }
            Err(status) => {
                tracing::debug!(error = %status, "delete records on storage node failed");
                let error = from_status(&status);
                for i in idxs {
                    deletions[i].result.error_code = error;
                }
            }
        }
    }

    let mut topics: Vec<DeleteRecordsTopicResult> = req
        .topics
        .iter()
        .map(|t| DeleteRecordsTopicResult::default().with_name(t.name.clone()))
        .collect();
    for d in deletions {
        ctx.note(d.result.error_code);
        topics[d.topic].partitions.push(d.result);
    }
    DeleteRecordsResponse::default()
        .with_throttle_time_ms(0)
        .with_topics(topics)
}
