//! The leader's side of replication: what each follower holds, the high
//! watermark that follows from it, and the in-sync replica set (ISR).
//!
//! - A follower's fetch offset is its acknowledgement: it holds every
//!   offset below it durably. The high watermark is the smallest of the
//!   leader's local end and the fetch offsets of the other ISR members, so
//!   a record below it is on every in-sync replica; `acks=all` appends
//!   wait for it.
//! - A follower is *caught up* when it fetched everything the leader had
//!   (Kafka's rule: at or past the leader's end at its previous fetch). One
//!   that has not been caught up for `replica_lag_time_max_ms` leaves the
//!   ISR; one that catches up to the high watermark joins it again. The
//!   leader writes these changes to the partition record with a
//!   compare-and-swap that only succeeds while the record still names it
//!   leader at its epoch, so a deposed leader cannot change the ISR.
//! - The controller removes dead nodes from the ISR and elects the next
//!   leader from it (`runnel-coordinator`); with unclean election off only
//!   an ISR member can lead, and it holds everything acknowledged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use runnel_cluster::{PartitionRecord, TopicState};
use runnel_metastore::CasOutcome;
use tokio::sync::watch;

use crate::log::PartitionLog;
use crate::node::StorageNode;

/// What a leader knows about its followers, per partition.
#[derive(Debug)]
pub struct Replication {
    node_id: i32,
    lag_max: Duration,
    partitions: Mutex<HashMap<(String, i32), Progress>>,
    /// ISR additions being written, so a fast-fetching follower does not
    /// start one per fetch.
    joining: Mutex<std::collections::HashSet<(String, i32, i32)>>,
    /// Bumped after every local append, to wake followers' long polls.
    appended: watch::Sender<u64>,
}

/// The followers of one partition's log during one leader epoch.
#[derive(Debug)]
struct Progress {
    epoch: i32,
    /// Which log (a topic deleted and created again is another one).
    log: usize,
    /// When this node became leader at this epoch.
    since: Instant,
    followers: HashMap<i32, Follower>,
}

#[derive(Debug, Clone, Copy)]
struct Follower {
    /// The follower's log end as of its last fetch.
    end: i64,
    caught_up_at: Instant,
    /// The leader's local end and the time at the follower's last fetch.
    last_fetch_leader_end: i64,
    last_fetch_at: Instant,
}

/// An ISR change the leader wants written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsrChange {
    Add(i32),
    Remove(i32),
}

impl IsrChange {
    /// The replica joining or leaving.
    pub fn node(self) -> i32 {
        match self {
            IsrChange::Add(n) | IsrChange::Remove(n) => n,
        }
    }
}

impl Replication {
    pub fn new(node_id: i32, lag_max: Duration) -> Self {
        Replication {
            node_id,
            lag_max,
            partitions: Mutex::new(HashMap::new()),
            joining: Mutex::new(std::collections::HashSet::new()),
            appended: watch::channel(0).0,
        }
    }

