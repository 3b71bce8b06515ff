//! Routing produced batches to partition leaders, with retries while
//! leadership moves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_cluster::{ClusterMetadata, Keys, MetadataWatcher};
use runnel_metastore::MetaStore;
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::coordinator::v1 as coord;
use runnel_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use runnel_proto::ingest::v1::PartitionResult;
use runnel_proto::storage::v1 as st;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;
use runnel_records::Batches;
use tokio::time::Instant;

use crate::config::IngestConfig;

/// One partition's data on its way to the leader.
#[derive(Debug, Clone)]
pub struct PartitionData {
    pub topic: String,
    pub partition: i32,
    pub batches: Bytes,
}

/// Shared state of an ingest instance.
#[derive(Debug)]
pub struct Router {
    pub config: IngestConfig,
    pub watcher: MetadataWatcher,
    store: Arc<dyn MetaStore>,
    keys: Keys,
    pool: runnel_rpc::ChannelPool,
}

fn result(topic: &str, partition: i32) -> PartitionResult {
    PartitionResult {
        topic: topic.to_string(),
        partition,
        base_offset: -1,
        last_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
        ..Default::default()
    }
}

fn failed(topic: &str, partition: i32, code: ErrorCode, message: String) -> PartitionResult {
    PartitionResult {
        error: code as i32,
        error_message: message,
        ..result(topic, partition)
    }
}

/// Errors worth retrying after the metadata moves on.
fn retriable(code: i32) -> bool {
    code == ErrorCode::NotLeaderOrFollower as i32
        || code == ErrorCode::LeaderNotAvailable as i32
        || code == ErrorCode::UnknownTopicOrPartition as i32
}

impl Router {
    pub async fn new(
        config: IngestConfig,
        store: Arc<dyn MetaStore>,
    ) -> Result<Self, runnel_metastore::MetaError> {
        let keys = Keys::new(&config.cluster);
        let watcher = MetadataWatcher::start(store.clone(), keys.clone()).await?;
        Ok(Router {
            config,
            watcher,
            store,
            keys,
            pool: runnel_rpc::ChannelPool::new(),
        })
    }

    pub fn timeout(&self, timeout_ms: u32) -> Duration {
        Duration::from_millis(if timeout_ms == 0 {
            self.config.default_timeout_ms
        } else {
            timeout_ms
        } as u64)
    }

    /// The topic's metadata, creating the topic first if allowed.
    pub async fn topic_metadata(
        &self,
        topic: &str,
        deadline: Instant,
    ) -> Option<Arc<ClusterMetadata>> {
        let md = self.watcher.current();
        if md.topics.contains_key(topic) {
            return Some(md);
        }
        // The watch may lag a topic created a moment ago: ask the store
        // itself before calling the topic unknown.
        let exists = matches!(self.store.get(&self.keys.topic(topic)).await, Ok(Some(_)));
        if !exists {
            if !self.config.auto_create_topics {
                return None;
            }
            if let Err(e) = self.create_topic(topic).await {
                tracing::warn!(topic, error = %e, "auto-create failed");
            }
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        self.watcher
            .wait_until(wait, |md| {
                md.topic(topic)
                    .is_some_and(|t| t.partitions.len() as i32 >= t.record.partitions)
            })
            .await
    }

    async fn create_topic(&self, topic: &str) -> Result<(), tonic::Status> {
        let md = self.watcher.current();
        let controller = md
            .controller
            .as_ref()
            .ok_or_else(|| tonic::Status::unavailable("no active controller"))?;
        let channel = self
            .pool
            .get(&controller.address)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let request = coord::CreateTopicRequest {
            name: topic.to_string(),
            partitions: self.config.auto_create_partitions.max(1),
            ..Default::default()
        };
        match CoordinatorServiceClient::new(channel)
            .create_topic(request)
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(s),
        }
    }

