//! Coordinator errors and their one conversion to `tonic::Status`.

use runnel_cluster::ConfigError;
use runnel_metastore::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    #[error("invalid partition count {0}: {1}")]
    InvalidPartitions(i32, String),
    #[error("invalid replication factor {requested}: {reason}")]
    InvalidReplicationFactor { requested: i32, reason: String },
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no storage node is live; start one and retry")]
    NoLiveNodes,
    #[error("no active controller right now; retry shortly")]
    NoController,
    #[error("metastore: {0}")]
    Meta(#[from] MetaError),
    #[error("forwarding to the controller at {address}: {status}")]
    Forward {
        address: String,
        status: tonic::Status,
    },
}

impl CoordinatorError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CoordinatorError::InvalidConfig(_) => "invalid_config",
            CoordinatorError::InvalidPartitions(..) => "invalid_partitions",
            CoordinatorError::InvalidReplicationFactor { .. } => "invalid_replication_factor",
            CoordinatorError::TopicExists(_) => "topic_exists",
            CoordinatorError::TopicNotFound(_) => "topic_not_found",
            CoordinatorError::NotFound(_) => "not_found",
            CoordinatorError::Invalid(_) => "invalid",
            CoordinatorError::NoLiveNodes => "no_live_nodes",
            CoordinatorError::NoController => "no_controller",
            CoordinatorError::Meta(_) => "metastore",
            CoordinatorError::Forward { .. } => "forward",
        }
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(e: CoordinatorError) -> Self {
        use tonic::Status;
        match e {
            CoordinatorError::InvalidConfig(_)
            | CoordinatorError::InvalidPartitions(..)
            | CoordinatorError::InvalidReplicationFactor { .. }
            | CoordinatorError::Invalid(_) => Status::invalid_argument(e.to_string()),
            CoordinatorError::TopicExists(_) => Status::already_exists(e.to_string()),
            CoordinatorError::TopicNotFound(_) | CoordinatorError::NotFound(_) => {
                Status::not_found(e.to_string())
            }
            CoordinatorError::NoLiveNodes
            | CoordinatorError::NoController
            | CoordinatorError::Meta(_) => Status::unavailable(e.to_string()),
            // The controller's answer is passed through as it is.
            CoordinatorError::Forward { status, .. } => status,
        }
    }
}