    /// Wakes followers waiting for data (call after a local append).
    pub fn notify_appended(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe_appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Records a follower's fetch at `offset` and advances the high
    /// watermark. Returns an ISR change to make: the follower joins when it
    /// has caught up to the high watermark.
    pub fn follower_fetched(
        &self,
        topic: &str,
        partition: i32,
        state: &PartitionRecord,
        replica: i32,
        offset: i64,
        log: &PartitionLog,
    ) -> Option<IsrChange> {
        let now = Instant::now();
        let leader_end = log.local_end_offset();
        {
            let mut partitions = self.partitions.lock();
            let progress = progress_for(&mut partitions, topic, partition, state.leader_epoch, log);
            let f = progress.followers.entry(replica).or_insert(Follower {
                end: offset,
                caught_up_at: progress.since,
                last_fetch_leader_end: leader_end,
                last_fetch_at: now,
            });
            if offset >= leader_end {
                f.caught_up_at = now;
            } else if offset >= f.last_fetch_leader_end {
                f.caught_up_at = f.caught_up_at.max(f.last_fetch_at);
            }
            f.end = offset;
            f.last_fetch_leader_end = leader_end;
            f.last_fetch_at = now;
        }
        self.update_high_watermark(topic, partition, state, log);
        let joins = !state.isr.contains(&replica)
            && state.replicas.contains(&replica)
            && offset >= log.high_watermark()
            && self
                .joining
                .lock()
                .insert((topic.to_string(), partition, replica));
        joins.then_some(IsrChange::Add(replica))
    }

    /// An ISR addition from [`Self::follower_fetched`] was written (or not).
    pub fn join_done(&self, topic: &str, partition: i32, replica: i32) {
        self.joining
            .lock()
            .remove(&(topic.to_string(), partition, replica));
    }

    /// Sets the high watermark to what every ISR member holds.
    pub fn update_high_watermark(
        &self,
        topic: &str,
        partition: i32,
        state: &PartitionRecord,
        log: &PartitionLog,
    ) {
        if !log.config().replicated {
            return;
        }
        let mut hw = log.local_end_offset();
        {
            let mut partitions = self.partitions.lock();
            let progress = progress_for(&mut partitions, topic, partition, state.leader_epoch, log);
            for member in state.isr.iter().filter(|&&m| m != self.node_id) {
                match progress.followers.get(member) {
                    Some(f) => hw = hw.min(f.end),
                    // Not heard from since this epoch began: it may lack
                    // anything beyond what is already committed.
                    None => return,
                }
            }
        }
        log.set_high_watermark(hw);
    }

    /// ISR members that have not been caught up for `replica_lag_time_max`.
    pub fn lagging(
        &self,
        topic: &str,
        partition: i32,
        state: &PartitionRecord,
        log: &PartitionLog,
    ) -> Vec<i32> {
        let now = Instant::now();
        let mut partitions = self.partitions.lock();
        let progress = progress_for(&mut partitions, topic, partition, state.leader_epoch, log);
        state
            .isr
            .iter()
            .copied()
            .filter(|&m| m != self.node_id)
            .filter(|m| {
                let caught_up = progress
                    .followers
                    .get(m)
                    .map_or(progress.since, |f| f.caught_up_at);
                now.duration_since(caught_up) > self.lag_max
            })
            .collect()
    }

    /// Publishes how far each follower is behind this leader, in offsets
    /// (`runnel_replica_follower_lag_offsets`) and in time since it was last
    /// caught up (`runnel_replica_follower_lag_seconds`, what
    /// `replica_lag_time_max_ms` is compared with).
    pub fn publish_follower_lag(
        &self,
        topic: &str,
        partition: i32,
        state: &PartitionRecord,
        log: &PartitionLog,
    ) {
        let now = Instant::now();
        let end = log.local_end_offset();
        let mut partitions = self.partitions.lock();
        let progress = progress_for(&mut partitions, topic, partition, state.leader_epoch, log);
        for &replica in state.replicas.iter().filter(|&&m| m != self.node_id) {
            let (offsets, since) = match progress.followers.get(&replica) {
                Some(f) => ((end - f.end).max(0), f.caught_up_at),
                None => (end, progress.since),
            };
            set_follower_lag(
                topic,
                partition,
                replica,
                offsets as f64,
                now.duration_since(since).as_secs_f64(),
            );
        }
    }

    /// Forgets partitions this node no longer leads (and zeroes the lag it
    /// reported for their followers: the new leader reports it now).
    pub fn retain(&self, mut leads: impl FnMut(&str, i32) -> bool) {
        self.partitions.lock().retain(|(t, p), progress| {
            let keep = leads(t, *p);
            if !keep {
                for &replica in progress.followers.keys() {
                    set_follower_lag(t, *p, replica, 0.0, 0.0);
                }
            }
            keep
        });
    }
}

fn set_follower_lag(topic: &str, partition: i32, follower: i32, offsets: f64, seconds: f64) {
    let labels = [
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
        ("follower", follower.to_string()),
    ];
    metrics::gauge!("runnel_replica_follower_lag_offsets", &labels).set(offsets);
    metrics::gauge!("runnel_replica_follower_lag_seconds", &labels).set(seconds);
}

/// The progress of a partition's followers at this epoch of this log,
/// started afresh when either changed.
fn progress_for<'a>(
    partitions: &'a mut HashMap<(String, i32), Progress>,
    topic: &str,
    partition: i32,
    epoch: i32,
    log: &PartitionLog,
) -> &'a mut Progress {
    let fresh = || Progress {
        epoch,
        log: log.identity(),
        since: Instant::now(),
        followers: HashMap::new(),
    };
    let progress = partitions
        .entry((topic.to_string(), partition))
        .or_insert_with(fresh);
    if progress.epoch != epoch || progress.log != log.identity() {
        *progress = fresh();
    }
    progress
}

