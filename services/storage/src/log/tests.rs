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