    /// Checks a partition's batches against the topic; returns an error
    /// result for the caller, or None if the data may go on.
    fn check(&self, md: &ClusterMetadata, data: &PartitionData) -> Option<PartitionResult> {
        let Some(topic) = md.topic(&data.topic) else {
            return Some(failed(
                &data.topic,
                data.partition,
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {:?} does not exist", data.topic),
            ));
        };
        if data.partition < 0 || data.partition >= topic.record.partitions {
            return Some(failed(
                &data.topic,
                data.partition,
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "partition {} does not exist: topic {:?} has {} partitions",
                    data.partition, data.topic, topic.record.partitions
                ),
            ));
        }
        let batches = match Batches::validate_all(data.batches.clone()) {
            Ok(b) => b,
            Err(e) => {
                let code = match e {
                    runnel_records::BatchError::UnsupportedMagic(_) => ErrorCode::InvalidRecord,
                    runnel_records::BatchError::Empty => ErrorCode::InvalidRequest,
                    _ => ErrorCode::CorruptMessage,
                };
                metrics::counter!("runnel_ingest_rejected_batches_total", "reason" => code.as_str_name()).increment(1);
                return Some(failed(&data.topic, data.partition, code, e.to_string()));
            }
        };
        let max = topic.config.max_message_bytes;
        if let Some((_, b)) = batches.iter().find(|(_, b)| b.len() > max) {
            metrics::counter!("runnel_ingest_rejected_batches_total", "reason" => "MESSAGE_TOO_LARGE").increment(1);
            return Some(failed(
                &data.topic,
                data.partition,
                ErrorCode::MessageTooLarge,
                format!(
                    "a batch of {} bytes exceeds max.message.bytes={} of topic {:?}",
                    b.len(),
                    max,
                    data.topic
                ),
            ));
        }
        None
    }

    /// Sends every partition's batches to its leader and waits for the acks.
    /// Results come back in the order of `parts`.
    pub async fn produce(
        &self,
        parts: Vec<PartitionData>,
        acks: i32,
        timeout: Duration,
    ) -> Vec<PartitionResult> {
        let deadline = Instant::now() + timeout;
        let mut results: Vec<Option<PartitionResult>> = vec![None; parts.len()];
        let mut pending: Vec<usize> = Vec::new();
        for (i, data) in parts.iter().enumerate() {
            let md = match self.topic_metadata(&data.topic, deadline).await {
                Some(md) => md,
                None => self.watcher.current(),
            };
            match self.check(&md, data) {
                Some(err) => results[i] = Some(err),
                None => pending.push(i),
            }
        }

        let mut last_error: HashMap<usize, PartitionResult> = HashMap::new();
        let mut changes = self.watcher.subscribe();
        loop {
            let md = changes.borrow_and_update().clone();
            // Group the pending partitions by their leader's address.
            let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for &i in &pending {
                let d = &parts[i];
                match md.leader_node(&d.topic, d.partition) {
                    Some(node) => by_node.entry(node.address.clone()).or_default().push(i),
                    None => {
                        last_error.insert(
                            i,
                            failed(
                                &d.topic,
                                d.partition,
                                ErrorCode::LeaderNotAvailable,
                                format!("{}-{} has no live leader", d.topic, d.partition),
                            ),
                        );
                    }
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let sends = by_node.into_iter().map(|(address, idxs)| {
                let request = st::AppendRequest {
                    partitions: idxs
                        .iter()
                        .map(|&i| st::PartitionBatches {
                            topic: parts[i].topic.clone(),
                            partition: parts[i].partition,
                            batches: parts[i].batches.clone(),
                        })
                        .collect(),
                    acks,
                    timeout_ms: remaining.as_millis().max(1) as u32,
                };
                async move { (idxs, self.append(&address, request).await) }
            });
            for (idxs, outcome) in futures::future::join_all(sends).await {
                match outcome {
                    Ok(response) => {
                        for (i, r) in idxs.into_iter().zip(response.results) {
                            if r.error != 0 && retriable(r.error) {
                                last_error.insert(i, from_storage(r));
                            } else {
                                results[i] = Some(from_storage(r));
                            }
                        }
                    }
                    Err(status) => {
                        for i in idxs {
                            let d = &parts[i];
                            let code = if status.code() == tonic::Code::DeadlineExceeded {
                                ErrorCode::RequestTimedOut
                            } else {
                                ErrorCode::NotLeaderOrFollower
                            };
                            last_error.insert(
                                i,
                                failed(
                                    &d.topic,
                                    d.partition,
                                    code,
                                    format!("leader unreachable: {}", status.message()),
                                ),
                            );
                        }
                    }
                }
            }
            // Whatever has no final result (retriable error, unreachable or
            // missing leader) stays pending for the next round.
            pending.retain(|i| results[*i].is_none());
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for &i in &pending {
                    let d = &parts[i];
                    results[i] = Some(last_error.remove(&i).unwrap_or_else(|| {
                        failed(
                            &d.topic,
                            d.partition,
                            ErrorCode::RequestTimedOut,
                            "timed out".into(),
                        )
                    }));
                }
                break;
            }
            metrics::counter!("runnel_ingest_retries_total").increment(pending.len() as u64);
            // Wait for the metadata to move, or a short backoff (a restarting
            // leader keeps its leadership, so there may be no change).
            let backoff =
                Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now()));
            let _ = tokio::time::timeout(backoff, changes.changed()).await;
        }
        results
            .into_iter()
            .zip(&parts)
            .map(|(r, d)| {
                r.unwrap_or_else(|| {
                    failed(
                        &d.topic,
                        d.partition,
                        ErrorCode::UnknownServerError,
                        "no result".into(),
                    )
                })
            })
            .collect()
    }

    async fn append(
        &self,
        address: &str,
        request: st::AppendRequest,
    ) -> Result<st::AppendResponse, tonic::Status> {
        let channel = self
            .pool
            .get(address)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = StorageServiceClient::new(channel)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
        let expected = request.partitions.len();
        let response = client.append(request).await?.into_inner();
        if response.results.len() != expected {
            return Err(tonic::Status::internal(format!(
                "storage node answered {} results for {expected} partitions",
                response.results.len()
            )));
        }
        Ok(response)
    }
}

fn from_storage(r: st::AppendResult) -> PartitionResult {
    PartitionResult {
        topic: r.topic,
        partition: r.partition,
        error: r.error,
        error_message: r.error_message,
        base_offset: r.base_offset,
        last_offset: r.last_offset,
        log_append_time_ms: r.log_append_time_ms,
        log_start_offset: r.log_start_offset,
    }
}
