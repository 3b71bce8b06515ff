//! Produce: the client's RecordBatch bytes go to ingest as they are, all
//! partitions of the request in one call; ingest checks them, routes them to
//! the leaders and waits for the acks asked for.
//!
//! A client that pipelines produce requests on one connection (librdkafka
//! keeps up to five in flight) has the later ones queued while the first is
//! stored. [`handle_merged`] sends such a queue as one ingest call, each
//! partition's batches concatenated in request order: one append and one
//! fsync for all of them instead of one each, with the order a Kafka broker
//! keeps. Each request still gets its own response with its own offsets.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::ingest::v1 as pb;

use super::Ctx;
use crate::error::{code, from_runnel, from_status};
use crate::frame::str_bytes;
use crate::state::Edge;

/// Extra time given to the ingest call beyond the request's own timeout, so
/// ingest answers with per-partition timeouts rather than the call failing.
const CALL_MARGIN: Duration = Duration::from_secs(5);

/// What happened to one partition of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    error: i16,
    message: String,
    base_offset: i64,
    log_append_time_ms: i64,
    log_start_offset: i64,
}

impl Outcome {
    fn failed(error: i16, message: impl Into<String>) -> Self {
        Outcome {
            error,
            message: message.into(),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }

    fn of(r: &pb::PartitionResult) -> Self {
        Outcome {
            error: from_runnel(r.error),
            message: r.error_message.clone(),
            base_offset: r.base_offset,
            log_append_time_ms: r.log_append_time_ms,
            log_start_offset: r.log_start_offset,
        }
    }
}

fn partition(index: i32, error: i16, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(str_bytes))
}

