//! Produce: the client's RecordBatch bytes go to ingest as they are, all
//! partitions of the request in one call; ingest checks them, routes them to
//! the leaders and waits for the acks asked for.

use std::collections::HashMap;
use std::time::Duration;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use runnel_proto::ingest::v1 as pb;

use super::Ctx;
use crate::error::{code, from_runnel, from_status};
use crate::frame::str_bytes;

/// Extra time given to the ingest call beyond the request's own timeout, so
/// ingest answers with per-partition timeouts rather than the call failing.
const CALL_MARGIN: Duration = Duration::from_secs(5);

fn partition(index: i32, error: i16, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(str_bytes))
}

/// Answers every partition of the request with one error.
fn all_failed(req: &ProduceRequest, error: i16, message: &str) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        req.topic_data
            .iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| partition(p.index, error, Some(message.to_string())))
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Returns `None` for acks=0: Kafka sends no response then.
pub async fn handle(
    ctx: &mut Ctx<'_>,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    if !(-1..=1).contains(&acks) {
        ctx.note(code::INVALID_REQUIRED_ACKS);
        let msg = format!("acks must be 0, 1 or -1 (all), not {acks}");
        return Some(all_failed(&req, code::INVALID_REQUIRED_ACKS, &msg));
    }
    let mut parts = Vec::new();
    let mut bytes_in = 0usize;
    for t in &req.topic_data {
        for p in &t.partition_data {
            let batches = p.records.clone().unwrap_or_default();
            bytes_in += batches.len();
            parts.push(pb::TopicPartitionBatches {
                topic: t.name.0.to_string(),
                partition: p.index,
                batches,
            });
        }
    }
    metrics::counter!("runnel_edge_produce_bytes_total").increment(bytes_in as u64);
    let timeout_ms = req.timeout_ms.max(0) as u32;
    let call = pb::ProduceRequest {
        partitions: parts,
        acks: acks as i32,
        timeout_ms,
    };
    let outcome = match ctx.edge.ingest() {
        Ok(mut client) => {
            let mut request = tonic::Request::new(call);
            request.set_timeout(Duration::from_millis(timeout_ms as u64) + CALL_MARGIN);
            client.produce(request).await.map(|r| r.into_inner())
        }
        Err(status) => Err(status),
    };
    if acks == 0 {
        if let Err(status) = &outcome {
            tracing::debug!(error = %status, "acks=0 produce failed");
        }
        return None;
    }
    let results = match outcome {
        Ok(r) => r.results,
        Err(status) => {
            let error = from_status(&status);
            tracing::debug!(error = %status, "produce through ingest failed");
            ctx.note(error);
            return Some(all_failed(&req, error, status.message()));
        }
    };
    let mut by_partition: HashMap<(&str, i32), &pb::PartitionResult> = HashMap::new();
    for r in &results {
        by_partition
            .entry((r.topic.as_str(), r.partition))
            .or_insert(r);
    }
    let responses = req
        .topic_data
        .iter()
        .map(|t| {
            let name = t.name.0.as_str();
            let partitions = t
                .partition_data
                .iter()
                .map(|p| match by_partition.get(&(name, p.index)) {
                    Some(r) => {
                        let error = from_runnel(r.error);
                        ctx.note(error);
                        let mut out = partition(
                            p.index,
                            error,
                            (error != 0 && version >= 8).then(|| r.error_message.clone()),
                        );
                        if error == 0 {
                            out.base_offset = r.base_offset;
                            out.log_append_time_ms = r.log_append_time_ms;
                            out.log_start_offset = r.log_start_offset;
                        }
                        out
                    }
                    None => {
                        ctx.note(code::UNKNOWN_SERVER_ERROR);
                        partition(
                            p.index,
                            code::UNKNOWN_SERVER_ERROR,
                            Some("ingest gave no result for this partition".into()),
                        )
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partition_responses(partitions)
        })
        .collect();
    Some(ProduceResponse::default().with_responses(responses))
}
