//! A groups node: which shards it owns, and the background work that keeps
//! that true.
//!
//! Ownership lives in the metastore. The node registers under
//! `groups/nodes/<id>` with a lease; each shard `k` it serves has the key
//! `groups/shards/<k>` under the same lease, created only if absent. Every
//! node computes the same preferred owner per shard (rendezvous hashing over
//! the live groups nodes), claims the free shards it prefers, and hands a
//! shard back when a live node is preferred for it, so shards spread out as
//! nodes join and move when one fails (its lease lapses, its keys vanish). A
//! shard free for longer than two lease periods is claimed by anyone.
//!
//! A claimed shard is loaded from its partition of `__consumer_offsets`
//! before it serves; until then calls get COORDINATOR_LOAD_IN_PROGRESS.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_cluster::{GroupsNodeRecord, Keys, MetadataWatcher, OFFSETS_TOPIC, group_shard};
use runnel_metastore::{CasOutcome, LeaseId, MetaError, MetaStore};
use runnel_proto::coordinator::v1 as coord;
use runnel_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use runnel_proto::storage::v1 as storage;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;
use tokio::sync::watch;

use crate::config::GroupsConfig;
use crate::group::{Limits, code};
use crate::journal::Journal;
use crate::shard::Shard;

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[derive(Debug, Clone)]
enum Slot {
    Loading,
    Active(Arc<Shard>),
}

#[derive(Debug)]
pub struct GroupsNode {
    pub config: GroupsConfig,
    pub me: GroupsNodeRecord,
    pub watcher: Arc<MetadataWatcher>,
    pub journal: Journal,
    store: Arc<dyn MetaStore>,
    keys: Keys,
    limits: Limits,
    slots: RwLock<HashMap<i32, Slot>>,
}

/// Rendezvous (highest random weight) hashing: every node agrees on each
/// shard's preferred owner, and a node joining or leaving moves only its
/// share of the shards.
pub fn preferred_owner(shard: i32, nodes: impl Iterator<Item = i32>) -> Option<i32> {
    nodes.max_by_key(|n| {
        (
            runnel_records::murmur2(format!("{shard}/{n}").as_bytes()),
            *n,
        )
    })
}

