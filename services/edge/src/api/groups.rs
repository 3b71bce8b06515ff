//! Consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, ListGroups, DescribeGroups and DeleteGroups, translated into
//! calls to the groups service (the offset APIs are in `offsets_commit.rs`
//! and share the routing here).
//!
//! Routing. A group lives on shard `javaHash(group_id) % N` of
//! `__consumer_offsets`, and only the groups node owning that shard (named in
//! the watched metadata, `ClusterMetadata::group_coordinator`) serves it. As
//! with partition leaders, clients never see that node: FindCoordinator names
//! the answering edge whenever the shard has an owner, and the edge forwards
//! every group call to the owner itself. A shard moving between groups nodes
//! therefore does not move the client's coordinator; the client sees a
//! retriable error only if the move takes longer than the edge's retry:
//!
//! - no `__consumer_offsets` yet, or a shard with no owner:
//!   COORDINATOR_NOT_AVAILABLE (the client finds the coordinator again);
//! - the owner answers NOT_COORDINATOR (the shard just moved): wait briefly
//!   for the metadata to name the new owner and call it, at most
//!   [`RETRIES`] times within the call's timeout, else pass NOT_COORDINATOR
//!   on;
//! - the owner cannot be reached: COORDINATOR_NOT_AVAILABLE, unless the
//!   metadata already names another owner (then it is asked instead);
//! - the call's deadline passes: REQUEST_TIMED_OUT for offset commits (the
//!   client retries the commit), COORDINATOR_NOT_AVAILABLE otherwise;
//! - every error code in the groups node's answer is Kafka's own and passes
//!   through unchanged.
//!
//! Requests about several groups (DescribeGroups, DeleteGroups, OffsetFetch
//! v8) are split by owner; ListGroups asks every live groups node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
    delete_groups_response::DeletableGroupResult,
};
use kafka_protocol::protocol::StrBytes;
use runnel_cluster::{ClusterMetadata, GroupsNodeRecord, OFFSETS_TOPIC};
use runnel_proto::groups::v1 as pb;
use runnel_proto::groups::v1::groups_service_client::GroupsServiceClient;
use tonic::transport::Channel;

use super::Ctx;
use crate::error::code;
use crate::frame::str_bytes;
use crate::registry::EdgeRecord;
use crate::state::{Edge, KafkaError};

pub(super) type Client = GroupsServiceClient<Channel>;

/// How many times a call is repeated after the owner answered
/// NOT_COORDINATOR (or could not be reached) and the shard moved.
pub(super) const RETRIES: usize = 2;

/// How long one retry waits for the metadata to name a shard's new owner.
const MOVE_WAIT: Duration = Duration::from_secs(2);

/// Time a JoinGroup call gets beyond the group's rebalance timeout, as the
/// Java client's own request timeout for JoinGroup does.
const JOIN_GRACE: Duration = Duration::from_secs(5);

/// Kafka's FindCoordinator key types.
const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

/// No ACLs yet: every group operation is allowed. Bits of Kafka's
/// AclOperation codes a group supports: READ 3, DELETE 6, DESCRIBE 8.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// Kafka's "authorized operations not asked for".
const OPERATIONS_OMITTED: i32 = i32::MIN;

/// What a call's deadline passing means to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnTimeout {
    /// REQUEST_TIMED_OUT: the client retries the same request (commits).
    TimedOut,
    /// COORDINATOR_NOT_AVAILABLE: the client finds the coordinator again.
    Refind,
}

impl OnTimeout {
    fn code(self) -> i16 {
        match self {
            OnTimeout::TimedOut => code::REQUEST_TIMED_OUT,
            OnTimeout::Refind => code::COORDINATOR_NOT_AVAILABLE,
        }
    }
}

/// A Kafka error code carried in a groups-service answer (an `int32` on the
/// wire); one that does not fit Kafka's `int16` is a server error.
pub(super) fn kafka_code(c: i32) -> i16 {
    i16::try_from(c).unwrap_or(code::UNKNOWN_SERVER_ERROR)
}

/// The groups node that owns a group's shard.
pub(super) fn owner(md: &ClusterMetadata, group_id: &str) -> Result<GroupsNodeRecord, KafkaError> {
    match md.group_coordinator(group_id) {
        None => Err(KafkaError::new(
            code::COORDINATOR_NOT_AVAILABLE,
            format!("{OFFSETS_TOPIC} does not exist yet"),
        )),
        Some((shard, None)) => Err(KafkaError::new(
            code::COORDINATOR_NOT_AVAILABLE,
            format!("shard {shard} of the consumer groups has no groups node right now"),
        )),
        Some((_, Some(node))) => Ok(node.clone()),
    }
}

/// Whether the metadata names an owner for the group other than `from`.
fn moved(md: &ClusterMetadata, group_id: &str, from: &GroupsNodeRecord) -> bool {
    matches!(md.group_coordinator(group_id), Some((_, Some(n))) if n != from)
}

/// Waits up to `wait` for the group's shard to get an owner other than
/// `from`.
async fn wait_moved(edge: &Edge, group_id: &str, from: &GroupsNodeRecord, wait: Duration) -> bool {
    if moved(&edge.metadata(), group_id, from) {
        return true;
    }
    !wait.is_zero()
        && edge
            .watcher
            .wait_until(wait, |md| moved(md, group_id, from))
            .await
            .is_some()
}

/// Whether a failed call never reached a live groups node.
fn unreachable(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
}

/// The Kafka code of a failed call to a groups node. Anything that looks
/// like the node being away sends the client to find its coordinator again.
pub(super) fn status_error(s: &tonic::Status, on_timeout: OnTimeout) -> KafkaError {
    let code = match s.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => on_timeout.code(),
        tonic::Code::Unavailable
        | tonic::Code::Unknown
        | tonic::Code::Aborted
        | tonic::Code::ResourceExhausted
        | tonic::Code::FailedPrecondition => code::COORDINATOR_NOT_AVAILABLE,
        tonic::Code::InvalidArgument => code::INVALID_REQUEST,
        _ => code::UNKNOWN_SERVER_ERROR,
    };
    KafkaError::new(code, s.message())
}

/// Calls the groups node that owns `group_id`, with `timeout` for all
/// attempts together. `call` gets a client and the time left; `error_of`
/// reads the answer's Kafka error code. When the owner answers
/// NOT_COORDINATOR, or cannot be reached while the metadata already names
/// another owner, the call goes to the new owner (at most [`RETRIES`] times).
pub(super) async fn call_owner<T, F, Fut>(
    edge: &Edge,
    group_id: &str,
    timeout: Duration,
    on_timeout: OnTimeout,
    error_of: impl Fn(&T) -> i32,
    mut call: F,
) -> Result<T, KafkaError>
where
    F: FnMut(Client, Duration) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + timeout;
    let mut retries = 0;
    loop {
        let node = owner(&edge.metadata(), group_id)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KafkaError::new(
                on_timeout.code(),
                "the group's coordinator did not answer in time",
            ));
        }
        let outcome = match edge.groups(&node.address) {
            Ok(client) => call(client, left).await.map(tonic::Response::into_inner),
            Err(s) => Err(s),
        };
        let wait = match &outcome {
            Ok(answer) if kafka_code(error_of(answer)) == code::NOT_COORDINATOR => Some(MOVE_WAIT),
            // A node that is gone only helps if its successor is known.
            Err(s) if unreachable(s) => Some(Duration::ZERO),
            _ => None,
        };
        if let Some(wait) = wait
            && retries < RETRIES
        {
            let wait = wait.min(deadline.saturating_duration_since(Instant::now()));
            if wait_moved(edge, group_id, &node, wait).await {
                tracing::debug!(group_id, from = %node.address, "group shard moved; calling its new owner");
                retries += 1;
                continue;
            }
        }
        return outcome.map_err(|s| {
            tracing::debug!(group_id, node = %node.address, error = %s, "call to the group's coordinator failed");
            status_error(&s, on_timeout)
        });
    }
}

