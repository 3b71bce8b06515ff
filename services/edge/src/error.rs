//! Edge errors, and the one place runnel outcomes become Kafka error codes.

use runnel_proto::common::v1::ErrorCode;

/// Why the edge could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("invalid edge config: {0}")]
    Config(String),
    #[error(transparent)]
    Meta(#[from] runnel_metastore::MetaError),
    #[error(transparent)]
    Rpc(#[from] runnel_rpc::RpcError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a connection was closed without an answer to its last frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame length {0} is negative or shorter than a request header")]
    BadLength(i32),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes (max_request_bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("{api:?} version {version} is not supported")]
    UnsupportedVersion {
        api: kafka_protocol::messages::ApiKey,
        version: i16,
    },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: kafka_protocol::messages::ApiKey,
        version: i16,
        reason: String,
    },
    #[error("encoding the {api:?} v{version} response failed: {reason}")]
    Encode {
        api: kafka_protocol::messages::ApiKey,
        version: i16,
        reason: String,
    },
    #[error("no request within {0} ms")]
    Idle(u64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProtocolError::BadLength(_) => "bad_length",
            ProtocolError::TooLarge { .. } => "too_large",
            ProtocolError::UnknownApiKey(_) => "unknown_api_key",
            ProtocolError::UnsupportedVersion { .. } => "unsupported_version",
            ProtocolError::Malformed { .. } => "malformed",
            ProtocolError::Encode { .. } => "encode",
            ProtocolError::Idle(_) => "idle",
            ProtocolError::Io(_) => "io",
        }
    }
}

/// Kafka error codes the edge answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const NETWORK_EXCEPTION: i16 = 13;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_REQUEST: i16 = 42;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const UNSUPPORTED_ENDPOINT_TYPE: i16 = 119;
}

/// The Kafka code of a runnel per-partition error (`runnel.common.v1.ErrorCode`).
pub fn from_runnel(error: i32) -> i16 {
    match ErrorCode::try_from(error) {
        Ok(ErrorCode::None) => code::NONE,
        Ok(ErrorCode::UnknownTopicOrPartition) => code::UNKNOWN_TOPIC_OR_PARTITION,
        Ok(ErrorCode::NotLeaderOrFollower) => code::NOT_LEADER_OR_FOLLOWER,
        Ok(ErrorCode::OffsetOutOfRange) => code::OFFSET_OUT_OF_RANGE,
        Ok(ErrorCode::CorruptMessage) => code::CORRUPT_MESSAGE,
        Ok(ErrorCode::MessageTooLarge) => code::MESSAGE_TOO_LARGE,
        Ok(ErrorCode::InvalidRecord) => code::INVALID_RECORD,
        Ok(ErrorCode::RequestTimedOut) => code::REQUEST_TIMED_OUT,
        Ok(ErrorCode::LeaderNotAvailable) => code::LEADER_NOT_AVAILABLE,
        Ok(ErrorCode::KafkaStorageError) => code::KAFKA_STORAGE_ERROR,
        Ok(ErrorCode::InvalidRequest) => code::INVALID_REQUEST,
        Ok(ErrorCode::NotEnoughReplicas) => code::NOT_ENOUGH_REPLICAS,
        Ok(ErrorCode::FencedLeaderEpoch) => code::FENCED_LEADER_EPOCH,
        Ok(ErrorCode::InvalidRequiredAcks) => code::INVALID_REQUIRED_ACKS,
        Ok(ErrorCode::UnknownLeaderEpoch) => code::UNKNOWN_LEADER_EPOCH,
        Ok(ErrorCode::NotEnoughReplicasAfterAppend) => code::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        Ok(ErrorCode::OutOfOrderSequenceNumber) => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        Ok(ErrorCode::InvalidProducerEpoch) => code::INVALID_PRODUCER_EPOCH,
        Ok(ErrorCode::PolicyViolation) => code::POLICY_VIOLATION,
        Ok(ErrorCode::UnknownServerError) | Err(_) => code::UNKNOWN_SERVER_ERROR,
    }
}

/// The Kafka code for a failed gRPC call to a partition's leader or to
/// ingest: codes a client retries after refreshing its metadata.
pub fn from_status(status: &tonic::Status) -> i16 {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => code::REQUEST_TIMED_OUT,
        tonic::Code::Unavailable | tonic::Code::Unknown => code::NOT_LEADER_OR_FOLLOWER,
        tonic::Code::NotFound => code::UNKNOWN_TOPIC_OR_PARTITION,
        tonic::Code::InvalidArgument => code::INVALID_REQUEST,
        _ => code::UNKNOWN_SERVER_ERROR,
    }
}

