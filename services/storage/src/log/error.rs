use std::path::Path;

/// Errors of the partition log engine.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("offset {requested} is out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange {
        requested: i64,
        start: i64,
        end: i64,
    },
    #[error("record batch of {size} bytes is larger than the maximum of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("corrupt log data in {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("log {0} is offline after an I/O failure: {1}")]
    Failed(String, String),
    #[error("log {0} was deleted")]
    Deleted(String),
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    #[error("invalid partition {0}")]
    InvalidPartition(i32),
    #[error("leader epoch {epoch} is older than the log's latest epoch {latest}")]
    FencedEpoch { epoch: i32, latest: i32 },
    #[error("replicated batch starts at offset {got}, the log ends at {expected}")]
    NotContiguous { expected: i64, got: i64 },
    #[error(transparent)]
    Sequence(#[from] super::idempotence::SeqError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl LogError {
    /// An I/O error about a file, with the action and the path as context.
    pub(crate) fn io_path(action: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let context = format!("{action} {}", path.display());
        move |source| LogError::Io { context, source }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        LogError::Corrupt {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn join(e: tokio::task::JoinError) -> Self {
        LogError::Internal(format!("blocking log task failed: {e}"))
    }
}
