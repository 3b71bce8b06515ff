//! The gRPC face of a groups node. Calls for a group this node does not own
//! are answered with NOT_COORDINATOR (16) or COORDINATOR_LOAD_IN_PROGRESS
//! (14) in `error_code`, as a Kafka broker would; FindCoordinator says where
//! to go instead.

use std::sync::Arc;
use std::time::Duration;

use runnel_proto::groups::v1 as pb;
use runnel_proto::groups::v1::groups_service_server::GroupsService;
use tonic::{Request, Response, Status};

use crate::group::code;
use crate::node::GroupsNode;

#[derive(Debug, Clone)]
pub struct GroupsGrpc {
    node: Arc<GroupsNode>,
}

impl GroupsGrpc {
    pub fn new(node: Arc<GroupsNode>) -> Self {
        GroupsGrpc { node }
    }
}

type Res<T> = Result<Response<T>, Status>;

/// A group id Kafka would refuse.
fn invalid(group_id: &str) -> bool {
    group_id.is_empty()
}

#[tonic::async_trait]
impl GroupsService for GroupsGrpc {
    async fn find_coordinator(
        &self,
        req: Request<pb::FindCoordinatorRequest>,
    ) -> Res<pb::FindCoordinatorResponse> {
        let req = req.into_inner();
        let md = self.node.watcher.current();
        let resp = match md.group_coordinator(&req.group_id) {
            None => pb::FindCoordinatorResponse {
                error_code: code::COORDINATOR_NOT_AVAILABLE,
                error_message: "the offsets topic does not exist yet".into(),
                ..Default::default()
            },
            Some((shard, None)) => pb::FindCoordinatorResponse {
                error_code: code::COORDINATOR_NOT_AVAILABLE,
                error_message: format!("shard {shard} has no owner right now"),
                shard,
                ..Default::default()
            },
            Some((shard, Some(owner))) => pb::FindCoordinatorResponse {
                error_code: code::NONE,
                error_message: String::new(),
                node_id: owner.node_id,
                address: owner.address.clone(),
                shard,
            },
        };
        Ok(Response::new(resp))
    }

    async fn join_group(&self, req: Request<pb::JoinGroupRequest>) -> Res<pb::JoinGroupResponse> {
        let req = req.into_inner();
        let fail = |c: i32| pb::JoinGroupResponse {
            error_code: c,
            generation_id: -1,
            member_id: req.member_id.clone(),
            ..Default::default()
        };
        if invalid(&req.group_id) {
            return Ok(Response::new(fail(code::INVALID_GROUP_ID)));
        }
        match self.node.shard_for(&req.group_id) {
            Ok(shard) => Ok(Response::new(shard.join(req).await)),
            Err(c) => Ok(Response::new(fail(c))),
        }
    }

