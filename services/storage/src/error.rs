//! How storage errors reach callers: per-partition error codes.

use runnel_proto::common::v1::ErrorCode;

use crate::log::{LogError, SeqError};

/// A per-partition failure: the code a client acts on and a message a human
/// reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionError {
    pub code: ErrorCode,
    pub message: String,
}

impl PartitionError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PartitionError {
            code,
            message: message.into(),
        }
    }

    pub fn unknown(topic: &str, partition: i32) -> Self {
        Self::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("unknown topic or partition {topic}-{partition}"),
        )
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        self.code.as_str_name()
    }
}

impl From<LogError> for PartitionError {
    fn from(e: LogError) -> Self {
        let code = match &e {
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            LogError::InvalidBatch(_) => ErrorCode::CorruptMessage,
            LogError::InvalidRecord(_) => ErrorCode::InvalidRecord,
            LogError::Deleted(_) => ErrorCode::UnknownTopicOrPartition,
            LogError::InvalidTopic(_) | LogError::InvalidPartition(_) => {
                ErrorCode::UnknownTopicOrPartition
            }
            LogError::Io { .. } | LogError::Corrupt { .. } | LogError::Failed(..) => {
                ErrorCode::KafkaStorageError
            }
            LogError::Internal(_) => ErrorCode::UnknownServerError,
            LogError::FencedEpoch { .. } => ErrorCode::FencedLeaderEpoch,
            // A follower's fetch got ahead of its log: it fetches again.
            LogError::NotContiguous { .. } => ErrorCode::OffsetOutOfRange,
            LogError::Sequence(SeqError::StaleEpoch { .. }) => ErrorCode::InvalidProducerEpoch,
            LogError::Sequence(_) => ErrorCode::OutOfOrderSequenceNumber,
        };
        if code == ErrorCode::KafkaStorageError || code == ErrorCode::UnknownServerError {
            tracing::error!(error = %e, "storage failure");
        }
        PartitionError::new(code, e.to_string())
    }
}

impl From<runnel_records::BatchError> for PartitionError {
    fn from(e: runnel_records::BatchError) -> Self {
        let code = match e {
            runnel_records::BatchError::UnsupportedMagic(_) => ErrorCode::InvalidRecord,
            runnel_records::BatchError::Empty => ErrorCode::InvalidRequest,
            _ => ErrorCode::CorruptMessage,
        };
        PartitionError::new(code, e.to_string())
    }
}