/// How [`per_owner`] reads and makes answers of one kind.
pub(super) struct Answers<R> {
    pub id_of: fn(&R) -> &str,
    pub error_of: fn(&R) -> i32,
    /// The answer for a group the edge could not ask.
    pub failed: fn(&str, &KafkaError) -> R,
}

/// For calls about several groups: asks each owner once about its share of
/// `ids` (concurrently), and asks again about the groups answered
/// NOT_COORDINATOR once the metadata shows them moved (at most [`RETRIES`]
/// times). Every id gets an answer; a group with no owner gets
/// COORDINATOR_NOT_AVAILABLE in its own entry.
pub(super) async fn per_owner<R, F, Fut>(
    edge: &Edge,
    ids: Vec<String>,
    timeout: Duration,
    answers: Answers<R>,
    call: F,
) -> HashMap<String, R>
where
    F: Fn(Client, Vec<String>, Duration) -> Fut,
    Fut: Future<Output = Result<Vec<R>, tonic::Status>>,
{
    let deadline = Instant::now() + timeout;
    let mut done: HashMap<String, R> = HashMap::with_capacity(ids.len());
    let mut pending = ids;
    let mut asked: HashMap<String, GroupsNodeRecord> = HashMap::new();
    for round in 0..=RETRIES {
        let md = edge.metadata();
        let mut by_node: BTreeMap<String, (GroupsNodeRecord, Vec<String>)> = BTreeMap::new();
        for id in pending.drain(..) {
            match owner(&md, &id) {
                Ok(node) => by_node
                    .entry(node.address.clone())
                    .or_insert_with(|| (node, Vec::new()))
                    .1
                    .push(id),
                Err(e) => {
                    let answer = (answers.failed)(&id, &e);
                    done.insert(id, answer);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let calls = by_node.into_values().map(|(node, ids)| {
            let call = &call;
            async move {
                let outcome = match edge.groups(&node.address) {
                    Ok(client) => call(client, ids.clone(), left).await,
                    Err(s) => Err(s),
                };
                (node, ids, outcome)
            }
        });
        for (node, ids, outcome) in join_all(calls).await {
            match outcome {
                Err(s) => {
                    tracing::debug!(node = %node.address, error = %s, "call to a groups node failed");
                    let e = status_error(&s, OnTimeout::Refind);
                    for id in ids {
                        let answer = (answers.failed)(&id, &e);
                        done.insert(id, answer);
                    }
                }
                Ok(list) => {
                    let mut got: HashMap<String, R> = list
                        .into_iter()
                        .map(|r| ((answers.id_of)(&r).to_string(), r))
                        .collect();
                    for id in ids {
                        let answer = got.remove(&id).unwrap_or_else(|| {
                            let e = KafkaError::new(
                                code::UNKNOWN_SERVER_ERROR,
                                "the groups node did not answer for this group",
                            );
                            (answers.failed)(&id, &e)
                        });
                        if kafka_code((answers.error_of)(&answer)) == code::NOT_COORDINATOR
                            && round < RETRIES
                        {
                            pending.push(id.clone());
                            asked.insert(id.clone(), node.clone());
                        }
                        done.insert(id, answer);
                    }
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        // Ask again only about the groups whose shard has a new owner; the
        // others keep their NOT_COORDINATOR answer.
        let any_moved = |md: &ClusterMetadata| {
            pending
                .iter()
                .any(|id| asked.get(id).is_some_and(|from| moved(md, id, from)))
        };
        let wait = MOVE_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        if !any_moved(&edge.metadata()) && edge.watcher.wait_until(wait, any_moved).await.is_none()
        {
            break;
        }
        let md = edge.metadata();
        pending.retain(|id| asked.get(id).is_some_and(|from| moved(&md, id, from)));
    }
    done
}

/// Each distinct id once, in the order first asked.
fn distinct<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id))
        .map(str::to_string)
        .collect()
}

/// `None` for an empty string: the nullable strings of newer versions.
fn non_empty(s: String) -> Option<StrBytes> {
    (!s.is_empty()).then(|| str_bytes(s))
}

fn opt_str(s: Option<StrBytes>) -> Option<String> {
    s.map(|s| s.to_string())
}

/// The peer as Kafka reports a member's host (`InetAddress.toString()`).
fn client_host(ctx: &Ctx<'_>) -> String {
    format!("/{}", ctx.conn.peer.ip())
}

// ---- FindCoordinator ----

/// Whether the edge can coordinate `key`: a group whose shard has an owner.
/// The answer then names the edge itself (it forwards group calls).
fn coordinator_for(md: &ClusterMetadata, key: &str, key_type: i8) -> Result<(), KafkaError> {
    match key_type {
        KEY_GROUP => owner(md, key).map(|_| ()),
        KEY_TRANSACTION => Err(KafkaError::new(
            code::COORDINATOR_NOT_AVAILABLE,
            "transactions are not supported yet",
        )),
        other => Err(KafkaError::new(
            code::INVALID_REQUEST,
            format!("coordinator key type {other} is not supported"),
        )),
    }
}

/// The edge that answers for a group shard: every edge can forward any
/// group call, but each shard is named to clients as one edge's (rendezvous
/// hashing over the live edges), so a client that asks every broker for its
/// groups (ListGroups) sees each group once, as with Kafka.
pub(super) fn coordinator_edge(
    brokers: &BTreeMap<i32, EdgeRecord>,
    shard: i32,
) -> Option<&EdgeRecord> {
    brokers.values().max_by_key(|e| {
        (
            runnel_records::murmur2(format!("{shard}/{}", e.node_id).as_bytes()),
            e.node_id,
        )
    })
}

/// The FindCoordinator answer for each key: the edge that answers for it,
/// or Kafka's "no node" (-1, "", -1) with the error. v4+ answers per key;
/// v0-3 in the top level.
fn find_coordinator_response(
    version: i16,
    results: Vec<(String, Result<EdgeRecord, KafkaError>)>,
) -> FindCoordinatorResponse {
    let node = |r: &Result<EdgeRecord, KafkaError>| match r {
        Ok(me) => (me.node_id, me.host.clone(), me.port, code::NONE, None),
        Err(e) => (
            -1,
            String::new(),
            -1,
            e.code,
            Some(str_bytes(e.message.clone())),
        ),
    };
    if version >= 4 {
        let coordinators = results
            .into_iter()
            .map(|(key, r)| {
                let (id, host, port, error, message) = node(&r);
                Coordinator::default()
                    .with_key(str_bytes(key))
                    .with_node_id(BrokerId(id))
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_error_code(error)
                    .with_error_message(message)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let r = results
        .into_iter()
        .next()
        .map(|(_, r)| r)
        .unwrap_or_else(|| Err(KafkaError::new(code::INVALID_REQUEST, "no key")));
    let (id, host, port, error, message) = node(&r);
    FindCoordinatorResponse::default()
        .with_error_code(error)
        .with_error_message(message)
        .with_node_id(BrokerId(id))
        .with_host(str_bytes(host))
        .with_port(port)
}

pub fn find_coordinator(
    ctx: &mut Ctx<'_>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let md = ctx.edge.metadata();
    let key_type = if version >= 1 {
        req.key_type
    } else {
        KEY_GROUP
    };
    let keys: Vec<String> = if version >= 4 {
        req.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![req.key.to_string()]
    };
    let brokers = ctx.edge.brokers();
    let results: Vec<(String, Result<EdgeRecord, KafkaError>)> = keys
        .into_iter()
        .map(|key| {
            let r = coordinator_for(&md, &key, key_type).map(|()| {
                let shard = md.group_coordinator(&key).map_or(0, |(shard, _)| shard);
                coordinator_edge(&brokers, shard)
                    .cloned()
                    .unwrap_or_else(|| ctx.edge.me.clone())
            });
            (key, r)
        })
        .collect();
    for (key, r) in &results {
        if let Err(e) = r {
            tracing::debug!(key, key_type, code = e.code, message = %e.message, "no coordinator");
            ctx.note(e.code);
        }
    }
    find_coordinator_response(version, results)
}

// ---- JoinGroup ----

fn join_request(
    req: &JoinGroupRequest,
    version: i16,
    client_id: String,
    client_host: String,
) -> pb::JoinGroupRequest {
    pb::JoinGroupRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: if version >= 5 {
            opt_str(req.group_instance_id.clone())
        } else {
            None
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| pb::Protocol {
                name: p.name.to_string(),
                metadata: p.metadata.clone(),
            })
            .collect(),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        require_known_member_id: version >= 4,
        client_id,
        client_host,
        request_version: i32::from(version),
        reason: if version >= 8 {
            opt_str(req.reason.clone()).unwrap_or_default()
        } else {
            String::new()
        },
    }
}

/// JoinGroup waits for the whole rebalance, so its call may take the
/// group's rebalance timeout and some.
fn join_timeout(req: &pb::JoinGroupRequest) -> Duration {
    Duration::from_millis(u64::try_from(req.rebalance_timeout_ms).unwrap_or(0)) + JOIN_GRACE
}

/// The protocol name of a JoinGroup answer: nullable from v7 (null when
/// none was chosen), an empty string before.
fn join_protocol_name(name: String, version: i16) -> Option<StrBytes> {
    if version >= 7 {
        non_empty(name)
    } else {
        Some(str_bytes(name))
    }
}

fn join_response(a: pb::JoinGroupResponse, version: i16) -> JoinGroupResponse {
    let members = a
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.member_id))
                .with_group_instance_id(if version >= 5 {
                    m.group_instance_id.map(str_bytes)
                } else {
                    None
                })
                .with_metadata(m.metadata)
        })
        .collect();
    JoinGroupResponse::default()
        .with_error_code(kafka_code(a.error_code))
        .with_generation_id(a.generation_id)
        .with_protocol_type(if version >= 7 {
            non_empty(a.protocol_type)
        } else {
            None
        })
        .with_protocol_name(join_protocol_name(a.protocol_name, version))
        .with_leader(str_bytes(a.leader))
        // KIP-814 needs v9; the groups node only asks older clients to
        // skip when told their version, and the field cannot be sent
        // before v9.
        .with_skip_assignment(version >= 9 && a.skip_assignment)
        .with_member_id(str_bytes(a.member_id))
        .with_members(members)
}

/// A JoinGroup answer the edge makes itself: Kafka's error answer keeps the
/// member id the client sent.
fn join_error(member_id: &StrBytes, version: i16, error: i16) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(error)
        .with_generation_id(-1)
        .with_protocol_type(None)
        .with_protocol_name(join_protocol_name(String::new(), version))
        .with_leader(StrBytes::default())
        .with_member_id(member_id.clone())
}

