#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use runnel_records::batch::{self, BatchHeader};
use runnel_records::build::{Compression, PlainRecord, build_batch, decode_records};

use super::*;

/// A batch of `n` records with timestamps `ts0, ts0 + 1, …` (or the given
/// ones), as the caller of `append` has it.
fn batch_with(timestamps: &[i64], compression: Compression, tag: &str) -> (BatchHeader, Bytes) {
    let records: Vec<PlainRecord> = timestamps
        .iter()
        .enumerate()
        .map(|(i, ts)| PlainRecord {
            key: Some(Bytes::from(format!("{tag}-k{i}"))),
            value: Some(Bytes::from(format!(
                "{tag}-value-{i}-{}",
                "x".repeat(i * 7)
            ))),
            headers: vec![],
            timestamp_ms: *ts,
        })
        .collect();
    let bytes = build_batch(&records, compression).unwrap();
    (batch::validate(&bytes).unwrap(), bytes)
}

fn batch_of(n: usize, ts0: i64, tag: &str) -> (BatchHeader, Bytes) {
    let ts: Vec<i64> = (0..n as i64).map(|i| ts0 + i).collect();
    batch_with(&ts, Compression::None, tag)
}

fn os_config() -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Os,
        ..LogConfig::default()
    }
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 2_000,
        index_interval_bytes: 300,
        ..LogConfig::default()
    }
}

fn segment_files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Splits a read result into its batches, checking each one.
fn split(buf: Bytes) -> Vec<(BatchHeader, Bytes)> {
    if buf.is_empty() {
        return vec![];
    }
    runnel_records::Batches::validate_all(buf).unwrap()
}

/// The stored batch is the appended one with base offset and leader epoch
/// stamped in.
fn assert_same_batch(stored: &[u8], original: &[u8], base_offset: i64, epoch: i32) {
    assert_eq!(stored.len(), original.len());
    assert_eq!(&stored[0..8], &base_offset.to_be_bytes());
    assert_eq!(&stored[8..12], &original[8..12]);
    assert_eq!(&stored[12..16], &epoch.to_be_bytes());
    assert_eq!(&stored[16..], &original[16..]);
}

/// Appends `count` batches of 1..=5 records; returns (base offset, bytes).
async fn fill(log: &PartitionLog, count: usize, epoch: i32) -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    for i in 0..count {
        let n = 1 + i % 5;
        let (h, b) = batch_of(n, 1_000 + i as i64 * 10, &format!("b{i}"));
        let info = log.append(vec![(h, b.clone())], epoch).await.unwrap();
        assert_eq!(info.last_offset - info.base_offset + 1, n as i64);
        out.push((info.base_offset, b));
    }
    out
}

#[tokio::test]
async fn append_and_read_round_trip_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.high_watermark()
        ),
        (0, 0, 0)
    );
    let written = fill(&log, 150, 3).await;
    let mut expected_offset = 0;
    for (base, b) in &written {
        assert_eq!(*base, expected_offset);
        expected_offset += i64::from(batch::validate(b).unwrap().last_offset_delta) + 1;
    }
    assert_eq!(log.log_end_offset(), expected_offset);
    assert_eq!(log.high_watermark(), expected_offset);
    let logs = segment_files(dir.path(), "log");
    assert!(logs.len() > 10, "only {} segments", logs.len());
    // Sealed segments have index files, written at roll.
    assert_eq!(segment_files(dir.path(), "index").len(), logs.len() - 1);
    let on_disk: u64 = logs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(log.size_bytes(), on_disk);

    let check_all = |log: PartitionLog| {
        let written = written.clone();
        async move {
            let mut next = 0;
            let mut got = Vec::new();
            while next < log.high_watermark() {
                let batches = split(log.read(next, 1_000).await.unwrap());
                assert!(!batches.is_empty());
                for (h, b) in batches {
                    assert_eq!(h.base_offset, next);
                    next = h.next_offset();
                    got.push(b);
                }
            }
            assert_eq!(got.len(), written.len());
            for (stored, (base, original)) in got.iter().zip(&written) {
                assert_same_batch(stored, original, *base, 3);
            }
        }
    };
    check_all(log.clone()).await;
    // And again after a clean reopen.
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.log_end_offset(), expected_offset);
    check_all(log.clone()).await;
    let more = log.append(vec![batch_of(2, 5, "more")], 4).await.unwrap();
    assert_eq!(more.base_offset, expected_offset);
}

#[tokio::test]
async fn reads_from_inside_a_batch_start_with_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 200,
        segment_bytes: 3_000,
        ..os_config()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    let written = fill(&log, 60, 0).await;
    for (i, (base, b)) in written.iter().enumerate() {
        let h = batch::validate(b).unwrap();
        for offset in *base..=*base + i64::from(h.last_offset_delta) {
            let batches = split(log.read(offset, 1).await.unwrap());
            assert_eq!(batches.len(), 1, "offset {offset}");
            assert_eq!(
                batches[0].0.base_offset, *base,
                "offset {offset} (batch {i})"
            );
            assert_same_batch(&batches[0].1, b, *base, 0);
        }
    }
}

#[tokio::test]
async fn max_bytes_is_honoured_but_one_batch_always_comes() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), os_config()).unwrap();
    let written = fill(&log, 20, 0).await;
    let sizes: Vec<usize> = written.iter().map(|(_, b)| b.len()).collect();
    // Too small for one batch: the first batch anyway.
    let one = log.read(0, 10).await.unwrap();
    assert_eq!(one.len(), sizes[0]);
    assert_eq!(log.read(0, 0).await.unwrap().len(), sizes[0]);
    // Room for exactly three batches, and for three and a half.
    let three: usize = sizes[..3].iter().sum();
    assert_eq!(log.read(0, three).await.unwrap().len(), three);
    assert_eq!(
        log.read(0, three + sizes[3] / 2).await.unwrap().len(),
        three
    );
    // Plenty of room: everything.
    let all: usize = sizes.iter().sum();
    assert_eq!(log.read(0, 1 << 20).await.unwrap().len(), all);
}

#[tokio::test]
async fn offsets_out_of_range_are_errors_and_the_end_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), os_config()).unwrap();
    assert!(log.read(0, 100).await.unwrap().is_empty());
    fill(&log, 3, 0).await;
    let end = log.high_watermark();
    assert_eq!(end, 6);
    assert!(log.read(end, 100).await.unwrap().is_empty());
    for bad in [end + 1, -1, i64::MAX] {
        match log.read(bad, 100).await {
            Err(LogError::OffsetOutOfRange {
                requested,
                start,
                end: e,
            }) => assert_eq!((requested, start, e), (bad, 0, end)),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn message_too_large_and_bad_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            max_message_bytes: 200,
            ..os_config()
        },
    )
    .unwrap();
    let big = batch_of(20, 0, "big");
    assert!(big.1.len() > 200);
    match log.append(vec![batch_of(1, 0, "ok"), big], 0).await {
        Err(LogError::MessageTooLarge { size, max: 200 }) => assert!(size > 200),
        other => panic!("{other:?}"),
    }
    let (h, b) = batch_of(1, 0, "short");
    assert!(matches!(
        log.append(vec![(h, b.slice(..b.len() - 1))], 0).await,
        Err(LogError::InvalidBatch(_))
    ));
    assert!(matches!(
        log.append(vec![], 0).await,
        Err(LogError::InvalidBatch(_))
    ));
    // Nothing was written.
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
}

