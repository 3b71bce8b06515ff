//! gRPC handlers of the storage node: thin translations to the partition log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::storage::v1 as pb;
use runnel_proto::storage::v1::storage_service_server::StorageService;
use runnel_records::Batches;
use runnel_telemetry::RequestMetrics;
use tonic::{Request, Response, Status};

use crate::error::PartitionError;
use crate::node::StorageNode;

/// Default per-partition fetch size when the caller sends none.
const DEFAULT_PARTITION_FETCH_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct StorageGrpc {
    node: Arc<StorageNode>,
}

impl StorageGrpc {
    pub fn new(node: Arc<StorageNode>) -> Self {
        StorageGrpc { node }
    }

    async fn append_one(
        &self,
        part: pb::PartitionBatches,
    ) -> Result<crate::log::AppendInfo, PartitionError> {
        if part.partition < 0 {
            return Err(PartitionError::unknown(&part.topic, part.partition));
        }
        let (log, epoch) = self.node.leader_log(&part.topic, part.partition).await?;
        let batches = Batches::validate_all(part.batches)?;
        let bytes: usize = batches.iter().map(|(_, b)| b.len()).sum();
        let info = log.append(batches, epoch).await?;
        metrics::counter!("runnel_storage_appended_bytes_total", "topic" => part.topic.clone())
            .increment(bytes as u64);
        Ok(info)
    }

    /// One pass over the partitions of a fetch; returns the results and how
    /// many record bytes they hold.
    async fn fetch_once(&self, req: &pb::FetchRequest) -> (Vec<pb::FetchResult>, usize) {
        let mut results = Vec::with_capacity(req.partitions.len());
        let mut total = 0usize;
        let budget = if req.max_bytes > 0 {
            req.max_bytes as usize
        } else {
            usize::MAX
        };
        for p in &req.partitions {
            let mut result = pb::FetchResult {
                topic: p.topic.clone(),
                partition: p.partition,
                high_watermark: -1,
                log_start_offset: -1,
                ..Default::default()
            };
            match self.node.leader_log(&p.topic, p.partition).await {
                Err(e) => set_error(&mut result, e),
                Ok((log, _)) => {
                    result.high_watermark = log.high_watermark();
                    result.log_start_offset = log.log_start_offset();
                    let want = if p.max_bytes > 0 {
                        p.max_bytes as usize
                    } else {
                        DEFAULT_PARTITION_FETCH_BYTES
                    };
                    // Once the response budget is spent, later partitions get
                    // nothing this time (but the first always gets a batch).
                    let room = budget.saturating_sub(total);
                    if room == 0 && total > 0 {
                        results.push(result);
                        continue;
                    }
                    match log.read(p.offset, want.min(room.max(1))).await {
                        Ok(bytes) => {
                            total += bytes.len();
                            result.records = bytes;
                        }
                        Err(e) => set_error(&mut result, e.into()),
                    }
                }
            }
            results.push(result);
        }
        (results, total)
    }
}

fn set_error(result: &mut pb::FetchResult, e: PartitionError) {
    result.error = e.code as i32;
    result.error_message = e.message;
    result.records = Bytes::new();
}