    async fn sync_group(&self, req: Request<pb::SyncGroupRequest>) -> Res<pb::SyncGroupResponse> {
        let req = req.into_inner();
        let fail = |c: i32| pb::SyncGroupResponse {
            error_code: c,
            ..Default::default()
        };
        if invalid(&req.group_id) {
            return Ok(Response::new(fail(code::INVALID_GROUP_ID)));
        }
        match self.node.shard_for(&req.group_id) {
            // The leader may take up to the rebalance timeout to assign; the
            // caller's deadline bounds the wait, this only stops a leak.
            Ok(shard) => Ok(Response::new(
                shard.sync(req, Duration::from_secs(600)).await,
            )),
            Err(c) => Ok(Response::new(fail(c))),
        }
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Res<pb::HeartbeatResponse> {
        let req = req.into_inner();
        let error_code = if invalid(&req.group_id) {
            code::INVALID_GROUP_ID
        } else {
            match self.node.shard_for(&req.group_id) {
                Ok(shard) => shard.heartbeat(&req),
                Err(c) => c,
            }
        };
        Ok(Response::new(pb::HeartbeatResponse {
            error_code,
            error_message: String::new(),
        }))
    }

    async fn leave_group(
        &self,
        req: Request<pb::LeaveGroupRequest>,
    ) -> Res<pb::LeaveGroupResponse> {
        let req = req.into_inner();
        match self.node.shard_for(&req.group_id) {
            Ok(shard) => Ok(Response::new(shard.leave(&req))),
            Err(c) => Ok(Response::new(pb::LeaveGroupResponse {
                error_code: c,
                ..Default::default()
            })),
        }
    }

    async fn offset_commit(
        &self,
        req: Request<pb::OffsetCommitRequest>,
    ) -> Res<pb::OffsetCommitResponse> {
        let req = req.into_inner();
        let fail = |c: i32| pb::OffsetCommitResponse {
            error_code: c,
            error_message: String::new(),
            partitions: req
                .offsets
                .iter()
                .map(|o| pb::PartitionResult {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    error_code: c,
                })
                .collect(),
        };
        if invalid(&req.group_id) {
            return Ok(Response::new(fail(code::INVALID_GROUP_ID)));
        }
        match self.node.shard_for(&req.group_id) {
            Ok(shard) => {
                let node = self.node.clone();
                Ok(Response::new(
                    shard.commit(req, |t, p| node.known_partition(t, p)).await,
                ))
            }
            Err(c) => Ok(Response::new(fail(c))),
        }
    }

    async fn offset_fetch(
        &self,
        req: Request<pb::OffsetFetchRequest>,
    ) -> Res<pb::OffsetFetchResponse> {
        let req = req.into_inner();
        match self.node.shard_for(&req.group_id) {
            Ok(shard) => {
                let mut resp = shard.fetch_offsets(&req);
                if req.include_log_end {
                    let ends = self
                        .node
                        .log_end_offsets(
                            resp.offsets.iter().map(|o| (o.topic.clone(), o.partition)),
                        )
                        .await;
                    for o in &mut resp.offsets {
                        o.log_end_offset = ends
                            .get(&(o.topic.clone(), o.partition))
                            .copied()
                            .unwrap_or(-1);
                    }
                }
                Ok(Response::new(resp))
            }
            Err(c) => Ok(Response::new(pb::OffsetFetchResponse {
                error_code: c,
                ..Default::default()
            })),
        }
    }

    async fn offset_delete(
        &self,
        req: Request<pb::OffsetDeleteRequest>,
    ) -> Res<pb::OffsetDeleteResponse> {
        let req = req.into_inner();
        match self.node.shard_for(&req.group_id) {
            Ok(shard) => Ok(Response::new(shard.delete_offsets(&req).await)),
            Err(c) => Ok(Response::new(pb::OffsetDeleteResponse {
                error_code: c,
                ..Default::default()
            })),
        }
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Res<pb::ListGroupsResponse> {
        let req = req.into_inner();
        let mut groups: Vec<pb::ListedGroup> = self
            .node
            .active_shards()
            .iter()
            .flat_map(|s| s.list(&req.states_filter, &req.types_filter))
            .collect();
        let mut error_code = code::NONE;
        if req.all_nodes {
            let md = self.node.watcher.current();
            for other in md
                .groups_nodes
                .values()
                .filter(|n| n.node_id != self.node.me.node_id)
            {
                let ask = pb::ListGroupsRequest {
                    states_filter: req.states_filter.clone(),
                    all_nodes: false,
                    types_filter: req.types_filter.clone(),
                };
                match self.node.peer(&other.address) {
                    Ok(mut client) => match client.list_groups(ask).await {
                        Ok(r) => groups.extend(r.into_inner().groups),
                        Err(s) => {
                            tracing::warn!(node = other.node_id, error = %s.message(), "listing groups of a peer failed");
                            error_code = code::COORDINATOR_NOT_AVAILABLE;
                        }
                    },
                    Err(_) => error_code = code::COORDINATOR_NOT_AVAILABLE,
                }
            }
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(Response::new(pb::ListGroupsResponse { error_code, groups }))
    }

    async fn describe_groups(
        &self,
        req: Request<pb::DescribeGroupsRequest>,
    ) -> Res<pb::DescribeGroupsResponse> {
        let req = req.into_inner();
        let groups = req
            .group_ids
            .iter()
            .map(|g| match self.node.shard_for(g) {
                Ok(shard) => shard.describe(g),
                Err(c) => pb::DescribedGroup {
                    error_code: c,
                    group_id: g.clone(),
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::DescribeGroupsResponse { groups }))
    }

    async fn consumer_group_heartbeat(
        &self,
        req: Request<pb::ConsumerGroupHeartbeatRequest>,
    ) -> Res<pb::ConsumerGroupHeartbeatResponse> {
        let req = req.into_inner();
        let fail = |c: i32| pb::ConsumerGroupHeartbeatResponse {
            error_code: c,
            member_id: req.member_id.clone(),
            member_epoch: -1,
            ..Default::default()
        };
        if invalid(&req.group_id) {
            return Ok(Response::new(fail(code::INVALID_GROUP_ID)));
        }
        match self.node.shard_for(&req.group_id) {
            Ok(shard) => Ok(Response::new(
                shard.consumer_heartbeat(&req, &self.node.topics()),
            )),
            Err(c) => Ok(Response::new(fail(c))),
        }
    }

    async fn delete_groups(
        &self,
        req: Request<pb::DeleteGroupsRequest>,
    ) -> Res<pb::DeleteGroupsResponse> {
        let req = req.into_inner();
        let mut groups = Vec::with_capacity(req.group_ids.len());
        for g in req.group_ids {
            let error_code = match self.node.shard_for(&g) {
                Ok(shard) => shard.delete(&g).await,
                Err(c) => c,
            };
            if error_code == code::NONE {
                tracing::info!(group = %g, "group deleted");
            }
            groups.push(pb::DeletedGroup {
                group_id: g,
                error_code,
            });
        }
        Ok(Response::new(pb::DeleteGroupsResponse { groups }))
    }
}
