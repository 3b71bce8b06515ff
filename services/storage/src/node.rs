//! The storage node's place in the cluster: registration under a lease,
//! keeping the local partition logs in line with the assignments the
//! controller writes, and applying the topics' retention to them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_cluster::{ClusterMetadata, Keys, MetadataWatcher, NodeRecord, TopicConfig, now_ms};
use runnel_metastore::{MetaError, MetaStore};

use crate::config::StorageConfig;
use crate::error::PartitionError;
use crate::log::{FlushPolicy, LogConfig, LogManager, PartitionLog};
use runnel_proto::common::v1::ErrorCode;

/// Shared state of a storage node.
#[derive(Debug)]
pub struct StorageNode {
    pub config: StorageConfig,
    pub node_id: i32,
    pub store: Arc<dyn MetaStore>,
    pub keys: Keys,
    pub watcher: MetadataWatcher,
    pub logs: LogManager,
    pub flush: FlushPolicy,
    pub replication: crate::replication::Replication,
    /// When the registration lease was last known alive (ms since the Unix
    /// epoch); a leader whose lease may have lapsed stops acknowledging.
    pub lease_confirmed_ms: std::sync::atomic::AtomicI64,
}

/// A partition this node leads, as an append or fetch needs it.
#[derive(Debug, Clone)]
pub struct LedPartition {
    pub log: PartitionLog,
    pub state: runnel_cluster::PartitionRecord,
    pub min_insync_replicas: i32,
}

/// The log settings a topic's configs ask for; `replicated` when the
/// partition has more than one replica.
pub fn log_config(topic: &TopicConfig, flush: FlushPolicy, replicated: bool) -> LogConfig {
    LogConfig {
        replicated,
        segment_bytes: topic.segment_bytes,
        segment_ms: (topic.segment_ms > 0).then_some(topic.segment_ms as u64),
        flush,
        max_message_bytes: topic.max_message_bytes,
        log_append_time: topic.log_append_time,
        retention_ms: topic.retention_ms,
        retention_bytes: topic.retention_bytes,
        delete: topic.delete,
        compact: topic.compact,
        delete_retention_ms: topic.delete_retention_ms,
        min_cleanable_dirty_ratio: topic.min_cleanable_dirty_ratio,
        min_compaction_lag_ms: topic.min_compaction_lag_ms,
        max_compaction_lag_ms: topic.max_compaction_lag_ms,
        ..LogConfig::default()
    }
}