pub async fn join(ctx: &mut Ctx<'_>, req: JoinGroupRequest, version: i16) -> JoinGroupResponse {
    if req.group_id.is_empty() {
        ctx.note(code::INVALID_GROUP_ID);
        return join_error(&req.member_id, version, code::INVALID_GROUP_ID);
    }
    let client_id = ctx.conn.client_id.clone().unwrap_or_default();
    let request = join_request(&req, version, client_id, client_host(ctx));
    let timeout = join_timeout(&request);
    let outcome = call_owner(
        ctx.edge,
        &request.group_id,
        timeout,
        OnTimeout::Refind,
        |a: &pb::JoinGroupResponse| a.error_code,
        |mut client, left| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(left);
            async move { client.join_group(call).await }
        },
    )
    .await;
    let response = match outcome {
        Ok(a) => join_response(a, version),
        Err(e) => join_error(&req.member_id, version, e.code),
    };
    ctx.note(response.error_code);
    response
}

// ---- SyncGroup ----

fn sync_request(req: &SyncGroupRequest, version: i16) -> pb::SyncGroupRequest {
    let v5 = |s: &Option<StrBytes>| {
        if version >= 5 {
            opt_str(s.clone()).unwrap_or_default()
        } else {
            String::new()
        }
    };
    pb::SyncGroupRequest {
        group_id: req.group_id.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: if version >= 3 {
            opt_str(req.group_instance_id.clone())
        } else {
            None
        },
        protocol_type: v5(&req.protocol_type),
        protocol_name: v5(&req.protocol_name),
        assignments: req
            .assignments
            .iter()
            .map(|a| pb::Assignment {
                member_id: a.member_id.to_string(),
                assignment: a.assignment.clone(),
            })
            .collect(),
    }
}

fn sync_response(a: pb::SyncGroupResponse, version: i16) -> SyncGroupResponse {
    let mut r = SyncGroupResponse::default()
        .with_error_code(kafka_code(a.error_code))
        .with_assignment(a.assignment);
    if version >= 5 {
        r.protocol_type = non_empty(a.protocol_type);
        r.protocol_name = non_empty(a.protocol_name);
    }
    r
}

pub async fn sync(ctx: &mut Ctx<'_>, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    if req.group_id.is_empty() {
        ctx.note(code::INVALID_GROUP_ID);
        return SyncGroupResponse::default().with_error_code(code::INVALID_GROUP_ID);
    }
    let request = sync_request(&req, version);
    let outcome = call_owner(
        ctx.edge,
        &request.group_id,
        ctx.edge.rpc_timeout(),
        OnTimeout::Refind,
        |a: &pb::SyncGroupResponse| a.error_code,
        |mut client, left| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(left);
            async move { client.sync_group(call).await }
        },
    )
    .await;
    let response = match outcome {
        Ok(a) => sync_response(a, version),
        Err(e) => SyncGroupResponse::default().with_error_code(e.code),
    };
    ctx.note(response.error_code);
    response
}

// ---- Heartbeat ----

pub async fn heartbeat(
    ctx: &mut Ctx<'_>,
    req: HeartbeatRequest,
    version: i16,
) -> HeartbeatResponse {
    let error = if req.group_id.is_empty() {
        code::INVALID_GROUP_ID
    } else {
        let request = pb::HeartbeatRequest {
            group_id: req.group_id.to_string(),
            generation_id: req.generation_id,
            member_id: req.member_id.to_string(),
            group_instance_id: if version >= 3 {
                opt_str(req.group_instance_id)
            } else {
                None
            },
        };
        let outcome = call_owner(
            ctx.edge,
            &request.group_id,
            ctx.edge.rpc_timeout(),
            OnTimeout::Refind,
            |a: &pb::HeartbeatResponse| a.error_code,
            |mut client, left| {
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(left);
                async move { client.heartbeat(call).await }
            },
        )
        .await;
        match outcome {
            Ok(a) => kafka_code(a.error_code),
            Err(e) => e.code,
        }
    };
    ctx.note(error);
    HeartbeatResponse::default().with_error_code(error)
}

// ---- LeaveGroup ----

/// v0-2 name one dynamic member; v3+ a batch (KIP-345), v5+ with reasons.
fn leave_request(req: &LeaveGroupRequest, version: i16) -> pb::LeaveGroupRequest {
    let members = if version >= 3 {
        req.members
            .iter()
            .map(|m| pb::LeavingMember {
                member_id: m.member_id.to_string(),
                group_instance_id: opt_str(m.group_instance_id.clone()),
                reason: if version >= 5 {
                    opt_str(m.reason.clone()).unwrap_or_default()
                } else {
                    String::new()
                },
            })
            .collect()
    } else {
        vec![pb::LeavingMember {
            member_id: req.member_id.to_string(),
            group_instance_id: None,
            reason: String::new(),
        }]
    };
    pb::LeaveGroupRequest {
        group_id: req.group_id.to_string(),
        members,
    }
}

/// v3+ carry each member's error; v0-2 only a top-level one, which is the
/// first member error when the group itself had none (as Kafka does).
fn leave_response(a: pb::LeaveGroupResponse, version: i16) -> LeaveGroupResponse {
    let top = kafka_code(a.error_code);
    if version >= 3 {
        let members = a
            .members
            .into_iter()
            .map(|m| {
                MemberResponse::default()
                    .with_member_id(str_bytes(m.member_id))
                    .with_group_instance_id(m.group_instance_id.map(str_bytes))
                    .with_error_code(kafka_code(m.error_code))
            })
            .collect();
        return LeaveGroupResponse::default()
            .with_error_code(top)
            .with_members(members);
    }
    let first_member_error = a
        .members
        .iter()
        .map(|m| kafka_code(m.error_code))
        .find(|&c| c != code::NONE)
        .unwrap_or(code::NONE);
    LeaveGroupResponse::default().with_error_code(if top != code::NONE {
        top
    } else {
        first_member_error
    })
}

