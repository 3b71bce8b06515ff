//! A consumer group on the next-generation protocol (KIP-848), without I/O.
//!
//! Members only heartbeat: their subscription, the partitions they own, and
//! the epoch they are at. The coordinator keeps the *group epoch* (bumped
//! whenever membership, subscriptions or the subscribed topics' partition
//! counts change), computes a *target assignment* for that epoch with a
//! server-side assignor, and moves each member towards its target on its own
//! heartbeats:
//!
//! 1. a member that owns partitions outside its target is first told to give
//!    them up (its assignment shrinks, its epoch stays);
//! 2. once its heartbeat shows them released, it moves to the new epoch and
//!    gets the target partitions no other member still holds;
//! 3. partitions still held by others (not yet revoked there) are added on a
//!    later heartbeat, once released.
//!
//! So a partition is never assigned to two members at once, and no member
//! stops for a "stop the world" rebalance.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use runnel_proto::groups::v1 as pb;

use crate::group::code;

/// Kafka codes of the new protocol.
pub mod codes {
    pub const FENCED_MEMBER_EPOCH: i32 = 110;
    pub const UNRELEASED_INSTANCE_ID: i32 = 111;
    pub const UNSUPPORTED_ASSIGNOR: i32 = 112;
    pub const STALE_MEMBER_EPOCH: i32 = 113;
    pub const INVALID_REQUEST: i32 = 42;
    pub const INVALID_REGULAR_EXPRESSION: i32 = 128;
}

/// Topics by name with their partition counts, as the cluster has them now
/// (internal topics left out).
pub type Topics = BTreeMap<String, i32>;

/// A subscription regex: Kafka matches whole topic names (RE2J's
/// `matches()`), so the pattern is anchored at both ends.
fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// Partitions by topic.
pub type Assignment = BTreeMap<String, BTreeSet<i32>>;

/// The assignors a member may name (`group.remote.assignor`).
pub const ASSIGNORS: &[&str] = &["uniform", "range"];

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub session_timeout: Duration,
    pub heartbeat_interval_ms: i32,
    pub max_group_size: usize,
}

#[derive(Debug, Clone)]
pub struct ConsumerMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: String,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout: Duration,
    /// Topics subscribed to by name.
    pub subscribed: BTreeSet<String>,
    /// Topics subscribed to by pattern.
    pub regex: Option<regex::Regex>,
    /// What the subscription resolves to now: the names plus the existing
    /// topics the regex matches. The assignment follows this.
    pub resolved: BTreeSet<String>,
    pub epoch: i32,
    pub previous_epoch: i32,
    /// What the member has been given (and may consume).
    pub assigned: Assignment,
    /// What it was told to give up and has not confirmed yet.
    pub pending_revocation: Assignment,
    last_heartbeat: Instant,
    revoking_since: Option<Instant>,
    /// The assignment last sent, to send it again only when it changes.
    sent: Option<Assignment>,
}

#[derive(Debug)]
pub struct ConsumerGroup {
    pub id: String,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    pub target: BTreeMap<String, Assignment>,
    /// Partition counts of the subscribed topics the target was computed for.
    partitions: BTreeMap<String, i32>,
    pub state_since_ms: i64,
    pub dirty: bool,
}

fn count(a: &Assignment) -> usize {
    a.values().map(BTreeSet::len).sum()
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(other) => ps.difference(other).copied().collect(),
            None => ps.clone(),
        };
        if !rest.is_empty() {
            out.insert(t.clone(), rest);
        }
    }
    out
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        if let Some(other) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(other).copied().collect();
            if !both.is_empty() {
                out.insert(t.clone(), both);
            }
        }
    }
    out
}

fn overlaps(a: &Assignment, b: &Assignment) -> bool {
    !intersect(a, b).is_empty()
}

