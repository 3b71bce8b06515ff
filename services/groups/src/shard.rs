//! One shard of the consumer groups (partition `k` of `__consumer_offsets`)
//! as served by its owner: the groups' membership in memory, their committed
//! offsets, and a writer that stores changes in order.
//!
//! The writer is one task per shard. Callers queue their changes while they
//! hold the shard lock, so the log order is the order the checks were made;
//! the writer sends everything queued as one `acks=all` append (group
//! commit), applies it to the in-memory offsets in that same order, then
//! answers. Memory therefore never shows an offset the log does not hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use runnel_proto::groups::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::consumer_group::{ConsumerGroup, ConsumerSettings};
use crate::group::{Group, Limits, Reply, State, SyncReply, code};
use crate::journal::{Change, Journal, JournalError, Stored};

pub type Offsets = BTreeMap<(String, i32), pb::OffsetValue>;

/// What a shard holds in memory.
#[derive(Debug, Default)]
pub struct ShardState {
    /// Classic-protocol groups (and groups that only have offsets).
    pub groups: HashMap<String, Group>,
    /// KIP-848 consumer groups.
    pub consumer_groups: HashMap<String, ConsumerGroup>,
    pub offsets: HashMap<String, Offsets>,
}

struct WriteItem {
    changes: Vec<Change>,
    done: oneshot::Sender<Result<(), JournalError>>,
}

#[derive(Debug)]
pub struct Shard {
    pub id: i32,
    state: Arc<Mutex<ShardState>>,
    writer: mpsc::UnboundedSender<WriteItem>,
    limits: Limits,
    consumer: ConsumerSettings,
    offset_metadata_max_bytes: usize,
}

impl std::fmt::Debug for WriteItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteItem({} changes)", self.changes.len())
    }
}

/// The longest a join may wait beyond the member's rebalance timeout.
const JOIN_SLACK: Duration = Duration::from_secs(5);

