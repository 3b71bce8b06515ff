//! What every connection of an edge instance shares: its identity as a
//! broker, the watched cluster metadata, the live edges, and gRPC clients to
//! the coordinator, ingest, the storage nodes and the groups nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use runnel_cluster::{ClusterMetadata, TopicState};
use runnel_proto::coordinator::v1 as coord;
use runnel_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use runnel_proto::groups::v1::groups_service_client::GroupsServiceClient;
use runnel_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;
use tonic::transport::Channel;

use crate::config::EdgeConfig;
use crate::error::code;
use crate::registry::{EdgeRecord, Registry};

/// A Kafka error code with a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    pub code: i16,
    pub message: String,
}

impl KafkaError {
    pub fn new(code: i16, message: impl Into<String>) -> Self {
        KafkaError {
            code,
            message: message.into(),
        }
    }
}

/// Shared state of one edge instance.
#[derive(Debug)]
pub struct Edge {
    pub config: EdgeConfig,
    /// This edge as a broker: id, host and port clients connect to.
    pub me: EdgeRecord,
    pub watcher: runnel_cluster::MetadataWatcher,
    pub registry: Registry,
    pub pool: runnel_rpc::ChannelPool,
}

impl Edge {
    pub fn node_id(&self) -> i32 {
        self.me.node_id
    }

    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.watcher.current()
    }

    /// Every live edge, this one included, by broker id.
    pub fn brokers(&self) -> BTreeMap<i32, EdgeRecord> {
        let mut all = self.metadata().edges.clone();
        all.insert(self.me.node_id, self.me.clone());
        all
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms.max(1))
    }

    fn channel(&self, address: &str) -> Result<Channel, tonic::Status> {
        self.pool
            .get(address)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))
    }

    pub fn storage(&self, address: &str) -> Result<StorageServiceClient<Channel>, tonic::Status> {
        Ok(StorageServiceClient::new(self.channel(address)?)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES))
    }

    /// A client to the groups node at `address` (a group's coordinator).
    pub fn groups(&self, address: &str) -> Result<GroupsServiceClient<Channel>, tonic::Status> {
        Ok(GroupsServiceClient::new(self.channel(address)?)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES))
    }

    pub fn ingest(&self) -> Result<IngestServiceClient<Channel>, tonic::Status> {
        Ok(
            IngestServiceClient::new(self.channel(&self.config.ingest_address)?)
                .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES),
        )
    }

    /// A client to a coordinator: the configured one, else the active
    /// controller named in the metadata.
    pub fn coordinator(&self) -> Result<CoordinatorServiceClient<Channel>, KafkaError> {
        let address = match &self.config.coordinator_address {
            Some(a) => a.clone(),
            None => self
                .metadata()
                .controller
                .as_ref()
                .map(|c| c.address.clone())
                .ok_or_else(|| {
                    KafkaError::new(code::NOT_CONTROLLER, "no active controller right now")
                })?,
        };
        let channel = self
            .channel(&address)
            .map_err(|s| KafkaError::new(code::NOT_CONTROLLER, s.message()))?;
        Ok(CoordinatorServiceClient::new(channel)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES))
    }

    /// Creates a topic through the coordinator.
    pub async fn create_topic(
        &self,
        request: coord::CreateTopicRequest,
    ) -> Result<coord::TopicInfo, KafkaError> {
        let mut client = self.coordinator()?;
        let mut call = tonic::Request::new(request);
        call.set_timeout(self.rpc_timeout());
        match client.create_topic(call).await {
            Ok(r) => r
                .into_inner()
                .topic
                .ok_or_else(|| KafkaError::new(code::UNKNOWN_SERVER_ERROR, "empty answer")),
            Err(s) => Err(create_error(&s)),
        }
    }

    /// Waits until a topic exists with all its partitions led by a live node.
    pub async fn wait_for_topic(&self, name: &str, timeout: Duration) -> bool {
        self.watcher
            .wait_until(timeout, |md| {
                md.topic(name).is_some_and(|t| topic_ready(md, t))
            })
            .await
            .is_some()
    }
}

/// A topic whose partitions all exist and have a live leader.
pub fn topic_ready(md: &ClusterMetadata, t: &TopicState) -> bool {
    t.partitions.len() as i32 >= t.record.partitions
        && t.partitions
            .values()
            .all(|p| md.nodes.contains_key(&p.leader))
}

/// The Kafka code of a failed CreateTopic call. The coordinator answers
/// with a gRPC status; its message says which rule failed.
pub fn create_error(s: &tonic::Status) -> KafkaError {
    let message = s.message().to_string();
    let code = match s.code() {
        tonic::Code::AlreadyExists => code::TOPIC_ALREADY_EXISTS,
        tonic::Code::InvalidArgument => {
            if message.starts_with("invalid partition count") {
                code::INVALID_PARTITIONS
            } else if message.starts_with("invalid replication factor") {
                code::INVALID_REPLICATION_FACTOR
            } else if message.starts_with("invalid topic name") {
                code::INVALID_TOPIC_EXCEPTION
            } else {
                code::INVALID_CONFIG
            }
        }
        tonic::Code::FailedPrecondition => code::POLICY_VIOLATION,
        tonic::Code::Unavailable => {
            if message.contains("no storage node") {
                code::INVALID_REPLICATION_FACTOR
            } else {
                code::NOT_CONTROLLER
            }
        }
        tonic::Code::DeadlineExceeded => code::REQUEST_TIMED_OUT,
        _ => code::UNKNOWN_SERVER_ERROR,
    };
    KafkaError { code, message }
}

/// Splits `host:port` (with `[v6]:port`) into its parts.
pub fn split_host_port(address: &str) -> Option<(String, i32)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:9092"),
            Some(("127.0.0.1".into(), 9092))
        );
        assert_eq!(split_host_port("[::1]:19092"), Some(("::1".into(), 19092)));
        assert_eq!(split_host_port("localhost"), None);
        assert_eq!(split_host_port(":9092"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }

    #[test]
    fn coordinator_statuses_map_to_kafka_codes() {
        let c = |s: tonic::Status| create_error(&s).code;
        assert_eq!(c(tonic::Status::already_exists("x")), 36);
        assert_eq!(
            c(tonic::Status::invalid_argument(
                "invalid partition count 0: x"
            )),
            37
        );
        assert_eq!(
            c(tonic::Status::invalid_argument(
                "invalid replication factor 9: x"
            )),
            38
        );
        assert_eq!(
            c(tonic::Status::invalid_argument(
                "unknown topic config \"a\""
            )),
            40
        );
    }
}
