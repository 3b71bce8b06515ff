//! [`PartitionLog`]: one partition replica's log (see the module docs of
//! [`crate::log`] for the format and the durability rules).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::ops::{Bound, ControlFlow};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use runnel_records::batch::{self, BatchHeader, HEADER_LEN};
use runnel_records::build::decode_records;
use tokio::sync::watch;

use super::epochs::EpochCache;
use super::files::FileCache;
use super::idempotence::{BatchSeq, ProducerStates, SeqCheck};
use super::segment::{
    self, ChunkReader, IndexBuilder, LOG_EXT, MAX_SEGMENT_BYTES, NO_TIMESTAMP, segment_path,
};
use super::{AppendInfo, DeletedSegment, FlushPolicy, LogConfig, LogError, RetentionReason};

#[path = "cleaner.rs"]
mod cleaner;
pub use cleaner::CleanStats;

/// Bytes read at a time when walking batch headers from an index position.
const HEADER_SCAN_CHUNK: usize = 16 * 1024;

/// Extension of producer state snapshots.
const SNAPSHOT_EXT: &str = "snapshot";

/// Suffix of the files of a segment being deleted.
const DELETED_SUFFIX: &str = ".deleted";

/// The log start offset when it lies above the first segment's base
/// (after DeleteRecords): one decimal number.
const LOG_START_FILE: &str = "log-start-offset";

/// How many times a timestamp lookup starts over when retention deleted a
/// segment under it.
const RETRIES_AFTER_DELETION: usize = 8;

/// One partition's log: append, read, offset lookups. Cheap to clone; all
/// clones share the same log.
#[derive(Clone)]
pub struct PartitionLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.inner.dir)
            .field("log_start_offset", &self.log_start_offset())
            .field("log_end_offset", &self.log_end_offset())
            .field("high_watermark", &self.high_watermark())
            .finish()
    }
}

struct Inner {
    dir: PathBuf,
    /// Topic and partition, for logs and metrics.
    topic: String,
    partition: String,
    files: FileCache,
    config: RwLock<LogConfig>,
    state: Mutex<State>,
    /// Serializes appends (held while batches are stamped and written).
    append_lock: Arc<tokio::sync::Mutex<()>>,
    /// Serializes fsyncs of the active segment (group commit).
    flush_lock: tokio::sync::Mutex<()>,
    /// Serializes retention passes, so that segments are deleted (made
    /// durable) oldest first, with cleaner passes and truncations.
    retention_lock: Mutex<()>,
    /// Held (shared) while a read uses sealed segments' files and
    /// (exclusive) while the cleaner swaps a cleaned segment's files in, so
    /// a read never pairs a segment's new index with its old log.
    swap_lock: RwLock<()>,
    log_end: AtomicI64,
    /// The end of the data this replica may count as its own: durable per
    /// the flush policy. The high watermark follows it unless the log is
    /// replicated.
    local_end: AtomicI64,
    local_tx: watch::Sender<i64>,
    high_watermark: AtomicI64,
    /// Where each leader epoch's data starts.
    epochs: Mutex<EpochCache>,
    /// Idempotent producers' recent batches (see [`super::idempotence`]).
    producers: Mutex<ProducerStates>,
    /// Offset below which everything is known to be fsynced.
    flushed: AtomicI64,
    hw_tx: watch::Sender<i64>,
    /// An `Interval` background flush is pending.
    flush_scheduled: AtomicBool,
    /// fsyncs of segment files so far (group commit makes it < appends).
    fsyncs: AtomicU64,
    metrics: LogMetrics,
}

struct State {
    /// All segments by base offset; the last one is the active segment.
    segments: BTreeMap<i64, SegmentInfo>,
    /// The in-memory indexes of the active segment.
    active: ActiveSegment,
    size_bytes: u64,
    /// The first offset readers may see: at or above the first segment's
    /// base (DeleteRecords moves it inside a segment), at most the log end.
    log_start: i64,
    /// Set after an I/O failure that leaves the log's durability unknown;
    /// appends are refused from then on.
    failed: Option<String>,
    deleted: bool,
}

#[derive(Debug, Clone, Copy)]
struct SegmentInfo {
    base: i64,
    /// Offset after the segment's last batch.
    end: i64,
    size: u64,
    max_timestamp: i64,
    max_timestamp_offset: i64,
}

impl SegmentInfo {
    fn empty(base: i64) -> Self {
        SegmentInfo {
            base,
            end: base,
            size: 0,
            max_timestamp: NO_TIMESTAMP,
            max_timestamp_offset: -1,
        }
    }
}

struct ActiveSegment {
    indexes: IndexBuilder,
    /// Wall-clock (or first batch) time the segment's age counts from.
    rolling_base_ms: Option<i64>,
}

impl State {
    fn active_info(&self) -> Result<SegmentInfo, LogError> {
        self.segments
            .last_key_value()
            .map(|(_, s)| *s)
            .ok_or_else(|| LogError::Internal("log has no segment".into()))
    }

    fn is_active(&self, base: i64) -> bool {
        self.segments.last_key_value().map(|(b, _)| *b) == Some(base)
    }

    /// The segment holding `offset`, else the first one after it.
    fn segment_for(&self, offset: i64) -> Option<SegmentInfo> {
        match self.segments.range(..=offset).next_back() {
            Some((_, s)) if s.end > offset => Some(*s),
            _ => self
                .segments
                .range((Bound::Excluded(offset), Bound::Unbounded))
                .next()
                .map(|(_, s)| *s),
        }
    }
}

struct LogMetrics {
    start_offset: metrics::Gauge,
    end_offset: metrics::Gauge,
    size_bytes: metrics::Gauge,
    appended_bytes: metrics::Counter,
    fsync_seconds: metrics::Histogram,
}

impl LogMetrics {
    fn new(topic: &str, partition: &str) -> Self {
        let labels = [
            ("topic", topic.to_string()),
            ("partition", partition.to_string()),
        ];
        LogMetrics {
            start_offset: metrics::gauge!("runnel_log_start_offset", &labels),
            end_offset: metrics::gauge!("runnel_log_end_offset", &labels),
            size_bytes: metrics::gauge!("runnel_log_size_bytes", &labels),
            appended_bytes: metrics::counter!("runnel_log_appended_bytes_total", &labels),
            fsync_seconds: metrics::histogram!("runnel_log_fsync_seconds"),
        }
    }
}

/// Where an append is writing: the active segment as the writer sees it.
struct Cursor {
    base: i64,
    size: u64,
    end: i64,
    rolling_base_ms: Option<i64>,
}

/// How an append treats its batches.
#[derive(Debug, Clone, Copy)]
enum Stamp {
    /// The leader's append: assign offsets, stamp this leader epoch.
    Leader(i32),
    /// A follower's copy of the leader's batches: keep them as they are.
    Replica,
}

/// The epoch cache from its checkpoint, or rebuilt from the batch headers
/// of every segment when the checkpoint is missing or unreadable (data
/// written before epochs were tracked, or a damaged file).
fn load_epochs(
    dir: &Path,
    segments: &BTreeMap<i64, SegmentInfo>,
    files: &FileCache,
    log_end: i64,
) -> Result<EpochCache, LogError> {
    match EpochCache::load(dir, log_end) {
        Ok(Some(cache)) => return Ok(cache),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "rebuilding an unreadable leader epoch checkpoint")
        }
    }
    let mut cache = EpochCache::default();
    walk_headers(dir, segments, files, i64::MIN, i64::MAX, |h| {
        cache.assign(h.partition_leader_epoch, h.base_offset);
    })?;
    if cache.latest_epoch().is_some() {
        cache
            .store(dir)
            .map_err(LogError::io_path("write epoch checkpoint", dir))?;
    }
    Ok(cache)
}

/// Calls `f` with the header of every batch whose base offset is in
/// `from..to`, oldest first (whole segments from the one holding `from`).
fn walk_headers(
    dir: &Path,
    segments: &BTreeMap<i64, SegmentInfo>,
    files: &FileCache,
    from: i64,
    to: i64,
    mut f: impl FnMut(&BatchHeader),
) -> Result<(), LogError> {
    let first = segments
        .range(..=from)
        .next_back()
        .map_or(i64::MIN, |(b, _)| *b);
    for seg in segments.range(first..).map(|(_, s)| s) {
        if seg.base >= to {
            break;
        }
        let path = segment_path(dir, seg.base, LOG_EXT);
        let file = files
            .open(&path, true)
            .map_err(LogError::io_path("open", &path))?;
        let mut reader = ChunkReader::new(&file, seg.size, HEADER_SCAN_CHUNK);
        let mut pos = 0;
        while let Some(Ok(h)) = reader
            .header(pos)
            .map_err(LogError::io_path("read", &path))?
        {
            if h.base_offset >= to {
                break;
            }
            if h.base_offset >= from {
                f(&h);
            }
            pos += h.total_len() as u64;
        }
    }
    Ok(())
}

/// Snapshot files of the producer state: `<offset>.snapshot`, the state of
/// every batch below that offset (written when the segment starting there
/// was rolled), newest first.
fn producer_snapshots(dir: &Path) -> Vec<(i64, PathBuf)> {
    let mut found: Vec<(i64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match segment::parse_segment_name(&name) {
                Some((offset, SNAPSHOT_EXT)) => Some((offset, e.path())),
                _ => None,
            }
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found
}

/// The producer state of the log below `log_end`: the newest usable
/// snapshot at or below it, then the batches after it.
fn load_producers(
    dir: &Path,
    segments: &BTreeMap<i64, SegmentInfo>,
    files: &FileCache,
    log_end: i64,
) -> Result<ProducerStates, LogError> {
    let mut state = ProducerStates::default();
    let mut from = i64::MIN;
    for (offset, path) in producer_snapshots(dir) {
        if offset > log_end {
            continue;
        }
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| ProducerStates::from_snapshot(&b))
        {
            Ok((loaded, end)) if end == offset => {
                state = loaded;
                from = offset;
                break;
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "producer snapshot names another offset; ignored")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable producer snapshot; ignored")
            }
        }
    }
    walk_headers(dir, segments, files, from, log_end, |h| {
        if let Some(seq) = BatchSeq::from_header(h) {
            state.record(seq);
        }
    })?;
    Ok(state)
}