impl Shard {
    /// A shard serving what `stored` holds; its writer runs until the shard
    /// is dropped.
    pub fn start(
        id: i32,
        stored: Stored,
        journal: Journal,
        limits: Limits,
        consumer: ConsumerSettings,
        offset_metadata_max_bytes: usize,
    ) -> Arc<Shard> {
        let now = Instant::now();
        let mut state = ShardState {
            offsets: stored.offsets,
            ..Default::default()
        };
        for (group, value) in stored.consumer_groups {
            state
                .consumer_groups
                .insert(group.clone(), ConsumerGroup::restore(&group, value, now));
        }
        for (group, value) in stored.groups {
            state.groups.insert(
                group.clone(),
                Group::restore(&group, value, limits.initial_rebalance_delay, now),
            );
        }
        // Groups that only have offsets exist too, as empty groups.
        let only_offsets: Vec<String> = state
            .offsets
            .keys()
            .filter(|g| !state.groups.contains_key(*g) && !state.consumer_groups.contains_key(*g))
            .cloned()
            .collect();
        for g in only_offsets {
            state
                .groups
                .insert(g.clone(), Group::new(&g, limits.initial_rebalance_delay));
        }
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(id, journal, state.clone(), rx));
        Arc::new(Shard {
            id,
            state,
            writer: tx,
            limits,
            consumer,
            offset_metadata_max_bytes,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, ShardState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues changes for the writer; the receiver answers once stored.
    fn write(&self, changes: Vec<Change>) -> oneshot::Receiver<Result<(), JournalError>> {
        let (done, rx) = oneshot::channel();
        if let Err(e) = self.writer.send(WriteItem { changes, done }) {
            let _ = e.0.done.send(Err(JournalError {
                code: code::NOT_COORDINATOR,
                message: "the shard is closing".into(),
            }));
        }
        rx
    }

    /// Queues the snapshot of every group whose membership changed, without
    /// waiting (the writer keeps them in order).
    fn persist_dirty(&self, state: &mut ShardState) {
        let mut changes = Vec::new();
        for g in state.groups.values_mut() {
            if g.dirty {
                g.dirty = false;
                changes.push(Change::Group {
                    group: g.id.clone(),
                    value: Some(g.snapshot()),
                });
            }
        }
        for g in state.consumer_groups.values_mut() {
            if g.dirty {
                g.dirty = false;
                changes.push(Change::ConsumerGroup {
                    group: g.id.clone(),
                    value: Some(g.snapshot()),
                });
            }
        }
        if !changes.is_empty() {
            let rx = self.write(changes);
            let shard = self.id;
            tokio::spawn(async move {
                if let Ok(Err(e)) = rx.await {
                    tracing::warn!(shard, error = %e, "storing group membership failed");
                }
            });
        }
    }

    pub async fn join(&self, req: pb::JoinGroupRequest) -> pb::JoinGroupResponse {
        let wait = req.rebalance_timeout_ms.max(req.session_timeout_ms).max(0) as u64;
        let member_id = req.member_id.clone();
        let reply = {
            let mut state = self.lock();
            if let Some(cg) = state.consumer_groups.get(&req.group_id) {
                if !cg.members.is_empty() {
                    return join_error(&member_id, code::INCONSISTENT_GROUP_PROTOCOL);
                }
                // An empty KIP-848 group may be taken over by the classic
                // protocol (its offsets stay).
                state.consumer_groups.remove(&req.group_id);
            }
            if !state.groups.contains_key(&req.group_id) && !req.member_id.is_empty() {
                return join_error(&member_id, code::UNKNOWN_MEMBER_ID);
            }
            let group = state
                .groups
                .entry(req.group_id.clone())
                .or_insert_with(|| Group::new(&req.group_id, self.limits.initial_rebalance_delay));
            let reply = group.join(req, &self.limits, Instant::now());
            self.persist_dirty(&mut state);
            reply
        };
        match reply {
            Reply::Now(r) => r,
            Reply::Wait(rx) => {
                match tokio::time::timeout(Duration::from_millis(wait) + JOIN_SLACK, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => join_error(&member_id, code::NOT_COORDINATOR),
                    Err(_) => join_error(&member_id, code::REBALANCE_IN_PROGRESS),
                }
            }
        }
    }

    pub async fn sync(
        &self,
        req: pb::SyncGroupRequest,
        timeout: Duration,
    ) -> pb::SyncGroupResponse {
        let group_id = req.group_id.clone();
        let reply = {
            let mut state = self.lock();
            let Some(group) = state.groups.get_mut(&req.group_id) else {
                return sync_error(code::UNKNOWN_MEMBER_ID);
            };
            let reply = group.sync(req);
            self.persist_dirty(&mut state);
            reply
        };
        let wait = match reply {
            SyncReply::Now(r) => return r,
            SyncReply::Wait(rx) => rx,
            SyncReply::Persist {
                generation,
                snapshot,
                wait,
            } => {
                let stored = self.write(vec![Change::Group {
                    group: group_id.clone(),
                    value: Some(snapshot),
                }]);
                let result = match stored.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        tracing::warn!(group = %group_id, error = %e, "storing the assignment failed");
                        Err(e.code)
                    }
                    Err(_) => Err(code::NOT_COORDINATOR),
                };
                let mut state = self.lock();
                if let Some(group) = state.groups.get_mut(&group_id) {
                    group.finish_sync(generation, result, Instant::now());
                }
                self.persist_dirty(&mut state);
                wait
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => sync_error(code::NOT_COORDINATOR),
            Err(_) => sync_error(code::REBALANCE_IN_PROGRESS),
        }
    }

    /// Handles a KIP-848 ConsumerGroupHeartbeat.
    pub fn consumer_heartbeat(
        &self,
        req: &pb::ConsumerGroupHeartbeatRequest,
        topics: &crate::consumer_group::Topics,
    ) -> pb::ConsumerGroupHeartbeatResponse {
        let fail = |c: i32, m: &str| pb::ConsumerGroupHeartbeatResponse {
            error_code: c,
            error_message: m.into(),
            member_id: req.member_id.clone(),
            member_epoch: -1,
            ..Default::default()
        };
        let mut state = self.lock();
        if let Some(g) = state.groups.get(&req.group_id) {
            if g.state != State::Empty {
                return fail(
                    code::INCONSISTENT_GROUP_PROTOCOL,
                    "the group uses the classic protocol",
                );
            }
            // An empty classic group (perhaps only offsets) moves to the new
            // protocol; its offsets stay.
            state.groups.remove(&req.group_id);
        }
        if !state.consumer_groups.contains_key(&req.group_id) {
            if req.member_epoch != 0 {
                return fail(code::UNKNOWN_MEMBER_ID, "unknown group");
            }
            state
                .consumer_groups
                .insert(req.group_id.clone(), ConsumerGroup::new(&req.group_id));
        }
        let Some(group) = state.consumer_groups.get_mut(&req.group_id) else {
            return fail(code::UNKNOWN_MEMBER_ID, "unknown group");
        };
        let resp = group.heartbeat(req, &self.consumer, topics, Instant::now());
        self.persist_dirty(&mut state);
        resp
    }

    pub fn heartbeat(&self, req: &pb::HeartbeatRequest) -> i32 {
        let mut state = self.lock();
        let Some(group) = state.groups.get_mut(&req.group_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let code = group.heartbeat(req, Instant::now());
        self.persist_dirty(&mut state);
        code
    }

    pub fn leave(&self, req: &pb::LeaveGroupRequest) -> pb::LeaveGroupResponse {
        let mut state = self.lock();
        let Some(group) = state.groups.get_mut(&req.group_id) else {
            return pb::LeaveGroupResponse {
                error_code: code::UNKNOWN_MEMBER_ID,
                error_message: "unknown group".into(),
                members: Vec::new(),
            };
        };
        let members = group.leave(&req.members, Instant::now());
        self.persist_dirty(&mut state);
        pb::LeaveGroupResponse {
            error_code: code::NONE,
            error_message: String::new(),
            members,
        }
    }

    /// Handles OffsetCommit: checks the member, then stores the offsets.
    /// `known_partition` says whether a topic-partition exists.
    pub async fn commit(
        &self,
        req: pb::OffsetCommitRequest,
        known_partition: impl Fn(&str, i32) -> bool,
    ) -> pb::OffsetCommitResponse {
        let result = |o: &pb::PartitionOffset, code: i32| pb::PartitionResult {
            topic: o.topic.clone(),
            partition: o.partition,
            error_code: code,
        };
        let all = |code: i32, message: &str| pb::OffsetCommitResponse {
            error_code: code,
            error_message: message.into(),
            partitions: req.offsets.iter().map(|o| result(o, code)).collect(),
        };
        let now_ms = runnel_cluster::now_ms();
        let (stored, mut partitions) = {
            let mut state = self.lock();
            if let Some(cg) = state.consumer_groups.get(&req.group_id) {
                if let Err(code) = cg.check_commit(&req.member_id, req.generation_id) {
                    return all(code, "");
                }
            } else {
                match state.groups.get(&req.group_id) {
                    Some(g) => {
                        if let Err(code) = g.check_commit(
                            &req.member_id,
                            req.group_instance_id.as_deref(),
                            req.generation_id,
                        ) {
                            return all(code, "");
                        }
                    }
                    None if req.generation_id < 0 && req.member_id.is_empty() => {
                        state.groups.insert(
                            req.group_id.clone(),
                            Group::new(&req.group_id, self.limits.initial_rebalance_delay),
                        );
                    }
                    None if req.generation_id < 0 => {
                        return all(code::UNKNOWN_MEMBER_ID, "unknown group");
                    }
                    None => return all(code::ILLEGAL_GENERATION, "unknown group"),
                }
            }
            let mut changes = Vec::new();
            let mut partitions = Vec::with_capacity(req.offsets.len());
            for o in &req.offsets {
                let code = if o
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > self.offset_metadata_max_bytes)
                {
                    code::OFFSET_METADATA_TOO_LARGE
                } else if !known_partition(&o.topic, o.partition) {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    changes.push(Change::Offset {
                        group: req.group_id.clone(),
                        topic: o.topic.clone(),
                        partition: o.partition,
                        value: Some(pb::OffsetValue {
                            offset: o.offset,
                            leader_epoch: o.leader_epoch,
                            metadata: o.metadata.clone().unwrap_or_default(),
                            commit_timestamp_ms: now_ms,
                        }),
                    });
                    code::NONE
                };
                partitions.push(result(o, code));
            }
            if changes.is_empty() {
                return pb::OffsetCommitResponse {
                    error_code: code::NONE,
                    error_message: String::new(),
                    partitions,
                };
            }
            (self.write(changes), partitions)
        };
        let failed = match stored.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(JournalError {
                code: code::NOT_COORDINATOR,
                message: "the shard closed".into(),
            }),
        };
        if let Some(e) = failed {
            tracing::warn!(group = %req.group_id, error = %e, "offset commit not stored");
            for p in partitions.iter_mut().filter(|p| p.error_code == code::NONE) {
                p.error_code = e.code;
            }
        } else {
            metrics::counter!("runnel_groups_offset_commits_total")
                .increment(partitions.len() as u64);
        }
        pb::OffsetCommitResponse {
            error_code: code::NONE,
            error_message: String::new(),
            partitions,
        }
    }

