//! CreatePartitions: a topic grows to a new partition count through the
//! coordinator's `CreatePartitions`, which places the new partitions like a
//! new topic's. Manual assignments are refused (the coordinator places
//! replicas); partitions never shrink.

use std::collections::HashSet;
use std::time::Duration;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::*;
use runnel_proto::coordinator::v1 as coord;

use super::Ctx;
use crate::error::code;
use crate::frame::str_bytes;
use crate::state::{Edge, KafkaError, create_error, topic_ready};

/// The Kafka code of a failed CreatePartitions call.
fn partitions_error(s: &tonic::Status) -> KafkaError {
    match s.code() {
        tonic::Code::NotFound => KafkaError::new(code::UNKNOWN_TOPIC_OR_PARTITION, s.message()),
        tonic::Code::InvalidArgument => KafkaError::new(code::INVALID_PARTITIONS, s.message()),
        _ => create_error(s),
    }
}

async fn create_one(
    edge: &Edge,
    t: &create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
    timeout_ms: i32,
) -> Result<(), KafkaError> {
    let name = t.name.0.as_str();
    if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
        return Err(KafkaError::new(
            code::INVALID_REPLICA_ASSIGNMENT,
            "manual replica assignments are not supported; give only the new partition count",
        ));
    }
    if t.count < 1 {
        return Err(KafkaError::new(
            code::INVALID_PARTITIONS,
            format!("invalid partition count {}: must be at least 1", t.count),
        ));
    }
    let mut client = edge.coordinator()?;
    let mut call = tonic::Request::new(coord::CreatePartitionsRequest {
        name: name.to_string(),
        total_count: t.count,
        validate_only,
    });
    call.set_timeout(edge.rpc_timeout());
    client
        .create_partitions(call)
        .await
        .map_err(|s| partitions_error(&s))?;
    if !validate_only && timeout_ms > 0 {
        // Answer once this edge serves the new partitions (Metadata from it
        // lists them with leaders), as Kafka answers once they exist.
        let wait = Duration::from_millis(timeout_ms as u64);
        let count = t.count;
        let ready = edge
            .watcher
            .wait_until(wait, |md| {
                md.topic(name)
                    .is_none_or(|t| t.record.partitions >= count && topic_ready(md, t))
            })
            .await;
        if ready.is_none() {
            tracing::debug!(
                topic = name,
                count,
                "new partitions not ready within the timeout"
            );
        }
    }
    Ok(())
}

pub async fn create_partitions(
    ctx: &mut Ctx<'_>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let edge = ctx.edge;
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.as_str()))
        .map(|t| t.name.0.to_string())
        .collect();
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let outcome = if duplicates.contains(t.name.0.as_str()) {
            Err(KafkaError::new(
                code::INVALID_REQUEST,
                format!("topic {:?} appears more than once", t.name.0.as_str()),
            ))
        } else {
            create_one(edge, t, req.validate_only, req.timeout_ms).await
        };
        let mut r = CreatePartitionsTopicResult::default()
            .with_name(TopicName(str_bytes(t.name.0.as_str())))
            .with_error_message(None);
        if let Err(e) = outcome {
            tracing::debug!(topic = %t.name.0.as_str(), code = e.code, error = %e.message, "create partitions refused");
            ctx.note(e.code);
            r.error_code = e.code;
            r.error_message = Some(str_bytes(e.message));
        }
        results.push(r);
    }
    CreatePartitionsResponse::default().with_results(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_statuses_map_to_kafka_codes() {
        let c = |s: tonic::Status| partitions_error(&s).code;
        assert_eq!(c(tonic::Status::not_found("topic \"x\" does not exist")), 3);
        assert_eq!(
            c(tonic::Status::invalid_argument(
                "invalid partition count 2: topic \"x\" already has 3 partitions"
            )),
            37
        );
        assert_eq!(c(tonic::Status::unavailable("no active controller")), 41);
        assert_eq!(c(tonic::Status::failed_precondition("policy")), 44);
    }
}