pub async fn leave(ctx: &mut Ctx<'_>, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    if req.group_id.is_empty() {
        ctx.note(code::INVALID_GROUP_ID);
        return LeaveGroupResponse::default().with_error_code(code::INVALID_GROUP_ID);
    }
    let request = leave_request(&req, version);
    let outcome = call_owner(
        ctx.edge,
        &request.group_id,
        ctx.edge.rpc_timeout(),
        OnTimeout::Refind,
        |a: &pb::LeaveGroupResponse| a.error_code,
        |mut client, left| {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(left);
            async move { client.leave_group(call).await }
        },
    )
    .await;
    let response = match outcome {
        Ok(a) => leave_response(a, version),
        Err(e) => LeaveGroupResponse::default().with_error_code(e.code),
    };
    ctx.note(response.error_code);
    for m in &response.members {
        ctx.note(m.error_code);
    }
    response
}

// ---- ListGroups ----

/// Merges the groups each node listed (a group appears once, even while a
/// shard is handed over) and the nodes' failures: the response carries an
/// error only when no node answered.
fn list_response(
    outcomes: Vec<Result<pb::ListGroupsResponse, KafkaError>>,
    version: i16,
) -> ListGroupsResponse {
    let mut groups: BTreeMap<String, pb::ListedGroup> = BTreeMap::new();
    let mut first_error = None;
    let mut answered = false;
    for outcome in outcomes {
        match outcome {
            Ok(a) => {
                let error = kafka_code(a.error_code);
                if error == code::NONE {
                    answered = true;
                } else {
                    first_error.get_or_insert(error);
                }
                for g in a.groups {
                    groups.entry(g.group_id.clone()).or_insert(g);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e.code);
            }
        }
    }
    let error = match first_error {
        Some(e) if !answered => e,
        _ => code::NONE,
    };
    let groups = groups
        .into_values()
        .map(|g| {
            let mut listed = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.group_id)))
                .with_protocol_type(str_bytes(g.protocol_type));
            if version >= 4 {
                listed.group_state = str_bytes(g.state);
            }
            if version >= 5 {
                listed.group_type = str_bytes(g.group_type);
            }
            listed
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(error)
        .with_groups(groups)
}

pub async fn list(ctx: &mut Ctx<'_>, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let edge = ctx.edge;
    let md = edge.metadata();
    if md.groups_nodes.is_empty() {
        // Without the offsets topic no group can exist yet; with it, the
        // groups are somewhere the edge cannot reach now.
        let error = if md.group_shard_count().is_none() {
            code::NONE
        } else {
            code::COORDINATOR_NOT_AVAILABLE
        };
        ctx.note(error);
        return ListGroupsResponse::default().with_error_code(error);
    }
    let request = pb::ListGroupsRequest {
        states_filter: if version >= 4 {
            req.states_filter.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        },
        types_filter: if version >= 5 {
            req.types_filter.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        },
        // The edge asks every node itself.
        all_nodes: false,
    };
    let timeout = edge.rpc_timeout();
    let calls = md.groups_nodes.values().map(|node| {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(timeout);
        async move {
            let outcome = match edge.groups(&node.address) {
                Ok(mut client) => client
                    .list_groups(call)
                    .await
                    .map(tonic::Response::into_inner),
                Err(s) => Err(s),
            };
            outcome.map_err(|s| {
                tracing::warn!(node = %node.address, error = %s, "listing the groups of a groups node failed");
                status_error(&s, OnTimeout::Refind)
            })
        }
    });
    let mut response = list_response(join_all(calls).await, version);
    // Only the groups this edge answers for (see `coordinator_edge`).
    if let Some(shards) = md.group_shard_count() {
        let brokers = edge.brokers();
        let me = edge.node_id();
        response.groups.retain(|g| {
            let shard = runnel_cluster::group_shard(g.group_id.0.as_str(), shards);
            coordinator_edge(&brokers, shard).is_none_or(|e| e.node_id == me)
        });
    }
    ctx.note(response.error_code);
    response
}

// ---- DescribeGroups ----

fn described_group(g: &pb::DescribedGroup, version: i16, with_operations: bool) -> DescribedGroup {
    let error = kafka_code(g.error_code);
    let members = g
        .members
        .iter()
        .map(|m| {
            DescribedGroupMember::default()
                .with_member_id(str_bytes(m.member_id.clone()))
                .with_group_instance_id(if version >= 4 {
                    m.group_instance_id.clone().map(str_bytes)
                } else {
                    None
                })
                .with_client_id(str_bytes(m.client_id.clone()))
                .with_client_host(str_bytes(m.client_host.clone()))
                .with_member_metadata(m.metadata.clone())
                .with_member_assignment(m.assignment.clone())
        })
        .collect();
    DescribedGroup::default()
        .with_error_code(error)
        .with_group_id(GroupId(str_bytes(g.group_id.clone())))
        .with_group_state(str_bytes(g.state.clone()))
        .with_protocol_type(str_bytes(g.protocol_type.clone()))
        .with_protocol_data(str_bytes(g.protocol_name.clone()))
        .with_members(members)
        .with_authorized_operations(if version >= 3 && with_operations && error == code::NONE {
            GROUP_OPERATIONS
        } else {
            OPERATIONS_OMITTED
        })
}

fn describe_failed(id: &str, e: &KafkaError) -> pb::DescribedGroup {
    // Kafka's error entry: empty state, protocol and members.
    pb::DescribedGroup {
        error_code: i32::from(e.code),
        group_id: id.to_string(),
        ..Default::default()
    }
}