    pub fn fetch_offsets(&self, req: &pb::OffsetFetchRequest) -> pb::OffsetFetchResponse {
        let state = self.lock();
        let empty = Offsets::new();
        let offsets = state.offsets.get(&req.group_id).unwrap_or(&empty);
        let found =
            |topic: &str, partition: i32, v: Option<&pb::OffsetValue>| pb::CommittedOffset {
                topic: topic.into(),
                partition,
                offset: v.map_or(-1, |v| v.offset),
                leader_epoch: v.map_or(-1, |v| v.leader_epoch),
                metadata: v.map(|v| v.metadata.clone()).unwrap_or_default(),
                commit_timestamp_ms: v.map_or(-1, |v| v.commit_timestamp_ms),
                error_code: code::NONE,
                log_end_offset: -1,
            };
        let list = if req.all_topics || req.topics.is_empty() {
            offsets
                .iter()
                .map(|((t, p), v)| found(t, *p, Some(v)))
                .collect()
        } else {
            req.topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| found(&t.topic, *p, offsets.get(&(t.topic.clone(), *p))))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        pb::OffsetFetchResponse {
            error_code: code::NONE,
            error_message: String::new(),
            offsets: list,
        }
    }

    pub fn list(&self, states: &[String], types: &[String]) -> Vec<pb::ListedGroup> {
        let state = self.lock();
        let wanted = |filter: &[String], s: &str| {
            filter.is_empty() || filter.iter().any(|w| w.eq_ignore_ascii_case(s))
        };
        let classic = state.groups.values().map(|g| pb::ListedGroup {
            group_id: g.id.clone(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            state: g.state.name().into(),
            group_type: "classic".into(),
        });
        let consumer = state.consumer_groups.values().map(|g| pb::ListedGroup {
            group_id: g.id.clone(),
            protocol_type: "consumer".into(),
            state: g.state().into(),
            group_type: "consumer".into(),
        });
        classic
            .chain(consumer)
            .filter(|g| wanted(states, &g.state) && wanted(types, &g.group_type))
            .collect()
    }

    pub fn describe(&self, group_id: &str) -> pb::DescribedGroup {
        let state = self.lock();
        if let Some(cg) = state.consumer_groups.get(group_id) {
            return cg.describe();
        }
        match state.groups.get(group_id) {
            Some(g) => g.describe(),
            None => pb::DescribedGroup {
                error_code: code::NONE,
                group_id: group_id.into(),
                state: "Dead".into(),
                ..Default::default()
            },
        }
    }

    /// Deletes an empty group and its offsets.
    pub async fn delete(&self, group_id: &str) -> i32 {
        let stored = {
            let state = self.lock();
            let empty = match (
                state.groups.get(group_id),
                state.consumer_groups.get(group_id),
            ) {
                (Some(g), _) => g.state == State::Empty,
                (None, Some(cg)) => cg.members.is_empty(),
                (None, None) => return code::GROUP_ID_NOT_FOUND,
            };
            if !empty {
                return code::NON_EMPTY_GROUP;
            }
            let mut changes: Vec<Change> = state
                .offsets
                .get(group_id)
                .into_iter()
                .flat_map(|o| o.keys())
                .map(|(topic, partition)| Change::Offset {
                    group: group_id.into(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                })
                .collect();
            changes.push(Change::Group {
                group: group_id.into(),
                value: None,
            });
            if state.consumer_groups.contains_key(group_id) {
                changes.push(Change::ConsumerGroup {
                    group: group_id.into(),
                    value: None,
                });
            }
            self.write(changes)
        };
        match stored.await {
            Ok(Ok(())) => code::NONE,
            Ok(Err(e)) => e.code,
            Err(_) => code::NOT_COORDINATOR,
        }
    }

    /// Deletes committed offsets of a group, except for topics its active
    /// members are subscribed to.
    pub async fn delete_offsets(&self, req: &pb::OffsetDeleteRequest) -> pb::OffsetDeleteResponse {
        let mut partitions = Vec::new();
        let stored = {
            let state = self.lock();
            let subscribed = match (
                state.groups.get(&req.group_id),
                state.consumer_groups.get(&req.group_id),
            ) {
                (Some(g), _) => crate::consumer_protocol::subscribed_topics(g),
                (None, Some(cg)) => cg.subscribed_topics(),
                (None, None) => {
                    return pb::OffsetDeleteResponse {
                        error_code: code::GROUP_ID_NOT_FOUND,
                        error_message: String::new(),
                        partitions,
                    };
                }
            };
            let mut changes = Vec::new();
            for t in &req.topics {
                let code = if subscribed.contains(&t.topic) {
                    code::GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    code::NONE
                };
                for p in &t.partitions {
                    let has = state
                        .offsets
                        .get(&req.group_id)
                        .is_some_and(|o| o.contains_key(&(t.topic.clone(), *p)));
                    if code == code::NONE && has {
                        changes.push(Change::Offset {
                            group: req.group_id.clone(),
                            topic: t.topic.clone(),
                            partition: *p,
                            value: None,
                        });
                    }
                    partitions.push(pb::PartitionResult {
                        topic: t.topic.clone(),
                        partition: *p,
                        error_code: code,
                    });
                }
            }
            (!changes.is_empty()).then(|| self.write(changes))
        };
        let mut error_code = code::NONE;
        if let Some(stored) = stored {
            match stored.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error_code = e.code,
                Err(_) => error_code = code::NOT_COORDINATOR,
            }
        }
        pb::OffsetDeleteResponse {
            error_code,
            error_message: String::new(),
            partitions,
        }
    }

    /// Drives the groups' timers, and deletes the offsets of groups that
    /// have been empty longer than `retention`.
    pub fn tick(&self, retention: Option<Duration>) {
        let now = Instant::now();
        let mut state = self.lock();
        for g in state.groups.values_mut() {
            g.tick(now);
        }
        for g in state.consumer_groups.values_mut() {
            g.tick(&self.consumer, now);
        }
        if let Some(retention) = retention {
            let cutoff = runnel_cluster::now_ms() - retention.as_millis() as i64;
            let idle: Vec<String> = state
                .consumer_groups
                .values()
                .filter(|g| g.members.is_empty() && g.state_since_ms < cutoff)
                .map(|g| g.id.clone())
                .collect();
            for id in idle {
                // Its offsets expire below like an empty classic group's.
                state.consumer_groups.remove(&id);
                drop(self.write(vec![Change::ConsumerGroup {
                    group: id.clone(),
                    value: None,
                }]));
                state
                    .groups
                    .entry(id.clone())
                    .or_insert_with(|| Group::new(&id, self.limits.initial_rebalance_delay));
            }
            let cutoff = runnel_cluster::now_ms() - retention.as_millis() as i64;
            let expired: Vec<String> = state
                .groups
                .values()
                .filter(|g| g.state == State::Empty && g.state_since_ms < cutoff)
                .filter(|g| {
                    state
                        .offsets
                        .get(&g.id)
                        .is_none_or(|o| o.values().all(|v| v.commit_timestamp_ms < cutoff))
                })
                .map(|g| g.id.clone())
                .collect();
            for id in expired {
                tracing::info!(shard = self.id, group = %id, "group empty past offsets retention; deleting its offsets");
                let mut changes: Vec<Change> = state
                    .offsets
                    .get(&id)
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .map(|(topic, partition)| Change::Offset {
                        group: id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: None,
                    })
                    .collect();
                changes.push(Change::Group {
                    group: id.clone(),
                    value: None,
                });
                // Gone from memory now so it is not expired twice; the
                // tombstones follow in order.
                state.groups.remove(&id);
                drop(self.write(changes));
            }
        }
        self.persist_dirty(&mut state);
    }

    /// Ends every wait: this node no longer owns the shard.
    pub fn abandon(&self) {
        let mut state = self.lock();
        for g in state.groups.values_mut() {
            g.abandon(code::NOT_COORDINATOR);
        }
    }

    /// Committed offsets of every group, for lag.
    pub fn committed(&self) -> Vec<(String, String, i32, i64)> {
        let state = self.lock();
        state
            .offsets
            .iter()
            .flat_map(|(g, o)| {
                o.iter()
                    .map(move |((t, p), v)| (g.clone(), t.clone(), *p, v.offset))
            })
            .collect()
    }
}

async fn write_loop(
    shard: i32,
    journal: Journal,
    state: Arc<Mutex<ShardState>>,
    mut rx: mpsc::UnboundedReceiver<WriteItem>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let changes: Vec<Change> = batch
            .iter()
            .flat_map(|w| w.changes.iter().cloned())
            .collect();
        let result = journal.append(shard, &changes).await;
        if result.is_ok() {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            for change in changes {
                apply(&mut state, change);
            }
        }
        for item in batch.drain(..) {
            let _ = item.done.send(result.clone());
        }
    }
}