impl GroupsNode {
    pub fn new(
        config: GroupsConfig,
        me: GroupsNodeRecord,
        store: Arc<dyn MetaStore>,
        watcher: Arc<MetadataWatcher>,
    ) -> Self {
        let keys = Keys::new(&config.cluster);
        let limits = Limits {
            initial_rebalance_delay: Duration::from_millis(config.initial_rebalance_delay_ms),
            min_session_timeout_ms: config.min_session_timeout_ms,
            max_session_timeout_ms: config.max_session_timeout_ms,
            max_group_size: config.max_group_size,
        };
        let journal = Journal {
            watcher: watcher.clone(),
            pool: runnel_rpc::ChannelPool::new(),
            timeout: Duration::from_secs(15),
            node_id: me.node_id,
        };
        GroupsNode {
            config,
            me,
            watcher,
            journal,
            store,
            keys,
            limits,
            slots: RwLock::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i32, Slot>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn slots_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<i32, Slot>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The shard serving a group here, or the code that sends the caller
    /// elsewhere.
    pub fn shard_for(&self, group_id: &str) -> Result<Arc<Shard>, i32> {
        let count = self
            .watcher
            .current()
            .group_shard_count()
            .ok_or(code::COORDINATOR_NOT_AVAILABLE)?;
        match self.slots().get(&group_shard(group_id, count)) {
            Some(Slot::Active(s)) => Ok(s.clone()),
            Some(Slot::Loading) => Err(code::COORDINATOR_LOAD_IN_PROGRESS),
            None => Err(code::NOT_COORDINATOR),
        }
    }

    /// The shards this node serves now.
    pub fn active_shards(&self) -> Vec<Arc<Shard>> {
        self.slots()
            .values()
            .filter_map(|s| match s {
                Slot::Active(s) => Some(s.clone()),
                Slot::Loading => None,
            })
            .collect()
    }

    /// A client to another groups node.
    pub fn peer(
        &self,
        address: &str,
    ) -> Result<
        runnel_proto::groups::v1::groups_service_client::GroupsServiceClient<
            tonic::transport::Channel,
        >,
        runnel_rpc::RpcError,
    > {
        Ok(
            runnel_proto::groups::v1::groups_service_client::GroupsServiceClient::new(
                self.journal.pool.get(address)?,
            ),
        )
    }

    /// Every topic a consumer may subscribe to, with its partition count
    /// (internal topics, `__*`, left out as Kafka leaves them out of
    /// pattern subscriptions).
    pub fn topics(&self) -> crate::consumer_group::Topics {
        self.watcher
            .current()
            .topics
            .iter()
            .filter(|(name, _)| !name.starts_with("__"))
            .map(|(name, t)| (name.clone(), t.record.partitions))
            .collect()
    }

    /// Whether a topic partition exists (offsets are only taken for those).
    pub fn known_partition(&self, topic: &str, partition: i32) -> bool {
        self.watcher
            .current()
            .topic(topic)
            .is_some_and(|t| partition >= 0 && partition < t.record.partitions)
    }

    /// Keeps the registration and the shard ownership right until `stop`;
    /// then hands every shard back so the others take over at once.
    pub async fn run_ownership(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let ttl = Duration::from_secs(self.config.lease_ttl_secs.max(2));
        loop {
            let lease = match self.register(ttl).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "groups node registration failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stopped(&mut stop) => return,
                    }
                }
            };
            tracing::info!(node_id = self.me.node_id, address = %self.me.address, "groups node registered");
            let mut changes = self.watcher.subscribe();
            let mut keep_alive = tokio::time::interval(ttl / 3);
            let mut rebalance = tokio::time::interval(Duration::from_secs(1));
            let mut unowned_since: HashMap<i32, Instant> = HashMap::new();
            let lost = loop {
                tokio::select! {
                    _ = stopped(&mut stop) => {
                        self.release_all();
                        let _ = self.store.revoke_lease(lease).await;
                        return;
                    }
                    _ = keep_alive.tick() => match self.store.keep_alive(lease).await {
                        Ok(()) => {}
                        Err(MetaError::LeaseNotFound(_)) => break true,
                        Err(e) => tracing::warn!(error = %e, "groups lease keep-alive failed"),
                    },
                    _ = changes.changed() => self.balance(lease, ttl, &mut unowned_since).await,
                    _ = rebalance.tick() => self.balance(lease, ttl, &mut unowned_since).await,
                }
            };
            if lost {
                // Our keys are gone and others may own our shards already.
                tracing::warn!("groups lease expired; dropping every shard and registering again");
                self.release_all();
            }
        }
    }

    async fn register(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let lease = self.store.grant_lease(ttl).await?;
        let value = Bytes::from(serde_json::to_vec(&self.me).unwrap_or_default());
        self.store
            .put(&self.keys.groups_node(self.me.node_id), value, Some(lease))
            .await?;
        Ok(lease)
    }

    /// One pass of claiming and handing back shards.
    async fn balance(
        self: &Arc<Self>,
        lease: LeaseId,
        ttl: Duration,
        unowned_since: &mut HashMap<i32, Instant>,
    ) {
        let md = self.watcher.current();
        let Some(count) = md.group_shard_count() else {
            self.ensure_offsets_topic().await;
            return;
        };
        if md
            .topic(OFFSETS_TOPIC)
            .is_none_or(|t| (t.partitions.len() as i32) < count)
        {
            return;
        }
        let live: Vec<i32> = md.groups_nodes.keys().copied().collect();
        let now = Instant::now();
        for shard in 0..count {
            let owner = md.group_shards.get(&shard);
            let preferred = preferred_owner(shard, live.iter().copied());
            let mine = self.slots().contains_key(&shard);
            match owner {
                None => {
                    let since = *unowned_since.entry(shard).or_insert(now);
                    if !mine
                        && (preferred == Some(self.me.node_id)
                            || now.duration_since(since) > 2 * ttl)
                    {
                        self.claim(shard, lease).await;
                    }
                }
                Some(o) => {
                    unowned_since.remove(&shard);
                    if o.node_id == self.me.node_id && !mine {
                        // A key left by an earlier run of this node id; it
                        // lapses with that run's lease, or we clear it now.
                        self.clear_stale(shard, lease).await;
                    } else if o.node_id == self.me.node_id
                        && let Some(p) = preferred
                        && p != self.me.node_id
                        && md.groups_nodes.contains_key(&p)
                    {
                        self.release(shard).await;
                    }
                }
            }
        }
    }

    async fn claim(self: &Arc<Self>, shard: i32, lease: LeaseId) {
        let key = self.keys.group_shard(shard);
        let value = Bytes::from(serde_json::to_vec(&self.me).unwrap_or_default());
        match self
            .store
            .compare_and_swap(&key, 0, value, Some(lease))
            .await
        {
            Ok(CasOutcome::Swapped(_)) => {}
            Ok(CasOutcome::Conflict(_)) => return,
            Err(e) => {
                tracing::warn!(shard, error = %e, "claiming a group shard failed");
                return;
            }
        }
        self.slots_mut().insert(shard, Slot::Loading);
        let node = self.clone();
        tokio::spawn(async move { node.load(shard).await });
    }

    async fn load(self: Arc<Self>, shard: i32) {
        let started = Instant::now();
        let mut attempt = 0u32;
        let stored = loop {
            match self.journal.load(shard).await {
                Ok(s) => break s,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(shard, attempt, error = %e, "loading a group shard failed; retrying");
                    if !matches!(self.slots().get(&shard), Some(Slot::Loading)) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let (stored, records) = stored;
        let groups = stored.groups.len();
        let consumer = crate::consumer_group::ConsumerSettings {
            session_timeout: Duration::from_millis(self.config.consumer_session_timeout_ms),
            heartbeat_interval_ms: self.config.consumer_heartbeat_interval_ms,
            max_group_size: self.config.max_group_size,
        };
        let s = Shard::start(
            shard,
            stored,
            self.journal.clone(),
            self.limits.clone(),
            consumer,
            self.config.offset_metadata_max_bytes,
        );
        let mut slots = self.slots_mut();
        if matches!(slots.get(&shard), Some(Slot::Loading)) {
            slots.insert(shard, Slot::Active(s));
            metrics::gauge!("runnel_groups_shards_owned").set(slots.len() as f64);
            tracing::info!(
                shard,
                records,
                groups,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "group shard loaded"
            );
        }
    }

    async fn release(&self, shard: i32) {
        if let Some(Slot::Active(s)) = self.slots_mut().remove(&shard) {
            s.abandon();
        }
        tracing::info!(shard, "handing a group shard to its preferred owner");
        if let Ok(Some(kv)) = self.store.get(&self.keys.group_shard(shard)).await {
            let _ = self
                .store
                .compare_and_delete(&kv.key, kv.mod_revision)
                .await;
        }
    }

    async fn clear_stale(&self, shard: i32, lease: LeaseId) {
        if let Ok(Some(kv)) = self.store.get(&self.keys.group_shard(shard)).await
            && kv.lease != Some(lease)
        {
            let _ = self
                .store
                .compare_and_delete(&kv.key, kv.mod_revision)
                .await;
        }
    }

    fn release_all(&self) {
        let mut slots = self.slots_mut();
        for (_, slot) in slots.drain() {
            if let Slot::Active(s) = slot {
                s.abandon();
            }
        }
        metrics::gauge!("runnel_groups_shards_owned").set(0.0);
    }

    /// Creates `__consumer_offsets` (compacted) if no one has yet.
    async fn ensure_offsets_topic(&self) {
        let md = self.watcher.current();
        let address = match &self.config.coordinator_address {
            Some(a) => a.clone(),
            None => match &md.controller {
                Some(c) => c.address.clone(),
                None => return,
            },
        };
        let Ok(channel) = self.journal.pool.get(&address) else {
            return;
        };
        let mut client = CoordinatorServiceClient::new(channel);
        let request = coord::CreateTopicRequest {
            name: OFFSETS_TOPIC.into(),
            partitions: self.config.offsets_topic_partitions,
            replication_factor: self.config.offsets_topic_replication_factor,
            configs: [("cleanup.policy".to_string(), "compact".to_string())].into(),
            validate_only: false,
        };
        match client.create_topic(request).await {
            Ok(_) => tracing::info!(
                partitions = self.config.offsets_topic_partitions,
                "created {OFFSETS_TOPIC}"
            ),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => tracing::warn!(error = %s.message(), "could not create {OFFSETS_TOPIC} yet"),
        }
    }

    /// Drives the groups' timers (sessions, rebalances) until `stop`.
    pub async fn run_timers(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let retention =
            Duration::from_secs(self.config.offsets_retention_minutes.saturating_mul(60));
        let mut last_expiry = Instant::now();
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tick.tick() => {}
            }
            let expire = last_expiry.elapsed()
                >= Duration::from_millis(self.config.offsets_retention_check_interval_ms);
            if expire {
                last_expiry = Instant::now();
            }
            for shard in self.active_shards() {
                shard.tick(expire.then_some(retention));
            }
        }
    }

    /// Exports consumer lag (log end offset minus committed offset) per
    /// group and partition, every `lag_interval_secs`.
    pub async fn run_lag(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.config.lag_interval_secs == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.lag_interval_secs));
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tick.tick() => {}
            }
            let committed: Vec<_> = self
                .active_shards()
                .iter()
                .flat_map(|s| s.committed())
                .collect();
            if committed.is_empty() {
                continue;
            }
            let ends = self
                .log_end_offsets(committed.iter().map(|(_, t, p, _)| (t.clone(), *p)))
                .await;
            let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
            for (group, topic, partition, offset) in &committed {
                let Some(end) = ends.get(&(topic.clone(), *partition)) else {
                    continue;
                };
                let lag = (end - offset).max(0);
                *totals.entry(group).or_default() += lag;
                metrics::gauge!("runnel_group_lag", "group" => group.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(lag as f64);
            }
            for (group, lag) in totals {
                metrics::gauge!("runnel_group_lag_sum", "group" => group.to_string())
                    .set(lag as f64);
            }
        }
    }

    /// Log end offsets of the partitions, asking each leader once.
    pub async fn log_end_offsets(
        &self,
        partitions: impl Iterator<Item = (String, i32)>,
    ) -> HashMap<(String, i32), i64> {
        let md = self.watcher.current();
        let mut by_leader: BTreeMap<String, Vec<storage::OffsetQuery>> = BTreeMap::new();
        for (topic, partition) in partitions {
            if let Some(node) = md.leader_node(&topic, partition) {
                by_leader
                    .entry(node.address.clone())
                    .or_default()
                    .push(storage::OffsetQuery {
                        topic,
                        partition,
                        timestamp: -1,
                    });
            }
        }
        let mut out = HashMap::new();
        for (address, queries) in by_leader {
            let Ok(channel) = self.journal.pool.get(&address) else {
                continue;
            };
            let mut call = tonic::Request::new(storage::ListOffsetsRequest { queries });
            call.set_timeout(Duration::from_secs(10));
            match StorageServiceClient::new(channel).list_offsets(call).await {
                Ok(r) => {
                    for r in r.into_inner().results {
                        if r.error == 0 {
                            out.insert((r.topic, r.partition), r.offset);
                        }
                    }
                }
                Err(s) => {
                    tracing::debug!(%address, error = %s.message(), "log end offsets unavailable")
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_owners_spread_and_move_little() {
        let two: Vec<i32> = (0..50)
            .filter_map(|s| preferred_owner(s, [1, 2].into_iter()))
            .collect();
        let ones = two.iter().filter(|n| **n == 1).count();
        assert!(
            (10..=40).contains(&ones),
            "shards unevenly spread: {ones} of 50 on node 1"
        );
        // A third node takes shards only from the others, never swaps them.
        for s in 0..50 {
            let after = preferred_owner(s, [1, 2, 3].into_iter());
            assert!(after == Some(3) || after == Some(two[s as usize]));
        }
        assert_eq!(preferred_owner(0, std::iter::empty()), None);
    }
}
