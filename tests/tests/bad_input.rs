//! Bad input gets a precise answer, and the node keeps serving: after each
//! case an ordinary produce and consume still work.
//!
//! The roles run in-process on a real etcd with two storage nodes (so one of
//! them is not the leader of a given partition).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use runnel_client::{ClientError, NewTopic, Producer, Record, StartOffset};
use runnel_e2e::{
    InProcessCluster, SOON, ingest_client, partition_leaders, storage_client, wait_topic_ready,
};
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::ingest::v1 as ingest_pb;
use runnel_proto::storage::v1 as storage_pb;
use runnel_records::{Compression, PlainRecord, build_batch};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Starts a cluster with two storage nodes and a ready topic `t` of two
/// partitions (one led by each node).
async fn cluster_with_topic(topic: NewTopic) -> InProcessCluster {
    let cluster = InProcessCluster::start(2).await;
    let name = topic.name.clone();
    cluster.admin().create_topic(topic).await.unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), &name).await;
    cluster
}

/// Produces one record with the native producer and reads it back at the
/// acknowledged offset: the cluster still works.
async fn assert_still_serves(cluster: &InProcessCluster, topic: &str) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let marker = format!("still-alive-{}", N.fetch_add(1, Ordering::Relaxed));
    let producer = cluster.producer();
    let ack = producer
        .send(topic, Record::new(Some(marker.clone()), marker.clone()))
        .await
        .unwrap()
        .await
        .unwrap_or_else(|e| panic!("an ordinary produce after bad input failed: {e}"));
    let mut consumer = cluster.consumer();
    consumer
        .assign(
            topic,
            Some(vec![ack.partition]),
            StartOffset::Offset(ack.offset),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + SOON;
    let record = loop {
        let records = consumer.poll().await.unwrap();
        if let Some(r) = records.into_iter().next() {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record produced after bad input never came back"
        );
    };
    assert_eq!(record.offset, ack.offset);
    assert_eq!(record.value.as_deref(), Some(marker.as_bytes()));
}

