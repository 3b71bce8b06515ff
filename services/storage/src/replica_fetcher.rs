//! The follower's side of replication: one task per leader this node copies
//! partitions from, each holding one `Replicate` stream to that leader.
//!
//! Before it fetches a partition at a new leader epoch, the follower asks
//! the leader where its own latest epoch ends (`OffsetsForLeaderEpoch`) and
//! truncates everything after that point (KIP-101/KIP-279), so divergent
//! records an old leader wrote but never committed do not survive. Then each
//! request carries the follower's log end (its acknowledgement) and each
//! response the next batches, appended exactly as the leader stored them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use runnel_cluster::ClusterMetadata;
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::storage::v1 as pb;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use crate::log::{LogError, PartitionLog};
use crate::node::StorageNode;

/// The partitions this node copies from `leader`, with their leader epochs.
fn followed_from(md: &ClusterMetadata, me: i32, leader: i32) -> BTreeMap<(String, i32), i32> {
    let mut parts = BTreeMap::new();
    for (name, topic) in &md.topics {
        for (&p, state) in &topic.partitions {
            if state.leader == leader && leader != me && state.replicas.contains(&me) {
                parts.insert((name.clone(), p), state.leader_epoch);
            }
        }
    }
    parts
}

/// Starts (and restarts) a fetcher task per leader this node follows, until
/// shutdown.
pub async fn run(node: Arc<StorageNode>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = node.watcher.subscribe();
    let mut tasks: HashMap<i32, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let md = changes.borrow_and_update().clone();
        tasks.retain(|_, t| !t.is_finished());
        let leaders: std::collections::BTreeSet<i32> = md
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.leader >= 0 && p.leader != node.node_id)
            .filter(|p| p.replicas.contains(&node.node_id))
            .map(|p| p.leader)
            .collect();
        for leader in leaders {
            tasks
                .entry(leader)
                .or_insert_with(|| tokio::spawn(follow(node.clone(), leader, shutdown.clone())));
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            // Restart a task that ended on an error.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, t) in tasks {
        t.abort();
    }
}

