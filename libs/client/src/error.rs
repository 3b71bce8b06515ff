use runnel_proto::common::v1::ErrorCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {}", rpc_code(.0), .0.message())]
    Rpc(tonic::Status),
    #[error("{topic}-{partition}: {code:?}: {message}")]
    Partition {
        topic: String,
        partition: i32,
        code: ErrorCode,
        message: String,
    },
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("the producer is closed")]
    Closed,
    #[error("connection: {0}")]
    Connect(String),
}

impl ClientError {
    pub fn partition(topic: &str, partition: i32, code: i32, message: String) -> Self {
        ClientError::Partition {
            topic: topic.to_string(),
            partition,
            code: ErrorCode::try_from(code).unwrap_or(ErrorCode::UnknownServerError),
            message,
        }
    }

    /// The per-partition error code, if this is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Partition { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    // Not `#[from]`: that would make the status the error's source and print
    // its message twice in error chains.
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s)
    }
}

impl From<runnel_rpc::RpcError> for ClientError {
    fn from(e: runnel_rpc::RpcError) -> Self {
        ClientError::Connect(e.to_string())
    }
}

fn rpc_code(s: &tonic::Status) -> &'static str {
    use tonic::Code::*;
    match s.code() {
        InvalidArgument => "invalid argument",
        NotFound => "not found",
        AlreadyExists => "already exists",
        Unavailable => "unavailable",
        DeadlineExceeded => "timed out",
        FailedPrecondition => "failed precondition",
        PermissionDenied => "permission denied",
        Unauthenticated => "unauthenticated",
        ResourceExhausted => "resource exhausted",
        OutOfRange => "out of range",
        _ => "error",
    }
}
