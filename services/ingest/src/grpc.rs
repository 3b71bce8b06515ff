//! gRPC handlers of the ingest role.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use runnel_cluster::{ProducerIdentity, init_producer};
use runnel_proto::common::v1::{Compression as PbCompression, ErrorCode};
use runnel_proto::ingest::v1 as pb;
use runnel_proto::ingest::v1::ingest_service_server::IngestService;
use runnel_records::{Compression, PlainRecord, build_batch, partition_for_key};
use runnel_telemetry::RequestMetrics;
use tonic::{Request, Response, Status};

use crate::router::{PartitionData, Router};

#[derive(Debug, Clone)]
pub struct IngestGrpc {
    router: Arc<Router>,
}

impl IngestGrpc {
    pub fn new(router: Arc<Router>) -> Self {
        IngestGrpc { router }
    }

    async fn dispatch(
        &self,
        m: &mut RequestMetrics,
        parts: Vec<PartitionData>,
        acks: i32,
        timeout_ms: u32,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        if !matches!(acks, -1..=1) {
            m.fail("INVALID_REQUIRED_ACKS");
            return Err(Status::invalid_argument(format!(
                "acks must be 0, 1 or -1 (all), not {acks}"
            )));
        }
        let bytes: usize = parts.iter().map(|p| p.batches.len()).sum();
        let timeout = self.router.timeout(timeout_ms);
        let started = std::time::Instant::now();
        if acks == 0 {
            // Fire and forget: the caller asked not to wait for the leader.
            let router = self.router.clone();
            let results = parts
                .iter()
                .map(|p| pb::PartitionResult {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    base_offset: -1,
                    last_offset: -1,
                    log_append_time_ms: -1,
                    log_start_offset: -1,
                    ..Default::default()
                })
                .collect();
            tokio::spawn(async move {
                router.produce(parts, 0, timeout).await;
            });
            return Ok(Response::new(pb::ProduceResponse { results }));
        }
        let results = self.router.produce(parts, acks, timeout).await;
        let acks_label = if acks == 1 { "1" } else { "all" };
        metrics::histogram!("runnel_produce_latency_seconds", "acks" => acks_label)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("runnel_ingest_bytes_total").increment(bytes as u64);
        if let Some(failed) = results.iter().find(|r| r.error != 0) {
            m.fail(
                ErrorCode::try_from(failed.error)
                    .map(|c| c.as_str_name())
                    .unwrap_or("error"),
            );
        }
        Ok(Response::new(pb::ProduceResponse { results }))
    }
}

fn compression(c: i32) -> Result<Compression, Status> {
    Ok(match PbCompression::try_from(c) {
        Ok(PbCompression::None) => Compression::None,
        Ok(PbCompression::Gzip) => Compression::Gzip,
        Ok(PbCompression::Snappy) => Compression::Snappy,
        Ok(PbCompression::Lz4) => Compression::Lz4,
        Ok(PbCompression::Zstd) => Compression::Zstd,
        Err(_) => return Err(Status::invalid_argument(format!("unknown compression {c}"))),
    })
}

#[tonic::async_trait]
impl IngestService for IngestGrpc {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let mut m = RequestMetrics::start("ingest", "Produce");
        let req = request.into_inner();
        let parts = req
            .partitions
            .into_iter()
            .map(|p| PartitionData {
                topic: p.topic,
                partition: p.partition,
                batches: p.batches,
            })
            .collect();
        self.dispatch(&mut m, parts, req.acks, req.timeout_ms).await
    }

    async fn produce_records(
        &self,
        request: Request<pb::ProduceRecordsRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let mut m = RequestMetrics::start("ingest", "ProduceRecords");
        let req = request.into_inner();
        let codec = compression(req.compression).inspect_err(|_| m.fail("invalid_compression"))?;
        let deadline = tokio::time::Instant::now() + self.router.timeout(req.timeout_ms);
        let md = self
            .router
            .topic_metadata(&req.topic, deadline)
            .await
            .ok_or_else(|| {
                m.fail("UNKNOWN_TOPIC_OR_PARTITION");
                Status::not_found(format!("topic {:?} does not exist", req.topic))
            })?;
        let partitions = md
            .topic(&req.topic)
            .map(|t| t.record.partitions)
            .unwrap_or(0);
        if partitions <= 0 {
            return Err(Status::not_found(format!(
                "topic {:?} does not exist",
                req.topic
            )));
        }
        // Records without key or partition share one partition per request
        // (Kafka's sticky partitioner does the same per batch).
        let sticky = rand::rng().random_range(0..partitions);
        let now = runnel_cluster::now_ms();
        let mut grouped: BTreeMap<i32, Vec<PlainRecord>> = BTreeMap::new();
        for r in req.records {
            let record = r.record.unwrap_or_default();
            let partition = match (r.partition, &record.key) {
                (Some(p), _) => p,
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => sticky,
            };
            grouped.entry(partition).or_default().push(PlainRecord {
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|h| (h.key, h.value))
                    .collect(),
                timestamp_ms: record.timestamp_ms.unwrap_or(now),
            });
        }
        let mut parts = Vec::with_capacity(grouped.len());
        for (partition, records) in grouped {
            let batches: Bytes = build_batch(&records, codec).map_err(|e| {
                m.fail("encode");
                Status::invalid_argument(e.to_string())
            })?;
            parts.push(PartitionData {
                topic: req.topic.clone(),
                partition,
                batches,
            });
        }
        self.dispatch(&mut m, parts, req.acks, req.timeout_ms).await
    }

    async fn init_producer_id(
        &self,
        request: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        let _m = RequestMetrics::start("ingest", "InitProducerId");
        let req = request.into_inner();
        let current = match (req.producer_id, req.producer_epoch) {
            (Some(producer_id), Some(epoch)) => Some(ProducerIdentity {
                producer_id,
                epoch: i16::try_from(epoch).unwrap_or(-1),
            }),
            _ => None,
        };
        let p = init_producer(current);
        tracing::debug!(
            producer_id = p.producer_id,
            epoch = p.epoch,
            "producer id assigned"
        );
        Ok(Response::new(pb::InitProducerIdResponse {
            producer_id: p.producer_id,
            producer_epoch: p.epoch.into(),
        }))
    }
}
