//! The partition log engine: one append-only, segmented log per partition
//! replica, holding Kafka RecordBatch v2 bytes exactly as producers sent them
//! (only the base offset, the partition leader epoch and, for LogAppendTime
//! topics, the timestamp are stamped in).
//!
//! # On-disk format
//!
//! One directory per partition (the [`LogManager`] names it
//! `<topic>-<partition>` and keeps a small `partition.json` with the topic,
//! topic id and partition in it). The log is split into *segments*, each
//! named after the offset of its first record, zero-padded to 20 digits:
//!
//! ```text
//! 00000000000000000000.log        batches, concatenated, nothing else
//! 00000000000000000000.index      sparse offset index
//! 00000000000000000000.timeindex  sparse time index
//! 00000000000000004711.log        the next segment starts at offset 4711
//! ```
//!
//! - `.log`: whole RecordBatch v2 batches back to back, offsets contiguous
//!   (each batch's base offset is the previous batch's last offset + 1).
//! - `.index`: 8-byte entries (big endian) `relative offset: u32, file
//!   position: u32`, one for the first batch of the segment and then one per
//!   `index_interval_bytes` of log; the relative offset is the batch's base
//!   offset minus the segment's base offset.
//! - `.timeindex`: 12-byte entries `max timestamp so far: i64, relative
//!   offset: u32`, written next to offset index entries whenever the
//!   segment's max timestamp grew; the offset is the batch that first reached
//!   that timestamp. The last entry always holds the segment's max timestamp.
//!
//! Only the last segment (the *active* one) is written to. Its indexes live
//! in memory and are written out when the segment is *sealed* (rolled); a
//! segment is rolled when the next batch would take it past `segment_bytes`,
//! or when it is older than `segment_ms`.
//!
//! # Durability rules
//!
//! - A batch is acknowledged (the append returns) only once it is durable per
//!   the [`FlushPolicy`]: with [`FlushPolicy::EveryAppend`] (the default, what
//!   acks mean with replication factor 1) after `fdatasync`; concurrent
//!   appends share one fsync (group commit).
//! - Readers only see offsets below the *high watermark*, which is the end of
//!   the durable log: after the fsync with `EveryAppend`, after the write
//!   otherwise.
//! - Sealing a segment writes its index files (to a temporary file, fsync,
//!   rename) and fsyncs its log before the next segment file is created, so
//!   every segment but the last is complete on disk.
//! - Crash recovery on [`PartitionLog::open`]: the last segment is scanned
//!   batch by batch (header, length within the file, CRC-32C, contiguous
//!   offsets); the first torn or corrupt batch and everything after it is cut
//!   off, and its indexes are rebuilt. Sealed segments whose index files are
//!   missing or malformed get them rebuilt from the log.
//!
//! # Resources
//!
//! No thread and no timer per partition; blocking file I/O runs in
//! `spawn_blocking`. Open files are bounded by a shared LRU [`FileCache`]
//! (reads use positional I/O, so any handle to a file will do), and the
//! indexes of sealed segments are not held in memory: they are binary
//! searched on disk.

mod error;
mod files;
mod manager;
mod partition;
mod segment;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::LogError;
pub use files::FileCache;
pub use manager::{LogManager, LogManagerOptions, PartitionMeta};
pub use partition::PartitionLog;

/// When appended data is made durable with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlushPolicy {
    /// Fsync before an append returns (concurrent appends share one fsync).
    EveryAppend,
    /// Fsync in the background at most this long after a write; readers see
    /// data once it is written.
    Interval(Duration),
    /// Never fsync explicitly (except when a segment is sealed); the OS
    /// writes the page cache back when it likes.
    Os,
}

/// Per-partition log settings (Kafka's topic-level configs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// Roll to a new segment when the next batch would exceed this size
    /// (capped at 4 GiB, the reach of a `u32` index position).
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one is older than this
    /// (counted from its first batch), checked on append.
    pub segment_ms: Option<u64>,
    /// Bytes of log between two offset index entries.
    pub index_interval_bytes: u32,
    /// When appends are fsynced.
    pub flush: FlushPolicy,
    /// Largest batch accepted (whole batch bytes).
    pub max_message_bytes: usize,
    /// Stamp every batch with the broker's time (Kafka's
    /// `message.timestamp.type=LogAppendTime`).
    pub log_append_time: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: None,
            index_interval_bytes: 4096,
            flush: FlushPolicy::EveryAppend,
            max_message_bytes: 1 << 20,
            log_append_time: false,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record of the first batch.
    pub base_offset: i64,
    /// Offset of the last record of the last batch.
    pub last_offset: i64,
    /// The LogAppendTime stamped into the batches, if the log uses it.
    pub log_append_time_ms: Option<i64>,
}