/// Copies every partition this node follows from `leader` until there are
/// none left (or shutdown).
async fn follow(node: Arc<StorageNode>, leader: i32, mut shutdown: watch::Receiver<bool>) {
    // Partitions whose divergence check passed, at which epoch.
    let mut validated: HashMap<(String, i32), i32> = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let md = node.watcher.current();
        if followed_from(&md, node.node_id, leader).is_empty() || *shutdown.borrow() {
            return;
        }
        let Some(address) = md.nodes.get(&leader).map(|n| n.address.clone()) else {
            // The leader is gone; the controller will elect another.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = shutdown.changed() => return,
            }
        };
        let outcome = tokio::select! {
            r = session(&node, leader, &address, &mut validated) => r,
            _ = shutdown.changed() => return,
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::debug!(leader, error = %e, "replica fetch session ended");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One stream to the leader, until the set of partitions (or an epoch)
/// changes, a partition needs truncating again, or the stream fails.
async fn session(
    node: &StorageNode,
    leader: i32,
    address: &str,
    validated: &mut HashMap<(String, i32), i32>,
) -> Result<(), String> {
    let channel = runnel_rpc::lazy_channel(address).map_err(|e| e.to_string())?;
    let mut client = StorageServiceClient::new(channel)
        .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
    let parts = followed_from(&node.watcher.current(), node.node_id, leader);
    validated.retain(|k, epoch| parts.get(k) == Some(epoch));
    truncate_diverged(node, &mut client, &parts, validated).await?;

    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut inbound = client
        .replicate(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let max_bytes = node.config.replica_fetch_max_bytes.max(1024);
    loop {
        if followed_from(&node.watcher.current(), node.node_id, leader) != parts {
            return Ok(());
        }
        let md = node.watcher.current();
        let mut fetching: Vec<(pb::ReplicaFetchPartition, PartitionLog)> = Vec::new();
        let mut throttled: HashMap<(String, i32), i64> = HashMap::new();
        for ((topic, p), &epoch) in &parts {
            // A replica a reassignment added copies at the throttled rate
            // until it is in sync.
            if let Some(state) = md.partition(topic, *p)
                && state.throttle_bytes_per_sec > 0
                && !state.isr.contains(&node.node_id)
            {
                throttled.insert((topic.clone(), *p), state.throttle_bytes_per_sec);
            }
            if validated.get(&(topic.clone(), *p)) != Some(&epoch) {
                continue;
            }
            let Some(log) = node.logs.get(topic, *p) else {
                continue;
            };
            fetching.push((
                pb::ReplicaFetchPartition {
                    topic: topic.clone(),
                    partition: *p,
                    fetch_offset: log.local_end_offset(),
                    leader_epoch: epoch,
                },
                log,
            ));
        }
        if fetching.is_empty() {
            // Logs not open yet, or nothing validated: try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(());
        }
        let request = pb::ReplicaFetchRequest {
            replica_id: node.node_id,
            partitions: fetching.iter().map(|(f, _)| f.clone()).collect(),
            max_wait_ms: node.config.replica_fetch_wait_max_ms,
            max_bytes,
        };
        tx.send(request)
            .await
            .map_err(|_| "stream closed".to_string())?;
        let response = inbound
            .message()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the leader closed the stream")?;
        let mut again = false;
        let mut pause = Duration::ZERO;
        for (result, (asked, log)) in response.results.into_iter().zip(&fetching) {
            let key = (asked.topic.clone(), asked.partition);
            if let Some(&rate) = throttled.get(&key) {
                pause += Duration::from_secs_f64(result.records.len() as f64 / rate as f64);
            }
            if !apply(leader, &key, result, asked, log).await {
                validated.remove(&key);
                again = true;
            }
        }
        if !pause.is_zero() {
            metrics::counter!("runnel_replica_throttled_ms_total")
                .increment(pause.as_millis() as u64);
            tokio::time::sleep(pause).await;
        }
        if again {
            return Ok(());
        }
    }
}

/// Applies one partition's fetch result; false when the partition must be
/// checked for divergence again (or the leadership settled first).
async fn apply(
    leader: i32,
    (topic, partition): &(String, i32),
    result: pb::ReplicaFetchResult,
    asked: &pb::ReplicaFetchPartition,
    log: &PartitionLog,
) -> bool {
    match ErrorCode::try_from(result.error) {
        Ok(ErrorCode::None) => {
            if !result.records.is_empty() {
                match log.append_replica(result.records.clone()).await {
                    Ok(_) => {}
                    // An empty replica that restarted at the leader's log
                    // start gets the whole batch holding it when that start
                    // lies inside a batch (DeleteRecords): start the
                    // replica at the batch instead, as Kafka does; its log
                    // start follows the leader's below.
                    Err(LogError::NotContiguous { expected, got })
                        if got < expected && log.log_end_offset() == log.log_start_offset() =>
                    {
                        tracing::info!(%topic, partition, leader, from = expected, to = got, "restarting an empty replica at the batch holding the leader's log start");
                        if let Err(e) = log.restart_at(got).await {
                            tracing::warn!(%topic, partition, error = %e, "cannot restart the replica");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            return true;
                        }
                        if let Err(e) = log.append_replica(result.records).await {
                            tracing::warn!(%topic, partition, leader, error = %e, "cannot append replicated batches");
                            return false;
                        }
                    }
                    Err(LogError::NotContiguous { .. } | LogError::FencedEpoch { .. }) => {
                        return false;
                    }
                    Err(e) => {
                        tracing::warn!(%topic, partition, leader, error = %e, "cannot append replicated batches");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return true;
                    }
                }
            }
            log.set_high_watermark(result.high_watermark);
            // Kafka's follower rule: the leader's log start (moved by
            // DeleteRecords or retention) bounds the replica's too.
            if result.log_start_offset > log.log_start_offset()
                && let Err(e) = log.follow_log_start(result.log_start_offset).await
            {
                tracing::warn!(%topic, partition, error = %e, "cannot follow the leader's log start");
            }
            let lag = (result.high_watermark - log.local_end_offset()).max(0);
            metrics::gauge!("runnel_replica_lag_offsets", "topic" => topic.clone(), "partition" => partition.to_string())
                .set(lag as f64);
            true
        }
        Ok(ErrorCode::OffsetOutOfRange) if asked.fetch_offset < result.log_start_offset => {
            // The leader no longer has what comes next (retention): start
            // over at its log start.
            tracing::warn!(%topic, partition, leader, from = asked.fetch_offset, to = result.log_start_offset, "follower behind the leader's log start; restarting the replica there");
            if let Err(e) = log.restart_at(result.log_start_offset).await {
                tracing::warn!(%topic, partition, error = %e, "cannot restart the replica");
            }
            true
        }
        Ok(ErrorCode::OffsetOutOfRange) => false,
        _ => {
            // Stale or racing leadership: wait for the metadata to settle.
            tracing::debug!(%topic, partition, leader, error = %result.error_message, "replica fetch refused");
            tokio::time::sleep(Duration::from_millis(200)).await;
            false
        }
    }
}

/// Truncates each not-yet-validated partition to where the leader says its
/// latest local epoch ends; marks those that are done as validated.
async fn truncate_diverged(
    node: &StorageNode,
    client: &mut StorageServiceClient<tonic::transport::Channel>,
    parts: &BTreeMap<(String, i32), i32>,
    validated: &mut HashMap<(String, i32), i32>,
) -> Result<(), String> {
    let mut queries = Vec::new();
    for ((topic, p), &epoch) in parts {
        if validated.get(&(topic.clone(), *p)) == Some(&epoch) {
            continue;
        }
        let Some(log) = node.logs.get(topic, *p) else {
            continue;
        };
        match log.latest_epoch() {
            // Nothing written yet: nothing can have diverged.
            None => {
                validated.insert((topic.clone(), *p), epoch);
            }
            Some(latest) => queries.push(pb::EpochQuery {
                topic: topic.clone(),
                partition: *p,
                current_leader_epoch: epoch,
                leader_epoch: latest,
            }),
        }
    }
    if queries.is_empty() {
        return Ok(());
    }
    let response = client
        .offsets_for_leader_epoch(pb::OffsetsForLeaderEpochRequest { queries })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    for r in response.results {
        let key = (r.topic.clone(), r.partition);
        let (Some(&epoch), Some(log)) = (parts.get(&key), node.logs.get(&r.topic, r.partition))
        else {
            continue;
        };
        if r.error != ErrorCode::None as i32 {
            tracing::debug!(topic = %r.topic, partition = r.partition, error = %r.error_message, "epoch end query refused");
            continue;
        }
        // The leader knows no epoch that old: keep only what was committed.
        let target = if r.leader_epoch < 0 {
            log.high_watermark()
        } else {
            match log.end_offset_for_epoch(r.leader_epoch) {
                (e, local_end) if e >= 0 => r.end_offset.min(local_end),
                _ => r.end_offset,
            }
        };
        if target < log.log_end_offset() {
            tracing::info!(topic = %r.topic, partition = r.partition, from = log.log_end_offset(), to = target, "truncating records the new leader does not have");
            if let Err(e) = log.truncate_to(target.max(0)).await {
                tracing::warn!(topic = %r.topic, partition = r.partition, error = %e, "truncation failed");
                continue;
            }
        }
        validated.insert(key, epoch);
    }
    Ok(())
}