impl StorageNode {
    /// The log of a partition this node leads, with the leader epoch to stamp.
    pub async fn leader_log(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(PartitionLog, i32), PartitionError> {
        let led = self.led_partition(topic, partition).await?;
        Ok((led.log, led.state.leader_epoch))
    }

    /// Whether the registration lease is surely still alive: confirmed
    /// within two thirds of its time to live. A node cut off from the
    /// metastore stops acknowledging replicated writes before the
    /// controller can have moved leadership away.
    pub fn lease_fresh(&self) -> bool {
        let ttl_ms = (self.config.lease_ttl_secs.max(2) * 1000) as i64;
        let confirmed = self
            .lease_confirmed_ms
            .load(std::sync::atomic::Ordering::Acquire);
        now_ms() - confirmed < ttl_ms * 2 / 3
    }

    /// A partition this node leads: its log, its state and its
    /// `min.insync.replicas`.
    pub async fn led_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<LedPartition, PartitionError> {
        let md = self.watcher.current();
        let (t, p) = md
            .topic(topic)
            .and_then(|t| t.partitions.get(&partition).map(|p| (t, p)))
            .ok_or_else(|| PartitionError::unknown(topic, partition))?;
        if p.leader != self.node_id {
            let code = if p.leader < 0 {
                ErrorCode::LeaderNotAvailable
            } else {
                ErrorCode::NotLeaderOrFollower
            };
            return Err(PartitionError::new(
                code,
                format!(
                    "node {} does not lead {topic}-{partition} (leader is {})",
                    self.node_id, p.leader
                ),
            ));
        }
        let log = match self.logs.get(topic, partition) {
            Some(log) => log,
            // The assignment arrived before the sync loop opened the log.
            None => self
                .logs
                .get_or_create(
                    topic,
                    &t.record.topic_id,
                    partition,
                    log_config(&t.config, self.flush, p.replicas.len() > 1),
                )
                .await
                .map_err(PartitionError::from)?,
        };
        Ok(LedPartition {
            log,
            state: p.clone(),
            min_insync_replicas: t.config.min_insync_replicas,
        })
    }

    /// Registers the node and keeps its lease alive until shutdown; a lost
    /// lease (e.g. after a long pause) is replaced by a new registration.
    pub async fn keep_registered(
        self: Arc<Self>,
        advertised: String,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let ttl = Duration::from_secs(self.config.lease_ttl_secs.max(2));
        let record = NodeRecord {
            node_id: self.node_id,
            address: advertised,
            rack: self.config.rack.clone(),
            started_at_ms: now_ms(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        loop {
            let asked_at = now_ms();
            let lease = match self.register(&value, ttl).await {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::warn!(error = %e, "node registration failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            tracing::info!(node_id = self.node_id, "registered with the cluster");
            self.confirm_lease(asked_at);
            let mut tick = tokio::time::interval(ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => {
                        // Leave at once so the controller moves leadership now.
                        let _ = self.store.revoke_lease(lease).await;
                        return;
                    }
                    _ = tick.tick() => {
                        let asked_at = now_ms();
                        match self.store.keep_alive(lease).await {
                            Ok(()) => self.confirm_lease(asked_at),
                            Err(MetaError::LeaseNotFound(_)) => {
                                tracing::warn!("registration lease expired; registering again");
                                break;
                            }
                            Err(e) => tracing::warn!(error = %e, "lease keep-alive failed"),
                        }
                    }
                }
            }
        }
    }

    /// The lease was alive when a request sent at `asked_at` reached the
    /// metastore (so it lives at least a TTL from then).
    fn confirm_lease(&self, asked_at: i64) {
        self.lease_confirmed_ms
            .fetch_max(asked_at, std::sync::atomic::Ordering::AcqRel);
    }

    async fn register(&self, value: &Bytes, ttl: Duration) -> Result<i64, MetaError> {
        let lease = self.store.grant_lease(ttl).await?;
        self.store
            .put(&self.keys.node(self.node_id), value.clone(), Some(lease))
            .await?;
        Ok(lease)
    }

    /// Opens logs for partitions assigned to this node and removes the data of
    /// deleted topics: those deleted (or recreated) while it watched, and —
    /// once the data directory is known to belong to this cluster — those
    /// deleted while it was down. A data directory with another cluster's
    /// marker (or none, before the cluster has an id) is never cleaned: a
    /// node pointed at the wrong cluster must not wipe its disk.
    pub async fn sync_assignments(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut changes = self.watcher.subscribe();
        let mut seen_topics: BTreeSet<(String, String)> = BTreeSet::new();
        let mut warned_stray = false;
        let mut marker = ClusterMarker::new(&self.config.data_dir);
        loop {
            let md = changes.borrow_and_update().clone();
            let unknown_data = self
                .logs
                .list()
                .iter()
                .any(|(topic, id, _)| md.topic(topic).is_none_or(|t| &t.record.topic_id != id));
            let ours = marker.belongs_to(md.cluster_id.as_deref(), unknown_data);
            self.apply_assignments(&md, ours, &mut seen_topics, &mut warned_stray)
                .await;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Every `retention_check_interval_ms`, applies retention to every local
    /// partition ([`Self::enforce_retention`]), until shutdown.
    pub async fn retention_loop(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let every = self.config.retention_check_interval_ms;
        periodically(every, shutdown, || async {
            self.enforce_retention().await;
        })
        .await;
    }

    /// Every `log_cleaner_interval_ms`, compacts the local partitions of
    /// compacted topics that are dirty enough ([`Self::compact_logs`]).
    pub async fn cleaner_loop(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let every = self.config.log_cleaner_interval_ms;
        periodically(every, shutdown, || async {
            self.compact_logs().await;
        })
        .await;
    }

    /// The local partitions of topics the metadata knows (under the same
    /// id), each log's config brought up to date with its topic's. Logs of
    /// unknown topics are left alone.
    fn current_logs(&self) -> Vec<(String, i32, PartitionLog)> {
        let md = self.watcher.current();
        let mut logs = Vec::new();
        for (topic, topic_id, partition) in self.logs.list() {
            let Some(t) = md.topic(&topic).filter(|t| t.record.topic_id == topic_id) else {
                continue;
            };
            // Gone if it was removed since the listing.
            let Some(log) = self.logs.get(&topic, partition) else {
                continue;
            };
            let config = log_config(
                &t.config,
                self.flush,
                crate::replication::is_replicated(t, partition),
            );
            if log.config() != config {
                log.set_config(config);
            }
            logs.push((topic, partition, log));
        }
        logs
    }

    /// One retention pass: deletes the segments each local partition's topic
    /// configs (as the metadata has them now) no longer keep. Returns how
    /// many segments were deleted.
    pub async fn enforce_retention(&self) -> usize {
        let mut deleted = 0;
        for (topic, partition, log) in self.current_logs() {
            log.expire_producers(now_ms(), self.config.producer_id_expiration_ms);
            match log.enforce_retention(now_ms()).await {
                Ok(segments) => deleted += segments.len(),
                Err(crate::log::LogError::Deleted(_)) => {}
                Err(e) => {
                    tracing::warn!(%topic, partition, error = %e, "retention pass failed");
                }
            }
        }
        deleted
    }

    /// One cleaner pass over the compacted topics' local partitions.
    /// Returns how many partitions were compacted.
    pub async fn compact_logs(&self) -> usize {
        let mut compacted = 0;
        for (topic, partition, log) in self.current_logs() {
            match log.compact(now_ms()).await {
                Ok(Some(_)) => compacted += 1,
                Ok(None) | Err(crate::log::LogError::Deleted(_)) => {}
                Err(e) => {
                    metrics::counter!("runnel_log_cleaner_errors_total", "topic" => topic.clone())
                        .increment(1);
                    tracing::warn!(%topic, partition, error = %e, "cleaner pass failed");
                }
            }
        }
        compacted
    }

    async fn apply_assignments(
        &self,
        md: &ClusterMetadata,
        ours: bool,
        seen_topics: &mut BTreeSet<(String, String)>,
        warned_stray: &mut bool,
    ) {
        for (name, topic) in &md.topics {
            seen_topics.insert((name.clone(), topic.record.topic_id.clone()));
            for (&p, state) in &topic.partitions {
                if !state.replicas.contains(&self.node_id) {
                    continue;
                }
                let config = log_config(&topic.config, self.flush, state.replicas.len() > 1);
                if let Err(e) = self
                    .logs
                    .get_or_create(name, &topic.record.topic_id, p, config)
                    .await
                {
                    tracing::error!(topic = %name, partition = p, error = %e, "cannot open partition log");
                }
            }
        }
        let mut stray = 0;
        for (topic, topic_id, partition) in self.logs.list() {
            let meta = crate::log::PartitionMeta {
                topic,
                topic_id,
                partition,
            };
            let current = md.topic(&meta.topic);
            let assigned = current.is_some_and(|t| {
                t.record.topic_id == meta.topic_id
                    && t.partitions
                        .get(&meta.partition)
                        .is_some_and(|p| p.replicas.contains(&self.node_id))
            });
            if assigned {
                continue;
            }
            let known = seen_topics.contains(&(meta.topic.clone(), meta.topic_id.clone()));
            let recreated = current.is_some_and(|t| t.record.topic_id != meta.topic_id);
            let deleted_while_down = ours && current.is_none();
            if known || recreated || deleted_while_down {
                tracing::info!(topic = %meta.topic, partition = meta.partition, "removing deleted partition");
                if let Err(e) = self.logs.remove(&meta.topic, meta.partition).await {
                    tracing::error!(topic = %meta.topic, partition = meta.partition, error = %e, "cannot remove partition data");
                }
            } else {
                stray += 1;
            }
        }
        if stray > 0 && !*warned_stray {
            *warned_stray = true;
            tracing::warn!(
                count = stray,
                "partition directories of topics this cluster does not know are left untouched"
            );
        }
    }
}

/// `cluster.json` in the data directory: which cluster the data belongs to.
/// Written the first time the node sees its cluster's id; from then on a
/// matching id means partitions missing from the metadata were deleted.
#[derive(Debug)]
struct ClusterMarker {
    path: std::path::PathBuf,
    recorded: Option<String>,
    warned: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MarkerFile {
    cluster_id: String,
}

impl ClusterMarker {
    fn new(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join("cluster.json");
        let recorded = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<MarkerFile>(&b).ok())
            .map(|m| m.cluster_id);
        ClusterMarker {
            path,
            recorded,
            warned: false,
        }
    }

    /// True when the data directory belongs to the cluster with this id. A
    /// directory without a marker is claimed only while it holds nothing
    /// the cluster does not know (`unknown_data` false).
    fn belongs_to(&mut self, cluster_id: Option<&str>, unknown_data: bool) -> bool {
        let Some(id) = cluster_id else {
            return false;
        };
        match &self.recorded {
            Some(recorded) if recorded == id => true,
            Some(recorded) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        data_cluster = %recorded, cluster = %id,
                        "the data directory belongs to another cluster; its partitions will not be cleaned up"
                    );
                }
                false
            }
            None if unknown_data => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        "the data directory has no cluster marker and holds partitions this cluster does not know; they will not be cleaned up"
                    );
                }
                false
            }
            None => {
                let body = serde_json::to_vec(&MarkerFile {
                    cluster_id: id.to_string(),
                })
                .unwrap_or_default();
                let tmp = self.path.with_extension("json.tmp");
                let written = std::fs::write(&tmp, body)
                    .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                    .and_then(|()| std::fs::rename(&tmp, &self.path));
                match written {
                    Ok(()) => {
                        self.recorded = Some(id.to_string());
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, path = %self.path.display(), "cannot record the cluster id");
                        false
                    }
                }
            }
        }
    }
}

/// Runs `pass` every `every_ms` (the first time after one interval; a slow
/// pass delays the next rather than stacking them) until shutdown.
async fn periodically<F, Fut>(
    every_ms: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let every = Duration::from_millis(every_ms.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        pass().await;
    }
}
