//! The edge on the wire, through raw Kafka requests: what real clients rely
//! on but rarely show (empty bytes rather than null, the long poll waking on
//! append, topic ids, acks=0 sending nothing, several edges as brokers).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, KafkaConn, Options};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use runnel_records::{Compression, PlainRecord, build_batch, decode_records};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

async fn create_topic(c: &mut KafkaConn, topic: &str, partitions: i32) {
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(-1),
        ]);
    let resp = c.call(&req, 7).await.unwrap();
    assert_eq!(
        resp.topics[0].error_code, 0,
        "{:?}",
        resp.topics[0].error_message
    );
}

fn batch(values: &[&str], timestamp_ms: i64) -> Bytes {
    let records: Vec<PlainRecord> = values
        .iter()
        .map(|v| PlainRecord {
            key: Some(Bytes::from(format!("key-{v}"))),
            value: Some(Bytes::from(v.to_string())),
            headers: vec![("h".into(), Some(Bytes::from_static(b"1")))],
            timestamp_ms,
        })
        .collect();
    build_batch(&records, Compression::None).unwrap()
}

fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

fn fetch_request(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fetch_and_offsets() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    create_topic(&mut c, "orders", 2).await;

    // Metadata: this edge is the only broker, the controller and every leader.
    let md = c
        .call(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name("orders"))),
            ])),
            12,
        )
        .await
        .unwrap();
    assert_eq!(md.controller_id, BrokerId(1));
    assert!(md.cluster_id.as_ref().is_some_and(|c| !c.is_empty()));
    let t = &md.topics[0];
    assert_eq!(t.error_code, 0);
    assert!(!t.topic_id.is_nil());
    assert_eq!(t.partitions.len(), 2);
    assert!(t.partitions.iter().all(|p| p.leader_id == BrokerId(1)));

    // An empty partition answers empty bytes, not null.
    let f = c.call(&fetch_request("orders", 0, 0, 0), 12).await.unwrap();
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 0);
    assert_eq!(p.records.as_ref().map(Bytes::len), Some(0));

    // Produce (acks=-1), then read it back byte for byte.
    let sent = batch(&["a", "b", "c"], 1_000);
    let r = c
        .call(&produce_request("orders", 0, -1, sent.clone()), 9)
        .await
        .unwrap();
    let pr = &r.responses[0].partition_responses[0];
    assert_eq!(pr.error_code, 0);
    assert_eq!(pr.base_offset, 0);
    let r = c
        .call(&produce_request("orders", 0, 1, batch(&["d"], 5_000)), 3)
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 3);

    let f = c.call(&fetch_request("orders", 0, 0, 0), 4).await.unwrap();
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.high_watermark, 4);
    assert_eq!(p.log_start_offset, -1, "v4 has no log start offset");
    let records = decode_records(p.records.clone().unwrap()).unwrap();
    let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, ["a", "b", "c", "d"]);
    assert_eq!(records[0].headers[0].0, "h");
    let f = c.call(&fetch_request("orders", 0, 0, 0), 12).await.unwrap();
    assert_eq!(f.responses[0].partitions[0].log_start_offset, 0);

    // Out of range, so that auto.offset.reset can act.
    let f = c
        .call(&fetch_request("orders", 0, 99, 0), 12)
        .await
        .unwrap();
    assert_eq!(f.responses[0].partitions[0].error_code, 1);

    // ListOffsets: earliest, latest, by time, max timestamp.
    let query = |ts: i64| {
        ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(name("orders"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(ts),
                    ]),
            ])
    };
    let offset = |r: ListOffsetsResponse| {
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.error_code, 0);
        (p.offset, p.timestamp)
    };
    assert_eq!(offset(c.call(&query(-2), 7).await.unwrap()).0, 0);
    assert_eq!(offset(c.call(&query(-1), 7).await.unwrap()).0, 4);
    assert_eq!(offset(c.call(&query(2_000), 7).await.unwrap()), (3, 5_000));
    assert_eq!(offset(c.call(&query(-3), 7).await.unwrap()), (3, 5_000));
    assert_eq!(offset(c.call(&query(9_999), 1).await.unwrap()).0, -1);

    // Errors a client knows: unknown topic, bad acks.
    let r = c
        .call(&produce_request("nope", 0, 1, batch(&["x"], 1)), 9)
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 3);
    let r = c
        .call(&produce_request("orders", 0, 2, batch(&["x"], 1)), 9)
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 21);
    let r = c
        .call(&produce_request("orders", 7, 1, batch(&["x"], 1)), 9)
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 3);
    let f = c.call(&fetch_request("nope", 0, 0, 0), 12).await.unwrap();
    assert_eq!(f.responses[0].partitions[0].error_code, 3);

    // acks=0 gets no response: the next answer is the next request's.
    let cid = c
        .send(&produce_request("orders", 1, 0, batch(&["z"], 1)), 9)
        .await
        .unwrap();
    let md = c.call(&MetadataRequest::default(), 1).await.unwrap();
    assert_eq!(md.brokers.len(), 1);
    let _ = cid;
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_poll_wakes_on_append() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    create_topic(&mut c, "waits", 1).await;
    // The storage node opens a new partition's log on first use and only
    // long-polls logs already open (see the report); read once first.
    c.call(&fetch_request("waits", 0, 0, 0), 12).await.unwrap();
    let address = cluster.kafka().to_string();
    let producer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut p = KafkaConn::connect(&address).await.unwrap();
        p.call(&produce_request("waits", 0, 1, batch(&["late"], 1)), 9)
            .await
            .unwrap();
    });
    // A minute's wait that must end when the record arrives (the response is
    // read with a 30 s limit).
    let f = c
        .call(&fetch_request("waits", 0, 0, 60_000), 12)
        .await
        .unwrap();
    let records = decode_records(f.responses[0].partitions[0].records.clone().unwrap()).unwrap();
    assert_eq!(records[0].value.as_deref(), Some(&b"late"[..]));
    producer.await.unwrap();

    // A short wait with nothing to read returns empty bytes, no error.
    let f = c
        .call(&fetch_request("waits", 0, 1, 100), 12)
        .await
        .unwrap();
    let p = &f.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 1));
    assert_eq!(p.records.as_ref().map(Bytes::len), Some(0));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_by_topic_id() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    create_topic(&mut c, "ids", 1).await;
    c.call(&produce_request("ids", 0, 1, batch(&["x"], 1)), 9)
        .await
        .unwrap();
    let md = c
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await
        .unwrap();
    let id = md.topics[0].topic_id;
    let mut req = fetch_request("", 0, 0, 0);
    req.topics[0].topic_id = id;
    let f = c.call(&req, 13).await.unwrap();
    assert_eq!(f.responses[0].topic_id, id);
    assert_eq!(f.responses[0].partitions[0].error_code, 0);
    assert!(
        !f.responses[0].partitions[0]
            .records
            .as_ref()
            .unwrap()
            .is_empty()
    );
    req.topics[0].topic_id = uuid::Uuid::new_v4();
    let f = c.call(&req, 16).await.unwrap();
    assert_eq!(f.responses[0].partitions[0].error_code, 100);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edge_is_a_broker() {
    let mut cluster = Cluster::start(Options::default()).await.unwrap();
    let second = cluster.add_edge(2, 0).await.unwrap();
    let mut c1 = KafkaConn::connect(cluster.kafka()).await.unwrap();
    create_topic(&mut c1, "both", 1).await;
    // Both edges list both brokers once the registrations are seen.
    let mut c2 = None;
    for _ in 0..100 {
        if let Ok(c) = KafkaConn::connect(&second).await {
            c2 = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c2 = c2.unwrap();
    let mut seen = false;
    for _ in 0..100 {
        let a = c1
            .call(&MetadataRequest::default().with_topics(None), 12)
            .await
            .unwrap();
        let b = c2
            .call(&MetadataRequest::default().with_topics(None), 12)
            .await
            .unwrap();
        if a.brokers.len() == 2 && b.brokers.len() == 2 {
            // Each edge leads everything it is asked about and is the controller.
            assert_eq!(a.controller_id, BrokerId(1));
            assert_eq!(b.controller_id, BrokerId(2));
            assert_eq!(a.topics[0].partitions[0].leader_id, BrokerId(1));
            assert_eq!(b.topics[0].partitions[0].leader_id, BrokerId(2));
            assert_eq!(a.cluster_id, b.cluster_id);
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "both edges see each other");
    // Stopping the second edge removes it from the first one's brokers.
    let second = cluster.edges.pop().unwrap();
    second.stop().await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        let a = c1
            .call(&MetadataRequest::default().with_topics(None), 12)
            .await
            .unwrap();
        if a.brokers.len() == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "a stopped edge leaves the broker list");
    cluster.shutdown().await.unwrap();
}
