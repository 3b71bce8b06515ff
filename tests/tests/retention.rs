//! Retention on an in-process cluster on a real etcd: a storage node with a
//! short retention check interval deletes whole old segments of a topic by
//! size (`retention.bytes`) and by time (`retention.ms`); the native
//! consumer sees the earliest offset move, gets OFFSET_OUT_OF_RANGE below
//! it (or, with `auto_offset_reset`, resumes at the new start), and reads
//! every record from there on intact and in order. DeleteRecords through
//! the native client moves the start inside a segment the same way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use runnel_client::{
    ClientError, ConsumedRecord, Consumer, ConsumerConfig, NewTopic, Producer, Record, StartOffset,
};
use runnel_e2e::{InProcessCluster, SOON, drain, eventually, scan_partition, wait_topic_ready};
use runnel_proto::common::v1::ErrorCode;

const SEGMENT_BYTES: u64 = 4096;
const DAY_MS: i64 = 24 * 3600 * 1000;

async fn cluster() -> InProcessCluster {
    InProcessCluster::start_with(1, |c| c.retention_check_interval_ms = 200).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i}"))
}

fn value(i: usize) -> Bytes {
    let mut v = format!("record {i} ").into_bytes();
    v.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 60 + i % 50));
    Bytes::from(v)
}

fn record(i: usize, timestamp_ms: Option<i64>) -> Record {
    Record {
        key: Some(key(i)),
        value: Some(value(i)),
        headers: vec![("seq".to_string(), Some(Bytes::from(i.to_string())))],
        timestamp_ms,
        partition: None,
    }
}

/// Produces records `range` in batches of at most `BATCH` records (a group
/// is flushed and acknowledged before the next is sent, so that segments,
/// which roll between batches, stay small); returns the record number at
/// each acknowledged offset.
async fn produce(
    cluster: &InProcessCluster,
    topic: &str,
    range: std::ops::Range<usize>,
    timestamp: impl Fn(usize) -> Option<i64>,
    at: &mut BTreeMap<i64, usize>,
) {
    const BATCH: usize = 16;
    let producer = Producer::new(cluster.producer_config()).unwrap();
    let numbers: Vec<usize> = range.collect();
    for group in numbers.chunks(BATCH) {
        let mut deliveries = Vec::new();
        for &i in group {
            deliveries.push((
                i,
                producer.send(topic, record(i, timestamp(i))).await.unwrap(),
            ));
        }
        producer.flush().await.unwrap();
        for (i, d) in deliveries {
            let ack = d
                .await
                .unwrap_or_else(|e| panic!("record {i} not acknowledged: {e}"));
            assert_eq!(ack.partition, 0);
            assert!(
                at.insert(ack.offset, i).is_none(),
                "offset {} twice",
                ack.offset
            );
        }
    }
}

/// `(base offset, size)` of the segments of a partition directory.
fn segments(dir: &Path) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name.strip_suffix(".log")?.parse().ok()?;
            // Gone if retention deleted it since the listing.
            Some((base, e.metadata().ok()?.len()))
        })
        .collect();
    out.sort();
    out
}

/// Waits until no `.deleted` file is left (a pass unlinks them last).
async fn no_leftovers(dir: &Path) {
    eventually("deleted files unlinked", SOON, || async {
        let left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".deleted"))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
}

fn consumer(cluster: &InProcessCluster, reset: Option<StartOffset>) -> Consumer {
    let mut config = ConsumerConfig::new(&cluster.coordinator);
    config.max_wait = Duration::from_millis(200);
    config.auto_offset_reset = reset;
    Consumer::new(config).unwrap()
}

