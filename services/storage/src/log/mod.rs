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
//! # Retention
//!
//! [`PartitionLog::enforce_retention`] deletes whole *sealed* segments from
//! the front of the log, Kafka's way, when the config's `delete` is set:
//! first those whose largest timestamp is more than `retention_ms` old (the
//! file's modification time stands in for a segment without timestamps),
//! then, while the log is larger than `retention_bytes`, the oldest ones
//! whose removal leaves it at least that large. The active segment is never
//! deleted, nor a segment holding data at or above the high watermark.
//!
//! The *log start offset* is the base offset of the first segment (with
//! every sealed segment gone and the active one empty, the log end), unless
//! [`PartitionLog::delete_records`] moved it into a segment: then it is
//! recorded in `log-start-offset` (durably, before segments below it are
//! deleted) and read back on open, capped to `[first base, log end]`.
//! Reads below it get [`LogError::OffsetOutOfRange`]; timestamp lookups skip
//! the records below it that are still on disk.
//!
//! Deleting segments (one pass at a time per log): (1) they leave the
//! in-memory segment list, under the log's lock, so a read either found a
//! segment before (and reads it whole) or finds the new start and gets
//! out-of-range; (2) oldest first, each segment's files are renamed to
//! `<name>.deleted` (the `.log` first) and dropped from the file cache, and
//! the directory is fsynced (unless the flush policy is
//! [`FlushPolicy::Os`]) before the next segment, so a crash leaves the log
//! a prefix shorter or intact, never with a hole; (3) the renamed files are
//! unlinked. A read holding a handle of a file keeps reading the old data
//! (unix unlink semantics); one that lost the race to open it answers
//! out-of-range. [`PartitionLog::open`] removes `.deleted` leftovers of a
//! crash (and index files whose `.log` is gone). A segment whose deletion
//! was not yet durable at a crash comes back, and the next pass deletes it
//! again.
//!
//! # Resources
//!
//! No thread and no timer per partition; blocking file I/O runs in
//! `spawn_blocking`; retention runs when the caller (the storage node's
//! retention task) asks for it. Open files are bounded by a shared LRU [`FileCache`]
//! (reads use positional I/O, so any handle to a file will do), and the
//! indexes of sealed segments are not held in memory: they are binary
//! searched on disk.

mod epochs;
mod error;
mod files;
mod idempotence;
mod manager;
mod partition;
mod segment;

#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use epochs::EpochCache;
pub use error::LogError;
pub use files::FileCache;
pub use idempotence::{BatchSeq, ProducerStates, SeqCheck, SeqError};
pub use manager::{LogManager, LogManagerOptions, PartitionMeta};
pub use partition::{CleanStats, PartitionLog};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Delete sealed segments whose largest timestamp is older than this
    /// many ms (Kafka's `retention.ms`); -1 keeps them forever.
    pub retention_ms: i64,
    /// Delete the oldest sealed segments while the log stays at least this
    /// large without them (Kafka's `retention.bytes`); -1 means no limit.
    pub retention_bytes: i64,
    /// Retention applies (`cleanup.policy` includes `delete`).
    pub delete: bool,
    /// The cleaner keeps only the latest record per key
    /// (`cleanup.policy` includes `compact`; see [`PartitionLog::compact`]).
    pub compact: bool,
    /// How long a tombstone (a null value) survives once compacted, so
    /// consumers that read the log from the start see the deletion (Kafka's
    /// `delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Clean once the uncleaned part is at least this share of the
    /// cleanable log (Kafka's `min.cleanable.dirty.ratio`).
    pub min_cleanable_dirty_ratio: f64,
    /// Records younger than this are not compacted (Kafka's
    /// `min.compaction.lag.ms`).
    pub min_compaction_lag_ms: i64,
    /// Clean regardless of the ratio once uncleaned records are this old
    /// (Kafka's `max.compaction.lag.ms`).
    pub max_compaction_lag_ms: i64,
    /// The partition has other replicas: the high watermark is what the
    /// in-sync replicas all hold, set by the replication layer through
    /// [`PartitionLog::set_high_watermark`], instead of following the
    /// local durable end.
    pub replicated: bool,
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
            retention_ms: -1,
            retention_bytes: -1,
            delete: true,
            compact: false,
            delete_retention_ms: 86_400_000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            replicated: false,
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

/// Why retention deleted a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionReason {
    /// Its largest timestamp was older than `retention_ms`.
    Time,
    /// The log was larger than `retention_bytes`.
    Size,
}

impl RetentionReason {
    /// The metric label and log field: `time` or `size`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionReason::Time => "time",
            RetentionReason::Size => "size",
        }
    }
}

/// A segment deleted by [`PartitionLog::enforce_retention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletedSegment {
    pub base_offset: i64,
    /// The offset after its last record: the next segment's base offset.
    pub end_offset: i64,
    /// Bytes of its `.log` file.
    pub size_bytes: u64,
    pub reason: RetentionReason,
}