pub fn to_owned(a: &Assignment) -> pb::OwnedPartitions {
    pb::OwnedPartitions {
        topics: a
            .iter()
            .map(|(t, ps)| pb::TopicPartitions {
                topic: t.clone(),
                partitions: ps.iter().copied().collect(),
            })
            .collect(),
    }
}

pub fn from_owned(o: &pb::OwnedPartitions) -> Assignment {
    let mut a = Assignment::new();
    for t in &o.topics {
        if !t.partitions.is_empty() {
            a.entry(t.topic.clone()).or_default().extend(&t.partitions);
        }
    }
    a
}

fn fail(error: i32, message: &str, member_id: &str) -> pb::ConsumerGroupHeartbeatResponse {
    pb::ConsumerGroupHeartbeatResponse {
        error_code: error,
        error_message: message.into(),
        member_id: member_id.into(),
        member_epoch: -1,
        ..Default::default()
    }
}

/// The uniform assignor: per topic, the partitions spread evenly over the
/// members subscribed to it; a member keeps what it had as far as the
/// balance allows (sticky), so a rebalance moves as little as possible.
pub fn assign(
    members: &BTreeMap<String, ConsumerMember>,
    partitions: &BTreeMap<String, i32>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    // Members with fewer partitions overall go first, so a member subscribed
    // to many topics is not loaded with all the remainders.
    for (topic, &n) in partitions {
        let subscribers: Vec<&String> = members
            .values()
            .filter(|m| m.resolved.contains(topic))
            .map(|m| &m.id)
            .collect();
        if subscribers.is_empty() || n <= 0 {
            continue;
        }
        let base = n as usize / subscribers.len();
        let mut extra = n as usize % subscribers.len();
        let mut quota: BTreeMap<&String, usize> = BTreeMap::new();
        // The members that already hold the most of this topic keep the
        // extra slots, so fewer partitions move.
        let mut by_held: Vec<&String> = subscribers.clone();
        by_held.sort_by_key(|m| {
            std::cmp::Reverse(
                previous
                    .get(*m)
                    .and_then(|a| a.get(topic))
                    .map_or(0, BTreeSet::len),
            )
        });
        for m in &by_held {
            let q = base + usize::from(extra > 0);
            extra = extra.saturating_sub(1);
            quota.insert(m, q);
        }
        let mut free: BTreeSet<i32> = (0..n).collect();
        // Keep previous partitions up to quota.
        for m in &subscribers {
            let keep: Vec<i32> = previous
                .get(*m)
                .and_then(|a| a.get(topic))
                .map(|ps| ps.iter().copied().filter(|p| free.contains(p)).collect())
                .unwrap_or_default();
            for p in keep.into_iter().take(quota[m]) {
                free.remove(&p);
                out.entry((*m).clone())
                    .or_default()
                    .entry(topic.clone())
                    .or_default()
                    .insert(p);
            }
        }
        // Hand out the rest to whoever is below quota.
        for p in free {
            let Some(m) = subscribers
                .iter()
                .filter(|m| out[**m].get(topic).map_or(0, BTreeSet::len) < quota[*m])
                .min_by_key(|m| (count(&out[**m]), (**m).clone()))
            else {
                break;
            };
            out.entry((*m).clone())
                .or_default()
                .entry(topic.clone())
                .or_default()
                .insert(p);
        }
    }
    out
}

/// The pattern as the member sent it (without the anchors [`compile`] adds).
fn unanchored(anchored: &str) -> &str {
    anchored
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(anchored)
}

impl ConsumerGroup {
    pub fn new(id: &str) -> Self {
        ConsumerGroup {
            id: id.into(),
            group_epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            partitions: BTreeMap::new(),
            state_since_ms: runnel_cluster::now_ms(),
            dirty: false,
        }
    }

