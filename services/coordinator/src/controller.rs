//! The controller: election, topic creation and deletion, and leadership
//! reconciliation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runnel_cluster::topic_config::{self, validate_topic_name};
use runnel_cluster::{
    ClusterMetadata, ControllerRecord, Keys, MetadataWatcher, PartitionRecord, TopicRecord, now_ms,
};
use runnel_metastore::{CasOutcome, LeaseId, MetaStore};
use tokio::sync::Mutex;

use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;

/// A topic creation request, after defaults are applied.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: BTreeMap<String, String>,
}

/// The controller state shared by the election loop and the gRPC handlers.
#[derive(Debug)]
pub struct Controller {
    pub store: Arc<dyn MetaStore>,
    pub keys: Keys,
    pub watcher: MetadataWatcher,
    pub config: CoordinatorConfig,
    pub advertised: String,
    active: AtomicBool,
    /// Serialises topic changes so assignments see each other.
    topic_lock: Mutex<()>,
}

impl Controller {
    pub async fn new(
        store: Arc<dyn MetaStore>,
        config: CoordinatorConfig,
        advertised: String,
    ) -> Result<Arc<Self>, CoordinatorError> {
        let keys = Keys::new(&config.cluster);
        let watcher = MetadataWatcher::start(store.clone(), keys.clone()).await?;
        Ok(Arc::new(Controller {
            store,
            keys,
            watcher,
            config,
            advertised,
            active: AtomicBool::new(false),
            topic_lock: Mutex::new(()),
        }))
    }