/// The response to `req`, each partition answered by `outcome`; `note`
/// sees every error code (for metrics).
fn respond(
    req: &ProduceRequest,
    version: i16,
    mut outcome: impl FnMut(&str, i32) -> Option<Outcome>,
    note: &mut impl FnMut(i16),
) -> ProduceResponse {
    let responses = req
        .topic_data
        .iter()
        .map(|t| {
            let name = t.name.0.as_str();
            let partitions = t
                .partition_data
                .iter()
                .map(|p| {
                    let o = outcome(name, p.index).unwrap_or_else(|| {
                        Outcome::failed(
                            code::UNKNOWN_SERVER_ERROR,
                            "ingest gave no result for this partition",
                        )
                    });
                    note(o.error);
                    if o.error != 0 {
                        return partition(p.index, o.error, (version >= 8).then_some(o.message));
                    }
                    let mut out = partition(p.index, 0, None);
                    out.base_offset = o.base_offset;
                    out.log_append_time_ms = o.log_append_time_ms;
                    out.log_start_offset = o.log_start_offset;
                    out
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partition_responses(partitions)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

fn acks_error(acks: i16) -> Option<Outcome> {
    (!(-1..=1).contains(&acks)).then(|| {
        Outcome::failed(
            code::INVALID_REQUIRED_ACKS,
            format!("acks must be 0, 1 or -1 (all), not {acks}"),
        )
    })
}

/// One ingest call.
async fn call_ingest(
    edge: &Edge,
    partitions: Vec<pb::TopicPartitionBatches>,
    acks: i16,
    timeout_ms: u32,
) -> Result<Vec<pb::PartitionResult>, tonic::Status> {
    let bytes: usize = partitions.iter().map(|p| p.batches.len()).sum();
    metrics::counter!("runnel_edge_produce_bytes_total").increment(bytes as u64);
    let mut client = edge.ingest()?;
    let mut request = tonic::Request::new(pb::ProduceRequest {
        partitions,
        acks: acks as i32,
        timeout_ms,
    });
    request.set_timeout(Duration::from_millis(timeout_ms as u64) + CALL_MARGIN);
    client
        .produce(request)
        .await
        .map(|r| r.into_inner().results)
}

fn by_partition(results: &[pb::PartitionResult]) -> HashMap<(&str, i32), &pb::PartitionResult> {
    let mut map = HashMap::new();
    for r in results {
        map.entry((r.topic.as_str(), r.partition)).or_insert(r);
    }
    map
}

/// Returns `None` for acks=0: Kafka sends no response then.
pub async fn handle(
    ctx: &mut Ctx<'_>,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let edge = ctx.edge;
    let mut note = |c: i16| ctx.note(c);
    if let Some(bad) = acks_error(req.acks) {
        return Some(respond(&req, version, |_, _| Some(bad.clone()), &mut note));
    }
    let parts = req
        .topic_data
        .iter()
        .flat_map(|t| {
            t.partition_data.iter().map(|p| pb::TopicPartitionBatches {
                topic: t.name.0.to_string(),
                partition: p.index,
                batches: p.records.clone().unwrap_or_default(),
            })
        })
        .collect();
    let outcome = call_ingest(edge, parts, req.acks, req.timeout_ms.max(0) as u32).await;
    if req.acks == 0 {
        if let Err(status) = &outcome {
            tracing::debug!(error = %status, "acks=0 produce failed");
        }
        return None;
    }
    Some(match outcome {
        Ok(results) => {
            let map = by_partition(&results);
            respond(
                &req,
                version,
                |t, p| map.get(&(t, p)).map(|r| Outcome::of(r)),
                &mut note,
            )
        }
        Err(status) => {
            tracing::debug!(error = %status, "produce through ingest failed");
            let failed = Outcome::failed(from_status(&status), status.message());
            respond(&req, version, |_, _| Some(failed.clone()), &mut note)
        }
    })
}

/// Records in whole batches (`last_offset_delta + 1` each); `None` if the
/// bytes are not whole batches (ingest will say what is wrong).
fn record_count(mut batches: &[u8]) -> Option<i64> {
    let mut n = 0i64;
    while !batches.is_empty() {
        let h = runnel_records::BatchHeader::parse(batches).ok()?;
        if batches.len() < h.total_len() || h.last_offset_delta < 0 {
            return None;
        }
        // The leader gives each batch last_offset_delta + 1 offsets.
        n += h.last_offset_delta as i64 + 1;
        batches = &batches[h.total_len()..];
    }
    Some(n)
}

/// Whether the first batch comes from an idempotent producer: the leader
/// deduplicates such a batch on its own, so it never shares an append.
fn idempotent(batches: &[u8]) -> bool {
    runnel_records::BatchHeader::parse(batches).is_ok_and(|h| h.producer_id >= 0)
}

/// One request's share of a merged partition.
struct Share {
    request: usize,
    records: i64,
    batches: Bytes,
}

/// Can these requests be stored as one? Same valid acks, and every
/// partition's bytes whole batches (so offsets can be handed back).
pub fn mergeable(reqs: &[(ProduceRequest, i16)]) -> bool {
    let Some((first, _)) = reqs.first() else {
        return false;
    };
    acks_error(first.acks).is_none()
        && reqs.iter().all(|(r, _)| {
            r.acks == first.acks
                && r.topic_data.iter().all(|t| {
                    t.partition_data.iter().all(|p| {
                        let records = p.records.as_deref().unwrap_or_default();
                        record_count(records).is_some() && !idempotent(records)
                    })
                })
        })
}

/// Stores several pipelined requests of one connection with one ingest
/// call (see the module doc); one response per request, in order (`None`
/// for acks=0), with each request's error codes for metrics. Callers check
/// [`mergeable`] first.
pub async fn handle_merged(
    edge: &Edge,
    reqs: &[(ProduceRequest, i16)],
) -> Vec<(Option<ProduceResponse>, Vec<i16>)> {
    let acks = reqs.first().map_or(-1, |(r, _)| r.acks);
    let timeout_ms = reqs
        .iter()
        .map(|(r, _)| r.timeout_ms.max(0))
        .max()
        .unwrap_or(0) as u32;
    // Each partition once, its requests' batches in request order.
    let mut order: Vec<(String, i32)> = Vec::new();
    let mut shares: HashMap<(String, i32), Vec<Share>> = HashMap::new();
    for (i, (req, _)) in reqs.iter().enumerate() {
        for t in &req.topic_data {
            for p in &t.partition_data {
                let batches = p.records.clone().unwrap_or_default();
                let key = (t.name.0.to_string(), p.index);
                let entry = shares.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                });
                entry.push(Share {
                    request: i,
                    records: record_count(&batches).unwrap_or(0),
                    batches,
                });
            }
        }
    }
    let parts = order
        .iter()
        .map(|key| {
            let mut merged = BytesMut::new();
            for s in &shares[key] {
                merged.extend_from_slice(&s.batches);
            }
            pb::TopicPartitionBatches {
                topic: key.0.clone(),
                partition: key.1,
                batches: merged.freeze(),
            }
        })
        .collect();
    metrics::counter!("runnel_edge_produce_merged_requests_total").increment(reqs.len() as u64);
    let result = call_ingest(edge, parts, acks, timeout_ms).await;

    // outcomes[(request, topic, partition)]
    let mut outcomes: HashMap<(usize, String, i32), Outcome> = HashMap::new();
    match &result {
        Err(status) => {
            tracing::debug!(error = %status, "merged produce through ingest failed");
            let failed = Outcome::failed(from_status(status), status.message());
            for (key, list) in &shares {
                for s in list {
                    outcomes.insert((s.request, key.0.clone(), key.1), failed.clone());
                }
            }
        }
        Ok(results) => {
            let map = by_partition(results);
            for key in &order {
                let list = &shares[key];
                let Some(r) = map.get(&(key.0.as_str(), key.1)) else {
                    continue;
                };
                let content_error = matches!(
                    r.error(),
                    ErrorCode::CorruptMessage
                        | ErrorCode::InvalidRecord
                        | ErrorCode::MessageTooLarge
                );
                if r.error() == ErrorCode::None {
                    // The requests' batches got consecutive offsets.
                    let mut next = r.base_offset;
                    for s in list {
                        let mut o = Outcome::of(r);
                        o.base_offset = next;
                        next += s.records;
                        outcomes.insert((s.request, key.0.clone(), key.1), o);
                    }
                } else if content_error && list.len() > 1 {
                    // Ingest refused the partition before storing any of it;
                    // store each request's batches alone so only the bad
                    // request gets the error.
                    for s in list {
                        let one = vec![pb::TopicPartitionBatches {
                            topic: key.0.clone(),
                            partition: key.1,
                            batches: s.batches.clone(),
                        }];
                        let o = match call_ingest(edge, one, acks, timeout_ms).await {
                            Ok(rs) => rs.first().map_or_else(
                                || Outcome::failed(code::UNKNOWN_SERVER_ERROR, "no result"),
                                Outcome::of,
                            ),
                            Err(status) => Outcome::failed(from_status(&status), status.message()),
                        };
                        outcomes.insert((s.request, key.0.clone(), key.1), o);
                    }
                } else {
                    for s in list {
                        outcomes.insert((s.request, key.0.clone(), key.1), Outcome::of(r));
                    }
                }
            }
        }
    }
    reqs.iter()
        .enumerate()
        .map(|(i, (req, version))| {
            let mut codes = Vec::new();
            let response = respond(
                req,
                *version,
                |t, p| outcomes.get(&(i, t.to_string(), p)).cloned(),
                &mut |c| codes.push(c),
            );
            ((acks != 0).then_some(response), codes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use runnel_records::{Compression, PlainRecord, build_batch};

    fn batch(n: usize) -> Bytes {
        let records: Vec<PlainRecord> = (0..n)
            .map(|i| PlainRecord {
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                headers: Vec::new(),
                timestamp_ms: 1,
            })
            .collect();
        build_batch(&records, Compression::None).unwrap()
    }

    #[test]
    fn counts_records_of_whole_batches_only() {
        let mut two = BytesMut::new();
        two.extend_from_slice(&batch(3));
        two.extend_from_slice(&batch(4));
        assert_eq!(record_count(&two), Some(7));
        assert_eq!(record_count(&[]), Some(0));
        assert_eq!(record_count(&two[..two.len() - 1]), None);
        assert_eq!(record_count(b"garbage"), None);
    }
}
