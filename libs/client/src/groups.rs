//! Consumer-group administration over the groups service: list, describe
//! (with lag), commit offsets from outside the group (reset), delete.
//!
//! Every call for one group goes to the groups node that owns the group's
//! shard, found with FindCoordinator on the node given at connect; while a
//! shard moves or loads the call is retried for a few seconds.

use std::time::Duration;

use runnel_proto::groups::v1 as pb;
use runnel_proto::groups::v1::groups_service_client::GroupsServiceClient;
use tonic::transport::Channel;

use crate::error::ClientError;

/// Kafka's name for a group error code, for messages.
pub fn group_error_name(code: i32) -> &'static str {
    match code {
        0 => "NONE",
        7 => "REQUEST_TIMED_OUT",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        22 => "ILLEGAL_GENERATION",
        24 => "INVALID_GROUP_ID",
        25 => "UNKNOWN_MEMBER_ID",
        27 => "REBALANCE_IN_PROGRESS",
        68 => "NON_EMPTY_GROUP",
        69 => "GROUP_ID_NOT_FOUND",
        86 => "GROUP_SUBSCRIBED_TO_TOPIC",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        12 => "OFFSET_METADATA_TOO_LARGE",
        _ => "UNKNOWN_SERVER_ERROR",
    }
}

/// Codes that mean "ask again shortly, perhaps elsewhere".
fn retriable(code: i32) -> bool {
    matches!(code, 14..=16)
}

fn failed(group: &str, code: i32, what: &str) -> ClientError {
    ClientError::Invalid(format!(
        "{what} group {group:?}: {} ({code})",
        group_error_name(code)
    ))
}

/// Consumer-group administration. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Groups {
    bootstrap: GroupsServiceClient<Channel>,
    pool: runnel_rpc::ChannelPool,
}

impl Groups {
    /// A client that finds coordinators through the groups node at `address`.
    pub fn connect(address: &str) -> Result<Self, ClientError> {
        Ok(Groups {
            bootstrap: GroupsServiceClient::new(runnel_rpc::lazy_channel(address)?),
            pool: runnel_rpc::ChannelPool::new(),
        })
    }

    /// The node that owns `group` now.
    pub async fn coordinator(
        &self,
        group: &str,
    ) -> Result<GroupsServiceClient<Channel>, ClientError> {
        let mut last = 0;
        for _ in 0..50 {
            let r = self
                .bootstrap
                .clone()
                .find_coordinator(pb::FindCoordinatorRequest {
                    group_id: group.to_string(),
                })
                .await?
                .into_inner();
            if r.error_code == 0 {
                return Ok(GroupsServiceClient::new(self.pool.get(&r.address)?));
            }
            last = r.error_code;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(failed(group, last, "finding the coordinator of"))
    }

    /// Runs `call` against the group's coordinator, again while the shard
    /// moves or loads.
    async fn with_coordinator<T, F, Fut>(
        &self,
        group: &str,
        call: F,
        code_of: fn(&T) -> i32,
    ) -> Result<T, ClientError>
    where
        F: Fn(GroupsServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempts = 0;
        loop {
            let resp = call(self.coordinator(group).await?).await?.into_inner();
            attempts += 1;
            if !retriable(code_of(&resp)) || attempts >= 20 {
                return Ok(resp);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every group on every groups node.
    pub async fn list(&self) -> Result<Vec<pb::ListedGroup>, ClientError> {
        let r = self
            .bootstrap
            .clone()
            .list_groups(pb::ListGroupsRequest {
                states_filter: Vec::new(),
                all_nodes: true,
                types_filter: Vec::new(),
            })
            .await?
            .into_inner();
        if r.error_code != 0 {
            return Err(ClientError::Invalid(format!(
                "some groups nodes did not answer: {}",
                group_error_name(r.error_code)
            )));
        }
        Ok(r.groups)
    }

    /// Members, state and assignment of a group ("Dead" if it does not exist).
    pub async fn describe(&self, group: &str) -> Result<pb::DescribedGroup, ClientError> {
        let g = group.to_string();
        let r = self
            .with_coordinator(
                group,
                |mut c| {
                    let g = g.clone();
                    async move {
                        c.describe_groups(pb::DescribeGroupsRequest { group_ids: vec![g] })
                            .await
                    }
                },
                |r: &pb::DescribeGroupsResponse| r.groups.first().map_or(0, |g| g.error_code),
            )
            .await?;
        let d = r
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Invalid("empty describe answer".into()))?;
        if d.error_code != 0 {
            return Err(failed(group, d.error_code, "describing"));
        }
        Ok(d)
    }

    /// The group's committed offsets, with each partition's log end offset.
    pub async fn offsets(&self, group: &str) -> Result<Vec<pb::CommittedOffset>, ClientError> {
        let g = group.to_string();
        let r = self
            .with_coordinator(
                group,
                |mut c| {
                    let g = g.clone();
                    async move {
                        c.offset_fetch(pb::OffsetFetchRequest {
                            group_id: g,
                            topics: Vec::new(),
                            all_topics: true,
                            include_log_end: true,
                        })
                        .await
                    }
                },
                |r: &pb::OffsetFetchResponse| r.error_code,
            )
            .await?;
        if r.error_code != 0 {
            return Err(failed(group, r.error_code, "fetching offsets of"));
        }
        Ok(r.offsets)
    }

    /// Commits offsets from outside the group protocol; the groups service
    /// accepts this only while the group has no members.
    pub async fn commit(
        &self,
        group: &str,
        offsets: Vec<pb::PartitionOffset>,
    ) -> Result<(), ClientError> {
        let request = pb::OffsetCommitRequest {
            group_id: group.to_string(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            offsets,
        };
        let r = self
            .with_coordinator(
                group,
                |mut c| {
                    let request = request.clone();
                    async move { c.offset_commit(request).await }
                },
                |r: &pb::OffsetCommitResponse| {
                    r.partitions
                        .iter()
                        .map(|p| p.error_code)
                        .find(|c| *c != 0)
                        .unwrap_or(r.error_code)
                },
            )
            .await?;
        match r.partitions.iter().find(|p| p.error_code != 0) {
            Some(p) => Err(ClientError::Invalid(format!(
                "committing {}-{} for group {group:?}: {} ({})",
                p.topic,
                p.partition,
                group_error_name(p.error_code),
                p.error_code
            ))),
            None => Ok(()),
        }
    }

    /// Deletes an empty group and its offsets.
    pub async fn delete(&self, group: &str) -> Result<(), ClientError> {
        let g = group.to_string();
        let r = self
            .with_coordinator(
                group,
                |mut c| {
                    let g = g.clone();
                    async move {
                        c.delete_groups(pb::DeleteGroupsRequest { group_ids: vec![g] })
                            .await
                    }
                },
                |r: &pb::DeleteGroupsResponse| r.groups.first().map_or(0, |g| g.error_code),
            )
            .await?;
        match r.groups.first().map_or(0, |g| g.error_code) {
            0 => Ok(()),
            c => Err(failed(group, c, "deleting")),
        }
    }
}
