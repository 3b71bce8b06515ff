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
use crate::node::{LedPartition, StorageNode};

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
        acks: i32,
    ) -> Result<crate::log::AppendInfo, PartitionError> {
        if part.partition < 0 {
            return Err(PartitionError::unknown(&part.topic, part.partition));
        }
        let led = self.node.led_partition(&part.topic, part.partition).await?;
        let replicated = led.log.config().replicated;
        if replicated {
            if !self.node.lease_fresh() {
                return Err(PartitionError::new(
                    ErrorCode::NotLeaderOrFollower,
                    "this node cannot confirm its cluster lease; it no longer acknowledges writes",
                ));
            }
            if acks == -1 && (led.state.isr.len() as i32) < led.min_insync_replicas {
                return Err(PartitionError::new(
                    ErrorCode::NotEnoughReplicas,
                    format!(
                        "{}-{} has {} in-sync replicas {:?}, min.insync.replicas is {}",
                        part.topic,
                        part.partition,
                        led.state.isr.len(),
                        led.state.isr,
                        led.min_insync_replicas
                    ),
                ));
            }
        }
        let batches = Batches::validate_all(part.batches)?;
        let bytes: usize = batches.iter().map(|(_, b)| b.len()).sum();
        let info = led.log.append(batches, led.state.leader_epoch).await?;
        self.node.replication.notify_appended();
        metrics::counter!("runnel_storage_appended_bytes_total", "topic" => part.topic.clone())
            .increment(bytes as u64);
        if replicated {
            self.node.replication.update_high_watermark(
                &part.topic,
                part.partition,
                &led.state,
                &led.log,
            );
            if acks == -1 {
                self.wait_committed(&part.topic, part.partition, &led, info.last_offset)
                    .await?;
            }
        }
        Ok(info)
    }

    /// `acks=all`: waits until every in-sync replica holds `last_offset`
    /// (the high watermark passed it), while this node still leads.
    async fn wait_committed(
        &self,
        topic: &str,
        partition: i32,
        led: &LedPartition,
        last_offset: i64,
    ) -> Result<(), PartitionError> {
        let mut hw = led.log.subscribe();
        loop {
            let md = self.node.watcher.current();
            let state = md.partition(topic, partition);
            if led.log.high_watermark() > last_offset {
                let isr = state.map_or(0, |s| s.isr.len()) as i32;
                if isr < led.min_insync_replicas {
                    return Err(PartitionError::new(
                        ErrorCode::NotEnoughReplicasAfterAppend,
                        format!(
                            "written, but the in-sync replicas shrank to {isr}, below min.insync.replicas {}",
                            led.min_insync_replicas
                        ),
                    ));
                }
                return Ok(());
            }
            let still_leader = state.is_some_and(|s| {
                s.leader == self.node.node_id && s.leader_epoch == led.state.leader_epoch
            });
            if !still_leader {
                return Err(PartitionError::new(
                    ErrorCode::NotLeaderOrFollower,
                    "leadership moved before every in-sync replica had the records",
                ));
            }
            tokio::select! {
                changed = hw.changed() => if changed.is_err() {
                    return Err(PartitionError::unknown(topic, partition));
                },
                // The ISR or the leadership may change without an append.
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// The log a follower may copy: this node leads the partition at the
    /// epoch the follower names, and the follower is one of its replicas.
    async fn replica_source(
        &self,
        topic: &str,
        partition: i32,
        epoch: i32,
        replica: Option<i32>,
    ) -> Result<LedPartition, PartitionError> {
        let led = self.node.led_partition(topic, partition).await?;
        let current = led.state.leader_epoch;
        if epoch < current {
            return Err(PartitionError::new(
                ErrorCode::FencedLeaderEpoch,
                format!("leader epoch {epoch} is older than {current}"),
            ));
        }
        if epoch > current {
            return Err(PartitionError::new(
                ErrorCode::UnknownLeaderEpoch,
                format!("leader epoch {epoch} is newer than this leader's {current}"),
            ));
        }
        if let Some(r) = replica
            && !led.state.replicas.contains(&r)
        {
            return Err(PartitionError::new(
                ErrorCode::NotLeaderOrFollower,
                format!("node {r} is not a replica of {topic}-{partition}"),
            ));
        }
        Ok(led)
    }

    /// One pass of a follower's fetch: records its acknowledgement (when
    /// `ack`) and reads what follows. Returns the results and whether any
    /// holds records.
    async fn replica_fetch_once(
        &self,
        req: &pb::ReplicaFetchRequest,
        ack: bool,
    ) -> (Vec<pb::ReplicaFetchResult>, bool) {
        let mut results = Vec::with_capacity(req.partitions.len());
        let mut any = false;
        let max_bytes = req.max_bytes.max(1) as usize;
        for p in &req.partitions {
            let mut r = pb::ReplicaFetchResult {
                topic: p.topic.clone(),
                partition: p.partition,
                high_watermark: -1,
                log_start_offset: -1,
                ..Default::default()
            };
            let outcome = async {
                let led = self
                    .replica_source(&p.topic, p.partition, p.leader_epoch, Some(req.replica_id))
                    .await?;
                if ack
                    && let Some(change) = self.node.replication.follower_fetched(
                        &p.topic,
                        p.partition,
                        &led.state,
                        req.replica_id,
                        p.fetch_offset,
                        &led.log,
                    )
                {
                    let node = self.node.clone();
                    let (topic, partition, epoch) =
                        (p.topic.clone(), p.partition, led.state.leader_epoch);
                    tokio::spawn(async move {
                        node.alter_isr(&topic, partition, epoch, change).await;
                        node.replication.join_done(&topic, partition, change.node());
                    });
                }
                r.high_watermark = led.log.high_watermark();
                r.log_start_offset = led.log.log_start_offset();
                Ok::<_, PartitionError>(led.log.read_replica(p.fetch_offset, max_bytes).await?)
            }
            .await;
            match outcome {
                Ok(records) => {
                    any |= !records.is_empty();
                    r.records = records;
                }
                Err(e) => {
                    r.error = e.code as i32;
                    r.error_message = e.message;
                }
            }
            results.push(r);
        }
        (results, any)
    }

    /// A follower's long-polled fetch: returns at once when there is data
    /// or an error, else when something is appended or the wait is over.
    async fn replica_fetch(&self, req: pb::ReplicaFetchRequest) -> pb::ReplicaFetchResponse {
        let wait = Duration::from_millis(u64::from(
            req.max_wait_ms.min(self.node.config.max_fetch_wait_ms),
        ));
        let deadline = tokio::time::Instant::now() + wait;
        let mut appended = self.node.replication.subscribe_appended();
        appended.borrow_and_update();
        let mut ack = true;
        loop {
            let (results, any) = self.replica_fetch_once(&req, ack).await;
            ack = false;
            let errored = results.iter().any(|r| r.error != 0);
            if any || errored || tokio::time::Instant::now() >= deadline {
                return pb::ReplicaFetchResponse { results };
            }
            if !matches!(
                tokio::time::timeout_at(deadline, appended.changed()).await,
                Ok(Ok(()))
            ) {
                let (results, _) = self.replica_fetch_once(&req, false).await;
                return pb::ReplicaFetchResponse { results };
            }
        }
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

fn acks_label(acks: i32) -> &'static str {
    match acks {
        0 => "0",
        1 => "1",
        _ => "all",
    }
}

fn set_error(result: &mut pb::FetchResult, e: PartitionError) {
    result.error = e.code as i32;
    result.error_message = e.message;
    result.records = Bytes::new();
}

type ReplicaStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ReplicaFetchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl StorageService for StorageGrpc {
    type ReplicateStream = ReplicaStream;

    async fn replicate(
        &self,
        request: Request<tonic::Streaming<pb::ReplicaFetchRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let req = match inbound.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "replica stream ended");
                        return;
                    }
                };
                let _m = RequestMetrics::start("storage", "ReplicaFetch");
                let response = this.replica_fetch(req).await;
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn offsets_for_leader_epoch(
        &self,
        request: Request<pb::OffsetsForLeaderEpochRequest>,
    ) -> Result<Response<pb::OffsetsForLeaderEpochResponse>, Status> {
        let _m = RequestMetrics::start("storage", "OffsetsForLeaderEpoch");
        let mut results = Vec::new();
        for q in request.into_inner().queries {
            let mut r = pb::EpochEndOffset {
                topic: q.topic.clone(),
                partition: q.partition,
                leader_epoch: -1,
                end_offset: -1,
                ..Default::default()
            };
            match self
                .replica_source(&q.topic, q.partition, q.current_leader_epoch, None)
                .await
            {
                Ok(led) => {
                    (r.leader_epoch, r.end_offset) = led.log.end_offset_for_epoch(q.leader_epoch)
                }
                Err(e) => {
                    r.error = e.code as i32;
                    r.error_message = e.message;
                }
            }
            results.push(r);
        }
        Ok(Response::new(pb::OffsetsForLeaderEpochResponse { results }))
    }

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
                let started = std::time::Instant::now();
                let outcome = tokio::time::timeout(timeout, self.append_one(part, req.acks)).await;
                metrics::histogram!("runnel_append_seconds", "acks" => acks_label(req.acks))
                    .record(started.elapsed().as_secs_f64());
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

    async fn delete_records(
        &self,
        request: Request<pb::DeleteRecordsRequest>,
    ) -> Result<Response<pb::DeleteRecordsResponse>, Status> {
        let mut m = RequestMetrics::start("storage", "DeleteRecords");
        let req = request.into_inner();
        let mut results = Vec::with_capacity(req.partitions.len());
        for p in req.partitions {
            let mut r = pb::DeleteRecordsResult {
                topic: p.topic.clone(),
                partition: p.partition,
                low_watermark: -1,
                ..Default::default()
            };
            let outcome: Result<i64, PartitionError> = async {
                if p.partition < 0 {
                    return Err(PartitionError::unknown(&p.topic, p.partition));
                }
                let (log, _) = self.node.leader_log(&p.topic, p.partition).await?;
                if log.config().replicated && !self.node.lease_fresh() {
                    return Err(PartitionError::new(
                        ErrorCode::NotLeaderOrFollower,
                        "this node cannot confirm its cluster lease; it may no longer lead",
                    ));
                }
                // Kafka's rule: records of a topic that is only compacted
                // go only by compaction.
                if !log.config().delete {
                    return Err(PartitionError::new(
                        ErrorCode::PolicyViolation,
                        format!(
                            "records of {}-{} cannot be deleted: its cleanup.policy does not include delete",
                            p.topic, p.partition
                        ),
                    ));
                }
                Ok(log.delete_records(p.offset).await?)
            }
            .await;
            match outcome {
                Ok(low_watermark) => r.low_watermark = low_watermark,
                Err(e) => {
                    r.error = e.code as i32;
                    r.error_message = e.message;
                }
            }
            results.push(r);
        }
        if let Some(failed) = results.iter().find(|r| r.error != 0) {
            m.fail(
                ErrorCode::try_from(failed.error)
                    .map(|c| c.as_str_name())
                    .unwrap_or("error"),
            );
        }
        Ok(Response::new(pb::DeleteRecordsResponse { results }))
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