fn batch_of(values: &[&[u8]]) -> Bytes {
    let records: Vec<PlainRecord> = values
        .iter()
        .map(|v| PlainRecord {
            key: None,
            value: Some(Bytes::copy_from_slice(v)),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    build_batch(&records, Compression::None).unwrap()
}

fn good_batch() -> Bytes {
    batch_of(&[b"one", b"two", b"three"])
}

/// Recomputes a batch's CRC-32C after its covered bytes were edited.
fn fix_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn edited(batch: &Bytes, edit: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::from(&batch[..]);
    edit(&mut b);
    b.freeze()
}

/// Sends batches for partitions of `topic` through ingest's `Produce`;
/// returns (error code, message) per partition, in order.
async fn produce_raw(
    cluster: &InProcessCluster,
    topic: &str,
    parts: Vec<(i32, Bytes)>,
) -> Vec<(ErrorCode, String)> {
    let response = ingest_client(&cluster.ingest)
        .produce(ingest_pb::ProduceRequest {
            partitions: parts
                .into_iter()
                .map(|(partition, batches)| ingest_pb::TopicPartitionBatches {
                    topic: topic.to_string(),
                    partition,
                    batches,
                })
                .collect(),
            acks: -1,
            timeout_ms: 5000,
        })
        .await
        .unwrap_or_else(|s| {
            panic!("produce answered with a gRPC error instead of per-partition codes: {s:?}")
        })
        .into_inner();
    response
        .results
        .into_iter()
        .map(|r| {
            (
                ErrorCode::try_from(r.error).unwrap_or(ErrorCode::UnknownServerError),
                r.error_message,
            )
        })
        .collect()
}

async fn produce_one(cluster: &InProcessCluster, topic: &str, batch: Bytes) -> (ErrorCode, String) {
    produce_raw(cluster, topic, vec![(0, batch)])
        .await
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_get_precise_codes() {
    let topic = "t";
    let cluster = cluster_with_topic(NewTopic::new(topic, 2)).await;
    let good = good_batch();

    // A flipped bit in the CRC-covered records.
    let corrupt = edited(&good, |b| {
        let last = b.len() - 1;
        b[last] ^= 0x01;
    });
    let (code, message) = produce_one(&cluster, topic, corrupt.clone()).await;
    assert_eq!(code, ErrorCode::CorruptMessage, "{message}");
    assert!(message.contains("CRC"), "{message}");
    assert_still_serves(&cluster, topic).await;

    // The corrupt partition is refused, the good one in the same request is
    // appended.
    let results = produce_raw(
        &cluster,
        topic,
        vec![(0, corrupt.clone()), (1, good.clone())],
    )
    .await;
    assert_eq!(results[0].0, ErrorCode::CorruptMessage, "{results:?}");
    assert_eq!(results[1].0, ErrorCode::None, "{results:?}");

    // Storage checks too, for a client that bypasses ingest.
    let leaders = partition_leaders(&cluster.coordinator, topic)
        .await
        .unwrap();
    let append = storage_client(&leaders[&0].1)
        .append(storage_pb::AppendRequest {
            partitions: vec![storage_pb::PartitionBatches {
                topic: topic.to_string(),
                partition: 0,
                batches: corrupt,
            }],
            acks: -1,
            timeout_ms: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        append.results[0].error,
        ErrorCode::CorruptMessage as i32,
        "{:?}",
        append.results[0]
    );
    assert_still_serves(&cluster, topic).await;

    // A batch cut short (a torn upload).
    let truncated = good.slice(..good.len() - 5);
    let (code, message) = produce_one(&cluster, topic, truncated).await;
    assert_eq!(code, ErrorCode::CorruptMessage, "{message}");
    assert!(message.contains("truncated"), "{message}");
    // Only part of the fixed header.
    let (code, message) = produce_one(&cluster, topic, good.slice(..30)).await;
    assert_eq!(code, ErrorCode::CorruptMessage, "{message}");
    assert_still_serves(&cluster, topic).await;

    // A length field that lies (far more than was sent; negative).
    for length in [i32::MAX, -1] {
        let lying = edited(&good, |b| b[8..12].copy_from_slice(&length.to_be_bytes()));
        let (code, message) = produce_one(&cluster, topic, lying).await;
        assert_eq!(
            code,
            ErrorCode::CorruptMessage,
            "length {length}: {message}"
        );
    }
    assert_still_serves(&cluster, topic).await;

    // A record count that lies, with a CRC that matches the lie: the count
    // must not make anyone allocate for a billion records.
    let lying = edited(&good, |b| {
        b[57..61].copy_from_slice(&1_000_000_000i32.to_be_bytes());
        fix_crc(b);
    });
    let (code, message) = produce_one(&cluster, topic, lying).await;
    assert_eq!(code, ErrorCode::CorruptMessage, "{message}");
    assert_still_serves(&cluster, topic).await;

    // Magic 1 (an old message format): well formed but not acceptable.
    let old = edited(&good, |b| b[16] = 1);
    let (code, message) = produce_one(&cluster, topic, old).await;
    assert_eq!(code, ErrorCode::InvalidRecord, "{message}");
    assert!(message.contains("magic"), "{message}");

    // No batch at all.
    let (code, message) = produce_one(&cluster, topic, Bytes::new()).await;
    assert_eq!(code, ErrorCode::InvalidRequest, "{message}");

    // A good batch followed by garbage: the whole partition's data is
    // refused, nothing of it is appended.
    let mut with_junk = BytesMut::from(&good[..]);
    with_junk.put_slice(b"this is not a record batch at all, not even close......");
    let before = latest(&cluster, topic, 0).await;
    let (code, message) = produce_one(&cluster, topic, with_junk.freeze()).await;
    assert_eq!(code, ErrorCode::CorruptMessage, "{message}");
    assert_eq!(
        latest(&cluster, topic, 0).await,
        before,
        "nothing of a refused request is appended"
    );

    assert_still_serves(&cluster, topic).await;
    cluster.shutdown().await;
}

async fn latest(cluster: &InProcessCluster, topic: &str, partition: i32) -> i64 {
    cluster
        .consumer()
        .list_offset(topic, partition, -1)
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_batches_are_refused() {
    let topic = "small";
    let cluster =
        cluster_with_topic(NewTopic::new(topic, 2).config("max.message.bytes", "1000")).await;

    let fits = batch_of(&[&[b'x'; 500]]);
    let (code, message) = produce_one(&cluster, topic, fits).await;
    assert_eq!(code, ErrorCode::None, "{message}");

    let big = batch_of(&[&[b'x'; 2000]]);
    let (code, message) = produce_one(&cluster, topic, big.clone()).await;
    assert_eq!(code, ErrorCode::MessageTooLarge, "{message}");
    assert!(
        message.contains("1000"),
        "the answer names the limit: {message}"
    );

    // The leader enforces the topic's limit as well.
    let leaders = partition_leaders(&cluster.coordinator, topic)
        .await
        .unwrap();
    let append = storage_client(&leaders[&0].1)
        .append(storage_pb::AppendRequest {
            partitions: vec![storage_pb::PartitionBatches {
                topic: topic.to_string(),
                partition: 0,
                batches: big,
            }],
            acks: -1,
            timeout_ms: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        append.results[0].error,
        ErrorCode::MessageTooLarge as i32,
        "{:?}",
        append.results[0]
    );

    // The native producer reports it for the record.
    let e = cluster
        .producer()
        .send(topic, Record::new(None::<Bytes>, vec![b'y'; 3000]))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MessageTooLarge), "{e}");

    assert_still_serves(&cluster, topic).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_partitions() {
    let topic = "known";
    let cluster = cluster_with_topic(NewTopic::new(topic, 2)).await;

    let (code, message) = produce_one(&cluster, "no-such-topic", good_batch()).await;
    assert_eq!(code, ErrorCode::UnknownTopicOrPartition, "{message}");
    assert!(message.contains("no-such-topic"), "{message}");

    let status = ingest_client(&cluster.ingest)
        .produce_records(ingest_pb::ProduceRecordsRequest {
            topic: "no-such-topic".into(),
            records: vec![ingest_pb::PartitionRecord::default()],
            acks: -1,
            timeout_ms: 5000,
            compression: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("no-such-topic"), "{status:?}");

    for partition in [2, 99, -1] {
        let results = produce_raw(&cluster, topic, vec![(partition, good_batch())]).await;
        assert_eq!(
            results[0].0,
            ErrorCode::UnknownTopicOrPartition,
            "partition {partition}: {results:?}"
        );
    }
    let response = ingest_client(&cluster.ingest)
        .produce_records(ingest_pb::ProduceRecordsRequest {
            topic: topic.into(),
            records: vec![ingest_pb::PartitionRecord {
                record: Some(Default::default()),
                partition: Some(7),
            }],
            acks: -1,
            timeout_ms: 5000,
            compression: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results[0].error,
        ErrorCode::UnknownTopicOrPartition as i32,
        "{response:?}"
    );

    // Reads of unknown topics and partitions.
    let leaders = partition_leaders(&cluster.coordinator, topic)
        .await
        .unwrap();
    let fetch = storage_client(&leaders[&0].1)
        .fetch(storage_pb::FetchRequest {
            partitions: vec![
                storage_pb::PartitionFetch {
                    topic: "no-such-topic".into(),
                    partition: 0,
                    offset: 0,
                    max_bytes: 1024,
                },
                storage_pb::PartitionFetch {
                    topic: topic.into(),
                    partition: 5,
                    offset: 0,
                    max_bytes: 1024,
                },
            ],
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for r in &fetch.results {
        assert_eq!(r.error, ErrorCode::UnknownTopicOrPartition as i32, "{r:?}");
        assert!(r.records.is_empty());
    }

    // The native clients say so too.
    let e = Producer::new(cluster.producer_config())
        .unwrap()
        .send("no-such-topic", Record::new(None::<Bytes>, "x"))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::UnknownTopic(t) if t == "no-such-topic"),
        "{e}"
    );
    let e = cluster
        .consumer()
        .assign("no-such-topic", None, StartOffset::Earliest)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Rpc(s) if s.code() == Code::NotFound),
        "{e}"
    );

    assert_still_serves(&cluster, topic).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_creations_name_the_problem() {
    let cluster = InProcessCluster::start(2).await;
    let admin = cluster.admin();
    let long = "x".repeat(250);
    let cases: Vec<(NewTopic, &str)> = vec![
        (NewTopic::new("", 1), "empty"),
        (NewTopic::new("has space", 1), "has space"),
        (NewTopic::new("slash/name", 1), "slash/name"),
        (NewTopic::new("..", 1), "'..'"),
        (NewTopic::new(long.as_str(), 1), "249"),
        (NewTopic::new("zero", 0), "partition count 0"),
        (NewTopic::new("negative", -3), "partition count -3"),
        (NewTopic::new("huge", 1_000_000), "1000000"),
        (
            NewTopic::new("unknown-config", 1).config("no.such.config", "1"),
            "no.such.config",
        ),
        (
            NewTopic::new("bad-number", 1).config("retention.ms", "soon"),
            "retention.ms",
        ),
        (
            NewTopic::new("bad-policy", 1).config("cleanup.policy", "sometimes"),
            "cleanup.policy",
        ),
        (
            NewTopic::new("too-small", 1).config("max.message.bytes", "-5"),
            "max.message.bytes",
        ),
        (
            NewTopic::new("bad-bool", 1).config("unclean.leader.election.enable", "maybe"),
            "unclean.leader.election.enable",
        ),
        (
            NewTopic {
                name: "too-many-replicas".into(),
                partitions: 1,
                replication_factor: 3,
                configs: HashMap::new(),
            },
            "replication factor 3",
        ),
    ];
    for (topic, fragment) in cases {
        let name = topic.name.clone();
        for validate_only in [true, false] {
            let outcome = if validate_only {
                admin.validate_topic(topic.clone()).await
            } else {
                admin.create_topic(topic.clone()).await
            };
            match outcome {
                Err(ClientError::Rpc(s)) if s.code() == Code::InvalidArgument => {
                    assert!(
                        s.message().contains(fragment),
                        "creating {name:?}: the answer {:?} should mention {fragment:?}",
                        s.message()
                    );
                }
                other => panic!("creating {name:?} (validate only: {validate_only}): {other:?}"),
            }
        }
    }
    let topics = admin.list_topics(true).await.unwrap();
    assert!(topics.is_empty(), "nothing was created: {topics:?}");

    // A valid one, and then the same name again.
    admin.create_topic(NewTopic::new("fine", 1)).await.unwrap();
    match admin.create_topic(NewTopic::new("fine", 1)).await {
        Err(ClientError::Rpc(s)) if s.code() == Code::AlreadyExists => {
            assert!(s.message().contains("fine"), "{s:?}");
        }
        other => panic!("creating an existing topic: {other:?}"),
    }
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), "fine").await;
    assert_still_serves(&cluster, "fine").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_outside_the_log_are_out_of_range() {
    let topic = "t";
    let cluster = cluster_with_topic(NewTopic::new(topic, 2)).await;
    for _ in 0..3 {
        let (code, message) = produce_one(&cluster, topic, good_batch()).await;
        assert_eq!(code, ErrorCode::None, "{message}");
    }
    let end = latest(&cluster, topic, 0).await;
    assert_eq!(end, 9);
    let leaders = partition_leaders(&cluster.coordinator, topic)
        .await
        .unwrap();
    let mut storage = storage_client(&leaders[&0].1);
    let fetch = |offset: i64| storage_pb::FetchRequest {
        partitions: vec![storage_pb::PartitionFetch {
            topic: topic.into(),
            partition: 0,
            offset,
            max_bytes: 1024 * 1024,
        }],
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 0,
    };
    for offset in [-1, -100, i64::MIN, end + 1, end + 1000, i64::MAX] {
        let r = storage
            .fetch(fetch(offset))
            .await
            .unwrap()
            .into_inner()
            .results
            .remove(0);
        assert_eq!(
            r.error,
            ErrorCode::OffsetOutOfRange as i32,
            "fetch at {offset}: {r:?}"
        );
        assert!(r.records.is_empty());
        assert_eq!(r.high_watermark, end, "the answer tells where the log ends");
        assert_eq!(
            r.log_start_offset, 0,
            "the answer tells where the log starts"
        );
    }
    // At the end: nothing yet, no error. Inside: data.
    let r = storage
        .fetch(fetch(end))
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!((r.error, r.records.len()), (0, 0), "{r:?}");
    let r = storage
        .fetch(fetch(4))
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(r.error, 0, "{r:?}");
    assert!(!r.records.is_empty());

    // A timestamp query that is neither a time nor a known special value.
    let r = storage
        .list_offsets(storage_pb::ListOffsetsRequest {
            queries: vec![storage_pb::OffsetQuery {
                topic: topic.into(),
                partition: 0,
                timestamp: -7,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(r.error, ErrorCode::InvalidRequest as i32, "{r:?}");

    // The native consumer reports it (no auto reset configured).
    let mut consumer = cluster.consumer();
    consumer
        .assign(topic, Some(vec![0]), StartOffset::Offset(end + 50))
        .await
        .unwrap();
    let e = consumer.poll().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OffsetOutOfRange), "{e}");

    assert_still_serves(&cluster, topic).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_node_that_does_not_lead_are_redirected() {
    let topic = "t";
    let cluster = cluster_with_topic(NewTopic::new(topic, 2)).await;
    let leaders = partition_leaders(&cluster.coordinator, topic)
        .await
        .unwrap();
    assert_ne!(
        leaders[&0].0, leaders[&1].0,
        "the two partitions have different leaders"
    );
    // Partition 0 sent to the leader of partition 1.
    let mut other = storage_client(&leaders[&1].1);
    let append = other
        .append(storage_pb::AppendRequest {
            partitions: vec![storage_pb::PartitionBatches {
                topic: topic.into(),
                partition: 0,
                batches: good_batch(),
            }],
            acks: -1,
            timeout_ms: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    let r = &append.results[0];
    assert_eq!(r.error, ErrorCode::NotLeaderOrFollower as i32, "{r:?}");
    assert!(
        r.error_message.contains(&leaders[&0].0.to_string()),
        "names the leader: {r:?}"
    );

    let fetch = other
        .fetch(storage_pb::FetchRequest {
            partitions: vec![storage_pb::PartitionFetch {
                topic: topic.into(),
                partition: 0,
                offset: 0,
                max_bytes: 1024,
            }],
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fetch.results[0].error,
        ErrorCode::NotLeaderOrFollower as i32
    );
    let offsets = other
        .list_offsets(storage_pb::ListOffsetsRequest {
            queries: vec![storage_pb::OffsetQuery {
                topic: topic.into(),
                partition: 0,
                timestamp: -1,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        offsets.results[0].error,
        ErrorCode::NotLeaderOrFollower as i32
    );

    assert_eq!(latest(&cluster, topic, 0).await, 0, "nothing was appended");
    assert_still_serves(&cluster, topic).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_acks_are_refused() {
    let topic = "t";
    let cluster = cluster_with_topic(NewTopic::new(topic, 2)).await;
    for acks in [2, -2, 100] {
        let status = ingest_client(&cluster.ingest)
            .produce(ingest_pb::ProduceRequest {
                partitions: vec![ingest_pb::TopicPartitionBatches {
                    topic: topic.into(),
                    partition: 0,
                    batches: good_batch(),
                }],
                acks,
                timeout_ms: 5000,
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "acks {acks}: {status:?}"
        );
        assert!(status.message().contains("acks"), "{status:?}");

        let status = ingest_client(&cluster.ingest)
            .produce_records(ingest_pb::ProduceRecordsRequest {
                topic: topic.into(),
                records: vec![ingest_pb::PartitionRecord::default()],
                acks,
                timeout_ms: 5000,
                compression: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "acks {acks}: {status:?}"
        );

        let leaders = partition_leaders(&cluster.coordinator, topic)
            .await
            .unwrap();
        let status = storage_client(&leaders[&0].1)
            .append(storage_pb::AppendRequest {
                partitions: vec![storage_pb::PartitionBatches {
                    topic: topic.into(),
                    partition: 0,
                    batches: good_batch(),
                }],
                acks,
                timeout_ms: 5000,
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "acks {acks}: {status:?}"
        );

        let mut config = cluster.producer_config();
        config.acks = acks;
        let e = Producer::new(config).unwrap_err();
        assert!(matches!(e, ClientError::Invalid(_)), "{e}");
    }
    assert_eq!(latest(&cluster, topic, 0).await, 0, "nothing was appended");
    assert_still_serves(&cluster, topic).await;
    cluster.shutdown().await;
}

/// Sends bytes as they are and hands back the response body as it is.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(address: &str, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(runnel_rpc::lazy_channel(address).unwrap());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_do_not_hurt_the_servers() {
    let topic = "t";
    let cluster = cluster_with_topic(NewTopic::new(topic, 2)).await;
    let leaders = partition_leaders(&cluster.coordinator, topic)
        .await
        .unwrap();
    let garbage: [&[u8]; 4] = [
        // Wire type 7 does not exist; an unterminated varint.
        &[0xff; 16],
        // Field 1 (partitions) claims 16,383 bytes that are not there.
        &[0x0a, 0xff, 0x7f, 0x01],
        // Field 1 as a varint although it is a message.
        &[0x08, 0x01],
        // Field 1 holds bytes that are neither a message nor UTF-8.
        &[0x0a, 0x03, 0xff, 0xfe, 0x00],
    ];
    let targets: [(&str, &'static str); 4] = [
        (&cluster.ingest, "/runnel.ingest.v1.IngestService/Produce"),
        (
            &cluster.ingest,
            "/runnel.ingest.v1.IngestService/ProduceRecords",
        ),
        (&leaders[&0].1, "/runnel.storage.v1.StorageService/Append"),
        (
            &cluster.coordinator,
            "/runnel.coordinator.v1.CoordinatorService/CreateTopic",
        ),
    ];
    for (address, path) in targets {
        for body in garbage {
            let status = raw_call(address, path, Bytes::from_static(body))
                .await
                .expect_err("garbage must not decode into a request");
            assert!(
                matches!(status.code(), Code::Internal | Code::InvalidArgument),
                "{path} with {body:02x?}: {status:?}"
            );
            assert!(!status.message().is_empty());
        }
        // A method that does not exist.
        let status = raw_call(
            address,
            "/runnel.ingest.v1.IngestService/NoSuchMethod",
            Bytes::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }
    assert_still_serves(&cluster, topic).await;

    // Not even HTTP/2: bytes straight on the TCP connection. The server
    // closes it and carries on.
    for address in [&cluster.ingest, &leaders[&0].1, &cluster.coordinator] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address.as_str())
            .await
            .unwrap();
        let _ = stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x00\xff\xff\xff\x04\x00\x00\x00\x00garbage",
            )
            .await;
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "{address} kept a garbage connection open");
    }
    assert_still_serves(&cluster, topic).await;
    cluster.shutdown().await;
}

/// The gRPC status of a raw HTTP/2 request whose body is `body`: from the
/// headers of a trailers-only answer, or from the trailers.
async fn raw_h2_status(address: &str, path: &str, body: Bytes) -> Result<(i32, String), String> {
    use tonic::codegen::http;
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    send.send_data(body, true).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .map_err(|_| "no answer in 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status_of = |headers: &http::HeaderMap| {
        headers.get("grpc-status").map(|s| {
            let code = s.to_str().unwrap_or("").parse().unwrap_or(-1);
            let message = headers
                .get("grpc-message")
                .map(|m| m.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            (code, message)
        })
    };
    if let Some(status) = status_of(response.headers()) {
        return Ok(status);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.map_err(|e| e.to_string())?;
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no trailers")?;
    status_of(&trailers).ok_or_else(|| "no grpc-status".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_length_that_lies_is_refused_without_waiting_for_it() {
    let topic = "t";
    let cluster = cluster_with_topic(NewTopic::new(topic, 2)).await;
    let leaders = partition_leaders(&cluster.coordinator, topic)
        .await
        .unwrap();
    let targets = [
        (
            cluster.ingest.clone(),
            "/runnel.ingest.v1.IngestService/Produce",
        ),
        (
            leaders[&0].1.clone(),
            "/runnel.storage.v1.StorageService/Append",
        ),
    ];
    for (address, path) in &targets {
        // gRPC framing: not compressed, then the length (big endian). The
        // declared length is far beyond runnel_rpc::MAX_MESSAGE_BYTES; only
        // a few bytes follow.
        for declared in [runnel_rpc::MAX_MESSAGE_BYTES as u32 + 1, u32::MAX] {
            let mut frame = BytesMut::new();
            frame.put_u8(0);
            frame.put_u32(declared);
            frame.put_slice(b"only a few bytes");
            let (code, message) = raw_h2_status(address, path, frame.freeze())
                .await
                .unwrap_or_else(|e| {
                    panic!("{path} with a message of {declared} bytes declared: {e}")
                });
            assert!(
                code == Code::OutOfRange as i32 || code == Code::ResourceExhausted as i32,
                "{path} with {declared} bytes declared: status {code} {message:?}"
            );
        }
        // A frame cut short (declares 100 bytes, has 10): the request ends
        // before the message does.
        let mut frame = BytesMut::new();
        frame.put_u8(0);
        frame.put_u32(100);
        frame.put_slice(&[0u8; 10]);
        let (code, message) = raw_h2_status(address, path, frame.freeze()).await.unwrap();
        assert_ne!(
            code,
            Code::Ok as i32,
            "{path}: a truncated message is an error: {message:?}"
        );
    }
    assert_still_serves(&cluster, topic).await;
    cluster.shutdown().await;
}
