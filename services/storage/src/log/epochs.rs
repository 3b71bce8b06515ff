//! The leader epoch cache of a partition replica: at which offset each
//! leader epoch's data starts (KIP-101). A follower that comes back after a
//! leader change asks the leader where its last epoch ends and truncates
//! anything after that point, so a replica never keeps records the new
//! leader does not have.
//!
//! Kept in memory and in `leader-epoch-checkpoint` in the partition
//! directory (one `epoch start_offset` line per epoch, Kafka's format after
//! its two header lines), written durably whenever an epoch is added or the
//! cache is truncated. On open, entries at or past the recovered log end are
//! dropped: their data did not survive the crash.

use std::fs;
use std::path::{Path, PathBuf};

use super::segment::write_file_durably;

/// The checkpoint file's name.
pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

/// `(epoch, start offset)` pairs, both strictly increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// Reads the checkpoint of a partition directory (empty when there is
    /// none) and keeps the entries that start below `log_end`. Garbage lines
    /// are an error: the caller rebuilds the cache from the log.
    pub fn load(dir: &Path, log_end: i64) -> Result<Option<Self>, String> {
        let text = match fs::read_to_string(checkpoint_path(dir)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err("unknown checkpoint version".into());
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("missing entry count")?;
        let mut cache = EpochCache::default();
        for line in lines.take(count) {
            let mut parts = line.split_whitespace();
            let epoch = parts.next().and_then(|p| p.parse().ok());
            let start = parts.next().and_then(|p| p.parse().ok());
            let (Some(epoch), Some(start)) = (epoch, start) else {
                return Err(format!("bad checkpoint line {line:?}"));
            };
            if !cache.assign(epoch, start) {
                return Err(format!("checkpoint entries out of order at {line:?}"));
            }
        }
        cache.truncate_from_end(log_end);
        Ok(Some(cache))
    }

    /// Writes the checkpoint durably (temporary file, fsync, rename).
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        write_file_durably(&checkpoint_path(dir), text.as_bytes())
    }

    /// Records that `epoch` starts at `start`. Returns false (and changes
    /// nothing) unless the epoch is newer than the latest one; an entry for
    /// the same epoch is kept as it is.
    pub fn assign(&mut self, epoch: i32, start: i64) -> bool {
        match self.entries.last() {
            Some(&(last, _)) if epoch <= last => false,
            Some(&(_, last_start)) if start < last_start => false,
            _ => {
                self.entries.push((epoch, start));
                true
            }
        }
    }

    /// The newest epoch, if any batch has one.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// Drops the epochs whose data starts at or after `offset` (the log was
    /// truncated there). Returns whether anything changed.
    pub fn truncate_from_end(&mut self, offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, start)| start < offset);
        self.entries.len() != before
    }

    /// Where `epoch` ends in a log ending at `log_end`, as Kafka's
    /// OffsetForLeaderEpoch answers it: the largest epoch `<= epoch` this
    /// log knows, and the start of the next newer epoch (or `log_end` when
    /// that epoch is the latest). `(-1, -1)` when the log knows no epoch
    /// that old.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        let Some(i) = self.entries.iter().rposition(|&(e, _)| e <= epoch) else {
            return (-1, -1);
        };
        let end = self.entries.get(i + 1).map_or(log_end, |&(_, start)| start);
        (self.entries[i].0, end)
    }
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn end_offsets_follow_kafka() {
        let mut c = EpochCache::default();
        assert_eq!(c.end_offset_for(0, 0), (-1, -1));
        assert!(c.assign(1, 0));
        assert!(c.assign(3, 10));
        assert!(!c.assign(3, 12), "same epoch again is ignored");
        assert!(!c.assign(2, 20), "older epoch refused");
        assert!(c.assign(5, 30));
        assert_eq!(c.end_offset_for(0, 40), (-1, -1));
        assert_eq!(c.end_offset_for(1, 40), (1, 10));
        assert_eq!(c.end_offset_for(2, 40), (1, 10));
        assert_eq!(c.end_offset_for(4, 40), (3, 30));
        assert_eq!(c.end_offset_for(5, 40), (5, 40));
        assert_eq!(c.end_offset_for(9, 40), (5, 40));
        assert!(c.truncate_from_end(30));
        assert_eq!(c.latest_epoch(), Some(3));
        assert!(!c.truncate_from_end(31));
    }

    #[test]
    fn checkpoint_round_trip_drops_lost_epochs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(EpochCache::load(dir.path(), 0).unwrap(), None);
        let mut c = EpochCache::default();
        c.assign(0, 0);
        c.assign(2, 100);
        c.assign(4, 200);
        c.store(dir.path()).unwrap();
        let back = EpochCache::load(dir.path(), 150).unwrap().unwrap();
        assert_eq!(back.entries, vec![(0, 0), (2, 100)]);
        fs::write(dir.path().join(CHECKPOINT_FILE), "0\n1\nnot numbers\n").unwrap();
        assert!(EpochCache::load(dir.path(), 0).is_err());
    }
}