#[tonic::async_trait]
impl StorageService for StorageGrpc {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let mut m = RequestMetrics::start("storage", "Append");
        let req = request.into_inner();
        if !matches!(req.acks, -1..=1) {
            m.fail("invalid_acks");
            return Err(Status::invalid_argument(format!(
                "acks must be 0, 1 or -1, not {}",
                req.acks
            )));
        }
        let timeout = Duration::from_millis(if req.timeout_ms == 0 {
            30_000
        } else {
            req.timeout_ms as u64
        });
        // Partitions append concurrently; each partition's appends stay in
        // order because the log serialises them.
        let futures = req.partitions.into_iter().map(|part| {
            let topic = part.topic.clone();
            let partition = part.partition;
            async move {
                let outcome = tokio::time::timeout(timeout, self.append_one(part)).await;
                let mut r = pb::AppendResult {
                    topic,
                    partition,
                    base_offset: -1,
                    last_offset: -1,
                    log_append_time_ms: -1,
                    log_start_offset: -1,
                    ..Default::default()
                };
                match outcome {
                    Ok(Ok(info)) => {
                        r.base_offset = info.base_offset;
                        r.last_offset = info.last_offset;
                        r.log_append_time_ms = info.log_append_time_ms.unwrap_or(-1);
                        if let Some(log) = self.node.logs.get(&r.topic, r.partition) {
                            r.log_start_offset = log.log_start_offset();
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(topic = %r.topic, partition, error = %e.message, "append refused");
                        r.error = e.code as i32;
                        r.error_message = e.message;
                    }
                    Err(_) => {
                        r.error = ErrorCode::RequestTimedOut as i32;
                        r.error_message = format!("append did not complete in {timeout:?}");
                    }
                }
                r
            }
        });
        let results = futures::future::join_all(futures).await;
        if let Some(failed) = results.iter().find(|r| r.error != 0) {
            m.fail(
                ErrorCode::try_from(failed.error)
                    .map(|c| c.as_str_name())
                    .unwrap_or("error"),
            );
        }
        Ok(Response::new(pb::AppendResponse { results }))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let _m = RequestMetrics::start("storage", "Fetch");
        let req = request.into_inner();
        let max_wait =
            Duration::from_millis(req.max_wait_ms.min(self.node.config.max_fetch_wait_ms) as u64);
        let min_bytes = req.min_bytes.max(1) as usize;
        let deadline = tokio::time::Instant::now() + max_wait;
        // Subscribe before the first read so an append between the read and
        // the wait still wakes us.
        // `leader_log` opens a partition's log if the assignment just arrived,
        // so a fetch on a brand-new partition waits for its first append.
        let mut watches = Vec::with_capacity(req.partitions.len());
        for p in &req.partitions {
            if let Ok((log, _)) = self.node.leader_log(&p.topic, p.partition).await {
                watches.push(log.subscribe());
            }
        }
        loop {
            let (results, total) = self.fetch_once(&req).await;
            let any_error = results.iter().any(|r| r.error != 0);
            if total >= min_bytes || any_error || watches.is_empty() {
                return Ok(Response::new(pb::FetchResponse { results }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(pb::FetchResponse { results }));
            }
            let woken = select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            match tokio::time::timeout_at(deadline, woken).await {
                Ok((Ok(()), _, _)) => continue,
                // A log was closed (deleted) or the wait timed out.
                Ok((Err(_), _, _)) | Err(_) => {
                    let (results, _) = self.fetch_once(&req).await;
                    return Ok(Response::new(pb::FetchResponse { results }));
                }
            }
        }
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let _m = RequestMetrics::start("storage", "ListOffsets");
        let req = request.into_inner();
        let mut results = Vec::with_capacity(req.queries.len());
        for q in req.queries {
            let mut r = pb::OffsetResult {
                topic: q.topic.clone(),
                partition: q.partition,
                offset: -1,
                timestamp: -1,
                leader_epoch: -1,
                ..Default::default()
            };
            let outcome: Result<(), PartitionError> = async {
                let (log, epoch) = self.node.leader_log(&q.topic, q.partition).await?;
                r.leader_epoch = epoch;
                match q.timestamp {
                    -1 => r.offset = log.high_watermark(),
                    -2 => r.offset = log.log_start_offset(),
                    -3 => {
                        if let Some((offset, ts)) = log.max_timestamp().await? {
                            r.offset = offset;
                            r.timestamp = ts;
                        }
                    }
                    ts if ts >= 0 => {
                        if let Some((offset, ts)) = log.offset_for_timestamp(ts).await? {
                            r.offset = offset;
                            r.timestamp = ts;
                        }
                    }
                    other => {
                        return Err(PartitionError::new(
                            ErrorCode::InvalidRequest,
                            format!("invalid timestamp {other}: use -1, -2, -3 or a time in ms"),
                        ));
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = outcome {
                r.error = e.code as i32;
                r.error_message = e.message;
            }
            results.push(r);
        }
        Ok(Response::new(pb::ListOffsetsResponse { results }))
    }

    async fn describe_log_dirs(
        &self,
        request: Request<pb::DescribeLogDirsRequest>,
    ) -> Result<Response<pb::DescribeLogDirsResponse>, Status> {
        let _m = RequestMetrics::start("storage", "DescribeLogDirs");
        let req = request.into_inner();
        let wanted: std::collections::HashSet<&str> =
            req.topics.iter().map(String::as_str).collect();
        let partitions = self
            .node
            .logs
            .list()
            .into_iter()
            .filter(|(topic, _, _)| wanted.is_empty() || wanted.contains(topic.as_str()))
            .filter_map(|(topic, _, partition)| {
                // Gone if it was removed since the listing.
                let log = self.node.logs.get(&topic, partition)?;
                Some(pb::LogDirPartition {
                    size_bytes: i64::try_from(log.size_bytes()).unwrap_or(i64::MAX),
                    offset_lag: (log.log_end_offset() - log.high_watermark()).max(0),
                    topic,
                    partition,
                })
            })
            .collect();
        let dir = self.node.logs.data_dir();
        let path = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Ok(Response::new(pb::DescribeLogDirsResponse {
            node_id: self.node.node_id,
            log_dirs: vec![pb::LogDir {
                path: path.display().to_string(),
                partitions,
            }],
        }))
    }
}