    /// Kafka's state names for the new protocol.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.group_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || !m.pending_revocation.is_empty())
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    fn bump(&mut self, why: &str) {
        self.group_epoch += 1;
        self.dirty = true;
        self.state_since_ms = runnel_cluster::now_ms();
        metrics::counter!("runnel_groups_rebalances_total").increment(1);
        tracing::info!(group = %self.id, epoch = self.group_epoch, why, "consumer group epoch bumped");
    }

    /// Handles one heartbeat. `partition_counts` gives the current partition
    /// count of a topic (None if it does not exist).
    pub fn heartbeat(
        &mut self,
        req: &pb::ConsumerGroupHeartbeatRequest,
        settings: &ConsumerSettings,
        topics: &Topics,
        now: Instant,
    ) -> pb::ConsumerGroupHeartbeatResponse {
        let regex = match req.subscribed_topic_regex.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(pattern) => match compile(pattern) {
                Ok(r) => Some(Some(r)),
                Err(e) => {
                    return fail(
                        codes::INVALID_REGULAR_EXPRESSION,
                        &format!("invalid subscription regex {pattern:?}: {e}"),
                        &req.member_id,
                    );
                }
            },
        };
        if let Some(a) = &req.server_assignor
            && !ASSIGNORS.contains(&a.as_str())
        {
            return fail(
                codes::UNSUPPORTED_ASSIGNOR,
                &format!("unknown assignor {a:?}"),
                &req.member_id,
            );
        }
        if req.member_epoch < 0 {
            let removed = self.members.remove(&req.member_id).is_some();
            if removed {
                self.target.remove(&req.member_id);
                tracing::info!(group = %self.id, member = %req.member_id, "member leaves");
                self.bump("member left");
            }
            return pb::ConsumerGroupHeartbeatResponse {
                error_code: if removed {
                    code::NONE
                } else {
                    code::UNKNOWN_MEMBER_ID
                },
                member_id: req.member_id.clone(),
                member_epoch: req.member_epoch,
                heartbeat_interval_ms: 0,
                ..Default::default()
            };
        }
        let mut bump = None;
        let member_id = if req.member_epoch == 0 {
            if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
                return fail(
                    codes::INVALID_REQUEST,
                    "a joining member must send its subscription",
                    &req.member_id,
                );
            }
            if req.rebalance_timeout_ms < 0 {
                return fail(
                    codes::INVALID_REQUEST,
                    "a joining member must send its rebalance timeout",
                    &req.member_id,
                );
            }
            let id = if req.member_id.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                req.member_id.clone()
            };
            if let Some(instance) = &req.instance_id
                && let Some(old) = self
                    .members
                    .values()
                    .find(|m| m.instance_id.as_deref() == Some(instance.as_str()) && m.id != id)
                    .map(|m| m.id.clone())
            {
                // A static member back under a new member id takes its
                // predecessor's place, assignment and epoch.
                if let Some(mut m) = self.members.remove(&old) {
                    tracing::info!(group = %self.id, instance = %instance, old = %old, new = %id, "static member rejoins");
                    m.id = id.clone();
                    m.sent = None;
                    if let Some(t) = self.target.remove(&old) {
                        self.target.insert(id.clone(), t);
                    }
                    self.members.insert(id.clone(), m);
                    self.dirty = true;
                }
            }
            if !self.members.contains_key(&id) {
                if self.members.len() >= settings.max_group_size {
                    return fail(code::GROUP_MAX_SIZE_REACHED, "the group is full", &id);
                }
                tracing::info!(group = %self.id, member = %id, client_id = %req.client_id, "member joins");
                // The epoch moves once below, with the subscription.
                bump = Some("member joined");
                self.members.insert(
                    id.clone(),
                    ConsumerMember {
                        id: id.clone(),
                        instance_id: req.instance_id.clone(),
                        rack_id: req.rack_id.clone().unwrap_or_default(),
                        client_id: req.client_id.clone(),
                        client_host: req.client_host.clone(),
                        rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms as u64),
                        subscribed: BTreeSet::new(),
                        regex: None,
                        resolved: BTreeSet::new(),
                        epoch: 0,
                        previous_epoch: -1,
                        assigned: Assignment::new(),
                        pending_revocation: Assignment::new(),
                        last_heartbeat: now,
                        revoking_since: None,
                        sent: None,
                    },
                );
            } else if let Some(m) = self.members.get_mut(&id) {
                // A member re-joining (epoch 0) starts from nothing owned.
                m.sent = None;
            }
            id
        } else {
            let Some(m) = self.members.get(&req.member_id) else {
                return fail(code::UNKNOWN_MEMBER_ID, "unknown member id", &req.member_id);
            };
            let owned = req.owned.as_ref().map(from_owned);
            // The previous epoch is fine if the member lost our answer but
            // owns nothing it should not.
            let epoch_ok = req.member_epoch == m.epoch
                || (req.member_epoch == m.previous_epoch
                    && owned
                        .as_ref()
                        .is_some_and(|o| minus(o, &m.assigned).is_empty()));
            if !epoch_ok {
                return fail(
                    codes::FENCED_MEMBER_EPOCH,
                    &format!(
                        "epoch {} is not the member's epoch {}",
                        req.member_epoch, m.epoch
                    ),
                    &req.member_id,
                );
            }
            req.member_id.clone()
        };

        // Apply what the member told us.
        if let Some(m) = self.members.get_mut(&member_id) {
            m.last_heartbeat = now;
            if req.rebalance_timeout_ms > 0 {
                m.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms as u64);
            }
            if let Some(rack) = &req.rack_id {
                m.rack_id = rack.clone();
            }
            if let Some(names) = &req.subscribed_topic_names {
                m.subscribed = names.names.iter().cloned().collect();
            }
            if let Some(regex) = regex {
                m.regex = regex;
            }
        }
        // Resolve every member's subscription against the topics as they
        // are now: a new topic matching someone's regex is a change too.
        for m in self.members.values_mut() {
            let mut resolved = m.subscribed.clone();
            if let Some(r) = &m.regex {
                resolved.extend(topics.keys().filter(|t| r.is_match(t)).cloned());
            }
            if resolved != m.resolved {
                m.resolved = resolved;
                bump = bump.or(Some("subscription changed"));
            }
        }
        // The subscribed topics' partitions as they are now.
        let current: BTreeMap<String, i32> = self
            .subscribed_topics()
            .iter()
            .filter_map(|t| topics.get(t).map(|n| (t.clone(), *n)))
            .collect();
        if current != self.partitions {
            self.partitions = current;
            bump = bump.or(Some("subscribed topics changed"));
        }
        if let Some(why) = bump {
            self.bump(why);
        }
        if self.assignment_epoch < self.group_epoch {
            self.target = assign(&self.members, &self.partitions, &self.target);
            self.assignment_epoch = self.group_epoch;
            self.dirty = true;
        }
        let owned = req.owned.as_ref().map(from_owned);
        self.reconcile(&member_id, owned, now);

        let Some(m) = self.members.get_mut(&member_id) else {
            return fail(code::UNKNOWN_MEMBER_ID, "unknown member id", &member_id);
        };
        let send = req.member_epoch == 0
            || m.sent.as_ref() != Some(&m.assigned)
            || req
                .owned
                .as_ref()
                .is_some_and(|o| from_owned(o) != m.assigned && m.pending_revocation.is_empty());
        if send {
            m.sent = Some(m.assigned.clone());
        }
        pb::ConsumerGroupHeartbeatResponse {
            error_code: code::NONE,
            error_message: String::new(),
            member_id: member_id.clone(),
            member_epoch: m.epoch,
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            assignment: send.then(|| to_owned(&m.assigned)),
        }
    }

    /// Moves one member towards its target (see the module doc).
    fn reconcile(&mut self, member_id: &str, owned: Option<Assignment>, now: Instant) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        // Partitions other members hold (given or not yet given back).
        let held_by_others: Assignment = {
            let mut all = Assignment::new();
            for m in self.members.values().filter(|m| m.id != member_id) {
                for (t, ps) in m.assigned.iter().chain(m.pending_revocation.iter()) {
                    all.entry(t.clone()).or_default().extend(ps);
                }
            }
            all
        };
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(member_id) else {
            return;
        };
        let before = (m.epoch, m.assigned.clone());
        if !m.pending_revocation.is_empty() {
            match &owned {
                Some(o) if !overlaps(o, &m.pending_revocation) => {
                    m.pending_revocation.clear();
                    m.revoking_since = None;
                }
                _ => return,
            }
        }
        if m.epoch < assignment_epoch {
            let revoke = minus(&m.assigned, &target);
            if !revoke.is_empty() {
                m.assigned = intersect(&m.assigned, &target);
                m.pending_revocation = revoke;
                m.revoking_since = Some(now);
                self.dirty = true;
                return;
            }
            m.previous_epoch = m.epoch;
            m.epoch = assignment_epoch;
        }
        // At the target epoch: take every target partition nobody else holds.
        let grantable = minus(&target, &held_by_others);
        for (t, ps) in grantable {
            m.assigned.entry(t).or_default().extend(ps);
        }
        if (m.epoch, &m.assigned) != (before.0, &before.1) {
            self.dirty = true;
        }
    }

    /// Members whose session lapsed, or who kept partitions past their
    /// rebalance timeout, are removed (their partitions go to the others).
    pub fn tick(&mut self, settings: &ConsumerSettings, now: Instant) {
        let gone: Vec<(String, &'static str)> = self
            .members
            .values()
            .filter_map(|m| {
                if now.duration_since(m.last_heartbeat) > settings.session_timeout {
                    Some((m.id.clone(), "session expired"))
                } else if m
                    .revoking_since
                    .is_some_and(|t| now.duration_since(t) > m.rebalance_timeout)
                {
                    Some((m.id.clone(), "did not revoke in time"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in gone {
            tracing::info!(group = %self.id, member = %id, why, "member fenced");
            metrics::counter!("runnel_groups_member_expirations_total").increment(1);
            self.members.remove(&id);
            self.target.remove(&id);
            self.bump(why);
        }
    }

    /// May this member commit offsets with this epoch? (Commits from
    /// outside the group, epoch < 0 and no member, only while it is empty.)
    pub fn check_commit(&self, member_id: &str, epoch: i32) -> Result<(), i32> {
        if epoch < 0 && member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        let Some(m) = self.members.get(member_id) else {
            return Err(code::UNKNOWN_MEMBER_ID);
        };
        match epoch.cmp(&m.epoch) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(codes::STALE_MEMBER_EPOCH),
            std::cmp::Ordering::Greater => Err(codes::FENCED_MEMBER_EPOCH),
        }
    }

    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.resolved.iter().cloned())
            .collect()
    }

    /// DescribeGroups' view (protocol type "consumer", assignments as the
    /// consumer protocol encodes them so tools can read them).
    pub fn describe(&self) -> pb::DescribedGroup {
        pb::DescribedGroup {
            error_code: code::NONE,
            group_id: self.id.clone(),
            state: self.state().into(),
            protocol_type: "consumer".into(),
            protocol_name: "uniform".into(),
            generation_id: self.group_epoch,
            leader: String::new(),
            members: self
                .members
                .values()
                .map(|m| pb::DescribedMember {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: crate::consumer_protocol::encode_subscription(&m.resolved),
                    assignment: crate::consumer_protocol::encode_assignment(&m.assigned),
                })
                .collect(),
        }
    }

    pub fn snapshot(&self) -> pb::ConsumerGroupValue {
        pb::ConsumerGroupValue {
            group_epoch: self.group_epoch,
            assignment_epoch: self.assignment_epoch,
            members: self
                .members
                .values()
                .map(|m| pb::StoredConsumerMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as i32,
                    subscribed_topics: m.subscribed.iter().cloned().collect(),
                    subscribed_topic_regex: m
                        .regex
                        .as_ref()
                        .map(|r| unanchored(r.as_str()).to_string())
                        .unwrap_or_default(),
                    resolved_topics: m.resolved.iter().cloned().collect(),
                    member_epoch: m.epoch,
                    previous_member_epoch: m.previous_epoch,
                    assigned: Some(to_owned(&m.assigned)),
                    pending_revocation: Some(to_owned(&m.pending_revocation)),
                })
                .collect(),
            target: self
                .target
                .iter()
                .map(|(k, v)| (k.clone(), to_owned(v)))
                .collect(),
            state_timestamp_ms: self.state_since_ms,
            partitions: self
                .partitions
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// Rebuilds the group on a new coordinator; members get a full session
    /// to find it and carry on at their epochs.
    pub fn restore(id: &str, v: pb::ConsumerGroupValue, now: Instant) -> Self {
        let mut g = ConsumerGroup::new(id);
        g.group_epoch = v.group_epoch;
        g.assignment_epoch = v.assignment_epoch;
        g.state_since_ms = v.state_timestamp_ms;
        g.target = v
            .target
            .iter()
            .map(|(k, o)| (k.clone(), from_owned(o)))
            .collect();
        for m in v.members {
            let pending = m
                .pending_revocation
                .as_ref()
                .map(from_owned)
                .unwrap_or_default();
            g.members.insert(
                m.member_id.clone(),
                ConsumerMember {
                    id: m.member_id,
                    instance_id: m.instance_id,
                    rack_id: m.rack_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64),
                    subscribed: m.subscribed_topics.into_iter().collect(),
                    regex: (!m.subscribed_topic_regex.is_empty())
                        .then(|| compile(&m.subscribed_topic_regex).ok())
                        .flatten(),
                    resolved: m.resolved_topics.into_iter().collect(),
                    epoch: m.member_epoch,
                    previous_epoch: m.previous_member_epoch,
                    assigned: m.assigned.as_ref().map(from_owned).unwrap_or_default(),
                    revoking_since: (!pending.is_empty()).then_some(now),
                    pending_revocation: pending,
                    last_heartbeat: now,
                    sent: None,
                },
            );
        }
        g.partitions = v.partitions.into_iter().collect();
        g
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn settings() -> ConsumerSettings {
        ConsumerSettings {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval_ms: 5000,
            max_group_size: 10,
        }
    }

    fn counts() -> Topics {
        [("orders".to_string(), 6), ("other".to_string(), 2)].into()
    }

    fn join(id: &str) -> pb::ConsumerGroupHeartbeatRequest {
        pb::ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_id: id.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(pb::TopicNames {
                names: vec!["orders".into()],
            }),
            owned: Some(pb::OwnedPartitions::default()),
            ..Default::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: &Assignment) -> pb::ConsumerGroupHeartbeatRequest {
        pb::ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            member_id: id.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(to_owned(owned)),
            ..Default::default()
        }
    }

    fn parts(a: &Assignment) -> BTreeSet<i32> {
        a.get("orders").cloned().unwrap_or_default()
    }

    /// Heartbeats every member (owning what it was last given) until the
    /// group is Stable; returns each member's partitions.
    fn settle(
        g: &mut ConsumerGroup,
        owned: &mut BTreeMap<String, (i32, Assignment)>,
        now: Instant,
    ) {
        for _ in 0..10 {
            let ids: Vec<String> = owned.keys().cloned().collect();
            for id in ids {
                let (epoch, have) = owned[&id].clone();
                let r = g.heartbeat(&beat(&id, epoch, &have), &settings(), &counts(), now);
                assert_eq!(r.error_code, 0, "{r:?}");
                let now_have = r.assignment.map(|a| from_owned(&a)).unwrap_or(have);
                owned.insert(id, (r.member_epoch, now_have));
            }
            if g.state() == "Stable" {
                return;
            }
        }
        panic!("group did not settle: {}", g.state());
    }

    #[test]
    fn members_share_partitions_and_never_overlap() {
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let mut owned = BTreeMap::new();
        let r = g.heartbeat(&join("a"), &settings(), &counts(), now);
        assert_eq!((r.error_code, r.member_epoch), (0, 1));
        assert_eq!(parts(&from_owned(r.assignment.as_ref().unwrap())).len(), 6);
        owned.insert(
            "a".to_string(),
            (r.member_epoch, from_owned(&r.assignment.unwrap())),
        );
        // b joins: a must give up 3 partitions before b gets them.
        let r = g.heartbeat(&join("b"), &settings(), &counts(), now);
        assert_eq!(r.error_code, 0);
        let b_first = from_owned(&r.assignment.unwrap());
        assert!(
            parts(&b_first).is_empty(),
            "b gets nothing a still holds: {b_first:?}"
        );
        owned.insert("b".to_string(), (r.member_epoch, b_first));
        settle(&mut g, &mut owned, now);
        let a = parts(&owned["a"].1);
        let b = parts(&owned["b"].1);
        assert_eq!((a.len(), b.len()), (3, 3));
        assert!(a.is_disjoint(&b));
        // c joins and b leaves: everything still covered exactly once.
        let r = g.heartbeat(&join("c"), &settings(), &counts(), now);
        owned.insert(
            "c".to_string(),
            (
                r.member_epoch,
                r.assignment.map(|a| from_owned(&a)).unwrap_or_default(),
            ),
        );
        let left = g.heartbeat(
            &beat("b", owned["b"].0, &owned["b"].1),
            &settings(),
            &counts(),
            now,
        );
        assert_eq!(left.error_code, 0);
        let mut leave = beat("b", -1, &Assignment::new());
        leave.member_epoch = -1;
        assert_eq!(
            g.heartbeat(&leave, &settings(), &counts(), now).error_code,
            0
        );
        owned.remove("b");
        settle(&mut g, &mut owned, now);
        let a = parts(&owned["a"].1);
        let c = parts(&owned["c"].1);
        assert_eq!(a.len() + c.len(), 6);
        assert!(a.is_disjoint(&c));
    }

    #[test]
    fn stale_epochs_are_fenced_and_commits_checked() {
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let r = g.heartbeat(&join("a"), &settings(), &counts(), now);
        let epoch = r.member_epoch;
        let wrong = g.heartbeat(
            &beat("a", epoch + 5, &Assignment::new()),
            &settings(),
            &counts(),
            now,
        );
        assert_eq!(wrong.error_code, codes::FENCED_MEMBER_EPOCH);
        let unknown = g.heartbeat(
            &beat("zz", 1, &Assignment::new()),
            &settings(),
            &counts(),
            now,
        );
        assert_eq!(unknown.error_code, code::UNKNOWN_MEMBER_ID);
        assert_eq!(g.check_commit("a", epoch), Ok(()));
        assert_eq!(
            g.check_commit("a", epoch - 1),
            Err(codes::STALE_MEMBER_EPOCH)
        );
        assert_eq!(
            g.check_commit("a", epoch + 1),
            Err(codes::FENCED_MEMBER_EPOCH)
        );
        assert_eq!(g.check_commit("", -1), Err(code::UNKNOWN_MEMBER_ID));
        let mut bad = join("x");
        bad.server_assignor = Some("magic".into());
        assert_eq!(
            g.heartbeat(&bad, &settings(), &counts(), now).error_code,
            codes::UNSUPPORTED_ASSIGNOR
        );
    }

    #[test]
    fn a_silent_member_is_fenced_and_its_partitions_move() {
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let mut owned = BTreeMap::new();
        for id in ["a", "b"] {
            let r = g.heartbeat(&join(id), &settings(), &counts(), now);
            owned.insert(
                id.to_string(),
                (
                    r.member_epoch,
                    r.assignment.map(|a| from_owned(&a)).unwrap_or_default(),
                ),
            );
        }
        settle(&mut g, &mut owned, now);
        let later = now + Duration::from_secs(30);
        let (e, a) = owned["a"].clone();
        let _ = g.heartbeat(&beat("a", e, &a), &settings(), &counts(), later);
        g.tick(&settings(), now + Duration::from_secs(50));
        assert!(!g.members.contains_key("b"));
        owned.remove("b");
        settle(&mut g, &mut owned, now + Duration::from_secs(50));
        assert_eq!(parts(&owned["a"].1).len(), 6);
    }

    #[test]
    fn the_assignor_is_sticky_and_balanced() {
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        for id in ["a", "b", "c"] {
            let _ = g.heartbeat(&join(id), &settings(), &counts(), now);
        }
        let first = g.target.clone();
        let sizes: Vec<usize> = first.values().map(count).collect();
        assert_eq!(sizes, vec![2, 2, 2]);
        // A fourth member takes partitions without the others swapping theirs.
        let _ = g.heartbeat(&join("d"), &settings(), &counts(), now);
        for id in ["a", "b", "c"] {
            let kept = intersect(&first[id], &g.target[id]);
            assert!(
                count(&kept) >= 1,
                "{id} lost everything: {:?} -> {:?}",
                first[id],
                g.target[id]
            );
        }
        assert_eq!(g.target.values().map(count).sum::<usize>(), 6);
    }

    #[test]
    fn a_regex_subscription_follows_the_topics_that_match() {
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let mut req = join("a");
        req.subscribed_topic_names = None;
        req.subscribed_topic_regex = Some("ord.*".into());
        let r = g.heartbeat(&req, &settings(), &counts(), now);
        assert_eq!(r.error_code, 0);
        // Whole names only: "ord.*" matches "orders", not "other".
        assert_eq!(
            g.subscribed_topics(),
            BTreeSet::from(["orders".to_string()])
        );
        let got = from_owned(&r.assignment.unwrap());
        assert_eq!(parts(&got).len(), 6);
        // A new matching topic appears: the next heartbeat takes it in.
        let mut more = counts();
        more.insert("ordinals".into(), 3);
        let r = g.heartbeat(&beat("a", r.member_epoch, &got), &settings(), &more, now);
        let got = from_owned(&r.assignment.unwrap());
        assert_eq!(got.get("ordinals").map(BTreeSet::len), Some(3));
        // The pattern survives a snapshot.
        let back = ConsumerGroup::restore("g", g.snapshot(), now);
        assert_eq!(
            back.members["a"]
                .regex
                .as_ref()
                .map(|r| unanchored(r.as_str())),
            Some("ord.*")
        );
        // A broken pattern is refused with Kafka's code.
        let mut bad = join("b");
        bad.subscribed_topic_regex = Some("(".into());
        assert_eq!(
            g.heartbeat(&bad, &settings(), &counts(), now).error_code,
            codes::INVALID_REGULAR_EXPRESSION
        );
    }

    #[test]
    fn a_snapshot_restores_epochs_and_assignments() {
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g");
        let mut owned = BTreeMap::new();
        let r = g.heartbeat(&join("a"), &settings(), &counts(), now);
        owned.insert(
            "a".to_string(),
            (r.member_epoch, from_owned(&r.assignment.unwrap())),
        );
        settle(&mut g, &mut owned, now);
        let mut back = ConsumerGroup::restore("g", g.snapshot(), now);
        let (e, a) = owned["a"].clone();
        let r = back.heartbeat(&beat("a", e, &a), &settings(), &counts(), now);
        assert_eq!((r.error_code, r.member_epoch), (0, e));
        assert_eq!(back.members["a"].assigned, a);
    }
}
