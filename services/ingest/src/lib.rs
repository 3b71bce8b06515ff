//! The ingest role: runnel's gRPC write front door.
//!
//! Ingest is stateless. For each partition of a produce request it checks the
//! batches (header, CRC-32C, size against the topic's `max.message.bytes`),
//! finds the partition leader in the watched cluster metadata, sends the
//! batches of all partitions a node leads in one `Append` call, and answers
//! per partition with offsets or a precise error. When leadership moves or a
//! leader is briefly unavailable it waits for the metadata to change and
//! retries until the request's timeout. `ProduceRecords` takes plain records
//! and picks partitions exactly as Kafka's default partitioner does (murmur2
//! of the key; one sticky partition per request for records without a key).

pub mod config;
pub mod grpc;
pub mod router;
pub mod server;

pub use config::IngestConfig;
pub use server::serve;