#[tokio::test]
async fn the_high_watermark_watch_wakes_a_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let mut rx = log.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    let reader = log.clone();
    let waiter = tokio::spawn(async move {
        rx.wait_for(|hw| *hw > 0).await.unwrap();
        reader.read(0, 1 << 20).await.unwrap()
    });
    tokio::task::yield_now().await;
    log.append(vec![batch_of(3, 0, "wake")], 0).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(split(got).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_contiguous_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            segment_bytes: 20_000,
            ..LogConfig::default()
        },
    )
    .unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                let n = 1 + i % 4;
                let info = log
                    .append(vec![batch_of(n, i as i64, &format!("t{i}"))], 1)
                    .await
                    .unwrap();
                // EveryAppend: the append is visible once it returns.
                assert!(log.high_watermark() > info.last_offset);
                (info.base_offset, info.last_offset, n)
            })
        })
        .collect();
    let mut ranges = Vec::new();
    for t in tasks {
        ranges.push(t.await.unwrap());
    }
    ranges.sort();
    let mut next = 0;
    for (base, last, n) in &ranges {
        assert_eq!(*base, next);
        assert_eq!(last - base + 1, *n as i64);
        next = last + 1;
    }
    assert_eq!(log.log_end_offset(), next);
    assert_eq!(log.high_watermark(), next);
    // Group commit: appends that were written while an fsync ran share the
    // next one (how many do depends on timing, so only reported).
    let fsyncs = log.fsync_count();
    eprintln!("64 concurrent appends took {fsyncs} fsyncs");
    assert!(fsyncs <= 64 + segment_files(dir.path(), "log").len() as u64);
    // All readable, in order.
    let mut offset = 0;
    while offset < next {
        for (h, _) in split(log.read(offset, 1 << 20).await.unwrap()) {
            assert_eq!(h.base_offset, offset);
            offset = h.next_offset();
        }
    }
}

#[tokio::test]
async fn recovery_cuts_a_torn_tail_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 5_000,
        index_interval_bytes: 200,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    let written = fill(&log, 40, 2).await;
    let end = log.log_end_offset();
    let size = log.size_bytes();
    drop(log);

    // A half-written batch (with the right next offset) and junk after the
    // last whole batch of the tail segment.
    let tail = segment_files(dir.path(), "log").pop().unwrap();
    let tail_len = std::fs::metadata(&tail).unwrap().len();
    let (_, half) = batch_of(4, 0, "half");
    let mut half = half.to_vec();
    batch::set_base_offset(&mut half, end);
    let mut junk = half[..half.len() / 2].to_vec();
    junk.extend_from_slice(b"garbage garbage garbage");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&tail)
            .unwrap();
        f.write_all(&junk).unwrap();
    }

    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.high_watermark(), end);
    assert_eq!(log.size_bytes(), size);
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), tail_len);
    let mut offset = 0;
    let mut i = 0;
    while offset < end {
        for (h, b) in split(log.read(offset, 1 << 20).await.unwrap()) {
            assert_same_batch(&b, &written[i].1, written[i].0, 2);
            offset = h.next_offset();
            i += 1;
        }
    }
    assert_eq!(i, written.len());
    let info = log.append(vec![batch_of(2, 0, "after")], 3).await.unwrap();
    assert_eq!(info.base_offset, end);
    let batches = split(log.read(end, 1 << 20).await.unwrap());
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].0.partition_leader_epoch, 3);

    // A crash right after a roll leaves an empty last segment: fine.
    drop(log);
    let end = end + 2;
    let empty = dir.path().join(format!("{end:020}.log"));
    std::fs::File::create(&empty).unwrap();
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(split(log.read(end - 2, 1 << 20).await.unwrap()).len(), 1);
    let info = log.append(vec![batch_of(1, 0, "next")], 3).await.unwrap();
    assert_eq!(info.base_offset, end);
    assert_eq!(
        std::fs::metadata(&empty).unwrap().len() as usize,
        log.read(end, 1 << 20).await.unwrap().len()
    );

    // A flipped bit inside the last batch: that batch goes too.
    drop(log);
    let tail = segment_files(dir.path(), "log").pop().unwrap();
    let mut bytes = std::fs::read(&tail).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x55;
    std::fs::write(&tail, &bytes).unwrap();
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(log.log_end_offset(), end);
}

#[tokio::test]
async fn recovery_rebuilds_missing_or_broken_index_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2_000,
        index_interval_bytes: 250,
        ..os_config()
    };
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    let written = fill(&log, 80, 0).await;
    let end = log.log_end_offset();
    let ts_answer = log.offset_for_timestamp(1_455).await.unwrap();
    let max_answer = log.max_timestamp().await.unwrap();
    drop(log);
    let indexes = segment_files(dir.path(), "index");
    let time_indexes = segment_files(dir.path(), "timeindex");
    assert!(indexes.len() >= 5);
    let originals: Vec<Vec<u8>> = indexes.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // Delete some, truncate one mid-entry, empty another.
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::remove_file(&time_indexes[1]).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&indexes[2])
        .unwrap();
    f.set_len(originals[2].len() as u64 - 3).unwrap();
    std::fs::write(&indexes[3], b"").unwrap();

    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(log.log_end_offset(), end);
    for (p, original) in indexes.iter().zip(&originals) {
        assert_eq!(&std::fs::read(p).unwrap(), original, "{}", p.display());
    }
    assert!(time_indexes[1].exists());
    for (base, b) in &written {
        let batches = split(log.read(*base, 1).await.unwrap());
        assert_same_batch(&batches[0].1, b, *base, 0);
    }
    assert_eq!(log.offset_for_timestamp(1_455).await.unwrap(), ts_answer);
    assert_eq!(log.max_timestamp().await.unwrap(), max_answer);
}

/// Checks `offset_for_timestamp` against a brute-force scan of every
/// record.
async fn check_timestamps(log: &PartitionLog) {
    let all = decode_records(log.read(0, usize::MAX).await.unwrap()).unwrap();
    let mut offset = 0;
    let mut records = Vec::new();
    while offset < log.high_watermark() {
        let buf = log.read(offset, 1 << 20).await.unwrap();
        for (h, b) in split(buf) {
            for r in decode_records(b).unwrap() {
                let ts = if h.is_log_append_time() {
                    h.max_timestamp
                } else {
                    r.timestamp_ms
                };
                records.push((r.offset, ts));
            }
            offset = h.next_offset();
        }
    }
    assert!(records.len() >= all.len());
    let mut probes: Vec<i64> = records.iter().map(|(_, t)| *t).collect();
    probes.extend(records.iter().map(|(_, t)| t + 1));
    probes.extend([i64::MIN, -1, 0, i64::MAX]);
    for ts in probes {
        let expected = records.iter().find(|(_, t)| *t >= ts).copied();
        assert_eq!(
            log.offset_for_timestamp(ts).await.unwrap(),
            expected,
            "{ts}"
        );
    }
    let max = records.iter().map(|(_, t)| *t).max();
    let expected = max.and_then(|m| records.iter().find(|(_, t)| *t == m).copied());
    assert_eq!(log.max_timestamp().await.unwrap(), expected);
}

