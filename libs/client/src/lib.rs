//! The native Rust client for runnel, over gRPC.
//!
//! - [`Admin`] creates, lists, describes and deletes topics (coordinator),
//!   and deletes records below an offset (partition leaders);
//! - [`Producer`] batches records per partition (size or linger), compresses,
//!   sends through ingest and resolves each record's offset; keys go to the
//!   partition Kafka's default partitioner would pick;
//! - [`Consumer`] reads assigned partitions straight from their leaders with
//!   long-poll fetches, from an offset, the earliest or latest, or a time;
//! - [`Groups`] administers consumer groups (list, describe with lag, reset
//!   offsets, delete) through the groups service.
//!
//! The records stored are Kafka RecordBatch v2, the same bytes a Kafka client
//! writes through the edge.

mod admin;
mod consumer;
mod error;
mod groups;
mod producer;

pub use admin::{Admin, NewTopic};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartOffset};
pub use error::ClientError;
pub use groups::{Groups, group_error_name};
pub use producer::{DeliveryFuture, Producer, ProducerConfig, RecordMetadata};
pub use runnel_proto::coordinator::v1::{Node, PartitionInfo, TopicInfo};
pub use runnel_proto::groups::v1 as groups_pb;
pub use runnel_records::Compression;
pub use runnel_records::build::PlainRecord;

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<bytes::Bytes>,
    pub value: Option<bytes::Bytes>,
    pub headers: Vec<(String, Option<bytes::Bytes>)>,
    /// Milliseconds since the epoch; None means now.
    pub timestamp_ms: Option<i64>,
    /// Explicit partition; None lets the key (or stickiness) decide.
    pub partition: Option<i32>,
}

impl Record {
    pub fn new(key: Option<impl Into<bytes::Bytes>>, value: impl Into<bytes::Bytes>) -> Self {
        Record {
            key: key.map(Into::into),
            value: Some(value.into()),
            ..Default::default()
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
