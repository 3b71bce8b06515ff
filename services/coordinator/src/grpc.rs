//! gRPC handlers: reads from the watched metadata, writes through the
//! controller (forwarded when this instance is a standby).

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_cluster::{ClusterMetadata, PartitionRecord, TopicRecord, TopicState};
use runnel_proto::coordinator::v1 as pb;
use runnel_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use runnel_proto::coordinator::v1::coordinator_service_server::CoordinatorService;
use runnel_telemetry::RequestMetrics;
use tonic::{Request, Response, Status};

use crate::controller::Controller;
use crate::error::CoordinatorError;

#[derive(Debug, Clone)]
pub struct CoordinatorGrpc {
    controller: Arc<Controller>,
    pool: runnel_rpc::ChannelPool,
}

impl CoordinatorGrpc {
    pub fn new(controller: Arc<Controller>) -> Self {
        CoordinatorGrpc {
            controller,
            pool: runnel_rpc::ChannelPool::new(),
        }
    }

    /// A client to the active controller when it is another instance.
    fn forward_target(
        &self,
    ) -> Result<
        Option<(String, CoordinatorServiceClient<tonic::transport::Channel>)>,
        CoordinatorError,
    > {
        if self.controller.is_active() {
            return Ok(None);
        }
        let md = self.controller.watcher.current();
        let Some(c) = &md.controller else {
            return Err(CoordinatorError::NoController);
        };
        if c.instance_id == self.controller.config.instance_id {
            // Our own stale record, or we are mid-election.
            return Err(CoordinatorError::NoController);
        }
        let channel = self
            .pool
            .get(&c.address)
            .map_err(|_| CoordinatorError::NoController)?;
        Ok(Some((
            c.address.clone(),
            CoordinatorServiceClient::new(channel)
                .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES),
        )))
    }
}

fn partition_info(p: i32, s: &PartitionRecord) -> pb::PartitionInfo {
    pb::PartitionInfo {
        partition: p,
        leader: s.leader,
        leader_epoch: s.leader_epoch,
        replicas: s.replicas.clone(),
        isr: s.isr.clone(),
        target_replicas: s.target_replicas.clone().unwrap_or_default(),
        offline: s.is_offline(),
    }
}

pub fn topic_info(
    record: &TopicRecord,
    partitions: &BTreeMap<i32, PartitionRecord>,
) -> pb::TopicInfo {
    pb::TopicInfo {
        name: record.name.clone(),
        topic_id: record.topic_id.clone(),
        partition_count: record.partitions,
        replication_factor: record.replication_factor,
        configs: record.configs.clone().into_iter().collect(),
        partitions: partitions
            .iter()
            .map(|(&p, s)| partition_info(p, s))
            .collect(),
    }
}

fn state_info(t: &TopicState) -> pb::TopicInfo {
    topic_info(&t.record, &t.partitions)
}

fn metadata_response(md: &ClusterMetadata, topics: &[String]) -> pb::GetMetadataResponse {
    let selected: Vec<pb::TopicInfo> = if topics.is_empty() {
        md.topics.values().map(state_info).collect()
    } else {
        topics
            .iter()
            .filter_map(|t| md.topics.get(t))
            .map(state_info)
            .collect()
    };
    pb::GetMetadataResponse {
        cluster_id: md.cluster_id.clone().unwrap_or_default(),
        controller_id: md.controller.as_ref().map(|c| c.instance_id).unwrap_or(-1),
        nodes: md
            .nodes
            .values()
            .map(|n| pb::Node {
                node_id: n.node_id,
                address: n.address.clone(),
                rack: n.rack.clone(),
            })
            .collect(),
        topics: selected,
    }
}

