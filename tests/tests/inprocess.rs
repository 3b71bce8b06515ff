//! The three roles as in-process gRPC servers on a real etcd: records go in
//! through ingest with the native producer and come back, byte for byte,
//! through the native consumer; offsets can be listed and consumption can
//! start anywhere; a deleted topic is gone, data included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use runnel_client::{
    ClientError, ConsumedRecord, NewTopic, Producer, Record, RecordMetadata, StartOffset,
};
use runnel_e2e::{
    InProcessCluster, SOON, consume_all, drain, eventually, ingest_client, partition_leaders,
    scan_partition, wait_topic_ready,
};
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::ingest::v1 as ingest_pb;
use runnel_records::{Compression, PlainRecord, build_batch, murmur2, partition_for_key};

const RECORDS: usize = 100_000;
const PARTITIONS: i32 = 8;
/// Record i has timestamp T0 + 10 i: increasing, with gaps to query between.
const T0: i64 = 1_700_000_000_000;

fn key(i: usize) -> Bytes {
    // 5,003 distinct keys, each used ~20 times.
    Bytes::from(format!("customer-{}", i % 5003))
}

fn value(i: usize) -> Bytes {
    let mut v = format!("order {i} ").into_bytes();
    v.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, i % 97));
    Bytes::from(v)
}

fn headers(i: usize) -> Vec<(String, Option<Bytes>)> {
    vec![
        ("seq".to_string(), Some(Bytes::from(i.to_string()))),
        (
            "trace".to_string(),
            Some(Bytes::from_static(b"\x00\x01binary\xff")),
        ),
        ("null-header".to_string(), None),
    ]
}

fn record(i: usize) -> Record {
    Record {
        key: Some(key(i)),
        value: Some(value(i)),
        headers: headers(i),
        timestamp_ms: Some(T0 + 10 * i as i64),
        partition: None,
    }
}

