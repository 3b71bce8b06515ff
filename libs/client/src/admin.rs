//! Topic administration through the coordinator, and DeleteRecords on the
//! partition leaders.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use runnel_proto::common::v1::ErrorCode;
use runnel_proto::coordinator::v1 as pb;
use runnel_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use runnel_proto::storage::v1 as st;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;
use tonic::transport::Channel;

use crate::error::ClientError;

/// Rounds of [`Admin::delete_records`] for partitions whose leader moved.
const DELETE_RECORDS_ATTEMPTS: u32 = 8;

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
    /// Channels to storage nodes (partition leaders).
    pool: runnel_rpc::ChannelPool,
}

impl Admin {
    /// A client for the coordinator at `address` (host:port); connects lazily.
    pub fn connect(address: &str) -> Result<Self, ClientError> {
        let channel = runnel_rpc::lazy_channel(address)?;
        Ok(Admin {
            client: CoordinatorServiceClient::new(channel)
                .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES),
            pool: runnel_rpc::ChannelPool::new(),
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

impl Admin {
    /// Kafka's DeleteRecords: makes the records of `topic` below `offset`
    /// unreadable in each partition of `offsets` (`partition → offset`; -1
    /// means up to the high watermark) by moving the partition's log start
    /// offset up, on each partition's leader. Returns, per partition, the
    /// new log start offset (the low watermark) or the partition's error
    /// (OFFSET_OUT_OF_RANGE above the high watermark, POLICY_VIOLATION on a
    /// compact-only topic, …). Partitions whose leader moved or is not
    /// reachable are retried with fresh metadata a few times.
    pub async fn delete_records(
        &self,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<BTreeMap<i32, Result<i64, ClientError>>, ClientError> {
        if offsets.is_empty() {
            return Err(ClientError::Invalid(
                "no partition to delete records from".into(),
            ));
        }
        let mut pending = offsets.clone();
        let mut done = BTreeMap::new();
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=DELETE_RECORDS_ATTEMPTS {
            let md = self.metadata(&[topic.to_string()]).await?;
            let info = md
                .topics
                .into_iter()
                .find(|t| t.name == topic)
                .ok_or_else(|| ClientError::UnknownTopic(topic.into()))?;
            let addresses: HashMap<i32, String> = md
                .nodes
                .into_iter()
                .map(|n| (n.node_id, n.address))
                .collect();
            let leaders: HashMap<i32, i32> = info
                .partitions
                .iter()
                .map(|p| (p.partition, p.leader))
                .collect();
            // Errors of partitions worth another round.
            let mut retry: BTreeMap<i32, ClientError> = BTreeMap::new();
            let mut by_node: BTreeMap<String, Vec<st::RecordsToDelete>> = BTreeMap::new();
            for (&partition, &offset) in &pending {
                let Some(leader) = leaders.get(&partition) else {
                    done.insert(
                        partition,
                        Err(ClientError::partition(
                            topic,
                            partition,
                            ErrorCode::UnknownTopicOrPartition as i32,
                            format!("{topic} has no partition {partition}"),
                        )),
                    );
                    continue;
                };
                match addresses.get(leader) {
                    Some(address) => {
                        by_node
                            .entry(address.clone())
                            .or_default()
                            .push(st::RecordsToDelete {
                                topic: topic.to_string(),
                                partition,
                                offset,
                            })
                    }
                    None => {
                        retry.insert(
                            partition,
                            ClientError::partition(
                                topic,
                                partition,
                                ErrorCode::LeaderNotAvailable as i32,
                                "the partition has no live leader".into(),
                            ),
                        );
                    }
                }
            }
            let calls = by_node.into_iter().map(|(address, partitions)| async move {
                let asked: Vec<i32> = partitions.iter().map(|p| p.partition).collect();
                let outcome = match self.pool.get(&address) {
                    Ok(channel) => StorageServiceClient::new(channel)
                        .delete_records(st::DeleteRecordsRequest { partitions })
                        .await
                        .map(|r| r.into_inner().results)
                        .map_err(ClientError::from),
                    Err(e) => Err(ClientError::from(e)),
                };
                (address, asked, outcome)
            });
            for (address, asked, outcome) in futures::future::join_all(calls).await {
                match outcome {
                    Ok(results) => {
                        for r in results {
                            let partition = r.partition;
                            if r.error == ErrorCode::None as i32 {
                                done.insert(partition, Ok(r.low_watermark));
                                continue;
                            }
                            let e =
                                ClientError::partition(topic, partition, r.error, r.error_message);
                            if matches!(
                                e.code(),
                                Some(
                                    ErrorCode::NotLeaderOrFollower | ErrorCode::LeaderNotAvailable
                                )
                            ) {
                                retry.insert(partition, e);
                            } else {
                                done.insert(partition, Err(e));
                            }
                        }
                        for partition in asked {
                            if !done.contains_key(&partition) && !retry.contains_key(&partition) {
                                done.insert(
                                    partition,
                                    Err(ClientError::Invalid(format!(
                                        "{address} did not answer for {topic}-{partition}"
                                    ))),
                                );
                            }
                        }
                    }
                    // The node may be gone: ask the metadata again.
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "delete records call failed");
                        self.pool.forget(&address);
                        for partition in asked {
                            retry.insert(partition, e.clone());
                        }
                    }
                }
            }
            if retry.is_empty() || attempt == DELETE_RECORDS_ATTEMPTS {
                done.extend(retry.into_iter().map(|(p, e)| (p, Err(e))));
                break;
            }
            pending.retain(|p, _| retry.contains_key(p));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Ok(done)
    }
}
