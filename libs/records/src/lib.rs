//! Kafka RecordBatch v2, the one record format runnel stores end to end.
//!
//! Batches travel as bytes from the producer to the disk to the consumer; this
//! crate is the small amount of code that looks inside them:
//! - [`batch`]: parse and check a batch header (length, magic, CRC-32C) and
//!   stamp the fields that lie outside the CRC (base offset, leader epoch);
//! - [`build`]: build batches from plain records (for native clients, ingest
//!   and the CLI), with compression, through the `kafka-protocol` crate;
//! - [`partitioner`]: Kafka's default partitioner (murmur2 of the key).

pub mod batch;
pub mod build;
pub mod compact;
pub mod partitioner;

pub use batch::{BatchError, BatchHeader, Batches};
pub use build::{
    Compression, PlainRecord, ProducerStamp, build_batch, build_batch_as, decode_records,
};
pub use partitioner::{murmur2, partition_for_key};
