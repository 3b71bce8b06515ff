//! Log compaction (Kafka's log cleaner) for `cleanup.policy=compact`: the
//! sealed part of the log keeps only the latest record of each key.
//!
//! # A pass ([`PartitionLog::compact`])
//!
//! - The *cleanable* part is the sealed segments wholly below the high
//!   watermark, up to the first one holding records younger than
//!   `min_compaction_lag_ms`. The *dirty* part is what of it lies at or past
//!   the cleaner checkpoint (`cleaner-offset-checkpoint`: where the last pass
//!   ended). A pass runs when dirty bytes are at least
//!   `min_cleanable_dirty_ratio` of the cleanable bytes, or the dirty part
//!   holds records older than `max_compaction_lag_ms`.
//! - It maps each key of the dirty part to its latest offset (at most
//!   [`KEY_MAP_BYTES`] of keys: a pass that fills it stops its dirty part at
//!   that segment; the next pass goes on from there).
//! - It rewrites every cleanable segment, merging neighbours while they fit
//!   in `segment_bytes`: a record is dropped when the map holds a later
//!   offset for its key, or when it is a tombstone (null value) that an
//!   earlier pass already kept and whose timestamp is older than
//!   `delete_retention_ms` (the record's own time: segments merge, so a
//!   segment's age says nothing about an old record in it). Records without a key and control batches are
//!   kept. Batches keep their base offset, last offset delta and header
//!   (see `runnel_records::compact`), so offsets never move and never
//!   reorder; a batch left empty is dropped, leaving a gap of offsets that
//!   readers and followers step over.
//!
//! # Crash safety
//!
//! A rewritten group is written as `<base>.log.cleaned` with its
//! `.index.cleaned` and `.timeindex.cleaned` (fsynced), then the log is
//! renamed to `<base>.log.swap` and the directory fsynced: that is the
//! commit. Under the log's swap lock (no reads in between) the group's other
//! segments are renamed `.deleted`, the indexes and then the log renamed into
//! place, and the directory fsynced. [`recover`], on open, deletes
//! `.cleaned` leftovers (an uncommitted pass: the old segments are intact)
//! and finishes a committed swap: the old segments the `.swap` file covers
//! go, its indexes are rebuilt, it becomes `<base>.log`. Either way the log
//! holds every latest record, in order.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use runnel_records::batch::BatchHeader;
use runnel_records::compact::{RawRecord, raw_records, rebuild_batch};

use super::segment::{self, ChunkReader, IndexBuilder, LOG_EXT, segment_path};
use super::{FlushPolicy, Inner, LogConfig, LogError, PartitionLog, SegmentInfo, rename_deleted};

/// Memory for the key → latest offset map of one pass.
pub const KEY_MAP_BYTES: usize = 128 * 1024 * 1024;

/// The checkpoint file: the offset the last pass cleaned up to.
const CHECKPOINT: &str = "cleaner-offset-checkpoint";
/// A rewritten segment file not yet committed.
const CLEANED_SUFFIX: &str = ".cleaned";
/// A rewritten segment's log, committed, not yet in place.
const SWAP_SUFFIX: &str = ".swap";

/// What a cleaner pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanStats {
    /// The offset range cleaned: `[start, end)`; the dirty part began at
    /// `first_dirty`.
    pub start: i64,
    pub first_dirty: i64,
    pub end: i64,
    pub segments_before: usize,
    pub segments_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
}

impl PartitionLog {
    /// One cleaner pass if the log is compacted and dirty enough; `None`
    /// when there was nothing to do.
    pub async fn compact(&self, now_ms: i64) -> Result<Option<CleanStats>, LogError> {
        let config = self.config();
        if !config.compact {
            return Ok(None);
        }
        self.inner.check_not_deleted()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.clean(now_ms, &config))
            .await
            .map_err(LogError::join)?
    }
}

/// Key → the latest offset seen for it, with the memory it takes.
struct KeyMap {
    latest: HashMap<Bytes, i64>,
    bytes: usize,
}

impl KeyMap {
    fn insert(&mut self, key: Bytes, offset: i64) {
        let len = key.len();
        if self.latest.insert(key, offset).is_none() {
            // The key, the offset and the table's own overhead per entry.
            self.bytes += len + 48;
        }
    }

    /// Whether a later record of `key` exists (so this one is superseded).
    fn superseded(&self, key: &Bytes, offset: i64) -> bool {
        self.latest.get(key).is_some_and(|&latest| latest > offset)
    }
}