/// Applies a stored change to memory (membership lives in the groups
/// themselves; only a deleted group is removed here).
fn apply(state: &mut ShardState, change: Change) {
    match change {
        Change::Offset {
            group,
            topic,
            partition,
            value,
        } => crate::journal::apply_offset(&mut state.offsets, group, topic, partition, value),
        Change::Group { group, value: None } => {
            if state
                .groups
                .get(&group)
                .is_some_and(|g| g.state == State::Empty)
            {
                state.groups.remove(&group);
            }
            state.offsets.remove(&group);
        }
        Change::Group { value: Some(_), .. } => {}
        Change::ConsumerGroup { group, value: None } => {
            if state
                .consumer_groups
                .get(&group)
                .is_some_and(|g| g.members.is_empty())
            {
                state.consumer_groups.remove(&group);
            }
        }
        Change::ConsumerGroup { value: Some(_), .. } => {}
    }
}

fn join_error(member_id: &str, error: i32) -> pb::JoinGroupResponse {
    pb::JoinGroupResponse {
        error_code: error,
        generation_id: -1,
        member_id: member_id.into(),
        ..Default::default()
    }
}

fn sync_error(error: i32) -> pb::SyncGroupResponse {
    pb::SyncGroupResponse {
        error_code: error,
        ..Default::default()
    }
}