#[tokio::test]
async fn timestamp_lookups_with_plain_and_gzip_batches() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 2_500,
        index_interval_bytes: 200,
        ..os_config()
    };
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.offset_for_timestamp(0).await.unwrap(), None);
    assert_eq!(log.max_timestamp().await.unwrap(), None);
    // Timestamps that go up and down, within and across batches; the
    // largest one twice (the first occurrence must win), in a gzip batch.
    let mut t = 10_000i64;
    for i in 0..60i64 {
        let n = 1 + (i % 6) as usize;
        let ts: Vec<i64> = (0..n as i64)
            .map(|j| {
                t += 7;
                if (i + j) % 5 == 0 { t - 300 } else { t }
            })
            .collect();
        let compression = if i % 3 == 0 {
            Compression::Gzip
        } else {
            Compression::None
        };
        log.append(vec![batch_with(&ts, compression, "ts")], 0)
            .await
            .unwrap();
        if i == 20 {
            let peak = vec![5, 50_000, 6, 50_000];
            log.append(vec![batch_with(&peak, Compression::Gzip, "peak")], 0)
                .await
                .unwrap();
        }
    }
    let peak = log.max_timestamp().await.unwrap().unwrap();
    assert_eq!(peak.1, 50_000);
    check_timestamps(&log).await;
    // The same answers from sealed segments' files after a reopen.
    drop(log);
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(log.max_timestamp().await.unwrap(), Some(peak));
    check_timestamps(&log).await;
}

#[tokio::test]
async fn log_append_time_stamps_keep_the_crc_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        log_append_time: true,
        ..os_config()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let info = log
        .append(
            vec![
                batch_with(&[1, 2, 3], Compression::None, "a"),
                batch_with(&[4, 5], Compression::Gzip, "b"),
            ],
            9,
        )
        .await
        .unwrap();
    let stamped = info.log_append_time_ms.unwrap();
    assert!(stamped >= before);
    let batches = split(log.read(0, 1 << 20).await.unwrap()); // validates CRCs
    assert_eq!(batches.len(), 2);
    for (h, b) in &batches {
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, stamped);
        assert_eq!(h.partition_leader_epoch, 9);
        for r in decode_records(b.clone()).unwrap() {
            assert!(r.log_append_time);
        }
    }
    assert_eq!(
        log.offset_for_timestamp(stamped).await.unwrap(),
        Some((0, stamped))
    );
    assert_eq!(log.max_timestamp().await.unwrap(), Some((0, stamped)));
    check_timestamps(&log).await;
}

#[tokio::test]
async fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            segment_ms: Some(0),
            ..os_config()
        },
    )
    .unwrap();
    fill(&log, 5, 0).await;
    // Every append after the first finds the segment old enough.
    assert_eq!(segment_files(dir.path(), "log").len(), 5);
    log.set_config(os_config());
    fill(&log, 5, 0).await;
    assert_eq!(segment_files(dir.path(), "log").len(), 5);
}

#[tokio::test]
async fn interval_and_os_policies_publish_on_write() {
    for flush in [
        FlushPolicy::Interval(Duration::from_millis(10)),
        FlushPolicy::Os,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(
            dir.path(),
            LogConfig {
                flush,
                ..LogConfig::default()
            },
        )
        .unwrap();
        let info = log.append(vec![batch_of(3, 0, "x")], 0).await.unwrap();
        assert_eq!(log.high_watermark(), info.last_offset + 1);
        log.flush().await.unwrap();
        assert_eq!(split(log.read(0, 100).await.unwrap()).len(), 1);
    }
}

#[tokio::test]
async fn remove_deletes_the_directory() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("t-0");
    let log = PartitionLog::open(&dir, os_config()).unwrap();
    fill(&log, 3, 0).await;
    let other = log.clone();
    log.remove().await.unwrap();
    assert!(!dir.exists());
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    assert!(matches!(other.read(0, 10).await, Err(LogError::Deleted(_))));
    assert!(matches!(
        other.append(vec![batch_of(1, 0, "x")], 0).await,
        Err(LogError::Deleted(_))
    ));
}

mod manager {
    use super::*;

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[tokio::test]
    async fn discovers_creates_recreates_and_removes_partitions() {
        let data = tempfile::tempdir().unwrap();
        let manager = LogManager::open(data.path()).unwrap();
        assert!(manager.list().is_empty());
        assert!(manager.get("orders", 0).is_none());
        for p in 0..3 {
            let log = manager
                .get_or_create("orders", "id-1", p, os_config())
                .await
                .unwrap();
            log.append(vec![batch_of(2, 0, "o")], 0).await.unwrap();
        }
        manager
            .get_or_create("pay.ments_x", "id-2", 0, os_config())
            .await
            .unwrap();
        assert!(matches!(
            manager.get_or_create("../etc", "x", 0, os_config()).await,
            Err(LogError::InvalidTopic(_))
        ));
        assert!(matches!(
            manager.get_or_create("t", "x", -1, os_config()).await,
            Err(LogError::InvalidPartition(-1))
        ));
        // Same topic id: the same log, with the new config.
        let again = manager
            .get_or_create("orders", "id-1", 1, LogConfig::default())
            .await
            .unwrap();
        assert_eq!(again.log_end_offset(), 2);
        assert_eq!(again.config(), LogConfig::default());
        assert!(manager.set_config("orders", 1, os_config()));
        assert!(!manager.set_config("orders", 7, os_config()));
        drop(manager);

        // Reopen: everything is found again.
        let manager = LogManager::open(data.path()).unwrap();
        assert_eq!(
            manager.list(),
            vec![
                ("orders".into(), "id-1".into(), 0),
                ("orders".into(), "id-1".into(), 1),
                ("orders".into(), "id-1".into(), 2),
                ("pay.ments_x".into(), "id-2".into(), 0),
            ]
        );
        assert_eq!(manager.get("orders", 2).unwrap().log_end_offset(), 2);

        // Recreated topic (new id): old data gone.
        let fresh = manager
            .get_or_create("orders", "id-9", 2, os_config())
            .await
            .unwrap();
        assert_eq!(fresh.log_end_offset(), 0);
        assert!(
            manager
                .list()
                .contains(&("orders".into(), "id-9".into(), 2))
        );

        assert!(manager.remove("orders", 0).await.unwrap());
        assert!(!manager.remove("orders", 0).await.unwrap());
        assert!(!data.path().join("orders-0").exists());
        // An interrupted deletion is finished on open.
        std::fs::create_dir(data.path().join("orders-1.abc-delete")).unwrap();
        drop((manager, fresh, again));
        let manager = LogManager::open(data.path()).unwrap();
        assert!(!data.path().join("orders-1.abc-delete").exists());
        assert_eq!(manager.list().len(), 3);
        assert_eq!(manager.get("orders", 2).unwrap().log_end_offset(), 0);
        assert_eq!(manager.get("orders", 1).unwrap().log_end_offset(), 2);
    }