impl Inner {
    fn clean(&self, now_ms: i64, config: &LogConfig) -> Result<Option<CleanStats>, LogError> {
        let _pass = self.retention_lock.lock();
        let started = Instant::now();
        let hw = self.high_watermark.load(Ordering::Acquire);
        let cleanable: Vec<SegmentInfo> = {
            let state = self.state.lock();
            if state.deleted {
                return Err(LogError::Deleted(self.dir.display().to_string()));
            }
            let sealed = state.segments.len().saturating_sub(1);
            state
                .segments
                .values()
                .take(sealed)
                .take_while(|s| s.end <= hw)
                .take_while(|s| {
                    s.max_timestamp < 0
                        || now_ms.saturating_sub(s.max_timestamp) >= config.min_compaction_lag_ms
                })
                .copied()
                .collect()
        };
        let (Some(start), Some(cleanable_end)) = (
            cleanable.first().map(|s| s.base),
            cleanable.last().map(|s| s.end),
        ) else {
            return Ok(None);
        };
        let first_dirty = read_checkpoint(&self.dir).clamp(start, cleanable_end);
        let dirty: Vec<&SegmentInfo> = cleanable.iter().filter(|s| s.end > first_dirty).collect();
        let dirty_bytes: u64 = dirty.iter().map(|s| s.size).sum();
        let total_bytes: u64 = cleanable.iter().map(|s| s.size).sum();
        if dirty.is_empty() {
            return Ok(None);
        }
        let ratio = dirty_bytes as f64 / total_bytes.max(1) as f64;
        let overdue = dirty.iter().any(|s| {
            s.max_timestamp >= 0
                && now_ms.saturating_sub(s.max_timestamp) > config.max_compaction_lag_ms
        });
        if ratio < config.min_cleanable_dirty_ratio && !overdue {
            return Ok(None);
        }

        // (1) The latest offset of each key in the dirty part.
        let mut keys = KeyMap {
            latest: HashMap::new(),
            bytes: 0,
        };
        let mut end = first_dirty;
        for seg in &dirty {
            self.for_each_batch(seg, |header, batch| {
                if !header.is_control() {
                    for r in raw_records(header, batch).map_err(|e| self.corrupt(seg, e))? {
                        if let Some(key) = r.key {
                            keys.insert(key, r.offset);
                        }
                    }
                }
                Ok(())
            })?;
            end = seg.end;
            if keys.bytes >= KEY_MAP_BYTES {
                tracing::info!(topic = %self.topic, partition = %self.partition, end,
                    "cleaner key map full; this pass stops here");
                break;
            }
        }

        // (2) Rewrite [first.base, end) in groups of neighbours.
        let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms);
        let to_clean: Vec<SegmentInfo> = cleanable.into_iter().filter(|s| s.end <= end).collect();
        let mut stats = CleanStats {
            start,
            first_dirty,
            end,
            segments_before: to_clean.len(),
            bytes_before: to_clean.iter().map(|s| s.size).sum(),
            ..CleanStats::default()
        };
        for group in groups(
            &to_clean,
            config.segment_bytes.clamp(1, segment::MAX_SEGMENT_BYTES),
        ) {
            let rule = KeepRule {
                keys: &keys,
                first_dirty,
                tombstone_horizon,
            };
            let info = self.clean_group(group, &rule, config, &mut stats)?;
            stats.segments_after += 1;
            stats.bytes_after += info.size;
        }
        write_checkpoint(&self.dir, end)?;
        let labels = [("topic", self.topic.clone())];
        metrics::counter!("runnel_log_cleaner_passes_total", &labels).increment(1);
        metrics::counter!("runnel_log_cleaner_records_removed_total", &labels)
            .increment(stats.records_removed);
        metrics::counter!("runnel_log_cleaner_bytes_reclaimed_total", &labels)
            .increment(stats.bytes_before.saturating_sub(stats.bytes_after));
        metrics::histogram!("runnel_log_cleaner_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(
            topic = %self.topic,
            partition = %self.partition,
            start = stats.start,
            first_dirty,
            end,
            dirty_ratio = ratio,
            segments = format!("{} -> {}", stats.segments_before, stats.segments_after),
            bytes = format!("{} -> {}", stats.bytes_before, stats.bytes_after),
            records_removed = stats.records_removed,
            tombstones_removed = stats.tombstones_removed,
            ms = started.elapsed().as_millis() as u64,
            "log compacted"
        );
        Ok(Some(stats))
    }

    fn corrupt(&self, seg: &SegmentInfo, e: impl std::fmt::Display) -> LogError {
        LogError::corrupt(&segment_path(&self.dir, seg.base, LOG_EXT), e.to_string())
    }

    /// Calls `f` with each whole batch of a sealed segment, in order.
    fn for_each_batch(
        &self,
        seg: &SegmentInfo,
        mut f: impl FnMut(&BatchHeader, &Bytes) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let path = segment_path(&self.dir, seg.base, LOG_EXT);
        let file = File::open(&path).map_err(LogError::io_path("open", &path))?;
        let mut reader = ChunkReader::new(&file, seg.size, 1 << 20);
        let mut pos = 0u64;
        while pos < seg.size {
            let header = match reader
                .header(pos)
                .map_err(LogError::io_path("read", &path))?
            {
                Some(Ok(h)) => h,
                Some(Err(e)) => return Err(LogError::corrupt(&path, e)),
                None => return Err(LogError::corrupt(&path, format!("torn batch at {pos}"))),
            };
            let len = header.total_len();
            let Some(bytes) = reader
                .get(pos, len)
                .map_err(LogError::io_path("read", &path))?
            else {
                return Err(LogError::corrupt(&path, format!("torn batch at {pos}")));
            };
            f(&header, &Bytes::copy_from_slice(bytes))?;
            pos += len as u64;
        }
        Ok(())
    }

    /// Rewrites one group of neighbouring segments into one and swaps it in.
    fn clean_group(
        &self,
        group: &[SegmentInfo],
        rule: &KeepRule<'_>,
        config: &LogConfig,
        stats: &mut CleanStats,
    ) -> Result<SegmentInfo, LogError> {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return Err(LogError::Internal("empty cleaner group".into()));
        };
        let base = first.base;
        let cleaned_log = suffixed(&segment_path(&self.dir, base, LOG_EXT), CLEANED_SUFFIX);
        let file = File::create(&cleaned_log).map_err(LogError::io_path("create", &cleaned_log))?;
        let mut out = BufWriter::new(file);
        let mut indexes = IndexBuilder::new();
        let mut size = 0u64;
        for seg in group {
            self.for_each_batch(seg, |header, batch| {
                let kept = if header.is_control() {
                    Some(batch.clone())
                } else {
                    let records = raw_records(header, batch).map_err(|e| self.corrupt(seg, e))?;
                    let total = records.len();
                    let mut tombstones = 0;
                    let kept: Vec<RawRecord> = records
                        .into_iter()
                        .filter(|r| {
                            let drop = rule.drops(r);
                            tombstones += u64::from(drop && r.tombstone);
                            !drop
                        })
                        .collect();
                    stats.records_removed += (total - kept.len()) as u64;
                    stats.tombstones_removed += tombstones;
                    match kept.len() {
                        0 => None,
                        n if n == total => Some(batch.clone()),
                        _ => Some(
                            rebuild_batch(header, batch, &kept)
                                .map_err(|e| self.corrupt(seg, e))?,
                        ),
                    }
                };
                if let Some(bytes) = kept {
                    out.write_all(&bytes)
                        .map_err(LogError::io_path("write", &cleaned_log))?;
                    indexes.add_batch(
                        base,
                        header.base_offset,
                        size,
                        bytes.len() as u64,
                        header.max_timestamp,
                        config.index_interval_bytes,
                    );
                    size += bytes.len() as u64;
                }
                Ok(())
            })?;
        }
        let file = out
            .into_inner()
            .map_err(|e| LogError::io_path("write", &cleaned_log)(e.into_error()))?;
        file.sync_all()
            .map_err(LogError::io_path("fsync", &cleaned_log))?;
        drop(file);
        let index = segment_path(&self.dir, base, segment::INDEX_EXT);
        let time_index = segment_path(&self.dir, base, segment::TIME_INDEX_EXT);
        let cleaned_index = suffixed(&index, CLEANED_SUFFIX);
        let cleaned_time_index = suffixed(&time_index, CLEANED_SUFFIX);
        segment::write_file_durably(&cleaned_index, &segment::encode_index(&indexes.index))
            .map_err(LogError::io_path("write", &cleaned_index))?;
        segment::write_file_durably(
            &cleaned_time_index,
            &segment::encode_time_index(&indexes.sealed_time_index(base)),
        )
        .map_err(LogError::io_path("write", &cleaned_time_index))?;
        crash_point(&self.dir, 1)?;

        // Commit: the `.swap` name says the rewrite is complete.
        let log = segment_path(&self.dir, base, LOG_EXT);
        let swap = suffixed(&log, SWAP_SUFFIX);
        fs::rename(&cleaned_log, &swap).map_err(LogError::io_path("rename", &cleaned_log))?;
        self.sync_dir()?;
        crash_point(&self.dir, 2)?;

        let info = SegmentInfo {
            base,
            end: last.end,
            size,
            max_timestamp: indexes.max_timestamp,
            max_timestamp_offset: indexes.max_timestamp_offset,
        };
        let mut doomed = Vec::new();
        let swapped = (|| {
            let _no_reads = self.swap_lock.write();
            for seg in group {
                for ext in [LOG_EXT, segment::INDEX_EXT, segment::TIME_INDEX_EXT] {
                    let path = segment_path(&self.dir, seg.base, ext);
                    self.files.evict(&path);
                    if seg.base != base {
                        doomed.extend(rename_deleted(&path)?);
                    }
                }
            }
            crash_point(&self.dir, 3)?;
            fs::rename(&cleaned_index, &index).map_err(LogError::io_path("rename", &index))?;
            fs::rename(&cleaned_time_index, &time_index)
                .map_err(LogError::io_path("rename", &time_index))?;
            fs::rename(&swap, &log).map_err(LogError::io_path("rename", &swap))?;
            self.sync_dir()?;
            let mut state = self.state.lock();
            for seg in group {
                state.segments.remove(&seg.base);
                state.size_bytes -= seg.size;
            }
            state.segments.insert(base, info);
            state.size_bytes += size;
            self.metrics.size_bytes.set(state.size_bytes as f64);
            Ok(())
        })();
        if let Err(e) = swapped {
            // Files and the segment list may disagree now: stop writing;
            // reopening the log finishes the committed swap.
            self.fail(format!("cleaner swap of segment {base} failed: {e}"));
            return Err(e);
        }
        for path in doomed {
            let _ = fs::remove_file(&path);
        }
        Ok(info)
    }

    fn sync_dir(&self) -> Result<(), LogError> {
        segment::sync_dir(&self.dir).map_err(LogError::io_path("fsync", &self.dir))
    }
}