/// The produce-order number a consumed record carries in its `seq` header.
fn seq(r: &ConsumedRecord) -> usize {
    let (_, v) = r
        .headers
        .iter()
        .find(|(k, _)| k == "seq")
        .unwrap_or_else(|| panic!("record at {}-{} has no seq header", r.partition, r.offset));
    std::str::from_utf8(v.as_ref().unwrap())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_keyed_records_round_trip() {
    let cluster = InProcessCluster::start(2).await;
    let topic = "orders";
    let admin = cluster.admin();
    // Small segments, so reads, offset and time lookups cross segments.
    let info = admin
        .create_topic(NewTopic::new(topic, PARTITIONS).config("segment.bytes", "262144"))
        .await
        .unwrap();
    assert_eq!(info.partition_count, PARTITIONS);
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), topic).await;
    let leaders = partition_leaders(&cluster.coordinator, topic)
        .await
        .unwrap();
    let nodes: BTreeSet<i32> = leaders.values().map(|(n, _)| *n).collect();
    assert_eq!(
        nodes.len(),
        2,
        "partitions spread over both storage nodes: {leaders:?}"
    );

    // Produce everything, then collect the acks in produce order.
    let producer = cluster.producer();
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        deliveries.push(producer.send(topic, record(i)).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut acks: Vec<RecordMetadata> = Vec::with_capacity(RECORDS);
    for (i, d) in deliveries.into_iter().enumerate() {
        acks.push(
            d.await
                .unwrap_or_else(|e| panic!("record {i} not acknowledged: {e}")),
        );
    }

    // Kafka's partitioner decides; offsets per partition are handed out in
    // produce order, without gaps.
    let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.topic, topic);
        assert_eq!(
            ack.partition,
            partition_for_key(&key(i), PARTITIONS),
            "record {i} (key {:?}) acked on the wrong partition",
            key(i)
        );
        let next = next_offset.entry(ack.partition).or_insert(0);
        assert_eq!(ack.offset, *next, "record {i}: acked offset out of order");
        *next += 1;
    }
    assert_eq!(
        next_offset.len() as i32,
        PARTITIONS,
        "every partition gets keys"
    );

    // Read everything back.
    let consumed = consume_all(&cluster.coordinator, topic).await;
    let mut seen = vec![false; RECORDS];
    for (&partition, records) in &consumed {
        assert_eq!(
            records.len() as i64,
            next_offset[&partition],
            "partition {partition}: record count"
        );
        let mut last_seq = None;
        for (expected_offset, r) in records.iter().enumerate() {
            assert_eq!(
                r.offset, expected_offset as i64,
                "partition {partition}: offsets contiguous"
            );
            let i = seq(r);
            assert!(i < RECORDS, "unknown record {i}");
            assert!(!seen[i], "record {i} consumed twice");
            seen[i] = true;
            assert!(
                last_seq < Some(i),
                "partition {partition}: record {i} after {last_seq:?} (not produce order)"
            );
            last_seq = Some(i);
            assert_eq!(
                (r.topic.as_str(), r.partition, r.offset),
                (topic, acks[i].partition, acks[i].offset),
                "record {i} is not where its ack said"
            );
            assert_eq!(
                r.partition,
                partition_for_key(r.key.as_ref().unwrap(), PARTITIONS)
            );
            assert_eq!(r.key, Some(key(i)), "record {i}: key");
            assert_eq!(r.value, Some(value(i)), "record {i}: value");
            assert_eq!(r.headers, headers(i), "record {i}: headers");
            assert_eq!(r.timestamp_ms, T0 + 10 * i as i64, "record {i}: timestamp");
        }
    }
    let missing: Vec<usize> = (0..RECORDS).filter(|&i| !seen[i]).take(10).collect();
    assert!(
        missing.is_empty(),
        "records never consumed (first 10): {missing:?}"
    );

    // ListOffsets: earliest, latest, max timestamp, by timestamp.
    let mut consumer = cluster.consumer();
    for (&partition, records) in &consumed {
        let n = records.len() as i64;
        assert_eq!(
            consumer.list_offset(topic, partition, -2).await.unwrap().0,
            0
        );
        assert_eq!(
            consumer.list_offset(topic, partition, -1).await.unwrap().0,
            n
        );
        let last = records.last().unwrap();
        assert_eq!(
            consumer.list_offset(topic, partition, -3).await.unwrap(),
            (last.offset, last.timestamp_ms),
            "partition {partition}: max timestamp"
        );
        let mid = &records[records.len() / 2];
        assert_eq!(
            consumer
                .list_offset(topic, partition, mid.timestamp_ms)
                .await
                .unwrap(),
            (mid.offset, mid.timestamp_ms),
            "partition {partition}: exact timestamp"
        );
        // Between the previous record's timestamp and this one's.
        assert_eq!(
            consumer
                .list_offset(topic, partition, mid.timestamp_ms - 1)
                .await
                .unwrap(),
            (mid.offset, mid.timestamp_ms),
            "partition {partition}: timestamp between records"
        );
        assert_eq!(
            consumer.list_offset(topic, partition, 0).await.unwrap(),
            (0, records[0].timestamp_ms),
            "partition {partition}: a timestamp before everything"
        );
        assert_eq!(
            consumer
                .list_offset(topic, partition, last.timestamp_ms + 1)
                .await
                .unwrap()
                .0,
            -1,
            "partition {partition}: a timestamp after everything"
        );
    }

    // Consuming from an offset in the middle of a partition.
    for partition in [0, PARTITIONS - 1] {
        let records = &consumed[&partition];
        let mid = records.len() / 3;
        let mut consumer = cluster.consumer();
        consumer
            .assign(
                topic,
                Some(vec![partition]),
                StartOffset::Offset(mid as i64),
            )
            .await
            .unwrap();
        let got = drain(&mut consumer, &cluster.coordinator, topic).await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[&partition],
            records[mid..],
            "partition {partition}: reading from offset {mid}"
        );
    }

    // Consuming every partition from a point in time (between two records).
    let from = T0 + 10 * (RECORDS as i64 * 3 / 4) + 5;
    let mut consumer = cluster.consumer();
    consumer
        .assign(topic, None, StartOffset::Timestamp(from))
        .await
        .unwrap();
    let got = drain(&mut consumer, &cluster.coordinator, topic).await;
    let mut total = 0;
    for (&partition, records) in &consumed {
        let expected: Vec<&ConsumedRecord> =
            records.iter().filter(|r| r.timestamp_ms >= from).collect();
        let got: Vec<&ConsumedRecord> = got[&partition].iter().collect();
        assert_eq!(
            got, expected,
            "partition {partition}: reading from time {from}"
        );
        total += got.len();
    }
    assert_eq!(
        total,
        RECORDS - RECORDS * 3 / 4 - 1,
        "records after the time"
    );

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_round_trips_and_stays_compressed() {
    let cluster = InProcessCluster::start(1).await;
    let codecs = [
        (Compression::None, 0),
        (Compression::Gzip, 1),
        (Compression::Snappy, 2),
        (Compression::Lz4, 3),
        (Compression::Zstd, 4),
    ];
    for (codec, bits) in codecs {
        let topic = format!("codec-{bits}");
        cluster
            .admin()
            .create_topic(NewTopic::new(topic.as_str(), 2))
            .await
            .unwrap();
        wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), &topic).await;
        let mut config = cluster.producer_config();
        config.compression = codec;
        let producer = Producer::new(config).unwrap();
        let mut deliveries = Vec::new();
        for i in 0..3000 {
            deliveries.push(producer.send(&topic, record(i)).await.unwrap());
        }
        let mut acks = Vec::new();
        for d in deliveries {
            acks.push(d.await.unwrap());
        }
        let consumed = consume_all(&cluster.coordinator, &topic).await;
        let mut count = 0;
        for records in consumed.values() {
            for r in records {
                let i = seq(r);
                assert_eq!((r.partition, r.offset), (acks[i].partition, acks[i].offset));
                assert_eq!(
                    (&r.key, &r.value, &r.headers),
                    (&Some(key(i)), &Some(value(i)), &headers(i)),
                    "{codec:?}: record {i}"
                );
                count += 1;
            }
        }
        assert_eq!(count, 3000, "{codec:?}");
        // The stored batches are the producer's, still compressed.
        for p in 0..2 {
            let (batches, _) = scan_partition(&cluster.coordinator, &topic, p).await;
            assert!(!batches.is_empty());
            for b in batches {
                assert_eq!(b.compression, bits, "{codec:?}: batch at {}", b.base_offset);
            }
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_producer_stamps_batches_with_its_id_and_sequences() {
    let cluster = InProcessCluster::start(1).await;
    let topic = "idempotent-native";
    cluster
        .admin()
        .create_topic(NewTopic::new(topic, 1))
        .await
        .unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), topic).await;
    let produce = |config: runnel_client::ProducerConfig, from: usize| async move {
        let producer = Producer::new(config).unwrap();
        // Several flushes: several batches, each continuing the sequence.
        for round in 0..4 {
            for i in 0..250 {
                let r = Record {
                    partition: Some(0),
                    ..record(from + round * 250 + i)
                };
                drop(producer.send(topic, r).await.unwrap());
            }
            producer.flush().await.unwrap();
        }
    };
    // The default: acks=all and idempotent.
    produce(cluster.producer_config(), 0).await;
    let (batches, _) = scan_partition(&cluster.coordinator, topic, 0).await;
    assert!(batches.len() >= 4, "{} batches", batches.len());
    let producer_id = batches[0].producer_id;
    assert!(producer_id >= 0, "no producer id on {:?}", batches[0]);
    let mut next_sequence = 0;
    for b in &batches {
        assert_eq!((b.producer_id, b.producer_epoch), (producer_id, 0));
        assert_eq!(b.base_sequence, next_sequence, "batch at {}", b.base_offset);
        next_sequence += b.records;
    }
    assert_eq!(next_sequence, 1000);

    // A second producer gets another id; acks=1 is not idempotent.
    let seen = batches.len();
    produce(cluster.producer_config(), 1000).await;
    let mut acks_one = cluster.producer_config();
    acks_one.acks = 1;
    produce(acks_one, 2000).await;
    let (batches, _) = scan_partition(&cluster.coordinator, topic, 0).await;
    let second: Vec<_> = batches[seen..]
        .iter()
        .filter(|b| b.producer_id >= 0)
        .collect();
    assert!(second.iter().all(|b| b.producer_id != producer_id));
    assert_eq!(second.iter().map(|b| b.records).sum::<i32>(), 1000);
    let plain: i32 = batches
        .iter()
        .filter(|b| b.producer_id == -1 && b.base_sequence == -1)
        .map(|b| b.records)
        .sum();
    assert_eq!(plain, 1000, "the acks=1 producer's batches carry no stamp");
    cluster.shutdown().await;
}

