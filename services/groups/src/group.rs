//! One consumer group's membership: Kafka's classic group protocol as a
//! state machine, without I/O.
//!
//! ```text
//!   Empty ──join──▶ PreparingRebalance ──all joined / timeout──▶ CompletingRebalance
//!     ▲                  ▲        ▲                                   │ leader's sync
//!     │ last member      │ member │ join/leave/expiry                 ▼
//!     └──── leaves ──────┴────────┴─────────────────────────────── Stable
//! ```
//!
//! Joins and syncs that must wait for the rest of the group get a oneshot
//! receiver; the group answers every waiter exactly once (with the result, or
//! with the error that ends the wait). Time is passed in (`now`) so timeouts
//! are driven by the shard's ticker and unit tests alike.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::groups::v1 as pb;
use tokio::sync::oneshot;

/// Kafka error codes the group protocol answers with.
pub mod code {
    pub const NONE: i32 = 0;
    pub const UNKNOWN_SERVER_ERROR: i32 = -1;
    pub const OFFSET_METADATA_TOO_LARGE: i32 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i32 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i32 = 15;
    pub const NOT_COORDINATOR: i32 = 16;
    pub const REQUEST_TIMED_OUT: i32 = 7;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i32 = 3;
    pub const ILLEGAL_GENERATION: i32 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i32 = 23;
    pub const INVALID_GROUP_ID: i32 = 24;
    pub const UNKNOWN_MEMBER_ID: i32 = 25;
    pub const INVALID_SESSION_TIMEOUT: i32 = 26;
    pub const REBALANCE_IN_PROGRESS: i32 = 27;
    pub const INVALID_COMMIT_OFFSET_SIZE: i32 = 28;
    pub const NON_EMPTY_GROUP: i32 = 68;
    pub const GROUP_ID_NOT_FOUND: i32 = 69;
    pub const MEMBER_ID_REQUIRED: i32 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i32 = 81;
    pub const FENCED_INSTANCE_ID: i32 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i32 = 86;
}

/// Where a group is in the rebalance cycle (Kafka's names, which clients
/// and tools show).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// Settings that bound what members may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub max_group_size: usize,
}

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// The member's protocols in its order of preference.
    pub protocols: Vec<pb::Protocol>,
    pub assignment: Bytes,
    last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<pb::JoinGroupResponse>>,
    sync_waiter: Option<oneshot::Sender<pb::SyncGroupResponse>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    /// A member waiting on a join or sync is alive by definition; otherwise
    /// it must have heartbeated within its session timeout.
    fn expired(&self, now: Instant) -> bool {
        self.join_waiter.is_none()
            && self.sync_waiter.is_none()
            && now.duration_since(self.last_heartbeat) > self.session_timeout
    }
}

/// What a join or sync call gets: an answer now, or one to wait for.
#[derive(Debug)]
pub enum Reply<T> {
    Now(T),
    Wait(oneshot::Receiver<T>),
}

/// A sync from the leader: the assignment must be stored before anyone
/// gets it, so the caller persists `snapshot` and then calls
/// [`Group::finish_sync`].
#[derive(Debug)]
pub enum SyncReply {
    Now(pb::SyncGroupResponse),
    Wait(oneshot::Receiver<pb::SyncGroupResponse>),
    Persist {
        generation: i32,
        snapshot: pb::GroupValue,
        wait: oneshot::Receiver<pb::SyncGroupResponse>,
    },
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// `group.instance.id` → member id of the static members.
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they join again.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// The initial rebalance delay of a group that was empty.
    delay_until: Option<Instant>,
    sync_deadline: Option<Instant>,
    /// Wall-clock ms of the last state change (offsets of an empty group
    /// expire relative to it).
    pub state_since_ms: i64,
    /// The membership changed in a way the stored snapshot should follow.
    pub dirty: bool,
    initial_delay: Duration,
}

fn error_join(member_id: &str, error: i32, message: &str) -> pb::JoinGroupResponse {
    pb::JoinGroupResponse {
        error_code: error,
        error_message: message.into(),
        generation_id: -1,
        member_id: member_id.into(),
        ..Default::default()
    }
}

fn error_sync(error: i32) -> pb::SyncGroupResponse {
    pb::SyncGroupResponse {
        error_code: error,
        ..Default::default()
    }
}