    #[tokio::test]
    async fn many_partitions_keep_open_files_bounded() {
        const PARTITIONS: i32 = 2_000;
        let data = tempfile::tempdir().unwrap();
        let options = LogManagerOptions {
            default_config: os_config(),
            max_open_files: 64,
        };
        let manager = LogManager::open_with(data.path(), options.clone()).unwrap();
        let baseline = open_fds();
        let mut peak = 0;
        for p in 0..PARTITIONS {
            let log = manager
                .get_or_create("many", "id", p, os_config())
                .await
                .unwrap();
            log.append(vec![batch_of(1, i64::from(p), "m")], 0)
                .await
                .unwrap();
            if p % 100 == 0 {
                peak = peak.max(open_fds());
            }
        }
        for p in 0..PARTITIONS {
            let log = manager.get("many", p).unwrap();
            assert_eq!(split(log.read(0, 1 << 10).await.unwrap()).len(), 1);
        }
        peak = peak.max(open_fds());
        assert!(manager.file_cache().len() <= 64);
        eprintln!("{PARTITIONS} partitions: at most {peak} open files (baseline {baseline})");
        // Other tests run in this process too: allow them some files, but
        // far fewer than one per partition.
        assert!(
            peak < baseline + 400,
            "{peak} open files (baseline {baseline}) for {PARTITIONS} partitions"
        );
        drop(manager);

        let manager = LogManager::open_with(data.path(), options).unwrap();
        assert_eq!(manager.list().len(), PARTITIONS as usize);
        assert!(open_fds() < baseline + 400);
        let log = manager.get("many", 1_234).unwrap();
        assert_eq!(log.log_end_offset(), 1);
    }
}

mod retention {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    fn config(retention_ms: i64, retention_bytes: i64) -> LogConfig {
        LogConfig {
            segment_bytes: 2_000,
            index_interval_bytes: 300,
            retention_ms,
            retention_bytes,
            ..os_config()
        }
    }

    /// `(base offset, size)` of every segment on disk, oldest first.
    fn segments_on_disk(dir: &Path) -> Vec<(i64, u64)> {
        segment_files(dir, "log")
            .iter()
            .map(|p| {
                let name = p.file_stem().unwrap().to_str().unwrap();
                (name.parse().unwrap(), std::fs::metadata(p).unwrap().len())
            })
            .collect()
    }