/// A short, stable name of a Kafka error code for metrics and logs.
pub fn name(code: i16) -> &'static str {
    match code {
        code::NONE => "none",
        code::UNKNOWN_SERVER_ERROR => "UNKNOWN_SERVER_ERROR",
        code::OFFSET_OUT_OF_RANGE => "OFFSET_OUT_OF_RANGE",
        code::CORRUPT_MESSAGE => "CORRUPT_MESSAGE",
        code::UNKNOWN_TOPIC_OR_PARTITION => "UNKNOWN_TOPIC_OR_PARTITION",
        code::LEADER_NOT_AVAILABLE => "LEADER_NOT_AVAILABLE",
        code::NOT_LEADER_OR_FOLLOWER => "NOT_LEADER_OR_FOLLOWER",
        code::REQUEST_TIMED_OUT => "REQUEST_TIMED_OUT",
        code::MESSAGE_TOO_LARGE => "MESSAGE_TOO_LARGE",
        code::OFFSET_METADATA_TOO_LARGE => "OFFSET_METADATA_TOO_LARGE",
        code::NETWORK_EXCEPTION => "NETWORK_EXCEPTION",
        code::COORDINATOR_LOAD_IN_PROGRESS => "COORDINATOR_LOAD_IN_PROGRESS",
        code::COORDINATOR_NOT_AVAILABLE => "COORDINATOR_NOT_AVAILABLE",
        code::NOT_COORDINATOR => "NOT_COORDINATOR",
        code::INVALID_TOPIC_EXCEPTION => "INVALID_TOPIC_EXCEPTION",
        code::NOT_ENOUGH_REPLICAS => "NOT_ENOUGH_REPLICAS",
        code::NOT_ENOUGH_REPLICAS_AFTER_APPEND => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        code::OUT_OF_ORDER_SEQUENCE_NUMBER => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        code::INVALID_PRODUCER_EPOCH => "INVALID_PRODUCER_EPOCH",
        code::INVALID_REQUIRED_ACKS => "INVALID_REQUIRED_ACKS",
        code::ILLEGAL_GENERATION => "ILLEGAL_GENERATION",
        code::INCONSISTENT_GROUP_PROTOCOL => "INCONSISTENT_GROUP_PROTOCOL",
        code::INVALID_GROUP_ID => "INVALID_GROUP_ID",
        code::UNKNOWN_MEMBER_ID => "UNKNOWN_MEMBER_ID",
        code::INVALID_SESSION_TIMEOUT => "INVALID_SESSION_TIMEOUT",
        code::REBALANCE_IN_PROGRESS => "REBALANCE_IN_PROGRESS",
        code::INVALID_COMMIT_OFFSET_SIZE => "INVALID_COMMIT_OFFSET_SIZE",
        code::UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
        code::TOPIC_ALREADY_EXISTS => "TOPIC_ALREADY_EXISTS",
        code::INVALID_PARTITIONS => "INVALID_PARTITIONS",
        code::INVALID_REPLICATION_FACTOR => "INVALID_REPLICATION_FACTOR",
        code::INVALID_REPLICA_ASSIGNMENT => "INVALID_REPLICA_ASSIGNMENT",
        code::INVALID_CONFIG => "INVALID_CONFIG",
        code::NOT_CONTROLLER => "NOT_CONTROLLER",
        code::INVALID_REQUEST => "INVALID_REQUEST",
        code::POLICY_VIOLATION => "POLICY_VIOLATION",
        code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        code::KAFKA_STORAGE_ERROR => "KAFKA_STORAGE_ERROR",
        code::NON_EMPTY_GROUP => "NON_EMPTY_GROUP",
        code::GROUP_ID_NOT_FOUND => "GROUP_ID_NOT_FOUND",
        code::FETCH_SESSION_ID_NOT_FOUND => "FETCH_SESSION_ID_NOT_FOUND",
        code::INVALID_FETCH_SESSION_EPOCH => "INVALID_FETCH_SESSION_EPOCH",
        code::FENCED_LEADER_EPOCH => "FENCED_LEADER_EPOCH",
        code::UNKNOWN_LEADER_EPOCH => "UNKNOWN_LEADER_EPOCH",
        code::MEMBER_ID_REQUIRED => "MEMBER_ID_REQUIRED",
        code::GROUP_MAX_SIZE_REACHED => "GROUP_MAX_SIZE_REACHED",
        code::FENCED_INSTANCE_ID => "FENCED_INSTANCE_ID",
        code::GROUP_SUBSCRIBED_TO_TOPIC => "GROUP_SUBSCRIBED_TO_TOPIC",
        code::INVALID_RECORD => "INVALID_RECORD",
        code::UNSTABLE_OFFSET_COMMIT => "UNSTABLE_OFFSET_COMMIT",
        code::UNKNOWN_TOPIC_ID => "UNKNOWN_TOPIC_ID",
        code::UNSUPPORTED_ENDPOINT_TYPE => "UNSUPPORTED_ENDPOINT_TYPE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnel_codes_map_to_kafka_codes() {
        let cases = [
            (ErrorCode::None, 0),
            (ErrorCode::UnknownTopicOrPartition, 3),
            (ErrorCode::NotLeaderOrFollower, 6),
            (ErrorCode::OffsetOutOfRange, 1),
            (ErrorCode::CorruptMessage, 2),
            (ErrorCode::MessageTooLarge, 10),
            (ErrorCode::InvalidRecord, 87),
            (ErrorCode::RequestTimedOut, 7),
            (ErrorCode::LeaderNotAvailable, 5),
            (ErrorCode::KafkaStorageError, 56),
            (ErrorCode::InvalidRequest, 42),
            (ErrorCode::NotEnoughReplicas, 19),
            (ErrorCode::FencedLeaderEpoch, 74),
            (ErrorCode::InvalidRequiredAcks, 21),
            (ErrorCode::UnknownLeaderEpoch, 75),
            (ErrorCode::NotEnoughReplicasAfterAppend, 20),
            (ErrorCode::OutOfOrderSequenceNumber, 45),
            (ErrorCode::InvalidProducerEpoch, 47),
            (ErrorCode::PolicyViolation, 44),
            (ErrorCode::UnknownServerError, -1),
        ];
        for (runnel, kafka) in cases {
            assert_eq!(from_runnel(runnel as i32), kafka, "{runnel:?}");
        }
        assert_eq!(from_runnel(9999), -1);
    }
}