fn new_member_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl Group {
    pub fn new(id: &str, initial_delay: Duration) -> Self {
        Group {
            initial_delay,
            id: id.into(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            delay_until: None,
            sync_deadline: None,
            state_since_ms: runnel_cluster::now_ms(),
            dirty: false,
        }
    }

    fn set_state(&mut self, state: State) {
        if self.state != state {
            tracing::debug!(group = %self.id, from = self.state.name(), to = state.name(), generation = self.generation, "group state");
            self.state = state;
            self.state_since_ms = runnel_cluster::now_ms();
        }
    }

    /// Kafka's rule: a new member must speak the group's protocol type and
    /// share at least one protocol with every current member.
    fn supports(&self, protocol_type: &str, protocols: &[pb::Protocol]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|p| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|q| q.name == p.name))
        })
    }

    /// Handles JoinGroup.
    pub fn join(
        &mut self,
        req: pb::JoinGroupRequest,
        limits: &Limits,
        now: Instant,
    ) -> Reply<pb::JoinGroupResponse> {
        let reject =
            |code: i32, message: &str| Reply::Now(error_join(&req.member_id, code, message));
        if req.session_timeout_ms < limits.min_session_timeout_ms
            || req.session_timeout_ms > limits.max_session_timeout_ms
        {
            return reject(
                code::INVALID_SESSION_TIMEOUT,
                &format!(
                    "session timeout {} ms is outside [{}, {}]",
                    req.session_timeout_ms,
                    limits.min_session_timeout_ms,
                    limits.max_session_timeout_ms
                ),
            );
        }
        if !self.supports(&req.protocol_type, &req.protocols) {
            return reject(
                code::INCONSISTENT_GROUP_PROTOCOL,
                "the member's protocols are not compatible with the group's",
            );
        }
        if req.member_id.is_empty() {
            if let Some(instance) = &req.group_instance_id
                && let Some(old) = self.static_members.get(instance).cloned()
            {
                return self.replace_static(&old, req, now);
            }
            if self.members.len() + self.pending.len() >= limits.max_group_size {
                return reject(code::GROUP_MAX_SIZE_REACHED, "the group is full");
            }
            let prefix = req.group_instance_id.as_deref().unwrap_or(&req.client_id);
            let id = new_member_id(if prefix.is_empty() { "member" } else { prefix });
            if req.group_instance_id.is_none() && req.require_known_member_id {
                // KIP-394: the member joins again with this id, so a client
                // that times out before the answer does not leave a ghost.
                self.pending.insert(
                    id.clone(),
                    now + Duration::from_millis(req.session_timeout_ms as u64),
                );
                return Reply::Now(error_join(&id, code::MEMBER_ID_REQUIRED, ""));
            }
            return self.add_member(id, req, now);
        }
        if self.pending.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            return self.add_member(id, req, now);
        }
        if let Some(instance) = &req.group_instance_id {
            match self.static_members.get(instance) {
                Some(id) if *id != req.member_id => {
                    return reject(
                        code::FENCED_INSTANCE_ID,
                        "another member now has this group.instance.id",
                    );
                }
                None => return reject(code::UNKNOWN_MEMBER_ID, "unknown static member"),
                _ => {}
            }
        }
        let Some(member) = self.members.get_mut(&req.member_id) else {
            return reject(code::UNKNOWN_MEMBER_ID, "unknown member id");
        };
        let changed = member.protocols != req.protocols;
        member.protocols = req.protocols.clone();
        member.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        member.rebalance_timeout = rebalance_timeout(&req);
        member.last_heartbeat = now;
        let is_leader = self.leader.as_deref() == Some(req.member_id.as_str());
        match self.state {
            State::PreparingRebalance => {}
            State::CompletingRebalance if !changed => {
                // The answer to its earlier join got lost: send it again.
                return Reply::Now(self.join_response(&req.member_id));
            }
            State::Stable if !changed && !is_leader => {
                return Reply::Now(self.join_response(&req.member_id));
            }
            State::CompletingRebalance | State::Stable => {
                self.prepare_rebalance(now, "member rejoined")
            }
            State::Empty => return reject(code::UNKNOWN_MEMBER_ID, "unknown member id"),
        }
        let rx = self.wait_join(&req.member_id);
        self.try_complete_join(now);
        rx
    }

    fn wait_join(&mut self, member_id: &str) -> Reply<pb::JoinGroupResponse> {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(member_id)
            && let Some(old) = m.join_waiter.replace(tx)
        {
            let _ = old.send(error_join(
                member_id,
                code::UNKNOWN_MEMBER_ID,
                "superseded by a newer join",
            ));
        }
        Reply::Wait(rx)
    }

    fn add_member(
        &mut self,
        id: String,
        req: pb::JoinGroupRequest,
        now: Instant,
    ) -> Reply<pb::JoinGroupResponse> {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(instance) = &req.group_instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        tracing::info!(group = %self.id, member = %id, client_id = %req.client_id, reason = %req.reason, "member joins");
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: req.group_instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: Duration::from_millis(req.session_timeout_ms as u64),
                rebalance_timeout: rebalance_timeout(&req),
                protocols: req.protocols,
                assignment: Bytes::new(),
                last_heartbeat: now,
                join_waiter: None,
                sync_waiter: None,
            },
        );
        match self.state {
            State::PreparingRebalance => {
                // More members arriving during the initial delay extend it,
                // up to the rebalance timeout.
                if let (Some(until), Some(deadline)) = (self.delay_until, self.rebalance_deadline)
                    && now < until
                {
                    self.delay_until = Some((now + self.initial_delay).min(deadline));
                }
            }
            _ => self.prepare_rebalance(now, "new member"),
        }
        let rx = self.wait_join(&id);
        self.try_complete_join(now);
        rx
    }

    /// A static member came back (with a new member id): it takes over the
    /// old member's place and, if nothing changed, its assignment, without a
    /// rebalance (KIP-345).
    fn replace_static(
        &mut self,
        old_id: &str,
        req: pb::JoinGroupRequest,
        now: Instant,
    ) -> Reply<pb::JoinGroupResponse> {
        let Some(mut member) = self.members.remove(old_id) else {
            return Reply::Now(error_join(
                "",
                code::UNKNOWN_MEMBER_ID,
                "static member vanished",
            ));
        };
        let instance = req.group_instance_id.clone().unwrap_or_default();
        let new_id = new_member_id(&instance);
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(error_join(
                old_id,
                code::FENCED_INSTANCE_ID,
                "a newer instance joined",
            ));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(error_sync(code::FENCED_INSTANCE_ID));
        }
        member.id = new_id.clone();
        member.protocols = req.protocols.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        member.rebalance_timeout = rebalance_timeout(&req);
        member.last_heartbeat = now;
        self.members.insert(new_id.clone(), member);
        self.static_members.insert(instance.clone(), new_id.clone());
        let was_leader = self.leader.as_deref() == Some(old_id);
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        tracing::info!(group = %self.id, instance = %instance, old = %old_id, new = %new_id, "static member rejoins");
        self.dirty = true;
        // Kafka's rule: a returning static member triggers no rebalance
        // unless the group's protocol would change (its subscription bytes
        // may differ, e.g. a fresh client owns no partitions yet).
        let protocol_kept = self.select_protocol() == self.protocol;
        match self.state {
            State::Stable if protocol_kept => {
                let mut resp = self.join_response(&new_id);
                // KIP-814: a returning leader learns the members but keeps
                // the current assignment (older clients' new assignment is
                // ignored: a sync in Stable hands out the stored one).
                resp.skip_assignment = was_leader && req.request_version >= 9;
                return Reply::Now(resp);
            }
            State::PreparingRebalance => {}
            _ => self.prepare_rebalance(now, "static member rejoined with changes"),
        }
        let rx = self.wait_join(&new_id);
        self.try_complete_join(now);
        rx
    }

    /// The join answer for the current generation; the leader gets the members.
    fn join_response(&self, member_id: &str) -> pb::JoinGroupResponse {
        let protocol = self.protocol.clone().unwrap_or_default();
        let is_leader = self.leader.as_deref() == Some(member_id);
        pb::JoinGroupResponse {
            error_code: code::NONE,
            error_message: String::new(),
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_name: protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.into(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| pb::JoinMember {
                        member_id: m.id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        metadata: m.metadata_for(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            skip_assignment: false,
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, reason: &str) {
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(error_sync(code::REBALANCE_IN_PROGRESS));
                }
            }
        }
        let was_empty = self.state == State::Empty;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60));
        self.rebalance_deadline = Some(now + timeout);
        // A group starting from empty waits a little for more members, so
        // consumers started together do not rebalance once per member.
        self.delay_until = was_empty.then(|| now + self.initial_delay.min(timeout));
        self.sync_deadline = None;
        tracing::info!(group = %self.id, generation = self.generation, reason, "preparing rebalance");
        metrics::counter!("runnel_groups_rebalances_total").increment(1);
        self.set_state(State::PreparingRebalance);
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        if self.delay_until.is_some_and(|d| now < d) {
            return;
        }
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
        if all_joined {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        let missing: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
            self.remove(&id);
        }
        self.delay_until = None;
        self.rebalance_deadline = None;
        self.generation += 1;
        self.dirty = true;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.set_state(State::Empty);
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.sync_deadline = Some(now + timeout);
        self.set_state(State::CompletingRebalance);
        tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(), protocol = ?self.protocol, "generation formed");
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let resp = self.join_response(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.last_heartbeat = now;
                m.assignment = Bytes::new();
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(resp);
                }
            }
        }
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|q| q.name == *name))
            })
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some(choice) = m
                .protocols
                .iter()
                .map(|p| p.name.as_str())
                .find(|n| candidates.contains(n))
            {
                *votes.entry(choice).or_default() += 1;
            }
        }
        // Ties go to the first member's preference order.
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(*c).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .map(|s| s.to_string())
    }

    /// Removes a member, answering whatever it waits on.
    fn remove(&mut self, member_id: &str) -> bool {
        let Some(mut m) = self.members.remove(member_id) else {
            return false;
        };
        if let Some(instance) = &m.instance_id
            && self.static_members.get(instance).map(String::as_str) == Some(member_id)
        {
            self.static_members.remove(instance);
        }
        if let Some(w) = m.join_waiter.take() {
            let _ = w.send(error_join(
                member_id,
                code::UNKNOWN_MEMBER_ID,
                "removed from the group",
            ));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.send(error_sync(code::UNKNOWN_MEMBER_ID));
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
        self.dirty = true;
        true
    }

    /// After members left or expired: rebalance the rest (or complete the
    /// rebalance that waited for them).
    fn after_removal(&mut self, now: Instant, reason: &str) {
        match self.state {
            State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance(now, reason);
                self.try_complete_join(now);
            }
            State::PreparingRebalance => self.try_complete_join(now),
            State::Empty => {}
        }
    }

    /// Checks the identity a member claims against the group: the error
    /// code for a stranger, a fenced static instance or a stale generation.
    fn check_member(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
    ) -> Result<(), i32> {
        if let Some(instance) = instance
            && let Some(id) = self.static_members.get(instance)
            && id != member_id
        {
            return Err(code::FENCED_INSTANCE_ID);
        }
        if !self.members.contains_key(member_id) {
            return Err(code::UNKNOWN_MEMBER_ID);
        }
        if generation != self.generation {
            return Err(code::ILLEGAL_GENERATION);
        }
        Ok(())
    }

    /// Handles SyncGroup.
    pub fn sync(&mut self, req: pb::SyncGroupRequest) -> SyncReply {
        if let Err(code) = self.check_member(
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        ) {
            return SyncReply::Now(error_sync(code));
        }
        if (!req.protocol_type.is_empty()
            && self.protocol_type.as_deref() != Some(req.protocol_type.as_str()))
            || (!req.protocol_name.is_empty()
                && self.protocol.as_deref() != Some(req.protocol_name.as_str()))
        {
            return SyncReply::Now(error_sync(code::INCONSISTENT_GROUP_PROTOCOL));
        }
        match self.state {
            State::Empty => SyncReply::Now(error_sync(code::UNKNOWN_MEMBER_ID)),
            State::PreparingRebalance => SyncReply::Now(error_sync(code::REBALANCE_IN_PROGRESS)),
            State::Stable => SyncReply::Now(self.sync_response(&req.member_id)),
            State::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(&req.member_id)
                    && let Some(old) = m.sync_waiter.replace(tx)
                {
                    let _ = old.send(error_sync(code::REBALANCE_IN_PROGRESS));
                }
                if self.leader.as_deref() != Some(req.member_id.as_str()) {
                    return SyncReply::Wait(rx);
                }
                let mut given: HashMap<String, Bytes> = req
                    .assignments
                    .into_iter()
                    .map(|a| (a.member_id, a.assignment))
                    .collect();
                for m in self.members.values_mut() {
                    m.assignment = given.remove(&m.id).unwrap_or_default();
                }
                SyncReply::Persist {
                    generation: self.generation,
                    snapshot: self.snapshot(),
                    wait: rx,
                }
            }
        }
    }

    fn sync_response(&self, member_id: &str) -> pb::SyncGroupResponse {
        pb::SyncGroupResponse {
            error_code: code::NONE,
            error_message: String::new(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_name: self.protocol.clone().unwrap_or_default(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// The leader's assignment is stored (`Ok`) or could not be (`Err(code)`):
    /// hand it out and become Stable, or make everyone rejoin.
    pub fn finish_sync(&mut self, generation: i32, stored: Result<(), i32>, now: Instant) {
        if self.state != State::CompletingRebalance || self.generation != generation {
            return;
        }
        match stored {
            Ok(()) => {
                self.sync_deadline = None;
                self.set_state(State::Stable);
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let resp = self.sync_response(&id);
                    if let Some(w) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                        let _ = w.send(resp);
                    }
                }
            }
            Err(code) => {
                for m in self.members.values_mut() {
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(error_sync(code));
                    }
                }
                self.prepare_rebalance(now, "the assignment could not be stored");
            }
        }
    }

    /// Handles Heartbeat.
    pub fn heartbeat(&mut self, req: &pb::HeartbeatRequest, now: Instant) -> i32 {
        if self.state == State::Empty {
            return code::UNKNOWN_MEMBER_ID;
        }
        if let Err(code) = self.check_member(
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        ) {
            return code;
        }
        if let Some(m) = self.members.get_mut(&req.member_id) {
            m.last_heartbeat = now;
        }
        match self.state {
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// Handles LeaveGroup for each member; a static member may be named by
    /// its instance id alone (admin removal, KIP-345).
    pub fn leave(&mut self, members: &[pb::LeavingMember], now: Instant) -> Vec<pb::LeftMember> {
        let mut out = Vec::with_capacity(members.len());
        let mut removed = false;
        for l in members {
            let id = match (&l.group_instance_id, l.member_id.is_empty()) {
                (Some(instance), true) => self.static_members.get(instance).cloned(),
                (Some(instance), false) => match self.static_members.get(instance) {
                    Some(id) if *id != l.member_id => {
                        out.push(left(l, code::FENCED_INSTANCE_ID));
                        continue;
                    }
                    _ => Some(l.member_id.clone()),
                },
                (None, _) => Some(l.member_id.clone()),
            };
            let ok = id.as_deref().is_some_and(|id| {
                tracing::info!(group = %self.id, member = %id, reason = %l.reason, "member leaves");
                self.remove(id)
            }) || self.pending.remove(&l.member_id).is_some();
            removed |= ok;
            out.push(left(
                l,
                if ok {
                    code::NONE
                } else {
                    code::UNKNOWN_MEMBER_ID
                },
            ));
        }
        if removed {
            self.after_removal(now, "member left");
        }
        out
    }

    /// May this caller commit offsets? Kafka's rules: a commit from outside
    /// the group protocol (generation < 0, no member) only while the group is
    /// empty; otherwise a current member of the current generation, and not
    /// while the group waits for the leader's assignment.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
    ) -> Result<(), i32> {
        if generation < 0 && member_id.is_empty() && self.state == State::Empty {
            return Ok(());
        }
        self.check_member(member_id, instance, generation)?;
        if self.state == State::CompletingRebalance {
            return Err(code::REBALANCE_IN_PROGRESS);
        }
        Ok(())
    }

    /// Advances timers: pending member ids, members whose session lapsed,
    /// a rebalance whose time is up, a leader that never sent the assignment.
    pub fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.expired(now))
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            metrics::counter!("runnel_groups_member_expirations_total").increment(1);
            self.remove(id);
        }
        if !expired.is_empty() {
            self.after_removal(now, "member session expired");
        }
        match self.state {
            State::PreparingRebalance if self.rebalance_deadline.is_some_and(|d| now >= d) => {
                self.complete_join(now)
            }
            State::PreparingRebalance => self.try_complete_join(now),
            State::CompletingRebalance if self.sync_deadline.is_some_and(|d| now >= d) => {
                let lagging: Vec<String> = self
                    .members
                    .values()
                    .filter(|m| m.sync_waiter.is_none())
                    .map(|m| m.id.clone())
                    .collect();
                for id in &lagging {
                    tracing::info!(group = %self.id, member = %id, "member did not sync in time; removed");
                    self.remove(id);
                }
                self.after_removal(now, "members did not sync in time");
            }
            _ => {}
        }
    }

    /// The stored form of the group's membership.
    pub fn snapshot(&self) -> pb::GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        pb::GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation_id: self.generation,
            protocol_name: protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            members: self
                .members
                .values()
                .map(|m| pb::StoredMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as i32,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as i32,
                    metadata: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                    protocols: m.protocols.clone(),
                })
                .collect(),
            state_timestamp_ms: self.state_since_ms,
        }
    }

    /// Rebuilds a group from its stored membership (a new coordinator after
    /// failover). Members get a full session timeout to find it.
    pub fn restore(id: &str, value: pb::GroupValue, initial_delay: Duration, now: Instant) -> Self {
        let mut g = Group::new(id, initial_delay);
        g.generation = value.generation_id;
        g.protocol_type = Some(value.protocol_type).filter(|s| !s.is_empty());
        g.protocol = Some(value.protocol_name).filter(|s| !s.is_empty());
        g.leader = Some(value.leader).filter(|s| !s.is_empty());
        g.state_since_ms = value.state_timestamp_ms;
        for m in value.members {
            if let Some(instance) = &m.group_instance_id {
                g.static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            g.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id,
                    instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: Duration::from_millis(m.session_timeout_ms.max(0) as u64),
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64),
                    protocols: m.protocols,
                    assignment: m.assignment,
                    last_heartbeat: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        g.state = if g.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        g
    }

    /// DescribeGroups' view of the group.
    pub fn describe(&self) -> pb::DescribedGroup {
        let protocol = self.protocol.clone().unwrap_or_default();
        pb::DescribedGroup {
            error_code: code::NONE,
            group_id: self.id.clone(),
            state: self.state.name().into(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_name: protocol.clone(),
            generation_id: self.generation,
            leader: self.leader.clone().unwrap_or_default(),
            members: self
                .members
                .values()
                .map(|m| pb::DescribedMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Ends every wait (the shard is moving to another node).
    pub fn abandon(&mut self, error: i32) {
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(error_join(&m.id, error, "the group coordinator moved"));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(error_sync(error));
            }
        }
    }
}

fn rebalance_timeout(req: &pb::JoinGroupRequest) -> Duration {
    let ms = if req.rebalance_timeout_ms > 0 {
        req.rebalance_timeout_ms
    } else {
        req.session_timeout_ms
    };
    Duration::from_millis(ms.max(0) as u64)
}

fn left(l: &pb::LeavingMember, error: i32) -> pb::LeftMember {
    pb::LeftMember {
        member_id: l.member_id.clone(),
        group_instance_id: l.group_instance_id.clone(),
        error_code: error,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const DELAY: Duration = Duration::from_millis(3000);

    fn limits() -> Limits {
        Limits {
            initial_rebalance_delay: DELAY,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 300_000,
            max_group_size: 3,
        }
    }

    fn join_req(member: &str, instance: Option<&str>, protocols: &[&str]) -> pb::JoinGroupRequest {
        pb::JoinGroupRequest {
            group_id: "g".into(),
            member_id: member.into(),
            group_instance_id: instance.map(Into::into),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| pb::Protocol {
                    name: (*p).into(),
                    metadata: Bytes::from(format!("{member}:{p}")),
                })
                .collect(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            require_known_member_id: true,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            request_version: 9,
            reason: String::new(),
        }
    }

    fn now_reply<T: std::fmt::Debug>(r: Reply<T>) -> T {
        match r {
            Reply::Now(t) => t,
            Reply::Wait(_) => panic!("expected an immediate answer"),
        }
    }

    fn waiting<T: std::fmt::Debug>(r: Reply<T>) -> oneshot::Receiver<T> {
        match r {
            Reply::Wait(rx) => rx,
            Reply::Now(t) => panic!("expected to wait, got {t:?}"),
        }
    }

    /// A dynamic member's two-step join (KIP-394); returns its id and wait.
    fn join_new(g: &mut Group, now: Instant) -> (String, oneshot::Receiver<pb::JoinGroupResponse>) {
        let first = now_reply(g.join(join_req("", None, &["range"]), &limits(), now));
        assert_eq!(first.error_code, code::MEMBER_ID_REQUIRED);
        let id = first.member_id;
        let rx = waiting(g.join(join_req(&id, None, &["range"]), &limits(), now));
        (id, rx)
    }

    fn sync(g: &mut Group, id: &str, generation: i32, assignments: &[(&str, &str)]) -> SyncReply {
        g.sync(pb::SyncGroupRequest {
            group_id: "g".into(),
            generation_id: generation,
            member_id: id.into(),
            assignments: assignments
                .iter()
                .map(|(m, a)| pb::Assignment {
                    member_id: (*m).into(),
                    assignment: Bytes::from(a.to_string()),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn heartbeat(g: &mut Group, id: &str, generation: i32, now: Instant) -> i32 {
        g.heartbeat(
            &pb::HeartbeatRequest {
                group_id: "g".into(),
                generation_id: generation,
                member_id: id.into(),
                group_instance_id: None,
            },
            now,
        )
    }

    /// Two members form generation 1 after the initial delay; the leader's
    /// assignment reaches both once stored.
    fn stable_pair(now: Instant) -> (Group, String, String) {
        let mut g = Group::new("g", DELAY);
        let (a, mut rx_a) = join_new(&mut g, now);
        let (b, mut rx_b) = join_new(&mut g, now);
        assert_eq!(g.state, State::PreparingRebalance);
        // Nothing before the initial delay, even though both joined.
        g.tick(now + Duration::from_millis(100));
        assert!(rx_a.try_recv().is_err());
        g.tick(now + DELAY * 2);
        let ra = rx_a.try_recv().unwrap();
        let rb = rx_b.try_recv().unwrap();
        assert_eq!((ra.error_code, rb.error_code), (0, 0));
        assert_eq!((ra.generation_id, rb.generation_id), (1, 1));
        assert_eq!(ra.leader, rb.leader);
        let (leader, follower) = if ra.leader == a { (a, b) } else { (b, a) };
        assert_eq!(g.state, State::CompletingRebalance);
        let mut follower_wait = match sync(&mut g, &follower, 1, &[]) {
            SyncReply::Wait(rx) => rx,
            other => panic!("follower should wait: {other:?}"),
        };
        let (generation, snapshot, mut leader_wait) =
            match sync(&mut g, &leader, 1, &[(&leader, "L"), (&follower, "F")]) {
                SyncReply::Persist {
                    generation,
                    snapshot,
                    wait,
                } => (generation, snapshot, wait),
                other => panic!("leader should persist: {other:?}"),
            };
        assert_eq!(snapshot.members.len(), 2);
        assert!(
            follower_wait.try_recv().is_err(),
            "nothing before the assignment is stored"
        );
        g.finish_sync(generation, Ok(()), now + DELAY * 2);
        assert_eq!(g.state, State::Stable);
        assert_eq!(leader_wait.try_recv().unwrap().assignment, Bytes::from("L"));
        assert_eq!(
            follower_wait.try_recv().unwrap().assignment,
            Bytes::from("F")
        );
        (g, leader, follower)
    }

    #[test]
    fn two_members_form_a_generation() {
        let now = Instant::now();
        let (g, leader, _) = stable_pair(now);
        assert_eq!(g.leader.as_deref(), Some(leader.as_str()));
        assert_eq!(g.protocol.as_deref(), Some("range"));
    }

    #[test]
    fn a_leaving_member_triggers_a_rebalance_of_the_rest() {
        let now = Instant::now();
        let (mut g, leader, follower) = stable_pair(now);
        let t = now + DELAY * 3;
        let left = g.leave(
            &[pb::LeavingMember {
                member_id: leader.clone(),
                group_instance_id: None,
                reason: String::new(),
            }],
            t,
        );
        assert_eq!(left[0].error_code, 0);
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(
            heartbeat(&mut g, &follower, 1, t),
            code::REBALANCE_IN_PROGRESS
        );
        assert_eq!(heartbeat(&mut g, &leader, 1, t), code::UNKNOWN_MEMBER_ID);
        // The follower rejoins: generation 2 with it as the only member and leader.
        let mut rx = waiting(g.join(join_req(&follower, None, &["range"]), &limits(), t));
        let r = rx.try_recv().unwrap();
        assert_eq!(
            (r.generation_id, r.leader.as_str(), r.members.len()),
            (2, follower.as_str(), 1)
        );
        assert_eq!(heartbeat(&mut g, &follower, 1, t), code::ILLEGAL_GENERATION);
    }

    #[test]
    fn a_silent_member_expires_and_an_empty_group_bumps_its_generation() {
        let now = Instant::now();
        let (mut g, leader, follower) = stable_pair(now);
        let t = now + DELAY * 2;
        // The leader keeps heartbeating, the follower goes quiet.
        assert_eq!(heartbeat(&mut g, &leader, 1, t + Duration::from_secs(8)), 0);
        g.tick(t + Duration::from_secs(11));
        assert!(!g.members.contains_key(&follower));
        assert_eq!(g.state, State::PreparingRebalance);
        // The leader never rejoins either: the rebalance times out and the
        // group ends empty at generation 2.
        g.tick(t + Duration::from_secs(60));
        assert_eq!(g.state, State::Empty);
        assert_eq!(g.generation, 2);
        assert!(g.members.is_empty());
    }

    #[test]
    fn commits_follow_kafkas_rules() {
        let now = Instant::now();
        let mut empty = Group::new("g", DELAY);
        assert_eq!(empty.check_commit("", None, -1), Ok(()));
        assert_eq!(
            empty.check_commit("x", None, 1),
            Err(code::UNKNOWN_MEMBER_ID)
        );
        let (mut g, leader, _) = stable_pair(now);
        assert_eq!(g.check_commit(&leader, None, 1), Ok(()));
        assert_eq!(
            g.check_commit(&leader, None, 0),
            Err(code::ILLEGAL_GENERATION)
        );
        assert_eq!(g.check_commit("", None, -1), Err(code::UNKNOWN_MEMBER_ID));
        assert_eq!(
            g.check_commit("stranger", None, 1),
            Err(code::UNKNOWN_MEMBER_ID)
        );
        // A heartbeat with a stale generation.
        assert_eq!(heartbeat(&mut g, &leader, 7, now), code::ILLEGAL_GENERATION);
        // Keep `empty` used mutably to show joins are independent of it.
        empty.tick(now);
        assert_eq!(empty.state, State::Empty);
    }

    #[test]
    fn static_member_rejoins_without_a_rebalance_and_the_old_id_is_fenced() {
        let now = Instant::now();
        let mut g = Group::new("g", DELAY);
        let mut rx1 = waiting(g.join(join_req("", Some("i1"), &["range"]), &limits(), now));
        let mut rx2 = waiting(g.join(join_req("", Some("i2"), &["range"]), &limits(), now));
        g.tick(now + DELAY * 2);
        let r1 = rx1.try_recv().unwrap();
        let r2 = rx2.try_recv().unwrap();
        let (leader, other) = if r1.leader == r1.member_id {
            (r1, r2)
        } else {
            (r2, r1)
        };
        match sync(
            &mut g,
            &leader.member_id,
            1,
            &[(&leader.member_id, "L"), (&other.member_id, "O")],
        ) {
            SyncReply::Persist { generation, .. } => g.finish_sync(generation, Ok(()), now),
            other => panic!("{other:?}"),
        }
        let _ = sync(&mut g, &other.member_id, 1, &[]);
        assert_eq!(g.state, State::Stable);
        let other_instance = if other.member_id.starts_with("i1") {
            "i1"
        } else {
            "i2"
        };
        // The non-leader restarts with the same instance id (a fresh client:
        // its subscription bytes differ): same generation, new member id, no
        // rebalance, and its old assignment on sync.
        let mut rejoin = join_req("", Some(other_instance), &["range"]);
        rejoin.protocols[0].metadata = Bytes::from_static(b"fresh client, owns nothing yet");
        let back = now_reply(g.join(rejoin, &limits(), now));
        assert_eq!(back.error_code, 0);
        assert_eq!(back.generation_id, 1);
        assert_ne!(back.member_id, other.member_id);
        assert_eq!(g.state, State::Stable);
        match sync(&mut g, &back.member_id, 1, &[]) {
            SyncReply::Now(r) => assert_eq!(r.assignment, Bytes::from("O")),
            other => panic!("{other:?}"),
        }
        // The old incarnation is fenced.
        let fenced = g.heartbeat(
            &pb::HeartbeatRequest {
                group_id: "g".into(),
                generation_id: 1,
                member_id: other.member_id.clone(),
                group_instance_id: Some(other_instance.into()),
            },
            now,
        );
        assert_eq!(fenced, code::FENCED_INSTANCE_ID);
        assert_eq!(heartbeat(&mut g, &leader.member_id, 1, now), 0);
    }

    #[test]
    fn bad_joins_get_kafkas_errors() {
        let now = Instant::now();
        let mut g = Group::new("g", DELAY);
        let mut short = join_req("", None, &["range"]);
        short.session_timeout_ms = 1;
        assert_eq!(
            now_reply(g.join(short, &limits(), now)).error_code,
            code::INVALID_SESSION_TIMEOUT
        );
        assert_eq!(
            now_reply(g.join(join_req("ghost", None, &["range"]), &limits(), now)).error_code,
            code::UNKNOWN_MEMBER_ID
        );
        let (_a, _rx) = join_new(&mut g, now);
        // No protocol in common with the current member.
        assert_eq!(
            now_reply(g.join(join_req("", None, &["roundrobin"]), &limits(), now)).error_code,
            code::INCONSISTENT_GROUP_PROTOCOL
        );
        let (_b, _rx2) = join_new(&mut g, now);
        let (_c, _rx3) = join_new(&mut g, now);
        assert_eq!(
            now_reply(g.join(join_req("", None, &["range"]), &limits(), now)).error_code,
            code::GROUP_MAX_SIZE_REACHED
        );
    }

    #[test]
    fn the_protocol_most_members_prefer_wins() {
        let now = Instant::now();
        let mut g = Group::new("g", DELAY);
        let r = |m: &str, p: &[&str]| join_req(m, None, p);
        let mut a = r("", &["cooperative-sticky", "range"]);
        a.require_known_member_id = false;
        let mut b = r("", &["range", "cooperative-sticky"]);
        b.require_known_member_id = false;
        let mut c = r("", &["range"]);
        c.require_known_member_id = false;
        let _wa = g.join(a, &limits(), now);
        let _wb = g.join(b, &limits(), now);
        let _wc = g.join(c, &limits(), now);
        g.tick(now + DELAY * 2);
        assert_eq!(g.state, State::CompletingRebalance);
        assert_eq!(g.protocol.as_deref(), Some("range"));
    }

    #[test]
    fn a_failed_store_makes_the_group_rejoin() {
        let now = Instant::now();
        let mut g = Group::new("g", Duration::ZERO);
        let (a, mut rx) = join_new(&mut g, now);
        g.tick(now);
        assert_eq!(rx.try_recv().unwrap().generation_id, 1);
        let SyncReply::Persist {
            generation,
            mut wait,
            ..
        } = sync(&mut g, &a, 1, &[(&a, "x")])
        else {
            panic!("leader persists");
        };
        g.finish_sync(generation, Err(code::COORDINATOR_NOT_AVAILABLE), now);
        assert_eq!(
            wait.try_recv().unwrap().error_code,
            code::COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(g.state, State::PreparingRebalance);
    }

    #[test]
    fn a_snapshot_restores_the_same_generation() {
        let now = Instant::now();
        let (g, leader, follower) = stable_pair(now);
        let mut back = Group::restore("g", g.snapshot(), DELAY, now);
        assert_eq!(back.state, State::Stable);
        assert_eq!(back.generation, 1);
        assert_eq!(heartbeat(&mut back, &leader, 1, now), 0);
        match sync(&mut back, &follower, 1, &[]) {
            SyncReply::Now(r) => assert_eq!(r.assignment, Bytes::from("F")),
            other => panic!("{other:?}"),
        }
    }
}