    /// Names in the directory that are left over from a deletion.
    fn deleted_leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".deleted"))
            .collect()
    }

    /// Appends one batch per timestamp list; returns (base offset, bytes).
    async fn append_each(log: &PartitionLog, stamps: &[Vec<i64>], tag: &str) -> Vec<(i64, Bytes)> {
        let mut out = Vec::new();
        for (i, ts) in stamps.iter().enumerate() {
            let (h, b) = batch_with(ts, Compression::None, &format!("{tag}{i}"));
            let info = log.append(vec![(h, b.clone())], 1).await.unwrap();
            out.push((info.base_offset, b));
        }
        out
    }

    /// Reads from `from` to the high watermark and checks every batch is
    /// the appended one, in order.
    async fn check_from(log: &PartitionLog, from: i64, written: &[(i64, Bytes)]) {
        let expected: Vec<&(i64, Bytes)> = written.iter().filter(|(b, _)| *b >= from).collect();
        let mut next = from;
        let mut got = 0;
        while next < log.high_watermark() {
            for (h, b) in split(log.read(next, 1_000).await.unwrap()) {
                let (base, original) = expected[got];
                assert_eq!(h.base_offset, *base);
                assert_same_batch(&b, original, *base, 1);
                next = h.next_offset();
                got += 1;
            }
        }
        assert_eq!(got, expected.len());
    }

    fn assert_out_of_range(result: Result<Bytes, LogError>, offset: i64, start: i64) {
        match result {
            Err(LogError::OffsetOutOfRange {
                requested,
                start: s,
                ..
            }) => assert_eq!((requested, s), (offset, start)),
            other => panic!("read at {offset}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn time_retention_deletes_sealed_segments_older_than_retention_ms() {
        let dir = tempfile::tempdir().unwrap();
        let now = now();
        // Kept forever: nothing happens.
        let log = PartitionLog::open(dir.path(), config(-1, -1)).unwrap();
        let old: Vec<Vec<i64>> = (0..40)
            .map(|i| vec![now - 10 * DAY + i, now - 10 * DAY])
            .collect();
        let mut written = append_each(&log, &old, "old").await;
        let boundary = log.log_end_offset();
        let recent: Vec<Vec<i64>> = (0..40).map(|i| vec![now - 1_000 + i]).collect();
        written.extend(append_each(&log, &recent, "new").await);
        let before = segments_on_disk(dir.path());
        assert!(before.len() > 4, "{before:?}");
        assert!(log.enforce_retention(now).await.unwrap().is_empty());
        // cleanup.policy without delete: nothing either.
        log.set_config(LogConfig {
            delete: false,
            ..config(DAY, -1)
        });
        assert!(log.enforce_retention(now).await.unwrap().is_empty());
        assert_eq!(log.log_start_offset(), 0);

        log.set_config(config(DAY, -1));
        let deleted = log.enforce_retention(now).await.unwrap();
        // Every segment holding only old data goes; the one with the first
        // recent batch stays.
        let expected_start = before
            .iter()
            .map(|(b, _)| *b)
            .filter(|b| *b <= boundary)
            .max()
            .unwrap();
        assert!(expected_start > 0);
        let start = log.log_start_offset();
        assert_eq!(start, expected_start);
        assert_eq!(deleted[0].base_offset, 0);
        for pair in deleted.windows(2) {
            assert_eq!(pair[0].end_offset, pair[1].base_offset);
        }
        assert_eq!(deleted.last().unwrap().end_offset, start);
        assert!(deleted.iter().all(|d| d.reason == RetentionReason::Time));
        let deleted_bytes: u64 = deleted.iter().map(|d| d.size_bytes).sum();
        let before_bytes: u64 = before.iter().map(|(_, s)| s).sum();
        // Files, sizes and leftovers.
        let after = segments_on_disk(dir.path());
        assert_eq!(after.first().unwrap().0, start);
        assert_eq!(after.len(), before.len() - deleted.len());
        assert_eq!(log.size_bytes(), before_bytes - deleted_bytes);
        assert_eq!(log.size_bytes(), after.iter().map(|(_, s)| s).sum::<u64>());
        assert_eq!(segment_files(dir.path(), "index").len(), after.len() - 1);
        assert_eq!(
            segment_files(dir.path(), "timeindex").len(),
            after.len() - 1
        );
        assert!(deleted_leftovers(dir.path()).is_empty());

        // Reads below the start are out of range; from it on all intact.
        for offset in [0, start / 2, start - 1] {
            assert_out_of_range(log.read(offset, 1_000).await, offset, start);
        }
        check_from(&log, start, &written).await;
        // Timestamp lookups only find what is left.
        let (first, _) = log.offset_for_timestamp(0).await.unwrap().unwrap();
        assert_eq!(first, start);
        assert_eq!(
            log.offset_for_timestamp(now - 1_000).await.unwrap(),
            Some((boundary, now - 1_000))
        );
        assert_eq!(log.offset_for_timestamp(now).await.unwrap(), None);
        // Again: nothing more to delete; appends carry on.
        assert!(log.enforce_retention(now).await.unwrap().is_empty());
        let info = log
            .append(vec![batch_of(2, now, "after")], 1)
            .await
            .unwrap();
        assert_eq!(
            info.base_offset,
            written.last().map(|(b, _)| b + 1).unwrap()
        );
    }

    /// Kafka's rule: delete the oldest segments while the log without them
    /// is still at least `retention.bytes`.
    #[tokio::test]
    async fn size_retention_keeps_at_least_retention_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), config(-1, 7_000)).unwrap();
        let written = fill(&log, 150, 1).await;
        let before = segments_on_disk(dir.path());
        let mut size: u64 = before.iter().map(|(_, s)| s).sum();
        let mut expected = 0;
        while expected < before.len() - 1 && size - before[expected].1 >= 7_000 {
            size -= before[expected].1;
            expected += 1;
        }
        assert!(expected > 5, "{before:?}");
        let deleted = log.enforce_retention(now()).await.unwrap();
        assert_eq!(deleted.len(), expected);
        assert!(deleted.iter().all(|d| d.reason == RetentionReason::Size));
        let start = log.log_start_offset();
        assert_eq!(start, before[expected].0);
        assert_eq!(log.size_bytes(), size);
        assert!(log.size_bytes() >= 7_000);
        assert!(log.size_bytes() - before[expected].1 < 7_000);
        assert_out_of_range(log.read(start - 1, 10).await, start - 1, start);
        check_from(&log, start, &written).await;
        assert!(log.enforce_retention(now()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_active_segment_is_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let ancient = now() - 100 * DAY;
        // One segment only: the active one, however old and large.
        let log = PartitionLog::open(dir.path(), config(0, 0)).unwrap();
        let batches: Vec<Vec<i64>> = (0..3).map(|i| vec![ancient + i]).collect();
        let written = append_each(&log, &batches, "a").await;
        assert!(log.enforce_retention(now()).await.unwrap().is_empty());
        check_from(&log, 0, &written).await;

        // Many segments: all the sealed ones go, by time first.
        let more: Vec<Vec<i64>> = (0..60).map(|i| vec![ancient + i, ancient]).collect();
        let mut written = written;
        written.extend(append_each(&log, &more, "b").await);
        let before = segments_on_disk(dir.path());
        let active = before.last().unwrap().0;
        let deleted = log.enforce_retention(now()).await.unwrap();
        assert_eq!(deleted.len(), before.len() - 1);
        assert!(deleted.iter().all(|d| d.reason == RetentionReason::Time));
        assert_eq!(log.log_start_offset(), active);
        assert_eq!(segments_on_disk(dir.path()), vec![*before.last().unwrap()]);
        check_from(&log, active, &written).await;

        // retention.bytes 0 and recent data: size deletes the sealed ones.
        log.set_config(config(-1, 0));
        let recent: Vec<Vec<i64>> = (0..60).map(|i| vec![now() + i]).collect();
        written.extend(append_each(&log, &recent, "c").await);
        let before = segments_on_disk(dir.path());
        let deleted = log.enforce_retention(now()).await.unwrap();
        assert_eq!(deleted.len(), before.len() - 1);
        assert!(deleted.iter().all(|d| d.reason == RetentionReason::Size));
        assert_eq!(segments_on_disk(dir.path()), vec![*before.last().unwrap()]);
        check_from(&log, log.log_start_offset(), &written).await;
    }

    #[tokio::test]
    async fn the_start_offset_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), config(-1, 5_000)).unwrap();
        let written = fill(&log, 100, 1).await;
        assert!(!log.enforce_retention(now()).await.unwrap().is_empty());
        let (start, end) = (log.log_start_offset(), log.log_end_offset());
        assert!(start > 0);
        drop(log);
        let log = PartitionLog::open(dir.path(), config(-1, 5_000)).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (start, end));
        assert_out_of_range(log.read(start - 1, 10).await, start - 1, start);
        check_from(&log, start, &written).await;
        assert!(log.enforce_retention(now()).await.unwrap().is_empty());
    }

    /// With every sealed segment deleted and the active segment empty (a
    /// crash right after a roll), the log starts where it ends, before and
    /// after a restart.
    #[tokio::test]
    async fn an_emptied_log_starts_at_its_end_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), config(-1, 0)).unwrap();
        fill(&log, 60, 1).await;
        let end = log.log_end_offset();
        drop(log);
        std::fs::File::create(dir.path().join(format!("{end:020}.log"))).unwrap();
        let log = PartitionLog::open(dir.path(), config(-1, 0)).unwrap();
        assert!(!log.enforce_retention(now()).await.unwrap().is_empty());
        assert_eq!(
            (
                log.log_start_offset(),
                log.log_end_offset(),
                log.size_bytes()
            ),
            (end, end, 0)
        );
        drop(log);
        let log = PartitionLog::open(dir.path(), config(-1, 0)).unwrap();
        assert_eq!(
            (
                log.log_start_offset(),
                log.log_end_offset(),
                log.high_watermark()
            ),
            (end, end, end)
        );
        assert!(log.read(end, 100).await.unwrap().is_empty());
        assert_out_of_range(log.read(end - 1, 100).await, end - 1, end);
        assert_out_of_range(log.read(0, 100).await, 0, end);
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), None);
        assert_eq!(log.max_timestamp().await.unwrap(), None);
        let info = log.append(vec![batch_of(3, now(), "x")], 2).await.unwrap();
        assert_eq!(info.base_offset, end);
        assert_eq!(split(log.read(end, 1 << 20).await.unwrap()).len(), 1);
    }

    /// A crash in the middle of a deletion leaves `.deleted` files (and
    /// maybe index files of a segment whose log is already renamed): open
    /// removes them, and the start offset is the first remaining segment.
    #[tokio::test]
    async fn open_removes_leftovers_of_an_interrupted_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), config(-1, -1)).unwrap();
        let written = fill(&log, 60, 1).await;
        drop(log);
        let segments = segments_on_disk(dir.path());
        assert!(segments.len() > 3);
        let rename = |base: i64, ext: &str| {
            let from = dir.path().join(format!("{base:020}.{ext}"));
            let to = dir.path().join(format!("{base:020}.{ext}.deleted"));
            std::fs::rename(from, to).unwrap();
        };
        // Segment 0 wholly renamed; segment 1's log renamed, its indexes not.
        for ext in ["log", "index", "timeindex"] {
            rename(segments[0].0, ext);
        }
        rename(segments[1].0, "log");
        assert_eq!(deleted_leftovers(dir.path()).len(), 4);

        let log = PartitionLog::open(dir.path(), config(-1, -1)).unwrap();
        let start = segments[2].0;
        assert_eq!(log.log_start_offset(), start);
        assert!(deleted_leftovers(dir.path()).is_empty());
        let index_bases: Vec<String> = segment_files(dir.path(), "index")
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(!index_bases.contains(&format!("{:020}", segments[1].0)));
        assert_eq!(index_bases.len(), segments.len() - 3);
        assert_out_of_range(log.read(0, 10).await, 0, start);
        check_from(&log, start, &written).await;
    }

    /// Reads, timestamp lookups and appends running while retention deletes
    /// segments under them: every read is either out of range or whole,
    /// CRC-valid batches starting at the batch that holds the offset.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_during_deletion_never_see_corrupt_data() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 1_500,
            index_interval_bytes: 200,
            retention_bytes: 6_000,
            ..os_config()
        };
        // A small file cache, so reads keep reopening files.
        let files = FileCache::new(4);
        let log = PartitionLog::open_with(dir.path(), config, files, "race", "0").unwrap();
        fill(&log, 20, 1).await;
        let done = Arc::new(AtomicBool::new(false));
        let reads_ok = Arc::new(AtomicU64::new(0));
        let out_of_range = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for r in 0..3u64 {
            let (log, done) = (log.clone(), done.clone());
            let (reads_ok, out_of_range) = (reads_ok.clone(), out_of_range.clone());
            readers.push(tokio::spawn(async move {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(r + 1);
                while !done.load(Ordering::Acquire) {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let hw = log.high_watermark();
                    let start = log.log_start_offset();
                    // Mostly near the start, where deletions happen.
                    let span = if seed.is_multiple_of(3) {
                        hw.max(1)
                    } else {
                        (hw - start).clamp(1, 40)
                    };
                    let offset = if seed.is_multiple_of(3) {
                        (seed >> 8) as i64 % span
                    } else {
                        (start - 5).max(0) + (seed >> 8) as i64 % span
                    };
                    match log.read(offset, 2_000).await {
                        Ok(buf) => {
                            let batches = split(buf); // checks CRCs
                            if batches.is_empty() {
                                continue;
                            }
                            let first = &batches[0].0;
                            assert!(
                                first.base_offset <= offset && offset < first.next_offset(),
                                "read at {offset} began with batch {}",
                                first.base_offset
                            );
                            for pair in batches.windows(2) {
                                assert_eq!(pair[0].0.next_offset(), pair[1].0.base_offset);
                            }
                            for (h, b) in &batches {
                                let records = decode_records(b.clone()).unwrap();
                                assert_eq!(records.len() as i64, h.next_offset() - h.base_offset);
                            }
                            reads_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(LogError::OffsetOutOfRange {
                            requested, start, ..
                        }) => {
                            assert_eq!(requested, offset);
                            assert!(offset < start || offset > log.high_watermark());
                            out_of_range.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("read at {offset}: {e}"),
                    }
                    if seed.is_multiple_of(16) {
                        let found = log.offset_for_timestamp(0).await.unwrap();
                        assert!(found.is_some());
                        log.max_timestamp().await.unwrap();
                    }
                }
            }));
        }
        let retention = {
            let (log, done) = (log.clone(), done.clone());
            tokio::spawn(async move {
                let mut deleted = 0;
                while !done.load(Ordering::Acquire) {
                    deleted += log.enforce_retention(now()).await.unwrap().len();
                    tokio::task::yield_now().await;
                }
                deleted
            })
        };
        fill(&log, 400, 1).await;
        // Let the readers run against the final state too.
        tokio::time::sleep(Duration::from_millis(100)).await;
        done.store(true, Ordering::Release);
        for r in readers {
            r.await.unwrap();
        }
        let deleted = retention.await.unwrap();
        assert!(deleted > 20, "only {deleted} segments deleted");
        let ok = reads_ok.load(Ordering::Relaxed);
        let oor = out_of_range.load(Ordering::Relaxed);
        eprintln!("{ok} reads, {oor} out of range, {deleted} segments deleted");
        assert!(ok > 100 && oor > 0, "{ok} reads, {oor} out of range");
        let start = log.log_start_offset();
        assert!(start > 0);
        let mut next = start;
        while next < log.high_watermark() {
            for (h, _) in split(log.read(next, 1 << 20).await.unwrap()) {
                assert_eq!(h.base_offset, next);
                next = h.next_offset();
            }
        }
        assert!(deleted_leftovers(dir.path()).is_empty());
        assert_eq!(segments_on_disk(dir.path()).first().unwrap().0, start);
    }
}