/// Partition directories of `topic` under a storage data directory.
fn partition_dirs(data_dir: &std::path::Path, topic: &str) -> Vec<String> {
    std::fs::read_dir(data_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| {
                    name.starts_with(&format!("{topic}-")) || name.starts_with(&format!("{topic}."))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_topic_is_gone_with_its_data() {
    let cluster = InProcessCluster::start(1).await;
    let topic = "doomed";
    let admin = cluster.admin();
    let before = admin.create_topic(NewTopic::new(topic, 3)).await.unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), topic).await;
    let producer = cluster.producer();
    let mut deliveries = Vec::new();
    for i in 0..300 {
        deliveries.push(producer.send(topic, record(i)).await.unwrap());
    }
    for d in deliveries {
        d.await.unwrap();
    }
    let data_dir = cluster.storage[0].data_dir.clone();
    let mut dirs = partition_dirs(&data_dir, topic);
    dirs.sort();
    assert_eq!(dirs, ["doomed-0", "doomed-1", "doomed-2"]);

    admin.delete_topic(topic).await.unwrap();
    match admin.describe_topic(topic).await {
        Err(ClientError::Rpc(s)) if s.code() == tonic::Code::NotFound => {}
        other => panic!("describing a deleted topic: {other:?}"),
    }
    match admin.delete_topic(topic).await {
        Err(ClientError::Rpc(s)) if s.code() == tonic::Code::NotFound => {}
        other => panic!("deleting a deleted topic again: {other:?}"),
    }

    // Ingest refuses it, per partition for batches and as NOT_FOUND for
    // plain records.
    let batch = build_batch(
        &[PlainRecord {
            key: None,
            value: Some(Bytes::from_static(b"late")),
            headers: Vec::new(),
            timestamp_ms: T0,
        }],
        Compression::None,
    )
    .unwrap();
    eventually("ingest refuses the deleted topic", SOON, || {
        let batch = batch.clone();
        let ingest = cluster.ingest.clone();
        async move {
            let response = ingest_client(&ingest)
                .produce(ingest_pb::ProduceRequest {
                    partitions: vec![ingest_pb::TopicPartitionBatches {
                        topic: topic.to_string(),
                        partition: 0,
                        batches: batch,
                    }],
                    acks: -1,
                    timeout_ms: 2000,
                })
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            let r = &response.results[0];
            if r.error == ErrorCode::UnknownTopicOrPartition as i32 {
                Ok(())
            } else {
                Err(format!("answer {r:?}"))
            }
        }
    })
    .await;
    let status = ingest_client(&cluster.ingest)
        .produce_records(ingest_pb::ProduceRecordsRequest {
            topic: topic.to_string(),
            records: vec![ingest_pb::PartitionRecord::default()],
            acks: -1,
            timeout_ms: 2000,
            compression: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(status.message().contains(topic), "{status:?}");

    // The producer that knew the topic gets UNKNOWN_TOPIC_OR_PARTITION; a
    // new one is told the topic does not exist.
    let e = producer
        .send(topic, record(1))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopicOrPartition), "{e}");
    let fresh = Producer::new(cluster.producer_config()).unwrap();
    let e = fresh
        .send(topic, record(1))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::UnknownTopic(t) if t == topic),
        "{e}"
    );

    // The storage node removes the partitions' data.
    eventually("partition directories removed", SOON, || {
        let dirs = partition_dirs(&data_dir, topic);
        async move {
            if dirs.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {dirs:?}"))
            }
        }
    })
    .await;

    // The name can be used again: a new topic, and none of the old records.
    let after = admin.create_topic(NewTopic::new(topic, 2)).await.unwrap();
    assert_ne!(after.topic_id, before.topic_id);
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), topic).await;
    let ack = fresh.send(topic, record(7)).await.unwrap().await.unwrap();
    assert_eq!(ack.offset, 0, "the recreated topic starts empty");
    let consumed = consume_all(&cluster.coordinator, topic).await;
    let all: Vec<usize> = consumed.values().flatten().map(seq).collect();
    assert_eq!(all, [7]);

    cluster.shutdown().await;
}