/// What retention must leave behind, checked through the consumer: the
/// earliest offset is `start`; a read from 0 is out of range; a consumer
/// resetting to the earliest offset reads every record from `start` to the
/// end, each the one produced at its offset.
async fn check_consumers(
    cluster: &InProcessCluster,
    topic: &str,
    start: i64,
    at: &BTreeMap<i64, usize>,
) {
    let end = at.keys().next_back().unwrap() + 1;
    let mut plain = consumer(cluster, None);
    assert_eq!(plain.list_offset(topic, 0, -2).await.unwrap().0, start);
    assert_eq!(plain.list_offset(topic, 0, -1).await.unwrap().0, end);
    plain
        .assign(topic, Some(vec![0]), StartOffset::Offset(0))
        .await
        .unwrap();
    match plain.poll().await {
        Err(e @ ClientError::Partition { .. }) => {
            assert_eq!(e.code(), Some(ErrorCode::OffsetOutOfRange), "{e}");
        }
        other => panic!("reading {topic} from 0 after retention: {other:?}"),
    }

    let mut resetting = consumer(cluster, Some(StartOffset::Earliest));
    resetting
        .assign(topic, Some(vec![0]), StartOffset::Offset(0))
        .await
        .unwrap();
    let read: Vec<ConsumedRecord> = drain(&mut resetting, &cluster.coordinator, topic)
        .await
        .remove(&0)
        .unwrap_or_default();
    assert_eq!(
        read.len() as i64,
        end - start,
        "records from {start} to {end}"
    );
    for (r, offset) in read.iter().zip(start..) {
        assert_eq!(r.offset, offset, "offsets contiguous from the new start");
        let i = at[&offset];
        assert_eq!(r.key, Some(key(i)), "offset {offset}: key");
        assert_eq!(r.value, Some(value(i)), "offset {offset}: value");
        assert_eq!(
            r.headers,
            vec![("seq".to_string(), Some(Bytes::from(i.to_string())))],
            "offset {offset}: headers"
        );
    }
    // The raw batches as the storage node serves them: from the batch
    // holding the start (DeleteRecords may put it inside one), CRC-valid
    // and contiguous up to the high watermark.
    let (batches, hw) = scan_partition(&cluster.coordinator, topic, 0).await;
    let first = batches.first().unwrap();
    assert!(
        (first.base_offset..=first.last_offset).contains(&start),
        "{first:?} holds {start}"
    );
    assert_eq!(batches.last().unwrap().last_offset + 1, hw);
    assert_eq!(hw, end);
}