/// A replicated log: the high watermark waits for the replication layer.
fn replicated(config: LogConfig) -> LogConfig {
    LogConfig {
        replicated: true,
        ..config
    }
}

#[tokio::test]
async fn replicated_logs_expose_only_what_the_high_watermark_allows() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), replicated(LogConfig::default())).unwrap();
    let info = log.append(vec![batch_of(3, 1_000, "a")], 1).await.unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 2));
    assert_eq!(log.local_end_offset(), 3);
    assert_eq!(log.high_watermark(), 0, "no replica has acknowledged yet");
    assert!(log.read(0, 1 << 20).await.unwrap().is_empty());
    assert_eq!(split(log.read_replica(0, 1 << 20).await.unwrap()).len(), 1);
    log.set_high_watermark(10);
    assert_eq!(log.high_watermark(), 3, "capped at the local end");
    assert_eq!(split(log.read(0, 1 << 20).await.unwrap()).len(), 1);
}

#[tokio::test]
async fn followers_copy_batches_and_epochs_and_truncate_divergent_tails() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = PartitionLog::open(leader_dir.path(), small_segments()).unwrap();
    let follower = PartitionLog::open(follower_dir.path(), replicated(small_segments())).unwrap();
    for (i, epoch) in [(0, 1), (1, 1), (2, 3), (3, 3), (4, 3)] {
        leader
            .append(vec![batch_of(4, 1_000 + i, &format!("b{i}"))], epoch)
            .await
            .unwrap();
    }
    assert_eq!(leader.end_offset_for_epoch(1), (1, 8));
    assert_eq!(leader.end_offset_for_epoch(2), (1, 8));
    assert_eq!(leader.end_offset_for_epoch(3), (3, 20));
    // Copy everything across, as a follower's fetches would.
    let mut offset = 0;
    while offset < leader.log_end_offset() {
        let chunk = leader.read_replica(offset, 500).await.unwrap();
        let info = follower.append_replica(chunk).await.unwrap();
        offset = info.last_offset + 1;
    }
    assert_eq!(follower.local_end_offset(), 20);
    assert_eq!(follower.end_offset_for_epoch(3), (3, 20));
    assert_eq!(follower.latest_epoch(), Some(3));
    // Out of place or stale data is refused.
    let again = leader.read_replica(0, 100).await.unwrap();
    assert!(matches!(
        follower.append_replica(again).await,
        Err(LogError::NotContiguous {
            expected: 20,
            got: 0
        })
    ));
    assert!(matches!(
        follower.append(vec![batch_of(1, 5, "old")], 2).await,
        Err(LogError::FencedEpoch {
            epoch: 2,
            latest: 3
        })
    ));

    // The follower diverges (epoch 4 it alone wrote), then truncates to
    // where the new leader says epoch 3 ended.
    follower.append(vec![batch_of(2, 9, "x")], 4).await.unwrap();
    follower.append(vec![batch_of(2, 9, "y")], 4).await.unwrap();
    assert_eq!(follower.local_end_offset(), 24);
    follower.set_high_watermark(22);
    assert_eq!(
        follower.truncate_to(21).await.unwrap(),
        20,
        "cut at a batch boundary"
    );
    assert_eq!(follower.log_end_offset(), 20);
    assert_eq!(follower.high_watermark(), 20);
    assert_eq!(follower.latest_epoch(), Some(3));
    // Across a segment boundary, and the result survives a reopen.
    assert_eq!(follower.truncate_to(6).await.unwrap(), 4);
    drop(follower);
    let follower = PartitionLog::open(follower_dir.path(), replicated(small_segments())).unwrap();
    assert_eq!(follower.log_end_offset(), 4);
    assert_eq!(follower.end_offset_for_epoch(3), (1, 4));
    let chunk = leader.read_replica(4, 1 << 20).await.unwrap();
    follower.append_replica(chunk).await.unwrap();
    follower.set_high_watermark(20);
    let mut got = Vec::new();
    let mut offset = 0;
    while offset < 20 {
        let read = split(follower.read(offset, 1 << 20).await.unwrap());
        let (h, b) = read.first().unwrap().clone();
        for (h, _) in &read {
            offset = h.next_offset();
        }
        got.push((h.base_offset, b.len()));
    }
    assert_eq!(got.first().map(|g| g.0), Some(0));
    assert_eq!(follower.end_offset_for_epoch(3), (3, 20));
}