/// Which records a group rewrite drops.
struct KeepRule<'a> {
    keys: &'a KeyMap,
    first_dirty: i64,
    tombstone_horizon: i64,
}

impl KeepRule<'_> {
    fn drops(&self, r: &RawRecord) -> bool {
        let Some(key) = &r.key else {
            return false;
        };
        if self.keys.superseded(key, r.offset) {
            return true;
        }
        // A tombstone that survived a pass already (it lies before the
        // dirty part) and has had `delete_retention_ms` to be seen.
        r.tombstone && r.offset < self.first_dirty && r.timestamp_ms < self.tombstone_horizon
    }
}

/// Neighbouring segments merged while their sizes fit in `limit` (and their
/// offsets in a segment's `u32` relative offsets).
fn groups(segments: &[SegmentInfo], limit: u64) -> Vec<&[SegmentInfo]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0u64;
    for (i, seg) in segments.iter().enumerate() {
        let span = seg.end - segments[start].base;
        if i > start && (size + seg.size > limit || span > i64::from(i32::MAX)) {
            out.push(&segments[start..i]);
            start = i;
            size = 0;
        }
        size += seg.size;
    }
    if start < segments.len() {
        out.push(&segments[start..]);
    }
    out
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn read_checkpoint(dir: &Path) -> i64 {
    fs::read_to_string(dir.join(CHECKPOINT))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_checkpoint(dir: &Path, offset: i64) -> Result<(), LogError> {
    let path = dir.join(CHECKPOINT);
    segment::write_file_durably(&path, format!("{offset}\n").as_bytes())
        .map_err(LogError::io_path("write", &path))
}

/// Finishes or undoes a cleaner pass a crash interrupted (see the module
/// docs); runs when a log is opened, before its segments are listed.
pub(super) fn recover(dir: &Path, config: &LogConfig) -> Result<(), LogError> {
    let mut swaps = Vec::new();
    for entry in fs::read_dir(dir).map_err(LogError::io_path("list", dir))? {
        let entry = entry.map_err(LogError::io_path("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(CLEANED_SUFFIX) {
            tracing::info!(path = %entry.path().display(), "removing an uncommitted cleaner file");
            fs::remove_file(entry.path()).map_err(LogError::io_path("delete", &entry.path()))?;
        } else if let Some(log) = name.strip_suffix(SWAP_SUFFIX)
            && let Some((base, LOG_EXT)) = segment::parse_segment_name(log)
        {
            swaps.push((base, entry.path()));
        }
    }
    for (base, swap) in swaps {
        let file = File::open(&swap).map_err(LogError::io_path("open", &swap))?;
        let scanned = segment::scan_segment(&file, base, config.index_interval_bytes)
            .map_err(LogError::io_path("scan", &swap))?;
        // Old segments the swap covers: any other starting before its end.
        for entry in fs::read_dir(dir).map_err(LogError::io_path("list", dir))? {
            let entry = entry.map_err(LogError::io_path("list", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((b, ext)) = segment::parse_segment_name(&name)
                && [LOG_EXT, segment::INDEX_EXT, segment::TIME_INDEX_EXT].contains(&ext)
                && (b == base || (b > base && b < scanned.end_offset))
            {
                fs::remove_file(entry.path())
                    .map_err(LogError::io_path("delete", &entry.path()))?;
            }
        }
        let log = segment_path(dir, base, LOG_EXT);
        fs::rename(&swap, &log).map_err(LogError::io_path("rename", &swap))?;
        if config.flush != FlushPolicy::Os {
            segment::sync_dir(dir).map_err(LogError::io_path("fsync", dir))?;
        }
        tracing::warn!(path = %log.display(), end = scanned.end_offset,
            "finished a cleaner swap a crash interrupted (its indexes are rebuilt)");
    }
    Ok(())
}

/// Test hook: the cleaner of the log in this directory "crashes" (fails)
/// at this step.
#[cfg(test)]
static CRASH_AT: parking_lot::Mutex<Option<(PathBuf, u8)>> = parking_lot::Mutex::new(None);

#[cfg(test)]
fn crash_point(dir: &Path, step: u8) -> Result<(), LogError> {
    if CRASH_AT.lock().as_ref() == Some(&(dir.to_path_buf(), step)) {
        return Err(LogError::Internal(format!(
            "simulated crash at step {step}"
        )));
    }
    Ok(())
}

#[cfg(not(test))]
fn crash_point(_dir: &Path, _step: u8) -> Result<(), LogError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::BTreeMap;

    use runnel_records::build::{Compression, PlainRecord, build_batch, decode_records};

    use super::*;

    const KEYS: usize = 50;
    const NOW: i64 = 1_800_000_000_000;

    fn compacted() -> LogConfig {
        LogConfig {
            segment_bytes: 4_000,
            index_interval_bytes: 500,
            compact: true,
            delete: false,
            min_cleanable_dirty_ratio: 0.0,
            delete_retention_ms: 60_000,
            ..LogConfig::default()
        }
    }

    /// Appends records `from..to` in batches of 10: record i sets key
    /// `k{i % KEYS}` to `v{i}` (a tombstone when `tombstone(i)`).
    async fn produce(
        log: &PartitionLog,
        from: usize,
        to: usize,
        tombstone: impl Fn(usize) -> bool,
    ) {
        for chunk in (from..to).collect::<Vec<_>>().chunks(10) {
            let records: Vec<PlainRecord> = chunk
                .iter()
                .map(|&i| PlainRecord {
                    key: Some(Bytes::from(format!("k{}", i % KEYS))),
                    value: (!tombstone(i)).then(|| Bytes::from(format!("v{i}"))),
                    headers: vec![],
                    timestamp_ms: NOW - 10_000_000 + i as i64,
                })
                .collect();
            let codec = if chunk[0] % 20 == 0 {
                Compression::Lz4
            } else {
                Compression::None
            };
            let bytes = build_batch(&records, codec).unwrap();
            let header = runnel_records::batch::validate(&bytes).unwrap();
            log.append(vec![(header, bytes)], 0).await.unwrap();
        }
    }

    /// Every record in the log: (offset, key, value).
    async fn read_all(log: &PartitionLog) -> Vec<(i64, String, Option<String>)> {
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        loop {
            let buf = log.read(offset, 64 * 1024).await.unwrap();
            if buf.is_empty() {
                return out;
            }
            let batches = runnel_records::Batches::validate_all(buf.clone()).unwrap();
            offset = batches.last().unwrap().0.next_offset();
            for r in decode_records(buf).unwrap() {
                let text = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                out.push((r.offset, text(r.key).unwrap(), text(r.value)));
            }
        }
    }

    /// Offsets only grow, and each key's last record is its latest value.
    fn check(records: &[(i64, String, Option<String>)], latest: &BTreeMap<String, Option<String>>) {
        assert!(
            records.windows(2).all(|w| w[0].0 < w[1].0),
            "offsets must grow"
        );
        let mut last = BTreeMap::new();
        for (_, k, v) in records {
            last.insert(k.clone(), v.clone());
        }
        for (k, v) in latest {
            if let Some(v) = v {
                assert_eq!(last.get(k), Some(&Some(v.clone())), "latest value of {k}");
            }
        }
    }

    fn expected(to: usize, tombstone: impl Fn(usize) -> bool) -> BTreeMap<String, Option<String>> {
        (0..to)
            .map(|i| {
                (
                    format!("k{}", i % KEYS),
                    (!tombstone(i)).then(|| format!("v{i}")),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn compaction_keeps_each_keys_latest_record_in_order_and_later_drops_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), compacted()).unwrap();
        // Keys 0..5 are deleted by their last update.
        let tomb = |i: usize| i >= 1_950 && i % KEYS < 5;
        produce(&log, 0, 2_000, tomb).await;
        let before = read_all(&log).await;
        let segments_before = log.inner.state.lock().segments.len();
        let stats = log.compact(NOW).await.unwrap().expect("a pass");
        assert!(stats.records_removed > 1_500, "{stats:?}");
        assert_eq!(stats.tombstones_removed, 0, "a first pass keeps tombstones");
        // Full segments are rewritten one by one; they merge next time.
        assert_eq!(log.inner.state.lock().segments.len(), segments_before);
        let after = read_all(&log).await;
        check(&after, &expected(2_000, tomb));
        assert_eq!(before.len(), 2_000);
        assert_eq!(log.log_start_offset(), 0, "the log start stays");
        assert_eq!(log.log_end_offset(), 2_000);
        // In the cleaned part each key is there once at most.
        let cleaned: Vec<_> = after.iter().filter(|r| r.0 < stats.end).collect();
        let mut keys: Vec<_> = cleaned.iter().map(|r| &r.1).collect();
        keys.sort();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "one record per key below {}", stats.end);
        // Survives a reopen (indexes included).
        drop(log);
        let log = PartitionLog::open(dir.path(), compacted()).unwrap();
        assert_eq!(read_all(&log).await, after);
        assert!(
            log.offset_for_timestamp(NOW - 10_000_000 + 1_990)
                .await
                .unwrap()
                .is_some()
        );
        assert!(log.compact(NOW).await.unwrap().is_none(), "nothing dirty");

        // More updates, then a pass after delete.retention.ms: the
        // tombstones, already through one pass, go.
        produce(&log, 2_000, 2_600, |_| false).await;
        let late = NOW + 61_000;
        let stats = log.compact(late).await.unwrap().expect("a second pass");
        let records = read_all(&log).await;
        check(&records, &expected(2_600, |_| false));
        let tombstones = records.iter().filter(|r| r.2.is_none()).count();
        assert_eq!(tombstones, 0, "{stats:?}");
        assert_eq!(stats.tombstones_removed, 5);
        assert!(
            stats.segments_after < stats.segments_before,
            "small neighbours merge: {stats:?}"
        );
    }

    #[tokio::test]
    async fn a_compacted_log_refuses_records_without_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), compacted()).unwrap();
        let records = [Some(&b"k"[..]), None].map(|key| PlainRecord {
            key: key.map(Bytes::from_static),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![],
            timestamp_ms: NOW,
        });
        let bytes = build_batch(&records, Compression::Gzip).unwrap();
        let header = runnel_records::batch::validate(&bytes).unwrap();
        let err = log.append(vec![(header, bytes)], 0).await.unwrap_err();
        assert!(matches!(err, LogError::InvalidRecord(_)), "{err}");
        assert!(err.to_string().contains("without a key (record 1"), "{err}");
        assert_eq!(log.log_end_offset(), 0, "nothing written");
    }

    #[tokio::test]
    async fn a_crash_at_any_step_of_a_pass_leaves_every_latest_record() {
        for step in 1..=3u8 {
            let dir = tempfile::tempdir().unwrap();
            let log = PartitionLog::open(dir.path(), compacted()).unwrap();
            produce(&log, 0, 1_500, |_| false).await;
            *CRASH_AT.lock() = Some((dir.path().to_path_buf(), step));
            let crashed = log.compact(NOW).await;
            *CRASH_AT.lock() = None;
            assert!(crashed.is_err(), "step {step}");
            drop(log);
            let log = PartitionLog::open(dir.path(), compacted()).unwrap();
            let names: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                !names
                    .iter()
                    .any(|n| n.ends_with(CLEANED_SUFFIX) || n.ends_with(SWAP_SUFFIX)),
                "step {step}: leftovers {names:?}"
            );
            check(&read_all(&log).await, &expected(1_500, |_| false));
            assert_eq!(log.log_end_offset(), 1_500);
            // Appends go on, and a pass completes.
            produce(&log, 1_500, 1_700, |_| false).await;
            log.compact(NOW).await.unwrap();
            check(&read_all(&log).await, &expected(1_700, |_| false));
        }
    }

    #[tokio::test]
    async fn a_follower_copies_a_compacted_log_with_its_gaps() {
        let leader_dir = tempfile::tempdir().unwrap();
        let leader = PartitionLog::open(leader_dir.path(), compacted()).unwrap();
        produce(&leader, 0, 1_000, |_| false).await;
        leader.compact(NOW).await.unwrap().expect("a pass");
        let follower_dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            replicated: true,
            ..compacted()
        };
        let follower = PartitionLog::open(follower_dir.path(), config.clone()).unwrap();
        let mut offset = 0;
        loop {
            let buf = leader.read(offset, 8 * 1024).await.unwrap();
            if buf.is_empty() {
                break;
            }
            let batches = runnel_records::Batches::validate_all(buf.clone()).unwrap();
            offset = batches.last().unwrap().0.next_offset();
            follower.append_replica(buf).await.unwrap();
        }
        assert_eq!(follower.log_end_offset(), 1_000);
        follower.set_high_watermark(1_000);
        let copied = read_all(&follower).await;
        assert_eq!(copied, read_all(&leader).await);
        drop(follower);
        let follower = PartitionLog::open(follower_dir.path(), config).unwrap();
        assert_eq!(follower.log_end_offset(), 1_000);
    }

    fn seg(base: i64, end: i64, size: u64) -> SegmentInfo {
        SegmentInfo {
            size,
            end,
            ..SegmentInfo::empty(base)
        }
    }

    #[test]
    fn neighbours_merge_while_they_fit() {
        let segs = [
            seg(0, 10, 40),
            seg(10, 20, 40),
            seg(20, 30, 40),
            seg(30, 40, 100),
        ];
        let sizes: Vec<usize> = groups(&segs, 100).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1]);
        // A segment larger than the limit is a group of its own.
        let sizes: Vec<usize> = groups(&segs, 10).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1, 1]);
    }

    #[test]
    fn the_rule_drops_superseded_records_and_old_cleaned_tombstones() {
        let mut keys = KeyMap {
            latest: HashMap::new(),
            bytes: 0,
        };
        keys.insert(Bytes::from_static(b"a"), 50);
        let rule = KeepRule {
            keys: &keys,
            first_dirty: 40,
            tombstone_horizon: 1_000,
        };
        let rec = |offset, key: Option<&'static [u8]>, tombstone| RawRecord {
            offset,
            // Offsets below 5 are old.
            timestamp_ms: if offset < 5 { 500 } else { 2_000 },
            key: key.map(Bytes::from_static),
            tombstone,
            bytes: Bytes::new(),
        };
        assert!(rule.drops(&rec(10, Some(b"a"), false)));
        assert!(!rule.drops(&rec(50, Some(b"a"), false)), "the latest stays");
        assert!(!rule.drops(&rec(1, None, false)), "no key: kept");
        assert!(!rule.drops(&rec(10, Some(b"b"), true)), "young tombstone");
        assert!(
            rule.drops(&rec(1, Some(b"b"), true)),
            "old, cleaned tombstone"
        );
        assert!(
            !rule.drops(&rec(45, Some(b"b"), true)),
            "not through a pass yet"
        );
    }
}