fn partition_dir(cluster: &InProcessCluster, topic: &str) -> PathBuf {
    cluster.storage[0].data_dir.join(format!("{topic}-0"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_retention_moves_the_start_and_keeps_the_rest_intact() {
    const RETENTION_BYTES: u64 = 16 * 1024;
    let cluster = cluster().await;
    let topic = "sized";
    cluster
        .admin()
        .create_topic(
            NewTopic::new(topic, 1)
                .config("segment.bytes", &SEGMENT_BYTES.to_string())
                .config("retention.bytes", &RETENTION_BYTES.to_string()),
        )
        .await
        .unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), topic).await;
    let mut at = BTreeMap::new();
    produce(&cluster, topic, 0..3000, |_| None, &mut at).await;
    assert_eq!(
        at.keys().copied().collect::<Vec<_>>(),
        (0..3000).collect::<Vec<i64>>()
    );

    // Kafka's rule, on disk: the log is at least retention.bytes, and would
    // not be without its oldest segment.
    let dir = partition_dir(&cluster, topic);
    let start = eventually("size retention applied", SOON, || async {
        let segs = segments(&dir);
        let total: u64 = segs.iter().map(|(_, s)| s).sum();
        let (first, first_size) = segs[0];
        if first == 0 || segs.len() < 2 || total - first_size >= RETENTION_BYTES {
            return Err(format!("{} segments, {total} bytes: {segs:?}", segs.len()));
        }
        assert!(total >= RETENTION_BYTES, "deleted too much: {segs:?}");
        Ok(first)
    })
    .await;
    no_leftovers(&dir).await;
    check_consumers(&cluster, topic, start, &at).await;

    // More data: the start moves on.
    produce(&cluster, topic, 3000..4000, |_| None, &mut at).await;
    let later = eventually("the start moves on", SOON, || async {
        let first = segments(&dir)[0].0;
        if first > start {
            Ok(first)
        } else {
            Err(format!("start still {first}"))
        }
    })
    .await;
    // A pass may still be deleting: check once it is stable.
    let later = eventually("retention settled", SOON, || async {
        let segs = segments(&dir);
        let total: u64 = segs.iter().map(|(_, s)| s).sum();
        if total - segs[0].1 >= RETENTION_BYTES {
            return Err(format!("{total} bytes: {segs:?}"));
        }
        Ok(segs[0].0)
    })
    .await
    .max(later);
    check_consumers(&cluster, topic, later, &at).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_retention_deletes_segments_with_old_timestamps() {
    let cluster = cluster().await;
    let topic = "aged";
    cluster
        .admin()
        .create_topic(
            NewTopic::new(topic, 1)
                .config("segment.bytes", &SEGMENT_BYTES.to_string())
                .config("retention.ms", "3600000"),
        )
        .await
        .unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), topic).await;
    let old = now_ms() - 2 * DAY_MS;
    let mut at = BTreeMap::new();
    produce(&cluster, topic, 0..1500, |i| Some(old + i as i64), &mut at).await;
    let boundary = at.keys().next_back().unwrap() + 1;
    // Recent records (the producer stamps the time): they roll the segment
    // that holds the last old ones, and are kept.
    produce(&cluster, topic, 1500..1600, |_| None, &mut at).await;

    // Every segment holding only old records goes; the one with the first
    // recent record stays.
    let dir = partition_dir(&cluster, topic);
    let start = eventually("time retention applied", SOON, || async {
        let segs = segments(&dir);
        let first = segs[0].0;
        let first_end = segs.get(1).map_or(i64::MAX, |(b, _)| *b);
        if first == 0 || first_end <= boundary {
            return Err(format!("boundary {boundary}, segments {segs:?}"));
        }
        Ok(first)
    })
    .await;
    assert!(start <= boundary);
    no_leftovers(&dir).await;
    check_consumers(&cluster, topic, start, &at).await;
    // The recent records are all there, found by time too.
    let mut c = consumer(&cluster, None);
    let (first_recent, _) = c.list_offset(topic, 0, now_ms() - DAY_MS).await.unwrap();
    assert_eq!(first_recent, boundary);
    let (earliest_by_time, _) = c.list_offset(topic, 0, 0).await.unwrap();
    assert_eq!(earliest_by_time, start);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_start_inside_a_segment() {
    let cluster = cluster().await;
    let topic = "trimmed";
    let admin = cluster.admin();
    admin
        .create_topic(NewTopic::new(topic, 1).config("segment.bytes", &SEGMENT_BYTES.to_string()))
        .await
        .unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), topic).await;
    let mut at = BTreeMap::new();
    produce(&cluster, topic, 0..1500, |_| None, &mut at).await;
    let end = at.keys().next_back().unwrap() + 1;
    let dir = partition_dir(&cluster, topic);
    let before = segments(&dir);
    assert!(before.len() > 5, "{before:?}");
    // Inside the fourth segment, and inside a batch (the producer sends up
    // to 16 records per batch).
    let target = before[3].0 + 5;
    assert!(target < before[4].0, "{before:?}");

    let deleted = admin
        .delete_records(topic, &BTreeMap::from([(0, target)]))
        .await
        .unwrap();
    assert_eq!(deleted[&0].as_ref().unwrap(), &target, "the low watermark");
    // The segments wholly below it went before the answer; the one holding
    // it stays.
    assert_eq!(segments(&dir)[0].0, before[3].0);
    no_leftovers(&dir).await;
    check_consumers(&cluster, topic, target, &at).await;
    // Time lookups see nothing below the start either.
    let mut c = consumer(&cluster, None);
    assert_eq!(c.list_offset(topic, 0, 0).await.unwrap().0, target);

    // Never lowered; beyond the high watermark, an unknown partition or a
    // topic that is only compacted: refused, each with its own code.
    let again = admin
        .delete_records(topic, &BTreeMap::from([(0, 3)]))
        .await
        .unwrap();
    assert_eq!(again[&0].as_ref().unwrap(), &target);
    let refused = admin
        .delete_records(topic, &BTreeMap::from([(0, end + 1), (7, 1)]))
        .await
        .unwrap();
    let code = |p: i32| refused[&p].as_ref().unwrap_err().code();
    assert_eq!(code(0), Some(ErrorCode::OffsetOutOfRange));
    assert_eq!(code(7), Some(ErrorCode::UnknownTopicOrPartition));
    assert!(matches!(
        admin
            .delete_records("no-such-topic", &BTreeMap::from([(0, 1)]))
            .await,
        Err(ClientError::UnknownTopic(_))
    ));
    admin
        .create_topic(NewTopic::new("compacted", 1).config("cleanup.policy", "compact"))
        .await
        .unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), "compacted").await;
    let policy = admin
        .delete_records("compacted", &BTreeMap::from([(0, -1)]))
        .await
        .unwrap();
    assert_eq!(
        policy[&0].as_ref().unwrap_err().code(),
        Some(ErrorCode::PolicyViolation)
    );

    // -1: everything there is; the log starts at its end and goes on.
    let all = admin
        .delete_records(topic, &BTreeMap::from([(0, -1)]))
        .await
        .unwrap();
    assert_eq!(all[&0].as_ref().unwrap(), &end);
    assert_eq!(c.list_offset(topic, 0, -2).await.unwrap().0, end);
    produce(&cluster, topic, 1500..1550, |_| None, &mut at).await;
    let mut from_earliest = consumer(&cluster, None);
    from_earliest
        .assign(topic, Some(vec![0]), StartOffset::Earliest)
        .await
        .unwrap();
    let read = drain(&mut from_earliest, &cluster.coordinator, topic)
        .await
        .remove(&0)
        .unwrap_or_default();
    let offsets: Vec<i64> = read.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (end..end + 50).collect::<Vec<_>>());
    cluster.shutdown().await;
}