#[tokio::test]
async fn a_follower_behind_its_leaders_log_start_restarts_there() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), replicated(small_segments())).unwrap();
    log.append(vec![batch_of(3, 1, "a")], 0).await.unwrap();
    log.append(vec![batch_of(3, 2, "a")], 0).await.unwrap();
    // Its leader's log starts at 100: the follower empties and starts there.
    assert_eq!(log.restart_at(100).await.unwrap(), 100);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
    assert!(log.truncate_to(-1).await.is_err());
    drop(log);
    let log = PartitionLog::open(dir.path(), replicated(small_segments())).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 100));
    assert_eq!(log.latest_epoch(), None);
}

/// A batch of `n` records from idempotent producer `pid` at `epoch`,
/// numbered from `seq`.
fn idempotent_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> (BatchHeader, Bytes) {
    let (_, bytes) = batch_of(n, 1_000, &format!("p{pid}-{seq}"));
    let mut bytes = bytes.to_vec();
    batch::set_producer(&mut bytes, pid, epoch, seq);
    (batch::validate(&bytes).unwrap(), Bytes::from(bytes))
}

#[tokio::test]
async fn idempotent_retries_are_written_once_and_survive_restart_and_failover() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let mut offsets = Vec::new();
    for i in 0..30 {
        let info = log
            .append(vec![idempotent_batch(42, 0, i * 4, 4)], 0)
            .await
            .unwrap();
        offsets.push((info.base_offset, info.last_offset));
    }
    assert_eq!(offsets[29], (116, 119));
    // A retry of the newest batch: the same offsets, nothing written.
    let retry = log
        .append(vec![idempotent_batch(42, 0, 116, 4)], 0)
        .await
        .unwrap();
    assert_eq!((retry.base_offset, retry.last_offset), (116, 119));
    assert_eq!(log.log_end_offset(), 120);
    // A gap, an old epoch, a new epoch not at 0.
    assert!(matches!(
        log.append(vec![idempotent_batch(42, 0, 200, 1)], 0).await,
        Err(LogError::Sequence(SeqError::OutOfOrder { .. }))
    ));
    assert!(matches!(
        log.append(vec![idempotent_batch(42, 1, 3, 1)], 0).await,
        Err(LogError::Sequence(SeqError::NewEpochNotAtZero { .. }))
    ));
    // Idempotent batches are appended alone.
    assert!(matches!(
        log.append(
            vec![idempotent_batch(42, 0, 120, 1), batch_of(1, 5, "x")],
            0
        )
        .await,
        Err(LogError::InvalidBatch(_))
    ));
    assert!(
        segment_files(dir.path(), "snapshot").len() <= 2,
        "old producer snapshots are removed"
    );
    assert!(!segment_files(dir.path(), "snapshot").is_empty());

    // After a restart (snapshot at the last roll + the active segment),
    // the retry is still recognised.
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let retry = log
        .append(vec![idempotent_batch(42, 0, 112, 4)], 0)
        .await
        .unwrap();
    assert_eq!((retry.base_offset, retry.last_offset), (112, 115));
    assert_eq!(log.log_end_offset(), 120);

    // A follower that copied the log recognises it too (a new leader).
    let follower_dir = tempfile::tempdir().unwrap();
    let follower = PartitionLog::open(follower_dir.path(), replicated(small_segments())).unwrap();
    let mut offset = 0;
    while offset < log.log_end_offset() {
        let chunk = log.read_replica(offset, 700).await.unwrap();
        offset = follower.append_replica(chunk).await.unwrap().last_offset + 1;
    }
    let retry = follower
        .append(vec![idempotent_batch(42, 0, 116, 4)], 1)
        .await
        .unwrap();
    assert_eq!((retry.base_offset, retry.last_offset), (116, 119));
    let next = follower
        .append(vec![idempotent_batch(42, 0, 120, 2)], 1)
        .await
        .unwrap();
    assert_eq!((next.base_offset, next.last_offset), (120, 121));
    // Truncating the last batch forgets it: sent again, it is new.
    follower.truncate_to(120).await.unwrap();
    let again = follower
        .append(vec![idempotent_batch(42, 0, 120, 2)], 1)
        .await
        .unwrap();
    assert_eq!((again.base_offset, again.last_offset), (120, 121));
}

/// DeleteRecords: the log start offset moves inside a segment, is kept
/// across restarts, and every reader respects it.
mod delete_records {
    use super::*;

    /// `(base offset, record count)` of each batch `fill` appended.
    fn batches(written: &[(i64, Bytes)]) -> Vec<(i64, i64)> {
        written
            .iter()
            .map(|(base, b)| {
                let h = batch::validate(b).unwrap();
                (*base, i64::from(h.last_offset_delta) + 1)
            })
            .collect()
    }

    fn segment_bases(dir: &Path) -> Vec<i64> {
        segment_files(dir, "log")
            .iter()
            .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
            .collect()
    }

    fn assert_out_of_range(result: Result<Bytes, LogError>, offset: i64, start: i64) {
        match result {
            Err(LogError::OffsetOutOfRange {
                requested,
                start: s,
                ..
            }) => assert_eq!((requested, s), (offset, start)),
            other => panic!("read at {offset}: {other:?}"),
        }
    }

    /// Every record offset from `from` to the high watermark, read batch
    /// by batch and decoded (a read from inside a batch returns all of it).
    async fn offsets_from(log: &PartitionLog, from: i64) -> Vec<i64> {
        let mut offsets = Vec::new();
        let mut next = from;
        while next < log.high_watermark() {
            for (h, b) in split(log.read(next, 1 << 20).await.unwrap()) {
                for r in decode_records(b).unwrap() {
                    if r.offset >= from {
                        offsets.push(r.offset);
                    }
                }
                next = h.next_offset();
            }
        }
        offsets
    }

    #[tokio::test]
    async fn the_start_moves_inside_a_segment_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        let written = fill(&log, 120, 1).await;
        let hw = log.high_watermark();
        let bases = segment_bases(dir.path());
        assert!(bases.len() > 5, "{bases:?}");
        // Inside a batch of several records, inside the fourth segment.
        let (batch_base, _) = *batches(&written)
            .iter()
            .find(|(b, n)| *b > bases[3] && *n >= 3 && b + n < bases[4])
            .unwrap();
        let target = batch_base + 1;

        assert_eq!(log.delete_records(target).await.unwrap(), target);
        assert_eq!(log.log_start_offset(), target);
        // Whole segments below it are gone; the one holding it stays.
        assert_eq!(segment_bases(dir.path())[0], bases[3]);
        assert_eq!(log.size_bytes(), {
            let on_disk: u64 = segment_files(dir.path(), "log")
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            on_disk
        });
        assert!(segment_files(dir.path(), "deleted").is_empty());
        for below in [0, bases[3], target - 1] {
            assert_out_of_range(log.read(below, 1_000).await, below, target);
        }
        // From the start: the batch holding it, whole, then the rest.
        let first = split(log.read(target, 1).await.unwrap());
        assert_eq!(first[0].0.base_offset, batch_base);
        assert_eq!(
            offsets_from(&log, target).await,
            (target..hw).collect::<Vec<_>>()
        );
        // A time lookup finds nothing below the start.
        let (found, _) = log.offset_for_timestamp(0).await.unwrap().unwrap();
        assert_eq!(found, target);