/// One batch in the write buffer, to be indexed once written.
struct PendingBatch {
    base_offset: i64,
    position: u64,
    len: u64,
    max_timestamp: i64,
    /// Its idempotent producer's sequence numbers, if it has one.
    seq: Option<BatchSeq>,
}

/// What [`Inner::write_batches`] did.
enum Written {
    /// Wrote offsets `first..end`.
    Batches { first: i64, end: i64 },
    /// The batch is a producer's retry of one already in the log at
    /// `first..=last`; nothing was written.
    Duplicate { first: i64, last: i64 },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `(topic, partition)` metric labels from a `<topic>-<partition>` directory.
fn labels_from_dir(dir: &Path) -> (String, String) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('-') {
        Some((topic, p)) if p.parse::<i32>().is_ok() => (topic.to_string(), p.to_string()),
        _ => (name, String::new()),
    }
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering it after a crash.
    /// Blocking: from async code call it through `spawn_blocking`. Open
    /// files are bounded by [`FileCache::global`].
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, LogError> {
        let (topic, partition) = labels_from_dir(dir);
        Self::open_with(dir, config, FileCache::global().clone(), &topic, &partition)
    }

    /// [`PartitionLog::open`] with its own file cache and metric labels.
    pub fn open_with(
        dir: &Path,
        config: LogConfig,
        files: FileCache,
        topic: &str,
        partition: &str,
    ) -> Result<Self, LogError> {
        fs::create_dir_all(dir).map_err(LogError::io_path("create log directory", dir))?;
        // Handles of an earlier incarnation of this directory are stale.
        files.evict_dir(dir);
        cleaner::recover(dir, &config)?;
        let mut bases = Vec::new();
        let mut others = Vec::new();
        for entry in fs::read_dir(dir).map_err(LogError::io_path("list", dir))? {
            let entry = entry.map_err(LogError::io_path("list", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A file write that never finished: nothing refers to it.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            if name.ends_with(DELETED_SUFFIX) {
                // A segment deletion that a crash interrupted.
                tracing::info!(path = %entry.path().display(), "removing a deleted segment file");
                fs::remove_file(entry.path())
                    .map_err(LogError::io_path("delete", &entry.path()))?;
                continue;
            }
            match segment::parse_segment_name(&name) {
                Some((base, LOG_EXT)) => bases.push(base),
                Some((base, _)) => others.push((base, entry.path())),
                None => {}
            }
        }
        bases.sort_unstable();
        for (base, path) in others {
            if bases.binary_search(&base).is_err() {
                tracing::warn!(path = %path.display(), "removing index file without a segment");
                let _ = fs::remove_file(&path);
            }
        }
        if bases.is_empty() {
            let path = segment_path(dir, 0, LOG_EXT);
            File::create(&path).map_err(LogError::io_path("create", &path))?;
            if config.flush != FlushPolicy::Os {
                segment::sync_dir(dir).map_err(LogError::io_path("fsync", dir))?;
            }
            bases.push(0);
        }

        let mut segments = BTreeMap::new();
        for pair in bases.windows(2) {
            let (base, next_base) = (pair[0], pair[1]);
            segments.insert(base, open_sealed_segment(dir, base, next_base, &config)?);
        }

        // The last segment: scan, cut off a torn tail, rebuild its indexes.
        let base = bases[bases.len() - 1];
        let path = segment_path(dir, base, LOG_EXT);
        let file = files
            .open(&path, true)
            .map_err(LogError::io_path("open", &path))?;
        let scanned = segment::scan_segment(&file, base, config.index_interval_bytes)
            .map_err(LogError::io_path("scan", &path))?;
        let file_len = file
            .metadata()
            .map_err(LogError::io_path("stat", &path))?
            .len();
        if let Some(reason) = &scanned.stopped {
            let cut = file_len - scanned.valid_len;
            tracing::warn!(
                path = %path.display(),
                reason = %reason,
                cut_bytes = cut,
                valid_bytes = scanned.valid_len,
                "recovery truncated the log's torn or corrupt tail"
            );
            file.set_len(scanned.valid_len)
                .map_err(LogError::io_path("truncate", &path))?;
            file.sync_all().map_err(LogError::io_path("fsync", &path))?;
        }
        let indexes = scanned.indexes;
        segments.insert(
            base,
            SegmentInfo {
                base,
                end: scanned.end_offset,
                size: scanned.valid_len,
                max_timestamp: indexes.max_timestamp,
                max_timestamp_offset: indexes.max_timestamp_offset,
            },
        );
        let now = now_ms();
        let active = ActiveSegment {
            indexes,
            rolling_base_ms: scanned
                .first_timestamp
                .map(|t| if t < 0 { now } else { t.min(now) }),
        };
        let size_bytes = segments.values().map(|s| s.size).sum();
        let log_end = scanned.end_offset;
        // Retention may have deleted past a recorded start since, and a
        // crash between a truncation and its record may leave one beyond
        // the end.
        let log_start = read_log_start(dir)
            .unwrap_or(bases[0])
            .max(bases[0])
            .min(log_end);
        // A replicated log cannot know what its in-sync replicas hold
        // until they say: nothing is visible until the leader's high
        // watermark (or the follower's, from its leader) moves.
        let high_watermark = if config.replicated {
            log_start
        } else {
            log_end
        };
        let (hw_tx, _) = watch::channel(high_watermark);
        let (local_tx, _) = watch::channel(log_end);
        let epochs = load_epochs(dir, &segments, &files, log_end)?;
        let producers = load_producers(dir, &segments, &files, log_end)?;
        let metrics = LogMetrics::new(topic, partition);
        metrics.start_offset.set(log_start as f64);
        metrics.end_offset.set(log_end as f64);
        metrics.size_bytes.set(size_bytes as f64);
        let log = PartitionLog {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                topic: topic.to_string(),
                partition: partition.to_string(),
                files,
                config: RwLock::new(config),
                state: Mutex::new(State {
                    segments,
                    active,
                    size_bytes,
                    log_start,
                    failed: None,
                    deleted: false,
                }),
                append_lock: Arc::new(tokio::sync::Mutex::new(())),
                flush_lock: tokio::sync::Mutex::new(()),
                retention_lock: Mutex::new(()),
                swap_lock: RwLock::new(()),
                log_end: AtomicI64::new(log_end),
                local_end: AtomicI64::new(log_end),
                local_tx,
                high_watermark: AtomicI64::new(high_watermark),
                epochs: Mutex::new(epochs),
                producers: Mutex::new(producers),
                flushed: AtomicI64::new(log_end),
                hw_tx,
                flush_scheduled: AtomicBool::new(false),
                fsyncs: AtomicU64::new(0),
                metrics,
            }),
        };
        // Segments a crash left below a recorded start (DeleteRecords
        // records the start before it deletes them).
        log.inner.delete_segments_below_start()?;
        Ok(log)
    }

    /// Tells this log from another opened in the same directory later
    /// (a topic deleted and created again): equal for clones only.
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> LogConfig {
        self.inner.config.read().clone()
    }

    /// Replaces the config; it applies from the next append on. A log that
    /// stops being replicated shows everything it holds durably.
    pub fn set_config(&self, config: LogConfig) {
        let replicated = config.replicated;
        *self.inner.config.write() = config;
        if !replicated {
            self.inner.set_high_watermark(self.local_end_offset());
        }
    }

    /// The first offset readers may see (Kafka's log start offset): the
    /// first segment's base, or above it after [`Self::delete_records`].
    pub fn log_start_offset(&self) -> i64 {
        self.inner.state.lock().log_start
    }

    /// The offset the next batch will get (written, maybe not yet durable).
    pub fn log_end_offset(&self) -> i64 {
        self.inner.log_end.load(Ordering::Acquire)
    }

    /// The end of the data readers may see: durable per the flush policy.
    pub fn high_watermark(&self) -> i64 {
        self.inner.high_watermark.load(Ordering::Acquire)
    }