/// Kafka-python's murmur2 (a port of the Java client's) as an independent
/// oracle for runnel's partitioner.
#[test]
fn partitioner_matches_kafka_python() {
    // Keys of every tail length, binary bytes, unicode and Kafka's vectors.
    let mut keys: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"21".to_vec(),
        b"foobar".to_vec(),
        b"a-little-bit-long-string".to_vec(),
        "ключ-ünïcode-🔑".as_bytes().to_vec(),
        vec![0xff; 13],
        vec![0x00; 7],
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    while keys.len() < 200 {
        let len = (next() % 41) as usize;
        keys.push((0..len).map(|_| next() as u8).collect());
        keys.push(format!("customer-{}", next() % 100_000).into_bytes());
    }
    let script = r#"
import sys
try:
    from kafka.partitioner.default import murmur2
except ImportError as e:
    print("IMPORT-ERROR", e)
    sys.exit(3)
for line in sys.stdin:
    key = bytes.fromhex(line.strip())
    h = murmur2(key) & 0xffffffff
    print(h, *[(murmur2(key) & 0x7fffffff) % n for n in (1, 3, 8, 100)])
"#;
    // The virtualenv tests/setup.sh makes, else python3 on PATH.
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/.venv/bin/python");
    let python = if venv.is_file() {
        venv
    } else {
        "python3".into()
    };
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} is needed for this test ({e}); run tests/setup.sh to install it and kafka-python",
                python.display()
            )
        });
    let input: String = keys
        .iter()
        .map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.code() == Some(3) {
        panic!(
            "kafka-python is not importable by {} ({}); run tests/setup.sh (or `pip install kafka-python`)",
            python.display(),
            stdout.trim()
        );
    }
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), keys.len());
    for (key, line) in keys.iter().zip(lines) {
        let oracle: Vec<i64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
        let ours: Vec<i64> = std::iter::once(murmur2(key) as u32 as i64)
            .chain([1, 3, 8, 100].map(|n| partition_for_key(key, n) as i64))
            .collect();
        assert_eq!(
            ours, oracle,
            "key {key:02x?}: (murmur2, partitions of 1, 3, 8, 100)"
        );
    }
}