        // Never lowered; -2 or beyond the high watermark is refused.
        assert_eq!(log.delete_records(target - 1).await.unwrap(), target);
        assert_eq!(log.delete_records(0).await.unwrap(), target);
        for bad in [hw + 1, -2] {
            match log.delete_records(bad).await {
                Err(LogError::OffsetOutOfRange { requested, end, .. }) => {
                    assert_eq!((requested, end), (bad, hw))
                }
                other => panic!("delete_records({bad}): {other:?}"),
            }
        }
        assert_eq!(log.log_start_offset(), target);

        drop(log);
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.log_start_offset(), target);
        assert_out_of_range(log.read(target - 1, 1_000).await, target - 1, target);
        assert_eq!(
            offsets_from(&log, target).await,
            (target..hw).collect::<Vec<_>>()
        );

        // -1: up to the high watermark; only the active segment is left,
        // and appends go on from there.
        assert_eq!(log.delete_records(-1).await.unwrap(), hw);
        assert_eq!(segment_files(dir.path(), "log").len(), 1);
        assert!(log.read(hw, 1_000).await.unwrap().is_empty());
        assert_out_of_range(log.read(hw - 1, 1_000).await, hw - 1, hw);
        let info = log
            .append(vec![batch_of(2, 5_000, "after")], 1)
            .await
            .unwrap();
        assert_eq!(info.base_offset, hw);
        drop(log);
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.log_start_offset(), hw);
        assert_eq!(offsets_from(&log, hw).await, vec![hw, hw + 1]);
    }

    #[tokio::test]
    async fn a_start_recorded_before_a_crash_deletes_the_segments_below_it_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        fill(&log, 80, 1).await;
        let bases = segment_bases(dir.path());
        drop(log);
        // As if DeleteRecords recorded the start and the node died before
        // deleting anything.
        let start = bases[2] + 1;
        std::fs::write(dir.path().join("log-start-offset"), format!("{start}\n")).unwrap();
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(segment_bases(dir.path())[0], bases[2]);
        // A damaged record is ignored (the first segment's base stands in),
        // and one beyond the log end is capped at it.
        drop(log);
        std::fs::write(dir.path().join("log-start-offset"), "garbage").unwrap();
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.log_start_offset(), bases[2]);
        let end = log.log_end_offset();
        drop(log);
        std::fs::write(dir.path().join("log-start-offset"), format!("{}", end + 50)).unwrap();
        let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
        assert_eq!(log.log_start_offset(), end);
    }

    #[tokio::test]
    async fn timestamp_lookups_skip_records_below_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), os_config()).unwrap();
        // Offsets 0..=2, the largest timestamp at offset 1; then 3 and 4.
        log.append(
            vec![batch_with(&[100, 9_000, 200], Compression::None, "a")],
            1,
        )
        .await
        .unwrap();
        log.append(vec![batch_of(1, 300, "b")], 1).await.unwrap();
        log.append(vec![batch_of(1, 400, "c")], 1).await.unwrap();
        assert_eq!(log.max_timestamp().await.unwrap(), Some((1, 9_000)));
        assert_eq!(log.delete_records(2).await.unwrap(), 2);
        assert_eq!(log.max_timestamp().await.unwrap(), Some((4, 400)));
        assert_eq!(log.offset_for_timestamp(150).await.unwrap(), Some((2, 200)));
        assert_eq!(log.offset_for_timestamp(5_000).await.unwrap(), None);
    }

    #[tokio::test]
    async fn retention_and_truncation_keep_the_start_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: 0,
            ..small_segments()
        };
        let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
        let written = fill(&log, 60, 1).await;
        let bases = segment_bases(dir.path());
        let target = bases[1] + 1;
        log.delete_records(target).await.unwrap();
        // Retention deletes every sealed segment: the start follows.
        log.enforce_retention(i64::MAX).await.unwrap();
        let active = *segment_bases(dir.path()).last().unwrap();
        assert_eq!(log.log_start_offset(), active);
        drop(log);
        let log = PartitionLog::open(dir.path(), config).unwrap();
        assert_eq!(log.log_start_offset(), active);

        // A truncation into the batch holding the start empties the log at
        // the start instead of ending it before the start.
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), replicated(small_segments())).unwrap();
        for (_, b) in &written {
            let h = batch::validate(b).unwrap();
            log.append(vec![(h, b.clone())], 1).await.unwrap();
        }
        log.set_high_watermark(i64::MAX);
        let (batch_base, _) = *batches(&written).iter().find(|(_, n)| *n >= 3).unwrap();
        let start = batch_base + 1;
        log.delete_records(start).await.unwrap();
        assert_eq!(log.truncate_to(start).await.unwrap(), start);
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (start, start)
        );
        // Below the start: the log restarts there, start included.
        assert_eq!(log.truncate_to(start - 1).await.unwrap(), start - 1);
        assert_eq!(log.log_start_offset(), start - 1);
        drop(log);
        let log = PartitionLog::open(dir.path(), replicated(small_segments())).unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (start - 1, start - 1)
        );
    }

    /// What the replica fetcher does: a follower raises its start to its
    /// leader's (capped at its own high watermark), and an empty follower
    /// restarted at a start inside a batch takes the whole batch.
    #[tokio::test]
    async fn followers_follow_the_leaders_start() {
        let leader_dir = tempfile::tempdir().unwrap();
        let leader = PartitionLog::open(leader_dir.path(), small_segments()).unwrap();
        let written = fill(&leader, 60, 1).await;
        let hw = leader.high_watermark();
        let follower_dir = tempfile::tempdir().unwrap();
        let follower =
            PartitionLog::open(follower_dir.path(), replicated(small_segments())).unwrap();
        let mut offset = 0;
        while offset < hw {
            let chunk = leader.read_replica(offset, 700).await.unwrap();
            offset = follower.append_replica(chunk).await.unwrap().last_offset + 1;
        }
        let (batch_base, _) = *batches(&written)
            .iter()
            .rev()
            .find(|(b, n)| *n >= 3 && *b > 40)
            .unwrap();
        let start = batch_base + 1;
        assert_eq!(leader.delete_records(start).await.unwrap(), start);
        // Not past what the follower knows is committed...
        follower.set_high_watermark(20);
        assert_eq!(follower.follow_log_start(start).await.unwrap(), 20);
        // ...then all the way; never back.
        follower.set_high_watermark(hw);
        assert_eq!(follower.follow_log_start(start).await.unwrap(), start);
        assert_eq!(follower.follow_log_start(3).await.unwrap(), start);
        assert_eq!(
            segment_bases(follower_dir.path())[0],
            segment_bases(leader_dir.path())[0]
        );

        // A wiped follower restarts at the leader's start, gets the batch
        // holding it, and restarts at that batch.
        let wiped_dir = tempfile::tempdir().unwrap();
        let wiped = PartitionLog::open(wiped_dir.path(), replicated(small_segments())).unwrap();
        wiped.restart_at(start).await.unwrap();
        let chunk = leader.read_replica(start, 1 << 20).await.unwrap();
        match wiped.append_replica(chunk.clone()).await {
            Err(LogError::NotContiguous { expected, got }) => {
                assert_eq!((expected, got), (start, batch_base))
            }
            other => panic!("{other:?}"),
        }
        wiped.restart_at(batch_base).await.unwrap();
        wiped.append_replica(chunk).await.unwrap();
        wiped.set_high_watermark(hw);
        assert_eq!(wiped.follow_log_start(start).await.unwrap(), start);
        assert_eq!(wiped.log_start_offset(), start);
        assert_eq!(
            offsets_from(&wiped, start).await,
            offsets_from(&leader, start).await
        );
    }
}