    /// True while this instance holds the controller lease.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Campaigns for the controller role until `shutdown` fires; while
    /// active, keeps the lease alive and reconciles on every metadata change.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let ttl = Duration::from_secs(self.config.lease_ttl_secs.max(2));
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.campaign(ttl).await {
                Ok(Some(lease)) => {
                    tracing::info!(
                        instance = self.config.instance_id,
                        "became the active controller"
                    );
                    metrics::counter!("runnel_controller_elections_total").increment(1);
                    self.active.store(true, Ordering::SeqCst);
                    metrics::gauge!("runnel_controller_active").set(1.0);
                    let resigned = self.lead(lease, ttl, &mut shutdown).await;
                    self.active.store(false, Ordering::SeqCst);
                    metrics::gauge!("runnel_controller_active").set(0.0);
                    if resigned {
                        // Clean shutdown: hand over at once.
                        let _ = self.store.revoke_lease(lease).await;
                        return;
                    }
                    tracing::warn!("lost the controller lease; standing by");
                }
                Ok(None) => {
                    // Someone else leads: wait until their key goes away.
                    let gone = self
                        .watcher
                        .wait_until(ttl * 3, |md| md.controller.is_none())
                        .await;
                    if gone.is_none() {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "controller campaign failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Tries once to create the controller key; returns the lease if won.
    async fn campaign(&self, ttl: Duration) -> Result<Option<LeaseId>, CoordinatorError> {
        if self.watcher.current().controller.is_some() {
            return Ok(None);
        }
        let lease = self.store.grant_lease(ttl).await?;
        let record = ControllerRecord {
            instance_id: self.config.instance_id,
            address: self.advertised.clone(),
            elected_at_ms: now_ms(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        match self
            .store
            .compare_and_swap(&self.keys.controller(), 0, value, Some(lease))
            .await?
        {
            CasOutcome::Swapped(_) => Ok(Some(lease)),
            CasOutcome::Conflict(_) => {
                let _ = self.store.revoke_lease(lease).await;
                Ok(None)
            }
        }
    }

    /// Leads until the lease is lost (false) or shutdown (true).
    async fn lead(
        &self,
        lease: LeaseId,
        ttl: Duration,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let mut changes = self.watcher.subscribe();
        let mut keepalive = tokio::time::interval(ttl / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ok = tokio::time::Instant::now();
        let every = Duration::from_secs(self.config.leader_rebalance_interval_secs.max(1));
        let mut rebalance = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        rebalance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Make sure the reconcile below runs once right away.
        changes.mark_changed();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return true,
                _ = rebalance.tick(), if self.config.leader_rebalance_interval_secs > 0 => {
                    match self.elect_preferred_leaders(&[]).await {
                        Ok(0) => {}
                        Ok(moved) => tracing::info!(moved, "leadership back on preferred replicas"),
                        Err(e) => tracing::warn!(error = %e, "preferred leader election failed"),
                    }
                }
                _ = keepalive.tick() => {
                    match self.store.keep_alive(lease).await {
                        Ok(()) => last_ok = tokio::time::Instant::now(),
                        Err(runnel_metastore::MetaError::LeaseNotFound(_)) => return false,
                        Err(e) => {
                            tracing::warn!(error = %e, "controller keep-alive failed");
                            // Stop acting before the lease can have expired.
                            if last_ok.elapsed() >= ttl * 2 / 3 {
                                return false;
                            }
                        }
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    let md = changes.borrow_and_update().clone();
                    if let Some(c) = &md.controller
                        && c.instance_id != self.config.instance_id
                    {
                        return false;
                    }
                    if let Err(e) = self.reconcile(&md).await {
                        tracing::warn!(error = %e, "reconcile failed; will retry on the next change");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        changes.mark_changed();
                    }
                }
            }
        }
    }

    /// Brings partition state in line with the live nodes and finishes any
    /// half-done topic creation or deletion.
    pub async fn reconcile(&self, md: &ClusterMetadata) -> Result<(), CoordinatorError> {
        if md.cluster_id.is_none() {
            let id = uuid::Uuid::new_v4().to_string();
            self.store
                .compare_and_swap(&self.keys.cluster_id(), 0, Bytes::from(id), None)
                .await?;
        }
        let live: BTreeSet<i32> = md.nodes.keys().copied().collect();
        let mut offline = 0u64;
        for (name, topic) in &md.topics {
            // A crash between writing the topic and its partitions.
            if (topic.partitions.len() as i32) < topic.record.partitions {
                let _guard = self.topic_lock.lock().await;
                let assignment = assign(
                    md,
                    topic.record.partitions,
                    topic
                        .record
                        .replication_factor
                        .min(live.len().max(1) as i32),
                );
                for p in 0..topic.record.partitions {
                    if !topic.partitions.contains_key(&p) {
                        let replicas = assignment.get(p as usize).cloned().unwrap_or_default();
                        self.put_partition(name, p, &new_partition(replicas))
                            .await?;
                    }
                }
            }
            let unclean = topic.config.unclean_leader_election;
            for (&p, state) in &topic.partitions {
                if elect(state, &live, unclean).is_some() {
                    self.update_partition(name, p, |current| elect(current, &live, unclean))
                        .await?;
                } else if advance_reassignment(state, &live).is_some() {
                    self.update_partition(name, p, |current| {
                        elect(current, &live, unclean)
                            .is_none()
                            .then(|| advance_reassignment(current, &live))
                            .flatten()
                    })
                    .await?;
                }
                if next_offline(state, &live) {
                    offline += 1;
                }
            }
        }
        metrics::gauge!("runnel_offline_partitions").set(offline as f64);
        metrics::gauge!("runnel_live_storage_nodes").set(live.len() as f64);
        metrics::gauge!("runnel_topics").set(md.topics.len() as f64);
        // Partitions left behind by a deletion that did not finish.
        for topic in md.orphan_partitions.keys() {
            self.store
                .delete_prefix(&self.keys.topic_partitions_prefix(topic))
                .await?;
        }
        Ok(())
    }

    /// Rewrites a partition record with `change` applied to its current
    /// value, by compare-and-swap: a leader may change the ISR at the same
    /// time, and neither write may undo the other.
    async fn update_partition(
        &self,
        topic: &str,
        partition: i32,
        change: impl Fn(&PartitionRecord) -> Option<PartitionRecord>,
    ) -> Result<(), CoordinatorError> {
        let key = self.keys.partition(topic, partition);
        loop {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(());
            };
            let Ok(current) = serde_json::from_slice::<PartitionRecord>(&kv.value) else {
                tracing::warn!(%topic, partition, "unreadable partition record left alone");
                return Ok(());
            };
            let Some(next) = change(&current) else {
                return Ok(());
            };
            let value = Bytes::from(serde_json::to_vec(&next).unwrap_or_default());
            match self
                .store
                .compare_and_swap(&key, kv.mod_revision, value, None)
                .await?
            {
                CasOutcome::Swapped(_) => {
                    if next.leader != current.leader || next.leader_epoch != current.leader_epoch {
                        tracing::info!(
                            %topic, partition, old_leader = current.leader,
                            new_leader = next.leader, epoch = next.leader_epoch, isr = ?next.isr,
                            "partition leader changed"
                        );
                        metrics::counter!("runnel_leader_elections_total").increment(1);
                        if next.leader >= 0 && !current.isr.contains(&next.leader) {
                            tracing::warn!(%topic, partition, leader = next.leader, "unclean leader election: records only the old in-sync replicas had are lost");
                            metrics::counter!("runnel_unclean_leader_elections_total").increment(1);
                        }
                    } else {
                        tracing::info!(%topic, partition, isr = ?next.isr, "dead replicas removed from the ISR");
                    }
                    return Ok(());
                }
                CasOutcome::Conflict(_) => continue,
            }
        }
    }

    /// Starts moving a partition to `replicas` (see
    /// [`advance_reassignment`]); the reconcile loop carries it through.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        replicas: Vec<i32>,
        throttle_bytes_per_sec: i64,
    ) -> Result<(), CoordinatorError> {
        let md = self.watcher.current();
        let t = md
            .topic(topic)
            .ok_or_else(|| CoordinatorError::NotFound(format!("topic {topic:?}")))?;
        if !t.partitions.contains_key(&partition) {
            return Err(CoordinatorError::NotFound(format!(
                "partition {topic}-{partition}"
            )));
        }
        let distinct: BTreeSet<i32> = replicas.iter().copied().collect();
        if replicas.is_empty() || distinct.len() != replicas.len() {
            return Err(CoordinatorError::Invalid(format!(
                "the new replica set {replicas:?} must name distinct nodes"
            )));
        }
        if let Some(n) = replicas.iter().find(|n| !md.nodes.contains_key(n)) {
            return Err(CoordinatorError::Invalid(format!(
                "storage node {n} is not live"
            )));
        }
        if throttle_bytes_per_sec < 0 {
            return Err(CoordinatorError::Invalid(
                "the throttle cannot be negative".into(),
            ));
        }
        self.update_partition(topic, partition, |current| {
            (current.target_replicas.is_none() && current.replicas != replicas).then(|| {
                PartitionRecord {
                    target_replicas: Some(replicas.clone()),
                    throttle_bytes_per_sec,
                    ..current.clone()
                }
            })
        })
        .await?;
        let now = self
            .store
            .get(&self.keys.partition(topic, partition))
            .await?;
        let state = now.and_then(|kv| serde_json::from_slice::<PartitionRecord>(&kv.value).ok());
        match state {
            Some(s) if s.target_replicas.as_ref() == Some(&replicas) || s.replicas == replicas => {
                tracing::info!(%topic, partition, from = ?s.replicas, to = ?replicas, throttle_bytes_per_sec, "partition reassignment started");
                Ok(())
            }
            Some(s) => Err(CoordinatorError::Invalid(format!(
                "{topic}-{partition} is already moving to {:?}",
                s.target_replicas.unwrap_or_default()
            ))),
            None => Err(CoordinatorError::NotFound(format!(
                "partition {topic}-{partition}"
            ))),
        }
    }

    /// Moves leadership to the preferred replica wherever [`prefer`] says
    /// so, for `topics` (all when empty). Returns how many moved.
    pub async fn elect_preferred_leaders(
        &self,
        topics: &[String],
    ) -> Result<i32, CoordinatorError> {
        let md = self.watcher.current();
        let live: BTreeSet<i32> = md.nodes.keys().copied().collect();
        let mut moved = 0;
        for (name, topic) in &md.topics {
            if !topics.is_empty() && !topics.contains(name) {
                continue;
            }
            for (&p, state) in &topic.partitions {
                if prefer(state, &live).is_some() {
                    self.update_partition(name, p, |current| prefer(current, &live))
                        .await?;
                    moved += 1;
                }
            }
        }
        Ok(moved)
    }

    async fn put_partition(
        &self,
        topic: &str,
        partition: i32,
        record: &PartitionRecord,
    ) -> Result<(), CoordinatorError> {
        let value = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        self.store
            .put(&self.keys.partition(topic, partition), value, None)
            .await?;
        Ok(())
    }

    /// Checks a creation request and fills in defaults.
    pub fn validate_new_topic(
        &self,
        md: &ClusterMetadata,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<NewTopic, CoordinatorError> {
        validate_topic_name(name)?;
        if partitions < 1 {
            return Err(CoordinatorError::InvalidPartitions(
                partitions,
                "a topic needs at least one partition".into(),
            ));
        }
        if partitions > self.config.max_partitions_per_topic {
            return Err(CoordinatorError::InvalidPartitions(
                partitions,
                format!(
                    "more than the limit of {} per topic",
                    self.config.max_partitions_per_topic
                ),
            ));
        }
        let rf = if replication_factor <= 0 {
            if replication_factor < 0 && replication_factor != -1 {
                return Err(CoordinatorError::InvalidReplicationFactor {
                    requested: replication_factor,
                    reason: "must be positive (or -1/0 for the default)".into(),
                });
            }
            self.config.default_replication_factor
        } else {
            replication_factor
        };
        topic_config::validate(&configs)?;
        if md.topics.contains_key(name) {
            return Err(CoordinatorError::TopicExists(name.to_string()));
        }
        if md.nodes.is_empty() {
            return Err(CoordinatorError::NoLiveNodes);
        }
        if rf as usize > md.nodes.len() {
            return Err(CoordinatorError::InvalidReplicationFactor {
                requested: rf,
                reason: format!("only {} storage node(s) are live", md.nodes.len()),
            });
        }
        Ok(NewTopic {
            name: name.to_string(),
            partitions,
            replication_factor: rf,
            configs,
        })
    }

    /// Creates a topic (active controller only).
    pub async fn create_topic(
        &self,
        topic: NewTopic,
    ) -> Result<(TopicRecord, Vec<PartitionRecord>), CoordinatorError> {
        if !self.is_active() {
            return Err(CoordinatorError::NoController);
        }
        let _guard = self.topic_lock.lock().await;
        let md = self.watcher.current();
        let topic = self.validate_new_topic(
            &md,
            &topic.name,
            topic.partitions,
            topic.replication_factor,
            topic.configs,
        )?;
        let record = TopicRecord {
            name: topic.name.clone(),
            topic_id: uuid::Uuid::new_v4().to_string(),
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            configs: topic.configs,
            created_at_ms: now_ms(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        match self
            .store
            .compare_and_swap(&self.keys.topic(&record.name), 0, value, None)
            .await?
        {
            CasOutcome::Swapped(_) => {}
            CasOutcome::Conflict(_) => return Err(CoordinatorError::TopicExists(record.name)),
        }
        let assignment = assign(&md, record.partitions, record.replication_factor);
        let mut partitions = Vec::with_capacity(assignment.len());
        for (p, replicas) in assignment.into_iter().enumerate() {
            let state = new_partition(replicas);
            self.put_partition(&record.name, p as i32, &state).await?;
            partitions.push(state);
        }
        tracing::info!(topic = %record.name, partitions = record.partitions,
            replication_factor = record.replication_factor, "topic created");
        // Answer once this instance's own view has the topic, so a client's
        // next metadata call sees what it just created.
        let (name, id, count) = (
            record.name.clone(),
            record.topic_id.clone(),
            record.partitions,
        );
        self.watcher
            .wait_until(Duration::from_secs(5), |md| {
                md.topic(&name)
                    .is_some_and(|t| t.record.topic_id == id && t.partitions.len() as i32 >= count)
            })
            .await;
        Ok((record, partitions))
    }

    /// Deletes a topic and its partitions (active controller only). Storage
    /// nodes see the deletion and remove the data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), CoordinatorError> {
        if !self.is_active() {
            return Err(CoordinatorError::NoController);
        }
        let _guard = self.topic_lock.lock().await;
        if !self.store.delete(&self.keys.topic(name)).await? {
            return Err(CoordinatorError::TopicNotFound(name.to_string()));
        }
        self.store
            .delete_prefix(&self.keys.topic_partitions_prefix(name))
            .await?;
        tracing::info!(topic = %name, "topic deleted");
        self.watcher
            .wait_until(Duration::from_secs(5), |md| md.topic(name).is_none())
            .await;
        Ok(())
    }
}

impl Controller {
    /// Reads a topic record with its revision, for a compare-and-swap update.
    async fn load_topic(&self, name: &str) -> Result<(TopicRecord, i64), CoordinatorError> {
        let kv = self
            .store
            .get(&self.keys.topic(name))
            .await?
            .ok_or_else(|| CoordinatorError::TopicNotFound(name.to_string()))?;
        let record: TopicRecord = serde_json::from_slice(&kv.value).map_err(|e| {
            CoordinatorError::Meta(runnel_metastore::MetaError::Corrupt(format!(
                "topic record {name}: {e}"
            )))
        })?;
        Ok((record, kv.mod_revision))
    }

    async fn store_topic(
        &self,
        record: &TopicRecord,
        revision: i64,
    ) -> Result<(), CoordinatorError> {
        let value = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        match self
            .store
            .compare_and_swap(&self.keys.topic(&record.name), revision, value, None)
            .await?
        {
            CasOutcome::Swapped(_) => Ok(()),
            // Only the controller writes topics, under `topic_lock`; a
            // conflict means the topic was deleted or recreated meanwhile.
            CasOutcome::Conflict(_) => Err(CoordinatorError::TopicNotFound(record.name.clone())),
        }
    }

    /// Sets and removes topic configs (or replaces them all). Every value is
    /// validated first; nothing changes if one is bad.
    pub async fn alter_configs(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        replace_all: bool,
        validate_only: bool,
    ) -> Result<TopicRecord, CoordinatorError> {
        topic_config::validate(&set)?;
        for key in &remove {
            if topic_config::default_of(key).is_none() {
                return Err(topic_config::ConfigError::UnknownConfig(key.clone()).into());
            }
        }
        if !self.is_active() {
            return Err(CoordinatorError::NoController);
        }
        let _guard = self.topic_lock.lock().await;
        let (mut record, revision) = self.load_topic(name).await?;
        if replace_all {
            record.configs = set;
        } else {
            record.configs.extend(set);
            for key in &remove {
                record.configs.remove(key);
            }
        }
        if validate_only {
            return Ok(record);
        }
        self.store_topic(&record, revision).await?;
        tracing::info!(topic = %name, configs = ?record.configs, "topic configs changed");
        let wanted = record.configs.clone();
        self.watcher
            .wait_until(Duration::from_secs(5), |md| {
                md.topic(name).is_some_and(|t| t.record.configs == wanted)
            })
            .await;
        Ok(record)
    }

    /// Grows a topic to `total` partitions, placing the new ones like a new
    /// topic's.
    pub async fn create_partitions(
        &self,
        name: &str,
        total: i32,
        validate_only: bool,
    ) -> Result<(TopicRecord, BTreeMap<i32, PartitionRecord>), CoordinatorError> {
        if !self.is_active() {
            return Err(CoordinatorError::NoController);
        }
        let _guard = self.topic_lock.lock().await;
        let (mut record, revision) = self.load_topic(name).await?;
        if total <= record.partitions {
            return Err(CoordinatorError::InvalidPartitions(
                total,
                format!(
                    "topic {name:?} already has {} partitions; the count can only grow",
                    record.partitions
                ),
            ));
        }
        if total > self.config.max_partitions_per_topic {
            return Err(CoordinatorError::InvalidPartitions(
                total,
                format!(
                    "more than the limit of {} per topic",
                    self.config.max_partitions_per_topic
                ),
            ));
        }
        let md = self.watcher.current();
        if md.nodes.is_empty() {
            return Err(CoordinatorError::NoLiveNodes);
        }
        let added = total - record.partitions;
        let rf = record.replication_factor.min(md.nodes.len() as i32);
        let assignment = assign(&md, added, rf);
        let mut partitions = md
            .topic(name)
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        for (i, replicas) in assignment.into_iter().enumerate() {
            partitions.insert(record.partitions + i as i32, new_partition(replicas));
        }
        if validate_only {
            record.partitions = total;
            return Ok((record, partitions));
        }
        // Partition records first: until the topic's count moves, readers
        // ignore partitions beyond it.
        for p in record.partitions..total {
            if let Some(state) = partitions.get(&p) {
                self.put_partition(name, p, state).await?;
            }
        }
        record.partitions = total;
        self.store_topic(&record, revision).await?;
        tracing::info!(topic = %name, partitions = total, "partitions added");
        self.watcher
            .wait_until(Duration::from_secs(5), |md| {
                md.topic(name).is_some_and(|t| {
                    t.record.partitions == total && t.partitions.len() as i32 >= total
                })
            })
            .await;
        Ok((record, partitions))
    }
}

fn new_partition(replicas: Vec<i32>) -> PartitionRecord {
    PartitionRecord::new(replicas)
}

/// Replica lists for a new topic's partitions, balanced over live nodes:
/// nodes are ordered by how many partitions they lead already (fewest first),
/// partition p's first replica (its leader) is node p mod n in that order, and
/// the other replicas follow it round robin.
pub fn assign(md: &ClusterMetadata, partitions: i32, replication_factor: i32) -> Vec<Vec<i32>> {
    let mut load: BTreeMap<i32, usize> = md.nodes.keys().map(|&n| (n, 0)).collect();
    for topic in md.topics.values() {
        for p in topic.partitions.values() {
            if let Some(l) = load.get_mut(&p.leader) {
                *l += 1;
            }
        }
    }
    let mut nodes: Vec<(usize, i32)> = load.into_iter().map(|(n, l)| (l, n)).collect();
    nodes.sort();
    let nodes: Vec<i32> = nodes.into_iter().map(|(_, n)| n).collect();
    if nodes.is_empty() {
        return vec![Vec::new(); partitions.max(0) as usize];
    }
    let rf = (replication_factor.max(1) as usize).min(nodes.len());
    (0..partitions.max(0) as usize)
        .map(|p| (0..rf).map(|r| nodes[(p + r) % nodes.len()]).collect())
        .collect()
}

/// The new state of a partition given the live nodes, if it must change:
/// - dead followers leave the ISR (the leader keeps its place and epoch);
/// - a dead leader is replaced by the first live ISR member, and the dead
///   leave the ISR with it;
/// - with no ISR member live the partition goes offline, keeping its last
///   ISR (they hold everything committed) so that the first of them to
///   return leads again — or, with `unclean` election, any live replica
///   leads with an ISR of itself;
/// - an offline partition gets a leader as soon as one of those is live.
///
/// Every leadership change bumps the leader epoch.
pub fn elect(
    state: &PartitionRecord,
    live: &BTreeSet<i32>,
    unclean: bool,
) -> Option<PartitionRecord> {
    let leader_live = state.leader >= 0 && live.contains(&state.leader);
    let live_isr: Vec<i32> = state
        .isr
        .iter()
        .copied()
        .filter(|n| live.contains(n))
        .collect();
    if leader_live {
        return (live_isr.len() < state.isr.len()).then(|| PartitionRecord {
            isr: live_isr,
            ..state.clone()
        });
    }
    let next = |leader: i32, isr: Vec<i32>| PartitionRecord {
        leader,
        leader_epoch: state.leader_epoch + 1,
        isr,
        ..state.clone()
    };
    if let Some(&leader) = live_isr.first() {
        return Some(next(leader, live_isr));
    }
    if unclean && let Some(&leader) = state.replicas.iter().find(|n| live.contains(n)) {
        return Some(next(leader, vec![leader]));
    }
    (state.leader >= 0).then(|| next(-1, state.isr.clone()))
}

/// The next step of a reassignment in progress, if one is due: first the
/// new replicas join the replica set (they start copying the log); once
/// every target replica is in the ISR, the set becomes the target, replicas
/// outside it leave the ISR, and if the leader leaves, the first live
/// in-sync target replica takes over (with a new epoch).
pub fn advance_reassignment(
    state: &PartitionRecord,
    live: &BTreeSet<i32>,
) -> Option<PartitionRecord> {
    let target = state.target_replicas.as_ref()?;
    let mut union = state.replicas.clone();
    union.extend(target.iter().filter(|n| !state.replicas.contains(n)));
    if union != state.replicas {
        return Some(PartitionRecord {
            replicas: union,
            ..state.clone()
        });
    }
    if !target.iter().all(|n| state.isr.contains(n)) {
        return None;
    }
    let isr: Vec<i32> = state
        .isr
        .iter()
        .copied()
        .filter(|n| target.contains(n))
        .collect();
    let (leader, leader_epoch) = if target.contains(&state.leader) {
        (state.leader, state.leader_epoch)
    } else {
        // The first of the new set, in its order of preference.
        let next = target
            .iter()
            .copied()
            .find(|n| isr.contains(n) && live.contains(n))
            .unwrap_or(-1);
        (next, state.leader_epoch + 1)
    };
    Some(PartitionRecord {
        leader,
        leader_epoch,
        replicas: target.clone(),
        isr,
        target_replicas: None,
        throttle_bytes_per_sec: 0,
    })
}

/// Leadership back to the preferred replica (the first) when it is live, in
/// sync and not the leader, and no reassignment is under way.
pub fn prefer(state: &PartitionRecord, live: &BTreeSet<i32>) -> Option<PartitionRecord> {
    let preferred = *state.replicas.first()?;
    let due = state.target_replicas.is_none()
        && state.leader != preferred
        && live.contains(&preferred)
        && state.isr.contains(&preferred);
    due.then(|| PartitionRecord {
        leader: preferred,
        leader_epoch: state.leader_epoch + 1,
        ..state.clone()
    })
}

fn next_offline(state: &PartitionRecord, live: &BTreeSet<i32>) -> bool {
    !(state.leader >= 0 && live.contains(&state.leader))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use runnel_cluster::NodeRecord;

    fn md_with_nodes(ids: &[i32]) -> ClusterMetadata {
        let mut md = ClusterMetadata::default();
        for &id in ids {
            md.nodes.insert(
                id,
                NodeRecord {
                    node_id: id,
                    address: format!("n{id}"),
                    rack: String::new(),
                    started_at_ms: 0,
                },
            );
        }
        md
    }

    #[test]
    fn assignment_is_balanced() {
        let md = md_with_nodes(&[1, 2, 3]);
        let a = assign(&md, 8, 2);
        let mut leaders = BTreeMap::new();
        for r in &a {
            assert_eq!(r.len(), 2);
            assert_ne!(r[0], r[1]);
            *leaders.entry(r[0]).or_insert(0) += 1;
        }
        assert!(
            leaders.values().all(|&n| (2..=3).contains(&n)),
            "{leaders:?}"
        );
    }

    #[test]
    fn dead_leader_is_replaced_from_isr_or_goes_offline() {
        let p = PartitionRecord {
            leader: 1,
            leader_epoch: 4,
            ..PartitionRecord::new(vec![1, 2])
        };
        let live: BTreeSet<i32> = [2].into();
        let next = elect(&p, &live, false).unwrap();
        assert_eq!(
            (next.leader, next.leader_epoch, &next.isr),
            (2, 5, &vec![2])
        );
        let none: BTreeSet<i32> = BTreeSet::new();
        let off = elect(&p, &none, false).unwrap();
        assert_eq!((off.leader, off.leader_epoch), (-1, 5));
        assert_eq!(off.isr, vec![1, 2], "the last ISR is kept while offline");
        assert_eq!(elect(&off, &none, false), None);
        let back: BTreeSet<i32> = [1].into();
        let again = elect(&off, &back, false).unwrap();
        assert_eq!((again.leader, again.leader_epoch), (1, 6));
        assert_eq!(again.isr, vec![1]);
        assert_eq!(elect(&again, &back, false), None);
    }

    #[test]
    fn reassignment_adds_then_waits_for_sync_then_drops_the_old_replicas() {
        let live: BTreeSet<i32> = [1, 2, 3, 4].into();
        let start = PartitionRecord {
            target_replicas: Some(vec![3, 4]),
            throttle_bytes_per_sec: 1000,
            ..PartitionRecord::new(vec![1, 2])
        };
        let adding = advance_reassignment(&start, &live).unwrap();
        assert_eq!(
            (adding.replicas.clone(), adding.leader),
            (vec![1, 2, 3, 4], 1)
        );
        assert_eq!(
            advance_reassignment(&adding, &live),
            None,
            "waits for 3 and 4 to sync"
        );
        let synced = PartitionRecord {
            isr: vec![1, 2, 3, 4],
            ..adding
        };
        let done = advance_reassignment(&synced, &live).unwrap();
        assert_eq!(done.replicas, vec![3, 4]);
        assert_eq!(done.isr, vec![3, 4]);
        assert_eq!(
            (done.leader, done.leader_epoch),
            (3, 1),
            "the leader left: new epoch"
        );
        assert_eq!(
            (done.target_replicas, done.throttle_bytes_per_sec),
            (None, 0)
        );
        assert_eq!(
            advance_reassignment(&PartitionRecord::new(vec![1]), &live),
            None
        );
    }

    #[test]
    fn preferred_leader_returns_when_in_sync() {
        let live: BTreeSet<i32> = [1, 2].into();
        let p = PartitionRecord {
            leader: 2,
            leader_epoch: 3,
            isr: vec![2],
            ..PartitionRecord::new(vec![1, 2])
        };
        assert_eq!(prefer(&p, &live), None, "1 is not in sync yet");
        let synced = PartitionRecord {
            isr: vec![2, 1],
            ..p
        };
        let back = prefer(&synced, &live).unwrap();
        assert_eq!((back.leader, back.leader_epoch), (1, 4));
        assert_eq!(prefer(&back, &live), None);
    }

    #[test]
    fn dead_followers_leave_the_isr_and_unclean_election_is_opt_in() {
        let p = PartitionRecord {
            leader_epoch: 2,
            ..PartitionRecord::new(vec![1, 2, 3])
        };
        let live: BTreeSet<i32> = [1, 3].into();
        let next = elect(&p, &live, false).unwrap();
        assert_eq!(
            (next.leader, next.leader_epoch, &next.isr),
            (1, 2, &vec![1, 3])
        );
        // Only node 2, out of the ISR, is live.
        let isr_one = PartitionRecord {
            isr: vec![1],
            ..p.clone()
        };
        let only_2: BTreeSet<i32> = [2].into();
        let clean = elect(&isr_one, &only_2, false).unwrap();
        assert_eq!(clean.leader, -1);
        let unclean = elect(&isr_one, &only_2, true).unwrap();
        assert_eq!((unclean.leader, &unclean.isr), (2, &vec![2]));
    }
}