fn fail(m: &mut RequestMetrics, e: CoordinatorError) -> Status {
    m.fail(e.label());
    tracing::debug!(error = %e, "coordinator request failed");
    e.into()
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorGrpc {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let mut m = RequestMetrics::start("coordinator", "CreateTopic");
        let req = request.into_inner();
        let configs: BTreeMap<String, String> = req.configs.clone().into_iter().collect();
        let md = self.controller.watcher.current();
        // Validate locally first so bad requests get a precise answer even
        // when no controller is reachable.
        let topic = self
            .controller
            .validate_new_topic(
                &md,
                &req.name,
                req.partitions,
                req.replication_factor,
                configs,
            )
            .map_err(|e| fail(&mut m, e))?;
        if req.validate_only {
            let preview = TopicRecord {
                name: topic.name.clone(),
                topic_id: String::new(),
                partitions: topic.partitions,
                replication_factor: topic.replication_factor,
                configs: topic.configs.clone(),
                created_at_ms: 0,
            };
            return Ok(Response::new(pb::CreateTopicResponse {
                topic: Some(topic_info(&preview, &BTreeMap::new())),
            }));
        }
        if let Some((address, mut client)) = self.forward_target().map_err(|e| fail(&mut m, e))? {
            let name = req.name.clone();
            let response = client
                .create_topic(req)
                .await
                .map_err(|status| fail(&mut m, CoordinatorError::Forward { address, status }))?;
            // Let this instance's view catch up before answering.
            self.controller
                .watcher
                .wait_until(std::time::Duration::from_secs(5), |md| {
                    md.topic(&name).is_some()
                })
                .await;
            return Ok(response);
        }
        let (record, partitions) = self
            .controller
            .create_topic(topic)
            .await
            .map_err(|e| fail(&mut m, e))?;
        let partitions: BTreeMap<i32, PartitionRecord> = partitions
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i as i32, p))
            .collect();
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(topic_info(&record, &partitions)),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let mut m = RequestMetrics::start("coordinator", "DeleteTopic");
        let req = request.into_inner();
        if let Some((address, mut client)) = self.forward_target().map_err(|e| fail(&mut m, e))? {
            return client
                .delete_topic(req)
                .await
                .map_err(|status| fail(&mut m, CoordinatorError::Forward { address, status }));
        }
        self.controller
            .delete_topic(&req.name)
            .await
            .map_err(|e| fail(&mut m, e))?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let _m = RequestMetrics::start("coordinator", "ListTopics");
        let include_internal = request.into_inner().include_internal;
        let md = self.controller.watcher.current();
        let topics = md
            .topics
            .values()
            .filter(|t| {
                include_internal || !runnel_cluster::topic_config::is_internal_topic(&t.record.name)
            })
            .map(state_info)
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let mut m = RequestMetrics::start("coordinator", "DescribeTopic");
        let name = request.into_inner().name;
        let md = self.controller.watcher.current();
        let topic = md
            .topics
            .get(&name)
            .ok_or_else(|| fail(&mut m, CoordinatorError::TopicNotFound(name.clone())))?;
        Ok(Response::new(pb::DescribeTopicResponse {
            topic: Some(state_info(topic)),
        }))
    }

    async fn get_metadata(
        &self,
        request: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::GetMetadataResponse>, Status> {
        let _m = RequestMetrics::start("coordinator", "GetMetadata");
        let req = request.into_inner();
        let md = self.controller.watcher.current();
        Ok(Response::new(metadata_response(&md, &req.topics)))
    }

    async fn alter_topic_configs(
        &self,
        request: Request<pb::AlterTopicConfigsRequest>,
    ) -> Result<Response<pb::AlterTopicConfigsResponse>, Status> {
        let mut m = RequestMetrics::start("coordinator", "AlterTopicConfigs");
        let req = request.into_inner();
        if let Some((address, mut client)) = self.forward_target().map_err(|e| fail(&mut m, e))? {
            return client
                .alter_topic_configs(req)
                .await
                .map_err(|status| fail(&mut m, CoordinatorError::Forward { address, status }));
        }
        let record = self
            .controller
            .alter_configs(
                &req.name,
                req.set.into_iter().collect(),
                req.remove,
                req.replace_all,
                req.validate_only,
            )
            .await
            .map_err(|e| fail(&mut m, e))?;
        let md = self.controller.watcher.current();
        let partitions = md
            .topic(&req.name)
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        Ok(Response::new(pb::AlterTopicConfigsResponse {
            topic: Some(topic_info(&record, &partitions)),
        }))
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::CreatePartitionsResponse>, Status> {
        let mut m = RequestMetrics::start("coordinator", "CreatePartitions");
        let req = request.into_inner();
        if let Some((address, mut client)) = self.forward_target().map_err(|e| fail(&mut m, e))? {
            return client
                .create_partitions(req)
                .await
                .map_err(|status| fail(&mut m, CoordinatorError::Forward { address, status }));
        }
        let (record, partitions) = self
            .controller
            .create_partitions(&req.name, req.total_count, req.validate_only)
            .await
            .map_err(|e| fail(&mut m, e))?;
        Ok(Response::new(pb::CreatePartitionsResponse {
            topic: Some(topic_info(&record, &partitions)),
        }))
    }

    async fn reassign_partition(
        &self,
        request: Request<pb::ReassignPartitionRequest>,
    ) -> Result<Response<pb::ReassignPartitionResponse>, Status> {
        let mut m = RequestMetrics::start("coordinator", "ReassignPartition");
        let req = request.into_inner();
        if let Some((address, mut client)) = self.forward_target().map_err(|e| fail(&mut m, e))? {
            return client
                .reassign_partition(req)
                .await
                .map_err(|status| fail(&mut m, CoordinatorError::Forward { address, status }));
        }
        self.controller
            .reassign_partition(
                &req.topic,
                req.partition,
                req.replicas,
                req.throttle_bytes_per_sec,
            )
            .await
            .map_err(|e| fail(&mut m, e))?;
        Ok(Response::new(pb::ReassignPartitionResponse {}))
    }

    async fn elect_preferred_leaders(
        &self,
        request: Request<pb::ElectPreferredLeadersRequest>,
    ) -> Result<Response<pb::ElectPreferredLeadersResponse>, Status> {
        let mut m = RequestMetrics::start("coordinator", "ElectPreferredLeaders");
        let req = request.into_inner();
        if let Some((address, mut client)) = self.forward_target().map_err(|e| fail(&mut m, e))? {
            return client
                .elect_preferred_leaders(req)
                .await
                .map_err(|status| fail(&mut m, CoordinatorError::Forward { address, status }));
        }
        let elected = self
            .controller
            .elect_preferred_leaders(&req.topics)
            .await
            .map_err(|e| fail(&mut m, e))?;
        Ok(Response::new(pb::ElectPreferredLeadersResponse { elected }))
    }

    async fn get_controller(
        &self,
        _request: Request<pb::GetControllerRequest>,
    ) -> Result<Response<pb::GetControllerResponse>, Status> {
        let mut m = RequestMetrics::start("coordinator", "GetController");
        let md = self.controller.watcher.current();
        let c = md
            .controller
            .as_ref()
            .ok_or_else(|| fail(&mut m, CoordinatorError::NoController))?;
        Ok(Response::new(pb::GetControllerResponse {
            controller_id: c.instance_id,
            address: c.address.clone(),
        }))
    }
}