pub async fn describe(
    ctx: &mut Ctx<'_>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let ids = distinct(req.groups.iter().map(|g| g.as_str()));
    let answers = per_owner(
        ctx.edge,
        ids,
        ctx.edge.rpc_timeout(),
        Answers {
            id_of: |g: &pb::DescribedGroup| g.group_id.as_str(),
            error_of: |g| g.error_code,
            failed: describe_failed,
        },
        |mut client, ids, left| {
            let mut call = tonic::Request::new(pb::DescribeGroupsRequest { group_ids: ids });
            call.set_timeout(left);
            async move {
                client
                    .describe_groups(call)
                    .await
                    .map(|r| r.into_inner().groups)
            }
        },
    )
    .await;
    let with_operations = req.include_authorized_operations;
    let groups: Vec<DescribedGroup> = req
        .groups
        .iter()
        .map(|id| {
            let id = id.as_str();
            match answers.get(id) {
                Some(g) => described_group(g, version, with_operations),
                None => described_group(
                    &describe_failed(
                        id,
                        &KafkaError::new(code::UNKNOWN_SERVER_ERROR, "not asked"),
                    ),
                    version,
                    with_operations,
                ),
            }
        })
        .collect();
    for g in &groups {
        ctx.note(g.error_code);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

// ---- DeleteGroups ----

fn delete_failed(id: &str, e: &KafkaError) -> pb::DeletedGroup {
    pb::DeletedGroup {
        group_id: id.to_string(),
        error_code: i32::from(e.code),
    }
}

pub async fn delete(
    ctx: &mut Ctx<'_>,
    req: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    // Kafka answers each distinct group once.
    let ids = distinct(req.groups_names.iter().map(|g| g.as_str()));
    let answers = per_owner(
        ctx.edge,
        ids.clone(),
        ctx.edge.rpc_timeout(),
        Answers {
            id_of: |g: &pb::DeletedGroup| g.group_id.as_str(),
            error_of: |g| g.error_code,
            failed: delete_failed,
        },
        |mut client, ids, left| {
            let mut call = tonic::Request::new(pb::DeleteGroupsRequest { group_ids: ids });
            call.set_timeout(left);
            async move {
                client
                    .delete_groups(call)
                    .await
                    .map(|r| r.into_inner().groups)
            }
        },
    )
    .await;
    let results: Vec<DeletableGroupResult> = ids
        .into_iter()
        .map(|id| {
            let error = answers
                .get(&id)
                .map_or(code::UNKNOWN_SERVER_ERROR, |g| kafka_code(g.error_code));
            DeletableGroupResult::default()
                .with_group_id(GroupId(str_bytes(id)))
                .with_error_code(error)
        })
        .collect();
    for r in &results {
        ctx.note(r.error_code);
    }
    DeleteGroupsResponse::default().with_results(results)
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::protocol::{Decodable, Encodable};
    use runnel_cluster::{TopicRecord, TopicState};

    pub(crate) fn node(id: i32) -> GroupsNodeRecord {
        GroupsNodeRecord {
            node_id: id,
            address: format!("10.0.0.{id}:7700"),
            started_at_ms: 0,
        }
    }

    /// Metadata with `shards` consumer-group shards, each owned as `owners`
    /// says.
    pub(crate) fn metadata(shards: i32, owners: &[(i32, GroupsNodeRecord)]) -> ClusterMetadata {
        let mut md = ClusterMetadata::default();
        md.topics.insert(
            OFFSETS_TOPIC.to_string(),
            TopicState {
                record: TopicRecord {
                    name: OFFSETS_TOPIC.to_string(),
                    topic_id: String::new(),
                    partitions: shards,
                    replication_factor: 1,
                    configs: Default::default(),
                    created_at_ms: 0,
                },
                config: Default::default(),
                partitions: Default::default(),
            },
        );
        for (shard, owner) in owners {
            md.groups_nodes.insert(owner.node_id, owner.clone());
            md.group_shards.insert(*shard, owner.clone());
        }
        md
    }

    /// Encodes a response and decodes it back at `version`: what a client
    /// would read. Fails the test when the crate refuses to encode it (a
    /// field set that the version does not have).
    pub(crate) fn wire<T: Encodable + Decodable>(msg: &T, version: i16) -> T {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("v{version}: {e}"));
        let mut bytes = buf.freeze();
        let back = T::decode(&mut bytes, version).unwrap_or_else(|e| panic!("v{version}: {e}"));
        assert!(bytes.is_empty(), "v{version}: bytes left over");
        back
    }

    fn me() -> EdgeRecord {
        EdgeRecord {
            node_id: 7,
            host: "edge.example".into(),
            port: 9092,
            started_at_ms: 0,
        }
    }

    #[test]
    fn coordinator_needs_an_owned_shard() {
        // No __consumer_offsets at all.
        let none = ClusterMetadata::default();
        let e = coordinator_for(&none, "g", KEY_GROUP).unwrap_err();
        assert_eq!(e.code, code::COORDINATOR_NOT_AVAILABLE);
        // One shard, no owner; then owned.
        let unowned = metadata(1, &[]);
        assert_eq!(
            coordinator_for(&unowned, "g", KEY_GROUP).unwrap_err().code,
            code::COORDINATOR_NOT_AVAILABLE
        );
        let owned = metadata(1, &[(0, node(1))]);
        assert!(coordinator_for(&owned, "g", KEY_GROUP).is_ok());
        assert_eq!(owner(&owned, "g").unwrap(), node(1));
        // Transactions are not there yet; unknown key types are invalid.
        let e = coordinator_for(&owned, "tx", KEY_TRANSACTION).unwrap_err();
        assert_eq!(e.code, code::COORDINATOR_NOT_AVAILABLE);
        assert!(e.message.contains("transactions"), "{}", e.message);
        assert_eq!(
            coordinator_for(&owned, "g", 9).unwrap_err().code,
            code::INVALID_REQUEST
        );
    }

    #[test]
    fn the_owner_is_the_groups_shard_owner() {
        // "my-group" is on shard 240985886 % 50 = 36 (Kafka's placement).
        let md = metadata(50, &[(36, node(2)), (0, node(1))]);
        assert_eq!(owner(&md, "my-group").unwrap(), node(2));
        assert_eq!(owner(&md, "").unwrap(), node(1));
        let moved_md = metadata(50, &[(36, node(3))]);
        assert!(moved(&moved_md, "my-group", &node(2)));
        assert!(!moved(&md, "my-group", &node(2)));
        // An unowned shard is not a move (there is no one to ask yet).
        assert!(!moved(&metadata(50, &[]), "my-group", &node(2)));
    }

    #[test]
    fn each_shard_is_answered_for_by_one_edge() {
        let edge = |id: i32| EdgeRecord {
            node_id: id,
            host: format!("e{id}"),
            port: 9092,
            started_at_ms: 0,
        };
        let brokers: BTreeMap<i32, EdgeRecord> = [(1, edge(1)), (2, edge(2))].into();
        let picks: Vec<i32> = (0..50)
            .map(|s| {
                coordinator_edge(&brokers, s)
                    .map(|e| e.node_id)
                    .unwrap_or(-1)
            })
            .collect();
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
        // The same answer every time, on every edge.
        let again: Vec<i32> = (0..50)
            .map(|s| {
                coordinator_edge(&brokers, s)
                    .map(|e| e.node_id)
                    .unwrap_or(-1)
            })
            .collect();
        assert_eq!(picks, again);
        assert!(coordinator_edge(&BTreeMap::new(), 3).is_none());
    }

    #[test]
    fn find_coordinator_names_this_edge_or_no_node() {
        let md = metadata(1, &[(0, node(1))]);
        for v in 0..=3 {
            let ok = wire(
                &find_coordinator_response(v, vec![("g".into(), Ok(me()))]),
                v,
            );
            assert_eq!(
                (ok.error_code, ok.node_id, ok.host.as_str(), ok.port),
                (0, BrokerId(7), "edge.example", 9092),
                "v{v}"
            );
            let err = coordinator_for(&ClusterMetadata::default(), "g", KEY_GROUP).map(|()| me());
            let err = wire(&find_coordinator_response(v, vec![("g".into(), err)]), v);
            assert_eq!(
                (err.error_code, err.node_id, err.host.as_str(), err.port),
                (15, BrokerId(-1), "", -1),
                "v{v}"
            );
            if v >= 1 {
                assert!(err.error_message.is_some());
            }
        }
        // v4: one entry per key, nothing in the top level.
        let results = vec![
            (
                "a".to_string(),
                coordinator_for(&md, "a", KEY_GROUP).map(|()| me()),
            ),
            (
                "t".to_string(),
                coordinator_for(&md, "t", KEY_TRANSACTION).map(|()| me()),
            ),
        ];
        let r = wire(&find_coordinator_response(4, results), 4);
        assert_eq!(r.coordinators.len(), 2);
        let (a, t) = (&r.coordinators[0], &r.coordinators[1]);
        assert_eq!(
            (a.key.as_str(), a.node_id, a.port, a.error_code),
            ("a", BrokerId(7), 9092, 0)
        );
        assert_eq!(
            (t.key.as_str(), t.node_id, t.port, t.error_code),
            ("t", BrokerId(-1), -1, 15)
        );
    }

    fn join_req(version: i16) -> JoinGroupRequest {
        let mut r = JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_session_timeout_ms(10_000)
            .with_member_id(str_bytes("m-1"))
            .with_protocol_type(str_bytes("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(str_bytes("range"))
                    .with_metadata(Bytes::from_static(b"meta")),
            ]);
        if version >= 1 {
            r.rebalance_timeout_ms = 60_000;
        }
        if version >= 5 {
            r.group_instance_id = Some(str_bytes("instance-1"));
        }
        if version >= 8 {
            r.reason = Some(str_bytes("rejoining"));
        }
        r
    }

    #[test]
    fn join_request_follows_the_version() {
        let v0 = join_request(&join_req(0), 0, "app".into(), "/10.1.2.3".into());
        // No rebalance timeout in v0: Kafka uses the session timeout.
        assert_eq!(v0.rebalance_timeout_ms, 10_000);
        assert_eq!(join_timeout(&v0), Duration::from_secs(15));
        assert!(!v0.require_known_member_id);
        assert_eq!(v0.request_version, 0);
        assert_eq!(
            (v0.client_id.as_str(), v0.client_host.as_str()),
            ("app", "/10.1.2.3")
        );
        assert_eq!(v0.protocols[0].name, "range");
        assert_eq!(&v0.protocols[0].metadata[..], b"meta");

        let v3 = join_request(&join_req(3), 3, String::new(), String::new());
        assert_eq!(v3.rebalance_timeout_ms, 60_000);
        assert_eq!(join_timeout(&v3), Duration::from_secs(65));
        assert!(!v3.require_known_member_id);
        // KIP-394: from v4 a new member must come back with its id.
        let v4 = join_request(&join_req(4), 4, String::new(), String::new());
        assert!(v4.require_known_member_id);
        assert_eq!(v4.group_instance_id, None);
        let v5 = join_request(&join_req(5), 5, String::new(), String::new());
        assert_eq!(v5.group_instance_id.as_deref(), Some("instance-1"));
        assert_eq!(v5.reason, "");
        let v8 = join_request(&join_req(8), 8, String::new(), String::new());
        assert_eq!(v8.reason, "rejoining");
        assert_eq!(v8.request_version, 8);
    }

    fn join_answer() -> pb::JoinGroupResponse {
        pb::JoinGroupResponse {
            error_code: 0,
            error_message: String::new(),
            generation_id: 3,
            protocol_type: "consumer".into(),
            protocol_name: "range".into(),
            leader: "m-1".into(),
            member_id: "m-1".into(),
            members: vec![pb::JoinMember {
                member_id: "m-1".into(),
                group_instance_id: Some("instance-1".into()),
                metadata: Bytes::from_static(b"meta"),
            }],
            skip_assignment: true,
        }
    }

    #[test]
    fn join_response_encodes_at_every_version() {
        for v in 0..=9 {
            let r = wire(&join_response(join_answer(), v), v);
            assert_eq!((r.error_code, r.generation_id), (0, 3));
            assert_eq!(r.leader.as_str(), "m-1");
            assert_eq!(r.protocol_name.as_deref(), Some("range"));
            assert_eq!(
                r.protocol_type.as_deref(),
                (v >= 7).then_some("consumer"),
                "v{v}"
            );
            // Only v9 can tell the leader to skip the assignment.
            assert_eq!(r.skip_assignment, v >= 9, "v{v}");
            assert_eq!(&r.members[0].metadata[..], b"meta");
            assert_eq!(
                r.members[0].group_instance_id.as_deref(),
                (v >= 5).then_some("instance-1"),
                "v{v}"
            );
        }
    }

    #[test]
    fn join_errors_keep_the_member_id_and_a_valid_protocol_name() {
        let member = str_bytes("m-9");
        for v in 0..=9 {
            let r = wire(&join_error(&member, v, code::NOT_COORDINATOR), v);
            assert_eq!((r.error_code, r.generation_id), (16, -1));
            assert_eq!(r.member_id.as_str(), "m-9");
            // A non-null empty name before v7 (the field is not nullable
            // there), null after.
            assert_eq!(r.protocol_name.as_deref(), (v < 7).then_some(""), "v{v}");
            // The groups node's error answer maps the same way.
            let a = pb::JoinGroupResponse {
                error_code: 79,
                member_id: "m-new".into(),
                generation_id: -1,
                ..Default::default()
            };
            let r = wire(&join_response(a, v), v);
            assert_eq!((r.error_code, r.member_id.as_str()), (79, "m-new"));
            assert_eq!(r.protocol_name.as_deref(), (v < 7).then_some(""), "v{v}");
        }
    }

    #[test]
    fn sync_protocol_fields_only_from_v5() {
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_generation_id(4)
            .with_member_id(str_bytes("m"))
            .with_group_instance_id(Some(str_bytes("i")))
            .with_protocol_type(Some(str_bytes("consumer")))
            .with_protocol_name(Some(str_bytes("range")));
        let v2 = sync_request(&req, 2);
        assert_eq!(v2.group_instance_id, None);
        assert_eq!(
            (v2.protocol_type.as_str(), v2.protocol_name.as_str()),
            ("", "")
        );
        let v5 = sync_request(&req, 5);
        assert_eq!(v5.group_instance_id.as_deref(), Some("i"));
        assert_eq!(
            (v5.protocol_type.as_str(), v5.protocol_name.as_str()),
            ("consumer", "range")
        );
        assert_eq!(v5.generation_id, 4);
        let answer = pb::SyncGroupResponse {
            protocol_type: "consumer".into(),
            protocol_name: "range".into(),
            assignment: Bytes::from_static(b"assigned"),
            ..Default::default()
        };
        for v in 0..=5 {
            let r = wire(&sync_response(answer.clone(), v), v);
            assert_eq!(&r.assignment[..], b"assigned");
            assert_eq!(r.protocol_name.as_deref(), (v >= 5).then_some("range"));
        }
    }

    #[test]
    fn leave_maps_single_and_batched_members() {
        let old = LeaveGroupRequest::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_member_id(str_bytes("m-1"));
        let r = leave_request(&old, 2);
        assert_eq!(r.members.len(), 1);
        assert_eq!(r.members[0].member_id, "m-1");
        let batched = LeaveGroupRequest::default()
            .with_group_id(GroupId(str_bytes("g")))
            .with_members(vec![
                MemberIdentity::default()
                    .with_member_id(str_bytes("m-1"))
                    .with_reason(Some(str_bytes("shutdown"))),
                MemberIdentity::default()
                    .with_member_id(str_bytes(""))
                    .with_group_instance_id(Some(str_bytes("i-2"))),
            ]);
        let r3 = leave_request(&batched, 3);
        assert_eq!(r3.members.len(), 2);
        assert_eq!(r3.members[0].reason, "");
        assert_eq!(r3.members[1].group_instance_id.as_deref(), Some("i-2"));
        assert_eq!(leave_request(&batched, 5).members[0].reason, "shutdown");

        let answer = pb::LeaveGroupResponse {
            error_code: 0,
            error_message: String::new(),
            members: vec![
                pb::LeftMember {
                    member_id: "m-1".into(),
                    group_instance_id: None,
                    error_code: 0,
                },
                pb::LeftMember {
                    member_id: String::new(),
                    group_instance_id: Some("i-2".into()),
                    error_code: 25,
                },
            ],
        };
        // v0-2: a member's error becomes the response's.
        for v in 0..=2 {
            let r = wire(&leave_response(answer.clone(), v), v);
            assert_eq!(r.error_code, 25, "v{v}");
            assert!(r.members.is_empty());
        }
        for v in 3..=5 {
            let r = wire(&leave_response(answer.clone(), v), v);
            assert_eq!(r.error_code, 0);
            assert_eq!(r.members.len(), 2);
            assert_eq!(r.members[1].error_code, 25);
            assert_eq!(r.members[1].group_instance_id.as_deref(), Some("i-2"));
        }
        // A group error wins over member errors.
        let group_error = pb::LeaveGroupResponse {
            error_code: 16,
            ..answer
        };
        assert_eq!(leave_response(group_error, 1).error_code, 16);
    }

    #[test]
    fn list_merges_nodes_and_fails_only_when_all_fail() {
        let listed = |id: &str, state: &str| pb::ListedGroup {
            group_id: id.into(),
            protocol_type: "consumer".into(),
            state: state.into(),
            group_type: "classic".into(),
        };
        let one = pb::ListGroupsResponse {
            error_code: 0,
            groups: vec![listed("b", "Stable"), listed("a", "Empty")],
        };
        // A shard being handed over may show up on both nodes.
        let two = pb::ListGroupsResponse {
            error_code: 0,
            groups: vec![listed("a", "Empty"), listed("c", "PreparingRebalance")],
        };
        let down = Err(KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "down"));
        let r = list_response(vec![Ok(one.clone()), Ok(two), down.clone()], 4);
        assert_eq!(r.error_code, 0);
        let ids: Vec<&str> = r.groups.iter().map(|g| g.group_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(r.groups[1].group_state.as_str(), "Stable");
        let r = wire(&r, 4);
        assert_eq!(r.groups.len(), 3);
        // v5 carries the group type (KIP-848).
        let v5 = wire(&list_response(vec![Ok(one.clone())], 5), 5);
        assert!(v5.groups.iter().all(|g| g.group_type.as_str() == "classic"));
        // Before v4 there is no state.
        let r = list_response(vec![Ok(one)], 3);
        assert!(r.groups.iter().all(|g| g.group_state.is_empty()));
        for v in 0..=3 {
            wire(&r, v);
        }
        // Nobody answered.
        let loading = pb::ListGroupsResponse {
            error_code: 14,
            groups: vec![],
        };
        let r = list_response(vec![down, Ok(loading)], 4);
        assert_eq!(r.error_code, 15);
        assert!(r.groups.is_empty());
    }

    #[test]
    fn described_groups_follow_the_version() {
        let g = pb::DescribedGroup {
            error_code: 0,
            group_id: "g".into(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            protocol_name: "range".into(),
            generation_id: 2,
            leader: "m".into(),
            members: vec![pb::DescribedMember {
                member_id: "m".into(),
                group_instance_id: Some("i".into()),
                client_id: "app".into(),
                client_host: "/10.0.0.9".into(),
                metadata: Bytes::from_static(b"md"),
                assignment: Bytes::from_static(b"as"),
            }],
        };
        for v in 0..=5 {
            let d = wire(&described_group(&g, v, true), v);
            assert_eq!(
                (d.group_state.as_str(), d.protocol_data.as_str()),
                ("Stable", "range")
            );
            let m = &d.members[0];
            assert_eq!(
                (m.client_id.as_str(), m.client_host.as_str()),
                ("app", "/10.0.0.9")
            );
            assert_eq!(
                (&m.member_metadata[..], &m.member_assignment[..]),
                (&b"md"[..], &b"as"[..])
            );
            assert_eq!(m.group_instance_id.as_deref(), (v >= 4).then_some("i"));
            let ops = if v >= 3 {
                GROUP_OPERATIONS
            } else {
                OPERATIONS_OMITTED
            };
            assert_eq!(d.authorized_operations, ops, "v{v}");
            let not_asked = described_group(&g, v, false);
            assert_eq!(not_asked.authorized_operations, OPERATIONS_OMITTED);
        }
        // A group the edge could not ask: Kafka's error entry.
        let e = KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "no owner");
        let d = wire(&described_group(&describe_failed("g", &e), 5, true), 5);
        assert_eq!((d.error_code, d.group_id.as_str()), (15, "g"));
        assert_eq!(d.group_state.as_str(), "");
        assert_eq!(d.authorized_operations, OPERATIONS_OMITTED);
    }

    #[test]
    fn statuses_map_to_coordinator_codes() {
        let c = |s: tonic::Status, t| status_error(&s, t).code;
        let t = OnTimeout::Refind;
        assert_eq!(c(tonic::Status::unavailable("refused"), t), 15);
        assert_eq!(c(tonic::Status::unknown("h2 reset"), t), 15);
        assert_eq!(c(tonic::Status::deadline_exceeded("slow"), t), 15);
        assert_eq!(
            c(
                tonic::Status::deadline_exceeded("slow"),
                OnTimeout::TimedOut
            ),
            7
        );
        assert_eq!(c(tonic::Status::invalid_argument("bad"), t), 42);
        assert_eq!(c(tonic::Status::internal("bug"), t), -1);
        assert_eq!(kafka_code(16), 16);
        assert_eq!(kafka_code(70_000), -1);
    }

    #[test]
    fn distinct_keeps_first_order() {
        assert_eq!(
            distinct(["b", "a", "b", "c", "a"].into_iter()),
            ["b", "a", "c"]
        );
    }

    /// The routing against real gRPC servers standing in for groups nodes:
    /// owners found from the metadata, a shard moving mid-call, several
    /// groups split by owner, an owner that cannot be reached.
    mod routing {
        use super::*;
        use std::net::SocketAddr;
        use std::sync::{Arc, Mutex};

        use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
        use runnel_cluster::{Keys, MetadataWatcher};
        use runnel_metastore::{EmbeddedStore, MetaStore};
        use runnel_proto::groups::v1::groups_service_server::{GroupsService, GroupsServiceServer};
        use tokio::sync::{oneshot, watch};
        use tonic::{Request, Response, Status};

        use crate::config::EdgeConfig;
        use crate::conn::ConnState;
        use crate::registry::Registry;

        type Reply<T> = Result<Response<T>, Status>;

        /// A groups node that logs the calls it gets.
        #[derive(Clone)]
        struct Mock {
            name: &'static str,
            log: Arc<Mutex<Vec<String>>>,
            joins: Arc<Mutex<Vec<pb::JoinGroupRequest>>>,
            /// Hands shard `.1` to `.2` and answers NOT_COORDINATOR to
            /// heartbeats, as a node giving its shard away does.
            hand_over: Option<(Arc<dyn MetaStore>, String, GroupsNodeRecord)>,
        }

        impl Mock {
            fn note(&self, what: &str, group: &str) {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("{}:{what}:{group}", self.name));
            }
        }

        #[tonic::async_trait]
        impl GroupsService for Mock {
            async fn find_coordinator(
                &self,
                _: Request<pb::FindCoordinatorRequest>,
            ) -> Reply<pb::FindCoordinatorResponse> {
                Err(Status::unimplemented("not used by the edge"))
            }
            async fn join_group(
                &self,
                r: Request<pb::JoinGroupRequest>,
            ) -> Reply<pb::JoinGroupResponse> {
                let r = r.into_inner();
                self.note("join", &r.group_id);
                self.joins.lock().unwrap().push(r);
                Ok(Response::new(pb::JoinGroupResponse {
                    generation_id: 1,
                    protocol_type: "consumer".into(),
                    protocol_name: "range".into(),
                    leader: "m-1".into(),
                    member_id: "m-1".into(),
                    ..Default::default()
                }))
            }
            async fn sync_group(
                &self,
                _: Request<pb::SyncGroupRequest>,
            ) -> Reply<pb::SyncGroupResponse> {
                Err(Status::unimplemented(""))
            }
            async fn heartbeat(
                &self,
                r: Request<pb::HeartbeatRequest>,
            ) -> Reply<pb::HeartbeatResponse> {
                self.note("heartbeat", &r.get_ref().group_id);
                let mut error_code = 0;
                if let Some((store, key, next)) = &self.hand_over {
                    let value = bytes::Bytes::from(serde_json::to_vec(next).unwrap());
                    store.put(key, value, None).await.unwrap();
                    error_code = i32::from(code::NOT_COORDINATOR);
                }
                Ok(Response::new(pb::HeartbeatResponse {
                    error_code,
                    error_message: String::new(),
                }))
            }
            async fn leave_group(
                &self,
                _: Request<pb::LeaveGroupRequest>,
            ) -> Reply<pb::LeaveGroupResponse> {
                Err(Status::unimplemented(""))
            }
            async fn offset_commit(
                &self,
                _: Request<pb::OffsetCommitRequest>,
            ) -> Reply<pb::OffsetCommitResponse> {
                Err(Status::unimplemented(""))
            }
            async fn offset_fetch(
                &self,
                _: Request<pb::OffsetFetchRequest>,
            ) -> Reply<pb::OffsetFetchResponse> {
                Err(Status::unimplemented(""))
            }
            async fn offset_delete(
                &self,
                _: Request<pb::OffsetDeleteRequest>,
            ) -> Reply<pb::OffsetDeleteResponse> {
                Err(Status::unimplemented(""))
            }
            async fn list_groups(
                &self,
                _: Request<pb::ListGroupsRequest>,
            ) -> Reply<pb::ListGroupsResponse> {
                Err(Status::unimplemented(""))
            }
            async fn describe_groups(
                &self,
                r: Request<pb::DescribeGroupsRequest>,
            ) -> Reply<pb::DescribeGroupsResponse> {
                let ids = r.into_inner().group_ids;
                self.note("describe", &ids.join(","));
                let groups = ids
                    .into_iter()
                    .map(|id| pb::DescribedGroup {
                        group_id: id,
                        state: format!("Stable@{}", self.name),
                        ..Default::default()
                    })
                    .collect();
                Ok(Response::new(pb::DescribeGroupsResponse { groups }))
            }
            async fn delete_groups(
                &self,
                _: Request<pb::DeleteGroupsRequest>,
            ) -> Reply<pb::DeleteGroupsResponse> {
                Err(Status::unimplemented(""))
            }
            async fn consumer_group_heartbeat(
                &self,
                _: Request<pb::ConsumerGroupHeartbeatRequest>,
            ) -> Reply<pb::ConsumerGroupHeartbeatResponse> {
                Err(Status::unimplemented(""))
            }
        }

        async fn serve(mock: Mock) -> (String, oneshot::Sender<()>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let (stop, stopped) = oneshot::channel::<()>();
            let router =
                tonic::transport::Server::builder().add_service(GroupsServiceServer::new(mock));
            tokio::spawn(runnel_rpc::serve(router, listener, async {
                let _ = stopped.await;
            }));
            (address, stop)
        }

        async fn put<T: serde::Serialize>(store: &Arc<dyn MetaStore>, key: &str, value: &T) {
            let value = bytes::Bytes::from(serde_json::to_vec(value).unwrap());
            store.put(key, value, None).await.unwrap();
        }

        fn record(id: i32, address: &str) -> GroupsNodeRecord {
            GroupsNodeRecord {
                node_id: id,
                address: address.to_string(),
                started_at_ms: 0,
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn groups_calls_follow_the_shard_owner() {
            let store: Arc<dyn MetaStore> = Arc::new(EmbeddedStore::in_memory());
            let keys = Keys::new("routing-test");
            let log = Arc::new(Mutex::new(Vec::new()));
            let joins = Arc::new(Mutex::new(Vec::new()));
            let mock = |name, hand_over| Mock {
                name,
                log: log.clone(),
                joins: joins.clone(),
                hand_over,
            };
            let (b_addr, stop_b) = serve(mock("B", None)).await;
            let b = record(2, &b_addr);
            // A owns shard 0 until a heartbeat makes it hand the shard to B.
            let (a_addr, stop_a) = serve(mock(
                "A",
                Some((store.clone(), keys.group_shard(0), b.clone())),
            ))
            .await;
            let a = record(1, &a_addr);

            let me = EdgeRecord {
                node_id: 7,
                host: "127.0.0.1".into(),
                port: 9092,
                started_at_ms: 0,
            };
            let (_stop, stop_rx) = watch::channel(false);
            let edge = Edge {
                config: EdgeConfig {
                    request_timeout_ms: 5_000,
                    ..Default::default()
                },
                me: me.clone(),
                watcher: MetadataWatcher::start(store.clone(), keys.clone())
                    .await
                    .unwrap(),
                registry: Registry::start(
                    store.clone(),
                    &keys,
                    me,
                    Duration::from_secs(10),
                    stop_rx,
                ),
                pool: runnel_rpc::ChannelPool::new(),
            };
            let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            let mut conn = ConnState::new(peer);
            conn.client_id = Some("app".into());
            let mut ctx = Ctx {
                edge: &edge,
                conn: &mut conn,
                error: 0,
            };
            let hb = |group: &str| {
                HeartbeatRequest::default()
                    .with_group_id(GroupId(str_bytes(group)))
                    .with_generation_id(1)
                    .with_member_id(str_bytes("m-1"))
            };

            // No __consumer_offsets yet.
            let fc = FindCoordinatorRequest::default().with_key(str_bytes("b"));
            assert_eq!(find_coordinator(&mut ctx, fc, 3).error_code, 15);
            assert_eq!(heartbeat(&mut ctx, hb("b"), 4).await.error_code, 15);

            // Two shards: "b" lives on shard 0 (owned by A), "a" on shard 1 (B).
            assert_eq!(runnel_cluster::group_shard("b", 2), 0);
            assert_eq!(runnel_cluster::group_shard("a", 2), 1);
            let offsets = TopicRecord {
                name: OFFSETS_TOPIC.into(),
                topic_id: "00000000-0000-0000-0000-000000000001".into(),
                partitions: 2,
                replication_factor: 1,
                configs: Default::default(),
                created_at_ms: 0,
            };
            put(&store, &keys.topic(OFFSETS_TOPIC), &offsets).await;
            put(&store, &keys.groups_node(1), &a).await;
            put(&store, &keys.groups_node(2), &b).await;
            put(&store, &keys.group_shard(0), &a).await;
            put(&store, &keys.group_shard(1), &b).await;
            let ready = edge
                .watcher
                .wait_until(Duration::from_secs(5), |md| md.group_shards.len() == 2)
                .await;
            assert!(ready.is_some());

            // FindCoordinator names this edge for every owned group.
            let fc = FindCoordinatorRequest::default()
                .with_key_type(0)
                .with_coordinator_keys(vec![str_bytes("a"), str_bytes("b")]);
            let r = find_coordinator(&mut ctx, fc, 4);
            assert!(
                r.coordinators
                    .iter()
                    .all(|c| c.error_code == 0 && c.node_id == BrokerId(7))
            );

            // DescribeGroups asks each owner about its own groups only.
            let dg = DescribeGroupsRequest::default().with_groups(vec![
                GroupId(str_bytes("a")),
                GroupId(str_bytes("b")),
                GroupId(str_bytes("a")),
            ]);
            let r = describe(&mut ctx, dg, 5).await;
            let states: Vec<(&str, &str)> = r
                .groups
                .iter()
                .map(|g| (g.group_id.as_str(), g.group_state.as_str()))
                .collect();
            assert_eq!(
                states,
                [("a", "Stable@B"), ("b", "Stable@A"), ("a", "Stable@B")]
            );
            let mut calls = log.lock().unwrap().drain(..).collect::<Vec<_>>();
            calls.sort();
            assert_eq!(calls, ["A:describe:b", "B:describe:a"]);

            // JoinGroup carries what Kafka's coordinator would know.
            let join_req = JoinGroupRequest::default()
                .with_group_id(GroupId(str_bytes("a")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(20_000)
                .with_member_id(str_bytes(""))
                .with_group_instance_id(Some(str_bytes("i-1")))
                .with_protocol_type(str_bytes("consumer"));
            let r = join(&mut ctx, join_req, 5).await;
            assert_eq!((r.error_code, r.member_id.as_str()), (0, "m-1"));
            let sent = joins.lock().unwrap().pop().unwrap();
            assert_eq!(
                (sent.client_id.as_str(), sent.client_host.as_str()),
                ("app", "/127.0.0.1")
            );
            assert!(sent.require_known_member_id);
            assert_eq!(sent.request_version, 5);
            assert_eq!(sent.group_instance_id.as_deref(), Some("i-1"));
            assert_eq!(sent.rebalance_timeout_ms, 20_000);
            log.lock().unwrap().clear();

            // A hands shard 0 to B mid-heartbeat and answers NOT_COORDINATOR:
            // the edge follows the move and the client never sees it.
            let r = heartbeat(&mut ctx, hb("b"), 4).await;
            assert_eq!(r.error_code, 0);
            assert_eq!(
                log.lock().unwrap().drain(..).collect::<Vec<_>>(),
                ["A:heartbeat:b", "B:heartbeat:b"]
            );

            // An owner nobody answers for: the client is told to find its
            // coordinator again.
            drop(stop_b);
            let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let gone_addr = gone.local_addr().unwrap().to_string();
            drop(gone);
            put(&store, &keys.group_shard(1), &record(3, &gone_addr)).await;
            edge.watcher
                .wait_until(Duration::from_secs(5), |md| {
                    md.group_shards.get(&1).is_some_and(|n| n.node_id == 3)
                })
                .await
                .unwrap();
            assert_eq!(heartbeat(&mut ctx, hb("a"), 4).await.error_code, 15);

            // An empty group id never leaves the edge.
            let empty = JoinGroupRequest::default().with_member_id(str_bytes("m"));
            assert_eq!(join(&mut ctx, empty, 5).await.error_code, 24);
            assert!(log.lock().unwrap().is_empty());
            drop(stop_a);
        }
    }
}