    /// Watches the high watermark (wakes long polls on append).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.hw_tx.subscribe()
    }

    /// The end of the data this replica holds durably (per the flush
    /// policy): what a leader may count as written and a follower reports
    /// as fetched.
    pub fn local_end_offset(&self) -> i64 {
        self.inner.local_end.load(Ordering::Acquire)
    }

    /// Watches [`Self::local_end_offset`] (wakes replica fetches on append).
    pub fn subscribe_local(&self) -> watch::Receiver<i64> {
        self.inner.local_tx.subscribe()
    }

    /// Raises the high watermark of a replicated log to `hw`, capped at the
    /// local end (a replica never exposes what it does not hold).
    pub fn set_high_watermark(&self, hw: i64) {
        self.inner
            .set_high_watermark(hw.min(self.local_end_offset()));
    }

    /// The newest leader epoch in the log.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.inner.epochs.lock().latest_epoch()
    }

    /// Kafka's OffsetForLeaderEpoch for this log: the largest epoch `<=
    /// epoch` it knows and where that epoch's data ends (see
    /// [`EpochCache::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let end = self.local_end_offset();
        self.inner.epochs.lock().end_offset_for(epoch, end)
    }

    /// Forgets idempotent producers silent for `expiration_ms` (Kafka's
    /// `producer.id.expiration.ms`); returns how many.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        self.inner.producers.lock().expire(now_ms, expiration_ms)
    }

    /// How many times segment files were fsynced since the log was opened.
    pub fn fsync_count(&self) -> u64 {
        self.inner.fsyncs.load(Ordering::Relaxed)
    }

    /// Bytes of log on disk (indexes not counted).
    pub fn size_bytes(&self) -> u64 {
        self.inner.state.lock().size_bytes
    }

    /// Appends validated batches (header and bytes, as
    /// `runnel_records::Batches::validate_all` returns them): assigns
    /// consecutive offsets, stamps `leader_epoch` (and LogAppendTime if
    /// configured), writes, makes them durable per the flush policy and then
    /// advances the high watermark. Appends to one log are applied in order;
    /// the append finishes even if the caller stops waiting for it.
    pub async fn append(
        &self,
        batches: Vec<(BatchHeader, Bytes)>,
        leader_epoch: i32,
    ) -> Result<AppendInfo, LogError> {
        let log = self.clone();
        tokio::spawn(async move { log.append_inner(batches, Stamp::Leader(leader_epoch)).await })
            .await
            .map_err(LogError::join)?
    }

    /// Appends batches a follower fetched from its leader, exactly as the
    /// leader stored them (offsets, epochs and timestamps already stamped).
    /// The first batch must start at or after the log end (a compacted
    /// leader's log has gaps; [`LogError::NotContiguous`] before it) and no batch may carry an
    /// epoch older than the log's latest ([`LogError::FencedEpoch`]).
    pub async fn append_replica(&self, records: Bytes) -> Result<AppendInfo, LogError> {
        let batches = runnel_records::batch::Batches::validate_all(records)
            .map_err(|e| LogError::InvalidBatch(e.to_string()))?;
        let log = self.clone();
        tokio::spawn(async move { log.append_inner(batches, Stamp::Replica).await })
            .await
            .map_err(LogError::join)?
    }

    async fn append_inner(
        &self,
        batches: Vec<(BatchHeader, Bytes)>,
        stamp: Stamp,
    ) -> Result<AppendInfo, LogError> {
        let config = self.config();
        if batches.is_empty() {
            return Err(LogError::InvalidBatch("no record batch to append".into()));
        }
        for (header, bytes) in &batches {
            if bytes.len() != header.total_len() || bytes.len() < HEADER_LEN {
                return Err(LogError::InvalidBatch(format!(
                    "batch has {} bytes but its header says {}",
                    bytes.len(),
                    header.total_len()
                )));
            }
            if header.last_offset_delta < 0 {
                return Err(LogError::InvalidBatch(format!(
                    "negative lastOffsetDelta {}",
                    header.last_offset_delta
                )));
            }
            let limit = match stamp {
                Stamp::Leader(_) => config.max_message_bytes,
                // What the leader accepted is replicated whatever the limit.
                Stamp::Replica => usize::MAX,
            };
            if bytes.len() > limit || bytes.len() as u64 > MAX_SEGMENT_BYTES {
                return Err(LogError::MessageTooLarge {
                    size: bytes.len(),
                    max: config.max_message_bytes,
                });
            }
            if config.compact && matches!(stamp, Stamp::Leader(_)) && !header.is_control() {
                // Kafka's rule: compaction keeps the latest record per key,
                // so a record without one has no place in the log.
                let records = runnel_records::compact::raw_records(header, bytes)
                    .map_err(|e| LogError::InvalidBatch(e.to_string()))?;
                if let Some(r) = records.iter().find(|r| r.key.is_none()) {
                    return Err(LogError::InvalidRecord(format!(
                        "compacted topic {} cannot accept a record without a key (record {} of the batch)",
                        self.inner.topic,
                        r.offset - header.base_offset
                    )));
                }
            }
        }
        let guard = self.inner.append_lock.clone().lock_owned().await;
        let now = now_ms();
        let inner = self.inner.clone();
        let write_config = config.clone();
        let sync_now = config.flush == FlushPolicy::EveryAppend;
        let (base_offset, end, synced, duplicate) = tokio::task::spawn_blocking(move || {
            let written = inner.write_batches(batches, stamp, now, &write_config);
            // The next append may write while this one waits for its fsync.
            drop(guard);
            let (base, end) = match written? {
                Written::Batches { first, end } => (first, end),
                // Answered like the original once that is durable too.
                Written::Duplicate { first, last } => {
                    return Ok::<_, LogError>((first, last + 1, false, true));
                }
            };
            // When no fsync is running, do it on this thread: handing it to
            // another blocking thread costs a wake-up per append (measured:
            // ~10% of a 64 KiB acks=all produce). Otherwise join the running
            // group commit below.
            if sync_now && let Ok(_flushing) = inner.flush_lock.try_lock() {
                if inner.flushed.load(Ordering::Acquire) < end {
                    inner.sync_active()?;
                }
                return Ok((base, end, true, false));
            }
            Ok((base, end, false, false))
        })
        .await
        .map_err(LogError::join)??;
        match config.flush {
            FlushPolicy::EveryAppend if synced => {}
            FlushPolicy::EveryAppend => self.flush_to(end).await?,
            FlushPolicy::Interval(every) => self.schedule_flush(every),
            FlushPolicy::Os => {}
        }
        if duplicate {
            metrics::counter!("runnel_duplicate_batches_total", "topic" => self.inner.topic.clone())
                .increment(1);
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: end - 1,
            log_append_time_ms: (config.log_append_time
                && matches!(stamp, Stamp::Leader(_))
                && !duplicate)
                .then_some(now),
        })
    }

    /// Makes everything written so far durable (and visible).
    pub async fn flush(&self) -> Result<(), LogError> {
        self.flush_to(self.log_end_offset()).await
    }

    /// Group commit: returns once everything below `target` is fsynced. One
    /// fsync covers every append written before it started.
    async fn flush_to(&self, target: i64) -> Result<(), LogError> {
        if self.inner.flushed.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _flushing = self.inner.flush_lock.lock().await;
        if self.inner.flushed.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.sync_active())
            .await
            .map_err(LogError::join)?
    }

    /// `Interval` policy: makes sure one background flush is pending.
    fn schedule_flush(&self, every: Duration) {
        if self.inner.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let log = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(every).await;
            log.inner.flush_scheduled.store(false, Ordering::Release);
            match log.flush().await {
                Ok(()) | Err(LogError::Deleted(_)) => {}
                Err(e) => {
                    tracing::warn!(dir = %log.inner.dir.display(), error = %e, "background log flush failed")
                }
            }
        });
    }

    /// Whole batches from the one containing `offset` on, up to `max_bytes`
    /// but at least one batch, never at or beyond the high watermark. Empty
    /// at the high watermark; `OffsetOutOfRange` outside
    /// `[log_start_offset, high_watermark]`. A read stops at a segment end.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes, LogError> {
        self.read_below(offset, max_bytes, self.high_watermark())
            .await
    }

    /// [`Self::read`] for a follower: up to the local end instead of the
    /// high watermark.
    pub async fn read_replica(&self, offset: i64, max_bytes: usize) -> Result<Bytes, LogError> {
        self.read_below(offset, max_bytes, self.local_end_offset())
            .await
    }

    async fn read_below(&self, offset: i64, max_bytes: usize, hw: i64) -> Result<Bytes, LogError> {
        self.inner.check_not_deleted()?;
        let start = self.log_start_offset();
        // Between the high watermark and the log end is data not yet
        // committed (or a new leader's watermark still catching up):
        // nothing to read yet, but not out of range.
        if offset < start || offset > hw.max(self.log_end_offset()) {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end: hw,
            });
        }
        if offset >= hw {
            return Ok(Bytes::new());
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_blocking(offset, max_bytes, hw))
            .await
            .map_err(LogError::join)?
    }

    /// The first record (below the high watermark) whose timestamp is
    /// `>= ts`, as `(offset, timestamp)`; `None` if there is none. Kafka's
    /// special ListOffsets timestamps (-1, -2, -3) are the caller's business.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        self.inner.check_not_deleted()?;
        let inner = self.inner.clone();
        let hw = self.high_watermark();
        tokio::task::spawn_blocking(move || inner.offset_for_timestamp(ts, hw))
            .await
            .map_err(LogError::join)?
    }

    /// The record with the largest timestamp below the high watermark (the
    /// earliest such one), as `(offset, timestamp)`; `None` if the log is
    /// empty.
    pub async fn max_timestamp(&self) -> Result<Option<(i64, i64)>, LogError> {
        self.inner.check_not_deleted()?;
        let inner = self.inner.clone();
        let hw = self.high_watermark();
        tokio::task::spawn_blocking(move || inner.max_timestamp(hw))
            .await
            .map_err(LogError::join)?
    }

    /// Applies the config's retention (see the module docs of [`crate::log`]):
    /// deletes the sealed segments at the front of the log that
    /// `retention_ms` (against `now_ms`) or `retention_bytes` no longer keep,
    /// if `delete` is set, and advances the log start offset past them.
    /// Returns what was deleted, oldest first.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<Vec<DeletedSegment>, LogError> {
        let config = self.config();
        if !config.delete || (config.retention_ms < 0 && config.retention_bytes < 0) {
            return Ok(Vec::new());
        }
        self.inner.check_not_deleted()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.enforce_retention(now_ms, &config))
            .await
            .map_err(LogError::join)?
    }

    /// Kafka's DeleteRecords on this log: raises the log start to `offset`
    /// (-1: the high watermark), recorded durably, then deletes the sealed
    /// segments wholly below it. Never lowers the start; an offset above
    /// the high watermark (or negative other than -1) is
    /// [`LogError::OffsetOutOfRange`]. Returns the new log start (Kafka's
    /// low watermark).
    pub async fn delete_records(&self, offset: i64) -> Result<i64, LogError> {
        self.inner.check_not_deleted()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _pass = inner.retention_lock.lock();
            let hw = inner.high_watermark.load(Ordering::Acquire);
            let target = if offset == -1 { hw } else { offset };
            if !(0..=hw).contains(&target) {
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    start: inner.state.lock().log_start,
                    end: hw,
                });
            }
            inner.raise_log_start(target)
        })
        .await
        .map_err(LogError::join)?
    }

    /// A follower following its leader's log start: raises this log's
    /// start to `offset`, capped at the high watermark (so never past what
    /// this replica holds). Returns the log start.
    pub async fn follow_log_start(&self, offset: i64) -> Result<i64, LogError> {
        if offset <= self.log_start_offset() {
            return Ok(self.log_start_offset());
        }
        self.inner.check_not_deleted()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _pass = inner.retention_lock.lock();
            inner.raise_log_start(offset.min(inner.high_watermark.load(Ordering::Acquire)))
        })
        .await
        .map_err(LogError::join)?
    }

    /// Cuts the log back to end at `offset` (a follower dropping records
    /// its new leader does not have). The cut falls on a batch boundary: a
    /// batch holding `offset` goes too. An `offset` below the log start
    /// empties the log and restarts it at `offset` (a follower behind its
    /// leader's log start). Waits for appends in flight. Returns the new
    /// log end. Crash-safe: newer segments go first, so a crash leaves a
    /// valid, shorter log.
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, LogError> {
        if offset < 0 {
            return Err(LogError::Internal(format!(
                "cannot truncate to offset {offset}"
            )));
        }
        self.with_writes_stopped(move |inner| inner.truncate_blocking(offset))
            .await
    }

    /// Empties the log and starts it again at `offset` (a follower whose
    /// leader's log starts after this log ends).
    pub async fn restart_at(&self, offset: i64) -> Result<i64, LogError> {
        if offset < 0 {
            return Err(LogError::Internal(format!(
                "cannot restart at offset {offset}"
            )));
        }
        self.with_writes_stopped(move |inner| inner.reset_to(offset))
            .await
    }

    /// Runs `f` on a blocking thread with appends and fsyncs held off.
    async fn with_writes_stopped(
        &self,
        f: impl FnOnce(&Inner) -> Result<i64, LogError> + Send + 'static,
    ) -> Result<i64, LogError> {
        let guard = self.inner.append_lock.clone().lock_owned().await;
        self.inner.check_writable()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _appends = guard;
            // No fsync may advance the local end past the cut meanwhile.
            let _flush = inner.flush_lock.blocking_lock();
            // Nor may a cleaner pass swap segments under it.
            let _pass = inner.retention_lock.lock();
            f(&inner)
        })
        .await
        .map_err(LogError::join)?
    }

    /// Deletes the log and its directory. Waits for an append in flight;
    /// afterwards every clone answers [`LogError::Deleted`].
    pub async fn remove(self) -> Result<(), LogError> {
        let _appends = self.inner.append_lock.clone().lock_owned().await;
        {
            let mut state = self.inner.state.lock();
            if state.deleted {
                return Ok(());
            }
            state.deleted = true;
        }
        self.inner.files.evict_dir(&self.inner.dir);
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let result = remove_dir(&inner.dir);
            inner.files.evict_dir(&inner.dir);
            result
        })
        .await
        .map_err(LogError::join)?
    }
}