impl StorageNode {
    /// Writes an ISR change to the partition record, only while the record
    /// still names this node leader at `epoch`. Returns whether it was
    /// written.
    pub async fn alter_isr(
        &self,
        topic: &str,
        partition: i32,
        epoch: i32,
        change: IsrChange,
    ) -> bool {
        let key = self.keys.partition(topic, partition);
        for _ in 0..3 {
            let Ok(Some(kv)) = self.store.get(&key).await else {
                return false;
            };
            let Ok(mut record) = serde_json::from_slice::<PartitionRecord>(&kv.value) else {
                return false;
            };
            if record.leader != self.node_id || record.leader_epoch != epoch {
                return false;
            }
            match change {
                IsrChange::Add(n) if !record.isr.contains(&n) && record.replicas.contains(&n) => {
                    record.isr.push(n);
                }
                IsrChange::Remove(n) if record.isr.contains(&n) && n != self.node_id => {
                    record.isr.retain(|&m| m != n);
                }
                _ => return false,
            }
            let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
            match self
                .store
                .compare_and_swap(&key, kv.mod_revision, value, None)
                .await
            {
                Ok(CasOutcome::Swapped(_)) => {
                    let (what, counter) = match change {
                        IsrChange::Add(_) => ("expanded", "runnel_isr_expands_total"),
                        IsrChange::Remove(_) => ("shrank", "runnel_isr_shrinks_total"),
                    };
                    tracing::info!(%topic, partition, epoch, isr = ?record.isr, ?change, "ISR {what}");
                    metrics::counter!(counter).increment(1);
                    return true;
                }
                Ok(CasOutcome::Conflict(_)) => continue,
                Err(e) => {
                    tracing::warn!(%topic, partition, error = %e, "ISR change not written");
                    return false;
                }
            }
        }
        false
    }

    /// Every 200 ms: recomputes the high watermark of the partitions this
    /// node leads (the ISR may have changed under them), shrinks the ISR of
    /// lagging followers, and publishes the under-replicated count.
    pub async fn isr_loop(self: std::sync::Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let md = self.watcher.current();
            let mut under_replicated = 0u64;
            let mut shrinks = Vec::new();
            for (name, topic) in &md.topics {
                for (&p, state) in &topic.partitions {
                    if state.leader != self.node_id {
                        continue;
                    }
                    if state.isr.len() < state.replicas.len() {
                        under_replicated += 1;
                    }
                    let Some(log) = self.logs.get(name, p) else {
                        continue;
                    };
                    self.replication.update_high_watermark(name, p, state, &log);
                    self.replication.publish_follower_lag(name, p, state, &log);
                    for lagging in self.replication.lagging(name, p, state, &log) {
                        shrinks.push((name.clone(), p, state.leader_epoch, lagging));
                    }
                }
            }
            self.replication
                .retain(|t, p| md.partition(t, p).is_some_and(|s| s.leader == self.node_id));
            metrics::gauge!("runnel_under_replicated_partitions").set(under_replicated as f64);
            for (topic, p, epoch, lagging) in shrinks {
                tracing::warn!(%topic, partition = p, follower = lagging, "follower out of sync; removing it from the ISR");
                self.alter_isr(&topic, p, epoch, IsrChange::Remove(lagging))
                    .await;
            }
        }
    }
}

/// Whether a topic's partition is replicated (more than one replica).
pub fn is_replicated(topic: &TopicState, partition: i32) -> bool {
    topic
        .partitions
        .get(&partition)
        .is_some_and(|p| p.replicas.len() > 1)
}
