//! Topic administration through the coordinator.

use std::collections::HashMap;

use runnel_proto::coordinator::v1 as pb;
use runnel_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::Channel;

use crate::error::ClientError;

/// A topic to create.
#[derive(Debug, Clone, Default)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    /// 0 for the cluster default.
    pub replication_factor: i32,
    pub configs: HashMap<String, String>,
}

impl NewTopic {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        NewTopic {
            name: name.into(),
            partitions,
            ..Default::default()
        }
    }

    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.configs.insert(key.to_string(), value.to_string());
        self
    }
}

/// Topic administration. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    client: CoordinatorServiceClient<Channel>,
}

impl Admin {
    /// A client for the coordinator at `address` (host:port); connects lazily.
    pub fn connect(address: &str) -> Result<Self, ClientError> {
        let channel = runnel_rpc::lazy_channel(address)?;
        Ok(Admin {
            client: CoordinatorServiceClient::new(channel)
                .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES),
        })
    }

    pub async fn create_topic(&self, topic: NewTopic) -> Result<pb::TopicInfo, ClientError> {
        self.create(topic, false).await
    }

    /// Checks a topic creation without doing it.
    pub async fn validate_topic(&self, topic: NewTopic) -> Result<pb::TopicInfo, ClientError> {
        self.create(topic, true).await
    }

    async fn create(
        &self,
        topic: NewTopic,
        validate_only: bool,
    ) -> Result<pb::TopicInfo, ClientError> {
        let response = self
            .client
            .clone()
            .create_topic(pb::CreateTopicRequest {
                name: topic.name,
                partitions: topic.partitions,
                replication_factor: topic.replication_factor,
                configs: topic.configs,
                validate_only,
            })
            .await?
            .into_inner();
        response
            .topic
            .ok_or_else(|| ClientError::Invalid("coordinator returned no topic".into()))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.client
            .clone()
            .delete_topic(pb::DeleteTopicRequest { name: name.into() })
            .await?;
        Ok(())
    }

    pub async fn list_topics(
        &self,
        include_internal: bool,
    ) -> Result<Vec<pb::TopicInfo>, ClientError> {
        Ok(self
            .client
            .clone()
            .list_topics(pb::ListTopicsRequest { include_internal })
            .await?
            .into_inner()
            .topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicInfo, ClientError> {
        self.client
            .clone()
            .describe_topic(pb::DescribeTopicRequest { name: name.into() })
            .await?
            .into_inner()
            .topic
            .ok_or_else(|| ClientError::UnknownTopic(name.into()))
    }

    /// Starts moving a partition to a new replica set (preferred leader
    /// first), its new replicas copying at most `throttle_bytes_per_sec`
    /// (0: unlimited) until in sync. Follow it with [`Admin::describe_topic`].
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        replicas: Vec<i32>,
        throttle_bytes_per_sec: i64,
    ) -> Result<(), ClientError> {
        self.client
            .clone()
            .reassign_partition(pb::ReassignPartitionRequest {
                topic: topic.into(),
                partition,
                replicas,
                throttle_bytes_per_sec,
            })
            .await?;
        Ok(())
    }

    /// Moves leadership to each partition's preferred replica where it is
    /// in sync (all topics when `topics` is empty); returns how many moved.
    pub async fn elect_preferred_leaders(&self, topics: Vec<String>) -> Result<i32, ClientError> {
        Ok(self
            .client
            .clone()
            .elect_preferred_leaders(pb::ElectPreferredLeadersRequest { topics })
            .await?
            .into_inner()
            .elected)
    }

    /// Sets and removes topic configs; every value is validated first.
    pub async fn alter_configs(
        &self,
        name: &str,
        set: HashMap<String, String>,
        remove: Vec<String>,
    ) -> Result<pb::TopicInfo, ClientError> {
        self.client
            .clone()
            .alter_topic_configs(pb::AlterTopicConfigsRequest {
                name: name.into(),
                set,
                remove,
                replace_all: false,
                validate_only: false,
            })
            .await?
            .into_inner()
            .topic
            .ok_or_else(|| ClientError::UnknownTopic(name.into()))
    }

    /// Grows a topic to `total` partitions.
    pub async fn create_partitions(
        &self,
        name: &str,
        total: i32,
    ) -> Result<pb::TopicInfo, ClientError> {
        self.client
            .clone()
            .create_partitions(pb::CreatePartitionsRequest {
                name: name.into(),
                total_count: total,
                validate_only: false,
            })
            .await?
            .into_inner()
            .topic
            .ok_or_else(|| ClientError::UnknownTopic(name.into()))
    }

    /// Live nodes and the named topics (all when empty).
    pub async fn metadata(
        &self,
        topics: &[String],
    ) -> Result<pb::GetMetadataResponse, ClientError> {
        Ok(self
            .client
            .clone()
            .get_metadata(pb::GetMetadataRequest {
                topics: topics.to_vec(),
            })
            .await?
            .into_inner())
    }
}