/// Deletes a log directory: first renamed to `<name>.<uuid>-delete` (so a
/// crash midway leaves a name the [`LogManager`](super::LogManager) cleans
/// up), then removed.
pub(crate) fn remove_dir(dir: &Path) -> Result<(), LogError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = dir.with_file_name(format!("{name}.{}-delete", uuid::Uuid::new_v4().simple()));
    match fs::rename(dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LogError::io_path("rename for deletion", dir)(e)),
    }
    fs::remove_dir_all(&doomed).map_err(LogError::io_path("delete", &doomed))
}

/// Opens a sealed segment: checks (or rebuilds) its index files and reads its
/// max timestamp from the last time index entry.
fn open_sealed_segment(
    dir: &Path,
    base: i64,
    next_base: i64,
    config: &LogConfig,
) -> Result<SegmentInfo, LogError> {
    let path = segment_path(dir, base, LOG_EXT);
    let size = fs::metadata(&path)
        .map_err(LogError::io_path("stat", &path))?
        .len();
    let check = segment::check_sealed_indexes(dir, base, size)
        .map_err(LogError::io_path("check indexes of", &path))?;
    let mut info = SegmentInfo {
        end: next_base,
        size,
        ..SegmentInfo::empty(base)
    };
    match check {
        Ok(last) => {
            if let Some(last) = last {
                info.max_timestamp = last.timestamp;
                info.max_timestamp_offset = base + i64::from(last.rel_offset);
            }
        }
        Err(reason) => {
            tracing::warn!(path = %path.display(), reason = %reason, "rebuilding segment indexes");
            let file = File::open(&path).map_err(LogError::io_path("open", &path))?;
            let scanned = segment::scan_segment(&file, base, config.index_interval_bytes)
                .map_err(LogError::io_path("scan", &path))?;
            if let Some(why) = &scanned.stopped {
                tracing::error!(path = %path.display(), reason = %why, valid_bytes = scanned.valid_len,
                    "sealed segment has unreadable data; reads past it will fail");
            }
            if scanned.end_offset != next_base && scanned.stopped.is_none() {
                tracing::warn!(path = %path.display(), end = scanned.end_offset, next_base,
                    "sealed segment does not end where the next one starts");
            }
            let indexes = &scanned.indexes;
            let index_path = segment_path(dir, base, segment::INDEX_EXT);
            segment::write_file_durably(&index_path, &segment::encode_index(&indexes.index))
                .map_err(LogError::io_path("write", &index_path))?;
            let time_path = segment_path(dir, base, segment::TIME_INDEX_EXT);
            segment::write_file_durably(
                &time_path,
                &segment::encode_time_index(&indexes.sealed_time_index(base)),
            )
            .map_err(LogError::io_path("write", &time_path))?;
            info.max_timestamp = indexes.max_timestamp;
            info.max_timestamp_offset = indexes.max_timestamp_offset;
        }
    }
    Ok(info)
}

/// The sealed segments (oldest first, none at or above `hw`) retention
/// deletes, with why: first those older than `retention_ms`, then, while
/// the log stays at least `retention_bytes` large without it, the oldest
/// left. `largest_timestamp` gives a segment's age.
fn retention_victims(
    sealed: &[SegmentInfo],
    total_size: u64,
    hw: i64,
    config: &LogConfig,
    now_ms: i64,
    largest_timestamp: impl Fn(&SegmentInfo) -> i64,
) -> Vec<(SegmentInfo, RetentionReason)> {
    let mut victims = Vec::new();
    if !config.delete {
        return victims;
    }
    let mut candidates = sealed.iter().take_while(|s| s.end <= hw).peekable();
    if config.retention_ms >= 0 {
        while let Some(seg) = candidates
            .next_if(|s| now_ms.saturating_sub(largest_timestamp(s)) > config.retention_ms)
        {
            victims.push((*seg, RetentionReason::Time));
        }
    }
    if config.retention_bytes >= 0 {
        let mut size = total_size.saturating_sub(victims.iter().map(|(s, _)| s.size).sum());
        let limit = config.retention_bytes as u64;
        // Kafka: delete while `size - segment.size >= retention.bytes`.
        while let Some(seg) =
            candidates.next_if(|s| s.size.checked_add(limit).is_some_and(|need| size >= need))
        {
            size -= seg.size;
            victims.push((*seg, RetentionReason::Size));
        }
    }
    victims
}

/// The log start recorded in `dir`, if any (an unreadable record is
/// ignored: the first segment's base stands in).
fn read_log_start(dir: &Path) -> Option<i64> {
    let path = dir.join(LOG_START_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the log start offset");
            return None;
        }
    };
    let parsed = text.trim().parse().ok();
    if parsed.is_none() {
        tracing::warn!(path = %path.display(), "unreadable log start offset; ignored");
    }
    parsed
}

/// A file's modification time in ms since the epoch.
fn modified_ms(path: &Path) -> Option<i64> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    Some(modified.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// Renames a file to `<name>.deleted`; `Ok(None)` if it does not exist.
fn rename_deleted(path: &Path) -> Result<Option<PathBuf>, LogError> {
    let mut doomed = path.as_os_str().to_owned();
    doomed.push(DELETED_SUFFIX);
    let doomed = PathBuf::from(doomed);
    match fs::rename(path, &doomed) {
        Ok(()) => Ok(Some(doomed)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io_path("rename for deletion", path)(e)),
    }
}

impl Drop for Inner {
    /// The last clone is gone: close its files.
    fn drop(&mut self) {
        self.files.evict_dir(&self.dir);
    }
}

impl Inner {
    fn check_not_deleted(&self) -> Result<(), LogError> {
        if self.state.lock().deleted {
            return Err(LogError::Deleted(self.dir.display().to_string()));
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), LogError> {
        let state = self.state.lock();
        if state.deleted {
            return Err(LogError::Deleted(self.dir.display().to_string()));
        }
        if let Some(why) = &state.failed {
            return Err(LogError::Failed(
                self.dir.display().to_string(),
                why.clone(),
            ));
        }
        Ok(())
    }

    /// Takes the log offline for writes after an I/O failure whose effect
    /// on the data is unknown (a failed fsync may have dropped dirty pages).
    fn fail(&self, why: String) {
        tracing::error!(dir = %self.dir.display(), reason = %why, "log taken offline for writes");
        self.state.lock().failed.get_or_insert(why);
    }

    fn log_path(&self, base: i64) -> PathBuf {
        segment_path(&self.dir, base, LOG_EXT)
    }

    /// [`PartitionLog::enforce_retention`], blocking.
    fn enforce_retention(
        &self,
        now_ms: i64,
        config: &LogConfig,
    ) -> Result<Vec<DeletedSegment>, LogError> {
        let _pass = self.retention_lock.lock();
        // Segments without a timestamp are aged by their file's mtime (they
        // are sealed, so it no longer changes); stat them outside the lock.
        let untimed: Vec<i64> = {
            let state = self.state.lock();
            let sealed = state.segments.len().saturating_sub(1);
            state
                .segments
                .values()
                .take(sealed)
                .filter(|s| s.max_timestamp < 0)
                .map(|s| s.base)
                .collect()
        };
        let mtimes: HashMap<i64, i64> = if config.retention_ms >= 0 {
            untimed
                .into_iter()
                .filter_map(|base| Some((base, modified_ms(&self.log_path(base))?)))
                .collect()
        } else {
            HashMap::new()
        };
        let (victims, start) = self.delete_front_segments(config.flush, |state| {
            let sealed: Vec<SegmentInfo> = {
                let n = state.segments.len().saturating_sub(1);
                state.segments.values().take(n).copied().collect()
            };
            let hw = self.high_watermark.load(Ordering::Acquire);
            retention_victims(&sealed, state.size_bytes, hw, config, now_ms, |s| {
                if s.max_timestamp >= 0 {
                    s.max_timestamp
                } else {
                    // Unknown age: keep it.
                    mtimes.get(&s.base).copied().unwrap_or(now_ms)
                }
            })
        })?;
        let mut deleted = Vec::with_capacity(victims.len());
        for (seg, reason) in victims {
            self.note_deleted(&seg, reason.as_str(), start);
            deleted.push(DeletedSegment {
                base_offset: seg.base,
                end_offset: seg.end,
                size_bytes: seg.size,
                reason,
            });
        }
        Ok(deleted)
    }

    /// Deletes the segments `pick` chooses — sealed ones at the front of
    /// the log, oldest first, each with a tag — crash-safe (see the module
    /// docs of [`crate::log`]): (1) they leave the segment list under the
    /// lock, so from then on reads below the new start are out of range;
    /// (2) their files are renamed `.deleted`, oldest first, the directory
    /// fsynced after each (unless `flush` is [`FlushPolicy::Os`]) so a
    /// crash never leaves a hole; (3) the renamed files are unlinked.
    /// Returns what went and the log start after. The caller holds the
    /// retention lock.
    fn delete_front_segments<T>(
        &self,
        flush: FlushPolicy,
        pick: impl FnOnce(&State) -> Vec<(SegmentInfo, T)>,
    ) -> Result<(Vec<(SegmentInfo, T)>, i64), LogError> {
        let (victims, start, size_bytes) = {
            let mut state = self.state.lock();
            if state.deleted {
                return Err(LogError::Deleted(self.dir.display().to_string()));
            }
            let victims = pick(&state);
            for (seg, _) in &victims {
                state.segments.remove(&seg.base);
                state.size_bytes -= seg.size;
            }
            let first = state.segments.first_key_value().map_or(0, |(b, _)| *b);
            state.log_start = state.log_start.max(first);
            (victims, state.log_start, state.size_bytes)
        };
        if victims.is_empty() {
            return Ok((victims, start));
        }
        self.metrics.start_offset.set(start as f64);
        self.metrics.size_bytes.set(size_bytes as f64);
        let mut doomed = Vec::new();
        for (seg, _) in &victims {
            for ext in [LOG_EXT, segment::INDEX_EXT, segment::TIME_INDEX_EXT] {
                let path = segment_path(&self.dir, seg.base, ext);
                doomed.extend(rename_deleted(&path)?);
                self.files.evict(&path);
            }
            if flush != FlushPolicy::Os {
                segment::sync_dir(&self.dir).map_err(LogError::io_path("fsync", &self.dir))?;
            }
        }
        for path in doomed {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io_path("delete", &path)(e)),
            }
        }
        Ok((victims, start))
    }

    /// Logs and counts a segment deleted for `reason` (`time`, `size` or
    /// `delete_records`).
    fn note_deleted(&self, seg: &SegmentInfo, reason: &str, log_start: i64) {
        tracing::info!(
            topic = %self.topic,
            partition = %self.partition,
            base_offset = seg.base,
            end_offset = seg.end,
            size_bytes = seg.size,
            reason,
            log_start_offset = log_start,
            "deleted a log segment"
        );
        let labels = [
            ("topic", self.topic.clone()),
            ("reason", reason.to_string()),
        ];
        metrics::counter!("runnel_retention_deleted_segments_total", &labels).increment(1);
        metrics::counter!("runnel_retention_deleted_bytes_total", &labels).increment(seg.size);
    }

    /// Raises the log start to `offset` (never lowers it; the caller
    /// checked it against the high watermark and holds the retention
    /// lock): recorded durably first, then the sealed segments wholly
    /// below it are deleted. Returns the log start.
    fn raise_log_start(&self, offset: i64) -> Result<i64, LogError> {
        let current = self.state.lock().log_start;
        if offset <= current {
            return Ok(current);
        }
        self.record_log_start(offset)?;
        self.state.lock().log_start = offset;
        self.metrics.start_offset.set(offset as f64);
        tracing::info!(topic = %self.topic, partition = %self.partition, from = current, to = offset,
            "log start offset raised");
        self.delete_segments_below_start()
    }

    /// Deletes the sealed segments wholly below the log start; returns the
    /// log start.
    fn delete_segments_below_start(&self) -> Result<i64, LogError> {
        let flush = self.config.read().flush;
        let (deleted, start) = self.delete_front_segments(flush, |state| {
            let sealed = state.segments.len().saturating_sub(1);
            state
                .segments
                .values()
                .take(sealed)
                .take_while(|s| s.end <= state.log_start)
                .map(|s| (*s, ()))
                .collect()
        })?;
        for (seg, ()) in &deleted {
            self.note_deleted(seg, "delete_records", start);
        }
        Ok(start)
    }

    /// Writes the log start to [`LOG_START_FILE`], durably unless the flush
    /// policy is [`FlushPolicy::Os`].
    fn record_log_start(&self, offset: i64) -> Result<(), LogError> {
        let path = self.dir.join(LOG_START_FILE);
        segment::write_file_durably(&path, format!("{offset}\n").as_bytes())
            .map_err(LogError::io_path("write", &path))?;
        if self.config.read().flush != FlushPolicy::Os {
            segment::sync_dir(&self.dir).map_err(LogError::io_path("fsync", &self.dir))?;
        }
        Ok(())
    }

    /// [`PartitionLog::truncate_to`], blocking, under the append and flush
    /// locks.
    fn truncate_blocking(&self, offset: i64) -> Result<i64, LogError> {
        let log_end = self.log_end.load(Ordering::Acquire);
        if offset >= log_end {
            return Ok(log_end);
        }
        let (start, keep) = {
            let state = self.state.lock();
            let start = state.log_start;
            // The segment the new end falls in (the one before a segment
            // starting exactly at `offset`).
            let keep = state.segments.range(..offset).next_back().map(|(_, s)| *s);
            (start, keep)
        };
        let keep = match keep {
            Some(seg) if offset >= start => seg,
            // Below the start (or at it): nothing is kept.
            _ => return self.reset_to(offset),
        };
        // The batch boundary at or below `offset` within `keep`.
        let (cut_pos, new_end) = if offset >= keep.end {
            (keep.size, keep.end)
        } else {
            let (file, path) = self.open_log(keep.base, offset)?;
            let mut reader = ChunkReader::new(&file, keep.size, HEADER_SCAN_CHUNK);
            let mut pos = self.index_position(&keep, offset)?;
            loop {
                match reader
                    .header(pos)
                    .map_err(LogError::io_path("read", &path))?
                {
                    Some(Ok(h)) if h.next_offset() <= offset => pos += h.total_len() as u64,
                    Some(Ok(h)) => break (pos, h.base_offset),
                    None => break (pos, keep.end),
                    Some(Err(e)) => return Err(LogError::corrupt(&path, e)),
                }
            }
        };
        if new_end < start {
            // The batch holding `offset` straddles the log start: keeping
            // its head would leave the log ending before it starts.
            return self.reset_to(offset);
        }
        // Newest segments first; each removal durable before the next.
        let later: Vec<i64> = {
            let state = self.state.lock();
            state
                .segments
                .range(keep.base + 1..)
                .map(|(b, _)| *b)
                .rev()
                .collect()
        };
        for base in later {
            for ext in [LOG_EXT, segment::INDEX_EXT, segment::TIME_INDEX_EXT] {
                let path = segment_path(&self.dir, base, ext);
                self.files.evict(&path);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io_path("delete", &path)(e)),
                }
            }
            segment::sync_dir(&self.dir).map_err(LogError::io_path("fsync", &self.dir))?;
            let mut state = self.state.lock();
            if let Some(seg) = state.segments.remove(&base) {
                state.size_bytes -= seg.size;
            }
        }
        // `keep` is the active segment again: its sealed indexes go, its
        // tail is cut and its in-memory indexes rebuilt by a scan.
        for ext in [segment::INDEX_EXT, segment::TIME_INDEX_EXT] {
            let path = segment_path(&self.dir, keep.base, ext);
            self.files.evict(&path);
            let _ = fs::remove_file(&path);
        }
        let path = self.log_path(keep.base);
        let file = self
            .files
            .open(&path, true)
            .map_err(LogError::io_path("open", &path))?;
        file.set_len(cut_pos)
            .map_err(LogError::io_path("truncate", &path))?;
        self.timed_sync(&file, &path)?;
        let config = self.config.read().clone();
        let scanned = segment::scan_segment(&file, keep.base, config.index_interval_bytes)
            .map_err(LogError::io_path("scan", &path))?;
        if scanned.end_offset != new_end || scanned.valid_len != cut_pos {
            let why = format!(
                "truncation to {new_end} left a segment ending at {} ({:?})",
                scanned.end_offset, scanned.stopped
            );
            self.fail(why.clone());
            return Err(LogError::corrupt(&path, why));
        }
        {
            let mut state = self.state.lock();
            let indexes = scanned.indexes;
            state.size_bytes = state.size_bytes - keep.size + cut_pos;
            state.segments.insert(
                keep.base,
                SegmentInfo {
                    base: keep.base,
                    end: new_end,
                    size: cut_pos,
                    max_timestamp: indexes.max_timestamp,
                    max_timestamp_offset: indexes.max_timestamp_offset,
                },
            );
            state.active = ActiveSegment {
                indexes,
                rolling_base_ms: scanned.first_timestamp.map(|t| t.clamp(0, now_ms())),
            };
            self.metrics.size_bytes.set(state.size_bytes as f64);
        }
        self.lower_ends(new_end)?;
        self.reload_producers(new_end)?;
        tracing::info!(dir = %self.dir.display(), from = log_end, to = new_end, "log truncated");
        Ok(new_end)
    }

    /// Empties the log and starts it again at `offset`.
    fn reset_to(&self, offset: i64) -> Result<i64, LogError> {
        let bases: Vec<i64> = self.state.lock().segments.keys().rev().copied().collect();
        let new_path = self.log_path(offset);
        // The new (empty) segment first: a crash then leaves either the old
        // log or a log starting at `offset`.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&new_path)
            .map_err(LogError::io_path("create", &new_path))?;
        for base in bases.into_iter().filter(|&b| b != offset) {
            for ext in [LOG_EXT, segment::INDEX_EXT, segment::TIME_INDEX_EXT] {
                let path = segment_path(&self.dir, base, ext);
                self.files.evict(&path);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io_path("delete", &path)(e)),
                }
            }
        }
        self.files.insert(&new_path, Arc::new(file));
        segment::sync_dir(&self.dir).map_err(LogError::io_path("fsync", &self.dir))?;
        {
            let mut state = self.state.lock();
            state.segments.clear();
            state.segments.insert(offset, SegmentInfo::empty(offset));
            state.active = ActiveSegment {
                indexes: IndexBuilder::new(),
                rolling_base_ms: None,
            };
            state.size_bytes = 0;
            state.log_start = offset;
            self.metrics.size_bytes.set(0.0);
        }
        // After the segments: a crash before this leaves a recorded start
        // past the (new) end, which opening caps.
        self.record_log_start(offset)?;
        self.metrics.start_offset.set(offset as f64);
        // The ends may move up (a follower jumping to its leader's start)
        // or down.
        self.log_end.store(offset, Ordering::Release);
        self.local_end.store(offset, Ordering::Release);
        self.flushed.store(offset, Ordering::Release);
        self.high_watermark.store(offset, Ordering::Release);
        self.local_tx.send_replace(offset);
        self.hw_tx.send_replace(offset);
        self.metrics.end_offset.set(offset as f64);
        let mut epochs = self.epochs.lock();
        *epochs = EpochCache::default();
        epochs
            .store(&self.dir)
            .map_err(LogError::io_path("write epoch checkpoint", &self.dir))?;
        *self.producers.lock() = ProducerStates::default();
        for (_, path) in producer_snapshots(&self.dir) {
            let _ = fs::remove_file(path);
        }
        tracing::info!(dir = %self.dir.display(), offset, "log emptied and restarted");
        Ok(offset)
    }

    /// Moves every end marker down to `end` after a truncation, and the
    /// epoch cache with them.
    fn lower_ends(&self, end: i64) -> Result<(), LogError> {
        for marker in [
            &self.log_end,
            &self.local_end,
            &self.flushed,
            &self.high_watermark,
        ] {
            marker.fetch_min(end, Ordering::AcqRel);
        }
        self.local_tx.send_if_modified(|v| {
            let lower = *v > end;
            *v = (*v).min(end);
            lower
        });
        self.hw_tx.send_if_modified(|v| {
            let lower = *v > end;
            *v = (*v).min(end);
            lower
        });
        self.metrics.end_offset.set(end as f64);
        let mut epochs = self.epochs.lock();
        if epochs.truncate_from_end(end) {
            epochs
                .store(&self.dir)
                .map_err(LogError::io_path("write epoch checkpoint", &self.dir))?;
        }
        Ok(())
    }

    /// `OffsetOutOfRange` for `requested` against the log as it is now.
    fn out_of_range(&self, requested: i64) -> LogError {
        let start = self.state.lock().log_start;
        LogError::OffsetOutOfRange {
            requested,
            start,
            end: self.high_watermark.load(Ordering::Acquire),
        }
    }

    /// Opens a file of the segment at `base`. If the file is gone because
    /// retention deleted the segment since the caller looked it up, the
    /// answer is `OffsetOutOfRange` for `requested`.
    fn open_segment_file(
        &self,
        base: i64,
        ext: &str,
        writable: bool,
        requested: i64,
    ) -> Result<(Arc<File>, PathBuf), LogError> {
        let path = segment_path(&self.dir, base, ext);
        match self.files.open(&path, writable) {
            Ok(file) => Ok((file, path)),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && !self.state.lock().segments.contains_key(&base) =>
            {
                Err(self.out_of_range(requested))
            }
            Err(e) => Err(LogError::io_path("open", &path)(e)),
        }
    }

    /// Makes sure the epoch cache knows that `epoch` starts no later than
    /// `start` (written durably before the epoch's first batch); refuses an
    /// epoch older than the latest.
    fn note_epoch(&self, epoch: i32, start: i64) -> Result<(), LogError> {
        let mut epochs = self.epochs.lock();
        match epochs.latest_epoch() {
            Some(latest) if epoch < latest => Err(LogError::FencedEpoch { epoch, latest }),
            Some(latest) if epoch == latest => Ok(()),
            _ => {
                epochs.assign(epoch, start);
                epochs
                    .store(&self.dir)
                    .map_err(LogError::io_path("write epoch checkpoint", &self.dir))
            }
        }
    }

    /// Writes the producer state as of `offset` (everything below it is
    /// recorded) to `<offset>.snapshot` and keeps only the two newest
    /// snapshots. A failure only costs a longer scan at the next open.
    fn snapshot_producers(&self, offset: i64) {
        let bytes = {
            let producers = self.producers.lock();
            if producers.is_empty() {
                return;
            }
            producers.to_snapshot(offset)
        };
        let path = segment_path(&self.dir, offset, SNAPSHOT_EXT);
        if let Err(e) = segment::write_file_durably(&path, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the producer snapshot");
            return;
        }
        for (_, old) in producer_snapshots(&self.dir).into_iter().skip(2) {
            let _ = fs::remove_file(old);
        }
    }

    /// Rebuilds the producer state after a truncation to `end`: snapshots
    /// past it go, the rest is replayed.
    fn reload_producers(&self, end: i64) -> Result<(), LogError> {
        for (offset, path) in producer_snapshots(&self.dir) {
            if offset > end {
                let _ = fs::remove_file(path);
            }
        }
        let segments = self.state.lock().segments.clone();
        let state = load_producers(&self.dir, &segments, &self.files, end)?;
        *self.producers.lock() = state;
        Ok(())
    }

    /// The local end moved to `end` (written, or fsynced, per the flush
    /// policy); without replication that is the high watermark too.
    fn advance_local_end(&self, end: i64) {
        let previous = self.local_end.fetch_max(end, Ordering::AcqRel);
        if end > previous {
            self.local_tx.send_if_modified(|v| {
                let grew = end > *v;
                if grew {
                    *v = end;
                }
                grew
            });
        }
        if !self.config.read().replicated {
            self.set_high_watermark(end);
        }
    }

    fn set_high_watermark(&self, hw: i64) {
        let previous = self.high_watermark.fetch_max(hw, Ordering::AcqRel);
        if hw > previous {
            self.hw_tx.send_if_modified(|v| {
                let grew = hw > *v;
                if grew {
                    *v = hw;
                }
                grew
            });
        }
    }

    /// Stamps and writes the batches (appends are serialized by the caller),
    /// rolling segments as needed. Returns the first offset and the new log
    /// end.
    fn write_batches(
        &self,
        batches: Vec<(BatchHeader, Bytes)>,
        stamp: Stamp,
        now: i64,
        config: &LogConfig,
    ) -> Result<Written, LogError> {
        self.check_writable()?;
        if let (Stamp::Leader(_), [(header, _)]) = (stamp, batches.as_slice())
            && let Some(seq) = BatchSeq::from_header(header)
        {
            match self.producers.lock().check(&seq)? {
                SeqCheck::Append => {}
                SeqCheck::Duplicate {
                    first_offset,
                    last_offset,
                } => {
                    return Ok(Written::Duplicate {
                        first: first_offset,
                        last: last_offset,
                    });
                }
            }
        } else if matches!(stamp, Stamp::Leader(_))
            && batches.len() > 1
            && batches.iter().any(|(h, _)| h.producer_id >= 0)
        {
            // Kafka's rule too: one batch per partition per produce request.
            return Err(LogError::InvalidBatch(
                "an idempotent producer's batch must be appended alone".into(),
            ));
        }
        let segment_limit = config.segment_bytes.clamp(1, MAX_SEGMENT_BYTES);
        let mut cursor = {
            let state = self.state.lock();
            let active = state.active_info()?;
            Cursor {
                base: active.base,
                size: active.size,
                end: active.end,
                rolling_base_ms: state.active.rolling_base_ms,
            }
        };
        let first_offset = cursor.end;
        if let Stamp::Leader(epoch) = stamp {
            self.note_epoch(epoch, first_offset)?;
        }
        let mut buf = Vec::with_capacity(batches.iter().map(|(_, b)| b.len()).sum());
        let mut pending = Vec::with_capacity(batches.len());
        for (header, bytes) in &batches {
            let len = bytes.len() as u64;
            let used = cursor.size + buf.len() as u64;
            let full = used + len > segment_limit;
            let offsets_overflow = cursor.end + i64::from(header.last_offset_delta) - cursor.base
                > i64::from(i32::MAX);
            let too_old = match (config.segment_ms, cursor.rolling_base_ms) {
                (Some(max_age), Some(since)) => now.saturating_sub(since) >= max_age as i64,
                _ => false,
            };
            if used > 0 && (full || offsets_overflow || too_old) {
                self.commit(&mut cursor, &mut buf, &mut pending, config)?;
                cursor = self.roll(cursor.end, config)?;
            }
            let start = buf.len();
            buf.extend_from_slice(bytes);
            let max_timestamp = match stamp {
                Stamp::Leader(epoch) => {
                    let stamped = &mut buf[start..];
                    batch::set_base_offset(stamped, cursor.end);
                    batch::set_partition_leader_epoch(stamped, epoch);
                    if config.log_append_time {
                        batch::set_log_append_time(stamped, header, now);
                        now
                    } else {
                        header.max_timestamp
                    }
                }
                Stamp::Replica => {
                    // A compacted leader's log has gaps between batches.
                    if header.base_offset < cursor.end {
                        return Err(LogError::NotContiguous {
                            expected: cursor.end,
                            got: header.base_offset,
                        });
                    }
                    cursor.end = header.base_offset;
                    self.note_epoch(header.partition_leader_epoch, cursor.end)?;
                    header.max_timestamp
                }
            };
            cursor.rolling_base_ms.get_or_insert(now);
            pending.push(PendingBatch {
                base_offset: cursor.end,
                position: cursor.size + start as u64,
                len,
                max_timestamp,
                seq: BatchSeq::from_header(header).map(|s| s.at(cursor.end)),
            });
            cursor.end += i64::from(header.last_offset_delta) + 1;
        }
        self.commit(&mut cursor, &mut buf, &mut pending, config)?;
        if config.flush != FlushPolicy::EveryAppend {
            self.advance_local_end(cursor.end);
        }
        Ok(Written::Batches {
            first: first_offset,
            end: cursor.end,
        })
    }

    /// Writes the buffer at the end of the active segment, then publishes
    /// the batches (indexes, sizes, log end).
    fn commit(
        &self,
        cursor: &mut Cursor,
        buf: &mut Vec<u8>,
        pending: &mut Vec<PendingBatch>,
        config: &LogConfig,
    ) -> Result<(), LogError> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.log_path(cursor.base);
        let file = self
            .files
            .open(&path, true)
            .map_err(LogError::io_path("open", &path))?;
        if let Err(e) = file.write_all_at(buf, cursor.size) {
            // Never leave a partial write behind valid batches.
            if let Err(e2) = file.set_len(cursor.size) {
                self.fail(format!("cannot undo a failed write: {e2}"));
            }
            return Err(LogError::io_path("write", &path)(e));
        }
        let written = buf.len() as u64;
        {
            let mut state = self.state.lock();
            for b in pending.iter() {
                state.active.indexes.add_batch(
                    cursor.base,
                    b.base_offset,
                    b.position,
                    b.len,
                    b.max_timestamp,
                    config.index_interval_bytes,
                );
            }
            state.active.rolling_base_ms = cursor.rolling_base_ms;
            let (max_timestamp, max_timestamp_offset) = (
                state.active.indexes.max_timestamp,
                state.active.indexes.max_timestamp_offset,
            );
            if let Some(info) = state.segments.get_mut(&cursor.base) {
                info.size += written;
                info.end = cursor.end;
                info.max_timestamp = max_timestamp;
                info.max_timestamp_offset = max_timestamp_offset;
            }
            state.size_bytes += written;
            let mut producers = self.producers.lock();
            for seq in pending.iter().filter_map(|b| b.seq) {
                producers.record(seq);
            }
            drop(producers);
            self.log_end.store(cursor.end, Ordering::Release);
            self.metrics.size_bytes.set(state.size_bytes as f64);
        }
        self.metrics.end_offset.set(cursor.end as f64);
        self.metrics.appended_bytes.increment(written);
        cursor.size += written;
        buf.clear();
        pending.clear();
        Ok(())
    }

    /// Seals the active segment (index files, fsync) and starts a new one at
    /// `new_base`.
    fn roll(&self, new_base: i64, config: &LogConfig) -> Result<Cursor, LogError> {
        let (old_base, index, time_index) = {
            let state = self.state.lock();
            let base = state.active_info()?.base;
            let indexes = &state.active.indexes;
            (
                base,
                segment::encode_index(&indexes.index),
                segment::encode_time_index(&indexes.sealed_time_index(base)),
            )
        };
        for (ext, bytes) in [
            (segment::INDEX_EXT, index),
            (segment::TIME_INDEX_EXT, time_index),
        ] {
            let path = segment_path(&self.dir, old_base, ext);
            self.files.evict(&path);
            segment::write_file_durably(&path, &bytes)
                .map_err(LogError::io_path("write", &path))?;
        }
        let old_path = self.log_path(old_base);
        let old = self
            .files
            .open(&old_path, true)
            .map_err(LogError::io_path("open", &old_path))?;
        self.timed_sync(&old, &old_path)?;

        let path = self.log_path(new_base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(LogError::io_path("create", &path))?;
        self.files.insert(&path, Arc::new(file));
        self.snapshot_producers(new_base);
        if config.flush != FlushPolicy::Os {
            segment::sync_dir(&self.dir).map_err(LogError::io_path("fsync", &self.dir))?;
        }
        {
            let mut state = self.state.lock();
            state
                .segments
                .insert(new_base, SegmentInfo::empty(new_base));
            state.active = ActiveSegment {
                indexes: IndexBuilder::new(),
                rolling_base_ms: None,
            };
        }
        tracing::debug!(dir = %self.dir.display(), sealed = old_base, new_base, "rolled log segment");
        Ok(Cursor {
            base: new_base,
            size: 0,
            end: new_base,
            rolling_base_ms: None,
        })
    }

    /// `fdatasync` with the fsync histogram; a failure takes the log offline.
    fn timed_sync(&self, file: &File, path: &Path) -> Result<(), LogError> {
        let started = Instant::now();
        if let Err(e) = file.sync_data() {
            self.fail(format!("fsync of {} failed: {e}", path.display()));
            return Err(LogError::io_path("fsync", path)(e));
        }
        self.metrics
            .fsync_seconds
            .record(started.elapsed().as_secs_f64());
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// fsyncs the active segment and advances the flushed offset and the
    /// high watermark to the log end seen before the fsync.
    fn sync_active(&self) -> Result<(), LogError> {
        let (end, base) = {
            let state = self.state.lock();
            if state.deleted {
                return Err(LogError::Deleted(self.dir.display().to_string()));
            }
            if let Some(why) = &state.failed {
                return Err(LogError::Failed(
                    self.dir.display().to_string(),
                    why.clone(),
                ));
            }
            // Every segment before the active one was fsynced when sealed.
            (
                self.log_end.load(Ordering::Acquire),
                state.active_info()?.base,
            )
        };
        let path = self.log_path(base);
        let file = self
            .files
            .open(&path, true)
            .map_err(LogError::io_path("open", &path))?;
        self.timed_sync(&file, &path)?;
        self.flushed.fetch_max(end, Ordering::AcqRel);
        self.advance_local_end(end);
        Ok(())
    }

    /// File position to scan from for `offset` in segment `seg`.
    fn index_position(&self, seg: &SegmentInfo, offset: i64) -> Result<u64, LogError> {
        let rel = (offset.max(seg.base) - seg.base).min(i64::from(u32::MAX)) as u32;
        {
            let state = self.state.lock();
            if state.is_active(seg.base) {
                return Ok(u64::from(state.active.indexes.lookup(rel)));
            }
        }
        let (file, path) = self.open_segment_file(seg.base, segment::INDEX_EXT, false, offset)?;
        let pos =
            segment::lookup_index_file(&file, rel).map_err(LogError::io_path("read", &path))?;
        Ok(u64::from(pos))
    }

    /// File position to scan from for the first timestamp `>= ts` in `seg`.
    fn time_position(&self, seg: &SegmentInfo, ts: i64) -> Result<u64, LogError> {
        let rel = {
            let state = self.state.lock();
            if state.is_active(seg.base) {
                Some(state.active.indexes.time_lookup(ts))
            } else {
                None
            }
        };
        let rel = match rel {
            Some(rel) => rel,
            None => {
                let (file, path) =
                    self.open_segment_file(seg.base, segment::TIME_INDEX_EXT, false, seg.base)?;
                segment::time_lookup_file(&file, ts).map_err(LogError::io_path("read", &path))?
            }
        };
        match rel {
            Some(rel) => self.index_position(seg, seg.base + i64::from(rel)),
            None => Ok(0),
        }
    }

    /// Opens the `.log` of the segment at `base` for a read of `requested`
    /// (see [`Self::open_segment_file`]).
    fn open_log(&self, base: i64, requested: i64) -> Result<(Arc<File>, PathBuf), LogError> {
        self.open_segment_file(base, LOG_EXT, true, requested)
    }

    fn read_blocking(&self, offset: i64, max_bytes: usize, hw: i64) -> Result<Bytes, LogError> {
        let mut from = offset;
        loop {
            let _files = self.swap_lock.read();
            let seg = {
                let state = self.state.lock();
                // Retention or DeleteRecords may have moved the start
                // since the caller checked it.
                let start = state.log_start;
                if from < start {
                    return Err(LogError::OffsetOutOfRange {
                        requested: offset,
                        start,
                        end: hw,
                    });
                }
                state.segment_for(from)
            };
            let Some(seg) = seg else {
                return Ok(Bytes::new());
            };
            if seg.base >= hw {
                return Ok(Bytes::new());
            }
            let start = self.index_position(&seg, from)?;
            let (file, path) = self.open_log(seg.base, offset)?;
            let mut reader = ChunkReader::new(&file, seg.size, HEADER_SCAN_CHUNK);
            let mut pos = start;
            // Find the batch that holds `from` (or the first one after it).
            let first = loop {
                match reader
                    .header(pos)
                    .map_err(LogError::io_path("read", &path))?
                {
                    None => break None,
                    Some(Err(e)) => return Err(LogError::corrupt(&path, e)),
                    Some(Ok(h)) if h.next_offset() > from => break Some(h),
                    Some(Ok(h)) => pos += h.total_len() as u64,
                }
            };
            let Some(first) = first else {
                from = from.max(seg.end);
                continue;
            };
            if first.base_offset >= hw {
                return Ok(Bytes::new());
            }
            let first_len = first.total_len();
            if pos + first_len as u64 > seg.size {
                return Err(LogError::corrupt(
                    &path,
                    format!("batch at position {pos} runs past the segment end"),
                ));
            }
            let want = if first_len >= max_bytes {
                first_len
            } else {
                ((seg.size - pos) as usize).min(max_bytes)
            };
            let mut buf = vec![0u8; want];
            file.read_exact_at(&mut buf, pos)
                .map_err(LogError::io_path("read", &path))?;
            // Keep whole batches below the high watermark.
            let mut keep = first_len;
            while keep + HEADER_LEN <= buf.len() {
                let Ok(h) = BatchHeader::parse(&buf[keep..]) else {
                    break;
                };
                if h.base_offset >= hw || keep + h.total_len() > buf.len() {
                    break;
                }
                keep += h.total_len();
            }
            buf.truncate(keep);
            return Ok(Bytes::from(buf));
        }
    }

    /// Reads the whole batch at `pos` of a segment.
    fn read_batch(
        file: &File,
        path: &Path,
        pos: u64,
        header: &BatchHeader,
    ) -> Result<Bytes, LogError> {
        let mut buf = vec![0u8; header.total_len()];
        file.read_exact_at(&mut buf, pos)
            .map_err(LogError::io_path("read", path))?;
        Ok(Bytes::from(buf))
    }

    /// Decodes a batch's records as `(offset, timestamp)`: a LogAppendTime
    /// batch's records all have the batch's max timestamp.
    fn record_timestamps(
        batch: Bytes,
        header: &BatchHeader,
        path: &Path,
    ) -> Result<Vec<(i64, i64)>, LogError> {
        let records = decode_records(batch)
            .map_err(|e| LogError::corrupt(path, format!("batch {}: {e}", header.base_offset)))?;
        Ok(records
            .into_iter()
            .map(|r| {
                let ts = if header.is_log_append_time() {
                    header.max_timestamp
                } else {
                    r.timestamp_ms
                };
                (r.offset, ts)
            })
            .collect())
    }

    fn segments_below(&self, hw: i64) -> Vec<SegmentInfo> {
        self.state
            .lock()
            .segments
            .values()
            .filter(|s| s.base < hw)
            .copied()
            .collect()
    }

    fn offset_for_timestamp(&self, ts: i64, hw: i64) -> Result<Option<(i64, i64)>, LogError> {
        let _files = self.swap_lock.read();
        for seg in self.segments_below(hw) {
            if seg.max_timestamp < ts {
                continue;
            }
            match self.timestamp_in_segment(&seg, ts, hw) {
                Ok(ControlFlow::Break(found)) => return Ok(found),
                Ok(ControlFlow::Continue(())) => {}
                // Retention deleted the segment since the listing: the
                // answer is in the segments after it.
                Err(LogError::OffsetOutOfRange { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// [`Self::offset_for_timestamp`] in one segment: `Break` with the
    /// answer, or `Continue` to look in the next segment.
    fn timestamp_in_segment(
        &self,
        seg: &SegmentInfo,
        ts: i64,
        hw: i64,
    ) -> Result<ControlFlow<Option<(i64, i64)>>, LogError> {
        let log_start = self.state.lock().log_start;
        let start = self.time_position(seg, ts)?;
        let (file, path) = self.open_log(seg.base, seg.base)?;
        let mut reader = ChunkReader::new(&file, seg.size, HEADER_SCAN_CHUNK);
        let mut pos = start;
        while let Some(header) = reader
            .header(pos)
            .map_err(LogError::io_path("read", &path))?
        {
            let header = header.map_err(|e| LogError::corrupt(&path, e))?;
            if header.base_offset >= hw {
                return Ok(ControlFlow::Break(None));
            }
            // Records below the log start are deleted, even where their
            // segment is still on disk.
            if header.max_timestamp >= ts && header.next_offset() > log_start {
                let batch = Self::read_batch(&file, &path, pos, &header)?;
                let found = Self::record_timestamps(batch, &header, &path)?
                    .into_iter()
                    .find(|(o, t)| *t >= ts && *o >= log_start);
                if found.is_some() {
                    return Ok(ControlFlow::Break(found));
                }
            }
            pos += header.total_len() as u64;
        }
        Ok(ControlFlow::Continue(()))
    }

    fn max_timestamp(&self, hw: i64) -> Result<Option<(i64, i64)>, LogError> {
        let mut attempt = 0;
        loop {
            match self.max_timestamp_once(hw) {
                // Retention deleted a segment it was reading: start over.
                Err(LogError::OffsetOutOfRange { .. }) if attempt < RETRIES_AFTER_DELETION => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn max_timestamp_once(&self, hw: i64) -> Result<Option<(i64, i64)>, LogError> {
        let _files = self.swap_lock.read();
        // (max timestamp, base offset of the first batch that has it).
        let mut best: Option<(i64, i64, SegmentInfo)> = None;
        let log_start = self.state.lock().log_start;
        for seg in self.segments_below(hw) {
            let candidate = if seg.max_timestamp == NO_TIMESTAMP {
                None
            } else if (log_start..hw).contains(&seg.max_timestamp_offset) {
                Some((seg.max_timestamp, seg.max_timestamp_offset))
            } else {
                // The segment's max is in an append not yet visible, or
                // below the log start: work out the visible part's max
                // from its batch headers.
                self.scan_max_timestamp(&seg, hw)?
            };
            if let Some((ts, offset)) = candidate
                && best.as_ref().is_none_or(|(best_ts, _, _)| ts > *best_ts)
            {
                best = Some((ts, offset, seg));
            }
        }
        let Some((ts, batch_offset, seg)) = best else {
            return Ok(None);
        };
        let start = self.index_position(&seg, batch_offset)?;
        let (file, path) = self.open_log(seg.base, batch_offset)?;
        let mut reader = ChunkReader::new(&file, seg.size, HEADER_SCAN_CHUNK);
        let mut pos = start;
        while let Some(header) = reader
            .header(pos)
            .map_err(LogError::io_path("read", &path))?
        {
            let header = header.map_err(|e| LogError::corrupt(&path, e))?;
            if header.base_offset == batch_offset {
                let batch = Self::read_batch(&file, &path, pos, &header)?;
                let mut records = Self::record_timestamps(batch, &header, &path)?;
                records.retain(|(o, _)| *o >= log_start);
                // The earliest record with the largest timestamp.
                let top = records.iter().map(|(_, t)| *t).max();
                return Ok(match top {
                    Some(top) => records.into_iter().find(|(_, t)| *t == top),
                    None => Some((batch_offset.max(log_start), ts)),
                });
            }
            if header.base_offset > batch_offset {
                break;
            }
            pos += header.total_len() as u64;
        }
        Err(LogError::corrupt(
            &path,
            format!("no batch at offset {batch_offset} where the index says the max timestamp is"),
        ))
    }

    /// `(max timestamp, its first batch's base offset)` of the records of
    /// `seg` from the log start to `hw`, from the batch headers (and the
    /// records of the batch holding the log start).
    fn scan_max_timestamp(
        &self,
        seg: &SegmentInfo,
        hw: i64,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let log_start = self.state.lock().log_start;
        let (file, path) = self.open_log(seg.base, seg.base)?;
        let mut reader = ChunkReader::new(&file, seg.size, HEADER_SCAN_CHUNK);
        let mut pos = 0;
        let mut best: Option<(i64, i64)> = None;
        while let Some(header) = reader
            .header(pos)
            .map_err(LogError::io_path("read", &path))?
        {
            let header = header.map_err(|e| LogError::corrupt(&path, e))?;
            if header.base_offset >= hw {
                break;
            }
            let visible_max = if header.next_offset() <= log_start {
                None
            } else if header.base_offset < log_start {
                // The batch holding the log start: only its records from
                // the start on count.
                let batch = Self::read_batch(&file, &path, pos, &header)?;
                Self::record_timestamps(batch, &header, &path)?
                    .into_iter()
                    .filter(|(o, _)| *o >= log_start)
                    .map(|(_, t)| t)
                    .max()
            } else {
                Some(header.max_timestamp)
            };
            if let Some(ts) = visible_max
                && best.is_none_or(|(t, _)| ts > t)
            {
                best = Some((ts, header.base_offset));
            }
            pos += header.total_len() as u64;
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use runnel_records::build::{Compression, PlainRecord, build_batch};

    fn batch(ts: &[i64]) -> (BatchHeader, Bytes) {
        let records: Vec<PlainRecord> = ts
            .iter()
            .map(|t| PlainRecord {
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: vec![],
                timestamp_ms: *t,
            })
            .collect();
        let bytes = build_batch(&records, Compression::None).unwrap();
        (batch::validate(&bytes).unwrap(), bytes)
    }

    /// Data written but not yet below the high watermark (an append whose
    /// fsync is still running) is invisible to every reader.
    #[tokio::test]
    async fn nothing_at_or_beyond_the_high_watermark_is_visible() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            flush: FlushPolicy::Os,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
        log.append(vec![batch(&[10, 20])], 0).await.unwrap();
        // Write a second batch the way an EveryAppend append does before
        // its fsync: log end moves, the high watermark does not.
        let inner = log.inner.clone();
        let written = inner
            .write_batches(
                vec![batch(&[30, 99])],
                Stamp::Leader(0),
                now_ms(),
                &LogConfig {
                    flush: FlushPolicy::EveryAppend,
                    ..config
                },
            )
            .unwrap();
        let Written::Batches { end, .. } = written else {
            panic!("not a duplicate")
        };
        assert_eq!((log.high_watermark(), log.log_end_offset(), end), (2, 4, 4));
        let visible = log.read(0, 1 << 20).await.unwrap();
        assert_eq!(
            BatchHeader::parse(&visible).unwrap().total_len(),
            visible.len()
        );
        // Written but not yet visible: nothing to read, but not out of range.
        assert!(log.read(3, 100).await.unwrap().is_empty());
        assert!(matches!(
            log.read(5, 100).await,
            Err(LogError::OffsetOutOfRange { end: 2, .. })
        ));
        assert_eq!(log.offset_for_timestamp(25).await.unwrap(), None);
        assert_eq!(log.offset_for_timestamp(15).await.unwrap(), Some((1, 20)));
        // The segment's max (99) is in the invisible batch.
        assert_eq!(log.max_timestamp().await.unwrap(), Some((1, 20)));
        log.flush().await.unwrap();
        assert_eq!(log.high_watermark(), 4);
        assert_eq!(log.max_timestamp().await.unwrap(), Some((3, 99)));
        assert_eq!(log.offset_for_timestamp(25).await.unwrap(), Some((2, 30)));
    }

    /// A reader that opened a segment before retention deleted it keeps
    /// reading the whole old data; one that looked the segment up before
    /// but opens it after gets out-of-range; the cache keeps no handle.
    #[tokio::test]
    async fn deletion_under_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileCache::new(16);
        let config = LogConfig {
            segment_bytes: 300,
            flush: FlushPolicy::Os,
            retention_bytes: 0,
            ..LogConfig::default()
        };
        let log = PartitionLog::open_with(dir.path(), config, files.clone(), "t", "0").unwrap();
        for i in 0..10 {
            log.append(vec![batch(&[i, i + 1, i + 2])], 0)
                .await
                .unwrap();
        }
        let inner = log.inner.clone();
        let first = inner.state.lock().segment_for(0).unwrap();
        let path = inner.log_path(first.base);
        let held = files.open(&path, true).unwrap();
        let before = std::fs::read(&path).unwrap();
        // Looked up before the deletion, opened after it.
        let second = inner.state.lock().segment_for(first.end).unwrap();
        let deleted = log.enforce_retention(now_ms()).await.unwrap();
        assert!(deleted.len() >= 2);
        assert!(!path.exists());
        assert!(!files.contains(&path));
        assert!(!files.contains(&inner.log_path(second.base)));
        let mut again = vec![0u8; before.len()];
        held.read_exact_at(&mut again, 0).unwrap();
        assert_eq!(again, before);
        let start = log.log_start_offset();
        for result in [
            inner.open_log(second.base, second.base).map(|_| ()),
            inner.index_position(&second, second.base).map(|_| ()),
            inner
                .read_blocking(second.base, 100, log.high_watermark())
                .map(|_| ()),
        ] {
            match result {
                Err(LogError::OffsetOutOfRange {
                    requested,
                    start: s,
                    ..
                }) => {
                    assert_eq!((requested, s), (second.base, start));
                }
                other => panic!("{other:?}"),
            }
        }
        // Timestamp lookups skip what is gone.
        assert!(
            inner
                .timestamp_in_segment(&second, 0, log.high_watermark())
                .is_err()
        );
        assert_eq!(
            log.offset_for_timestamp(0).await.unwrap().map(|(o, _)| o),
            Some(start)
        );
    }
}
