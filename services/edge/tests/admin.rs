//! Administration on the wire: CreatePartitions, AlterConfigs,
//! IncrementalAlterConfigs, DescribeLogDirs and DeleteRecords with the error
//! codes clients act on, and Metadata for a topic of 2,000 partitions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, KafkaConn, Options};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use runnel_records::{Compression, PlainRecord, build_batch};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

async fn create_topic(c: &mut KafkaConn, topic: &str, partitions: i32) {
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(60_000)
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

async fn partition_count(c: &mut KafkaConn, topic: &str) -> usize {
    let md = c
        .call(
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name(topic))),
            ])),
            12,
        )
        .await
        .unwrap();
    md.topics[0].partitions.len()
}

fn grow(topic: &str, count: i32, validate_only: bool) -> CreatePartitionsRequest {
    CreatePartitionsRequest::default()
        .with_timeout_ms(10_000)
        .with_validate_only(validate_only)
        .with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(name(topic))
                .with_count(count),
        ])
}

/// The topic's configs as DescribeConfigs reports them: (value, is default).
async fn configs(c: &mut KafkaConn, topic: &str) -> std::collections::BTreeMap<String, String> {
    let r = c
        .call(
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(topic)),
            ]),
            4,
        )
        .await
        .unwrap();
    assert_eq!(r.results[0].error_code, 0);
    r.results[0]
        .configs
        .iter()
        .filter(|c| c.config_source == 1)
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_partitions() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    create_topic(&mut c, "grows", 2).await;

    // validate_only changes nothing.
    for v in [0, 3] {
        let r = c.call(&grow("grows", 5, true), v).await.unwrap();
        assert_eq!(
            r.results[0].error_code, 0,
            "{:?}",
            r.results[0].error_message
        );
    }
    assert_eq!(partition_count(&mut c, "grows").await, 2);

    let r = c.call(&grow("grows", 5, false), 3).await.unwrap();
    assert_eq!(
        r.results[0].error_code, 0,
        "{:?}",
        r.results[0].error_message
    );
    assert_eq!(partition_count(&mut c, "grows").await, 5);

    // Shrinking, staying, zero: INVALID_PARTITIONS with a message.
    for count in [3, 5, 0] {
        let r = c.call(&grow("grows", count, false), 1).await.unwrap();
        assert_eq!(r.results[0].error_code, 37, "count {count}");
        assert!(r.results[0].error_message.is_some());
    }
    // Unknown topic, manual assignments, the same topic twice.
    let r = c.call(&grow("nope", 3, false), 2).await.unwrap();
    assert_eq!(r.results[0].error_code, 3);
    let mut manual = grow("grows", 6, false);
    manual.topics[0].assignments = Some(vec![
        CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(1)]),
    ]);
    assert_eq!(c.call(&manual, 3).await.unwrap().results[0].error_code, 39);
    let mut twice = grow("grows", 6, false);
    twice.topics.push(twice.topics[0].clone());
    let r = c.call(&twice, 3).await.unwrap();
    assert!(r.results.iter().all(|t| t.error_code == 42));
    assert_eq!(partition_count(&mut c, "grows").await, 5);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_configs_legacy_and_incremental() {
    use incremental_alter_configs_request as inc;
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    create_topic(&mut c, "conf", 1).await;

    let incremental = |ops: &[(&str, i8, Option<&str>)], validate_only: bool| {
        IncrementalAlterConfigsRequest::default()
            .with_validate_only(validate_only)
            .with_resources(vec![
                inc::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("conf"))
                    .with_configs(
                        ops.iter()
                            .map(|(k, op, v)| {
                                inc::AlterableConfig::default()
                                    .with_name(s(k))
                                    .with_config_operation(*op)
                                    .with_value(v.map(s))
                            })
                            .collect(),
                    ),
            ])
    };
    let code = |r: &IncrementalAlterConfigsResponse| r.responses[0].error_code;

    // SET, validate only: nothing changes.
    let r = c
        .call(&incremental(&[("retention.ms", 0, Some("1000"))], true), 1)
        .await
        .unwrap();
    assert_eq!(code(&r), 0);
    assert_eq!(configs(&mut c, "conf").await, map(&[]));
    // SET and APPEND for real.
    let r = c
        .call(
            &incremental(
                &[
                    ("retention.ms", 0, Some("1000")),
                    ("cleanup.policy", 2, Some("compact")),
                ],
                false,
            ),
            1,
        )
        .await
        .unwrap();
    assert_eq!(code(&r), 0, "{:?}", r.responses[0].error_message);
    assert_eq!(
        configs(&mut c, "conf").await,
        map(&[
            ("cleanup.policy", "delete,compact"),
            ("retention.ms", "1000")
        ])
    );
    // SUBTRACT and DELETE.
    let r = c
        .call(
            &incremental(
                &[
                    ("cleanup.policy", 3, Some("delete")),
                    ("retention.ms", 1, None),
                ],
                false,
            ),
            0,
        )
        .await
        .unwrap();
    assert_eq!(code(&r), 0, "{:?}", r.responses[0].error_message);
    assert_eq!(
        configs(&mut c, "conf").await,
        map(&[("cleanup.policy", "compact")])
    );
    // Refusals: a bad value, an unknown key, APPEND to a non-list.
    for (ops, expected) in [
        (vec![("retention.ms", 0, Some("soon"))], 40),
        (vec![("retention.mss", 0, Some("1"))], 40),
        (vec![("retention.ms", 2, Some("1"))], 40),
        (vec![("retention.ms", 0, None)], 42),
    ] {
        let r = c.call(&incremental(&ops, false), 1).await.unwrap();
        assert_eq!(code(&r), expected, "{ops:?}");
        assert!(r.responses[0].error_message.is_some());
    }

    // Legacy AlterConfigs replaces the whole set.
    let legacy = |topic: &str, pairs: &[(&str, &str)], validate_only: bool| {
        AlterConfigsRequest::default()
            .with_validate_only(validate_only)
            .with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(topic))
                    .with_configs(
                        pairs
                            .iter()
                            .map(|(k, v)| {
                                alter_configs_request::AlterableConfig::default()
                                    .with_name(s(k))
                                    .with_value(Some(s(v)))
                            })
                            .collect(),
                    ),
            ])
    };
    let r = c
        .call(&legacy("conf", &[("segment.ms", "60000")], true), 2)
        .await
        .unwrap();
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(
        configs(&mut c, "conf").await,
        map(&[("cleanup.policy", "compact")])
    );
    let r = c
        .call(&legacy("conf", &[("segment.ms", "60000")], false), 0)
        .await
        .unwrap();
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(
        configs(&mut c, "conf").await,
        map(&[("segment.ms", "60000")])
    );
    for (topic, pairs, expected) in [
        ("conf", vec![("segment.ms", "0")], 40),
        ("conf", vec![("nope", "1")], 40),
        ("missing", vec![("segment.ms", "1000")], 3),
    ] {
        let r = c.call(&legacy(topic, &pairs, false), 1).await.unwrap();
        assert_eq!(r.responses[0].error_code, expected, "{topic} {pairs:?}");
    }
    // Broker configs are not changed through Kafka.
    let mut broker = legacy("1", &[("log.retention.ms", "1")], false);
    broker.resources[0].resource_type = 4;
    let r = c.call(&broker, 1).await.unwrap();
    assert_eq!(r.responses[0].error_code, 42);
    assert_eq!(
        configs(&mut c, "conf").await,
        map(&[("segment.ms", "60000")])
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_log_dirs() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    create_topic(&mut c, "sized", 2).await;
    create_topic(&mut c, "other", 1).await;
    let records: Vec<PlainRecord> = (0..100)
        .map(|i| PlainRecord {
            key: None,
            value: Some(Bytes::from(vec![b'x'; 100 + i])),
            headers: vec![],
            timestamp_ms: 1,
        })
        .collect();
    let batch = build_batch(&records, Compression::None).unwrap();
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name("sized"))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(batch.clone())),
                ]),
        ]);
    let r = c.call(&produce, 9).await.unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);

    // A storage node opens the log of a new, still empty partition when the
    // assignment reaches it, asynchronously (as a Kafka broker does on
    // LeaderAndIsr): wait until "other" and both partitions of "sized" are
    // there before comparing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let all = c
            .call(&DescribeLogDirsRequest::default().with_topics(None), 4)
            .await
            .unwrap();
        let has = |topic: &str, partitions: usize| {
            all.results.iter().any(|d| {
                d.topics
                    .iter()
                    .any(|t| t.name.0.as_str() == topic && t.partitions.len() == partitions)
            })
        };
        if has("other", 1) && has("sized", 2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the logs of \"other\" and \"sized\" never all appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for v in 1..=4 {
        // Everything: one directory (one storage node) with both topics.
        let all = c
            .call(&DescribeLogDirsRequest::default().with_topics(None), v)
            .await
            .unwrap();
        assert_eq!(all.results.len(), 1, "v{v}");
        let dir = &all.results[0];
        assert_eq!(dir.error_code, 0);
        assert!(dir.log_dir.starts_with('/'), "{:?}", dir.log_dir);
        let sized = dir
            .topics
            .iter()
            .find(|t| t.name.0.as_str() == "sized")
            .unwrap();
        let sizes: Vec<(i32, i64)> = sized
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.partition_size))
            .collect();
        assert_eq!(sizes, vec![(0, 0), (1, batch.len() as i64)], "v{v}");
        assert!(dir.topics.iter().any(|t| t.name.0.as_str() == "other"));
        if v >= 4 {
            assert_eq!(dir.total_bytes, -1);
        }

        // Only what was asked for.
        let some = c
            .call(
                &DescribeLogDirsRequest::default().with_topics(Some(vec![
                    DescribableLogDirTopic::default()
                        .with_topic(name("sized"))
                        .with_partitions(vec![1, 7]),
                ])),
                v,
            )
            .await
            .unwrap();
        let topics = &some.results[0].topics;
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].partitions.len(), 1);
        assert_eq!(topics[0].partitions[0].partition_index, 1);
        let none = c
            .call(
                &DescribeLogDirsRequest::default().with_topics(Some(vec![])),
                v,
            )
            .await
            .unwrap();
        assert_eq!(none.results.len(), 1);
        assert!(none.results[0].topics.is_empty());
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    create_topic(&mut c, "trim", 2).await;
    let records: Vec<PlainRecord> = (0..100)
        .map(|i| PlainRecord {
            key: None,
            value: Some(Bytes::from(format!("r{i}"))),
            headers: vec![],
            timestamp_ms: 1,
        })
        .collect();
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name("trim"))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(build_batch(&records, Compression::None).unwrap())),
                ]),
        ]);
    let r = c.call(&produce, 9).await.unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let part = |index: i32, offset: i64| {
        DeleteRecordsPartition::default()
            .with_partition_index(index)
            .with_offset(offset)
    };
    for v in 0..=2 {
        // Inside the one batch of partition 1; partition 0 is empty, so any
        // offset above 0 is beyond its high watermark.
        let target = 40 + i64::from(v);
        let req = DeleteRecordsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                DeleteRecordsTopic::default()
                    .with_name(name("trim"))
                    .with_partitions(vec![part(1, target), part(0, 5), part(9, 1)]),
                DeleteRecordsTopic::default()
                    .with_name(name("missing"))
                    .with_partitions(vec![part(0, 1)]),
            ]);
        let resp = c.call(&req, v).await.unwrap();
        assert_eq!(resp.throttle_time_ms, 0);
        let got: Vec<(String, i32, i16, i64)> = resp
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        t.name.0.to_string(),
                        p.partition_index,
                        p.error_code,
                        p.low_watermark,
                    )
                })
            })
            .collect();
        let want = |t: &str, p, e, l| (t.to_string(), p, e, l);
        assert_eq!(
            got,
            vec![
                want("trim", 1, 0, target),
                want("trim", 0, 1, -1),
                want("trim", 9, 3, -1),
                want("missing", 0, 3, -1),
            ],
            "v{v}"
        );
    }
    // The new start as ListOffsets earliest and Fetch see it.
    let earliest = c
        .call(
            &ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(name("trim"))
                        .with_partitions(vec![
                            ListOffsetsPartition::default()
                                .with_partition_index(1)
                                .with_timestamp(-2),
                        ]),
                ]),
            1,
        )
        .await
        .unwrap();
    assert_eq!(earliest.topics[0].partitions[0].offset, 42);
    cluster.shutdown().await.unwrap();
}

/// Sends a request and returns the raw response frame (without its length).
async fn raw_call<T: kafka_protocol::protocol::Request>(
    c: &mut KafkaConn,
    request: &T,
    version: i16,
) -> Bytes {
    c.send(request, version).await.unwrap();
    c.read_frame().await.unwrap().expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_for_2000_partitions() {
    const COUNT: i32 = 2_000;
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mut c = KafkaConn::connect(cluster.kafka()).await.unwrap();
    let started = Instant::now();
    create_topic(&mut c, "wide", COUNT).await;
    eprintln!("created {COUNT} partitions in {:?}", started.elapsed());

    let one = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(name("wide"))),
    ]));
    // (version, response header size): v12 is flexible (header v1 with its
    // tagged fields), v1 is not.
    for (version, header) in [(12i16, 5usize), (1, 4)] {
        for request in [one.clone(), MetadataRequest::default().with_topics(None)] {
            let started = Instant::now();
            let frame = raw_call(&mut c, &request, version).await;
            let took = started.elapsed();
            let mut body = frame.slice(header..);
            let md = MetadataResponse::decode(&mut body, version).unwrap();
            assert!(body.is_empty(), "v{version}: bytes after the response");
            let topic = md
                .topics
                .iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "wide"))
                .unwrap();
            assert_eq!(topic.error_code, 0);
            let indexes: Vec<i32> = topic.partitions.iter().map(|p| p.partition_index).collect();
            assert_eq!(
                indexes,
                (0..COUNT).collect::<Vec<_>>(),
                "every partition, once"
            );
            assert!(topic.partitions.iter().all(|p| p.error_code == 0
                && p.leader_id == BrokerId(1)
                && p.replica_nodes == [BrokerId(1)]
                && p.isr_nodes == [BrokerId(1)]));

            // The encoded size: the same response without partitions plus
            // 26 bytes a partition — v12: error 2, index 4, leader 4, epoch
            // 4, replicas 1+4, isr 1+4, offline 1, tagged fields 1; v1:
            // error 2, index 4, leader 4, replicas 4+4, isr 4+4.
            let mut empty = md.clone();
            for t in &mut empty.topics {
                if t.name.as_ref().is_some_and(|n| n.0.as_str() == "wide") {
                    t.partitions.clear();
                }
            }
            let base = empty.compute_size(version).unwrap();
            // A compact array's length is a varint: 2,001 takes 2 bytes
            // where an empty array's takes 1.
            let longer_count = usize::from(version >= 9);
            let expected = header + base + 26 * COUNT as usize + longer_count;
            assert_eq!(frame.len(), expected, "v{version} response size");
            assert!(
                took < Duration::from_secs(2),
                "v{version}: Metadata for {COUNT} partitions took {took:?}"
            );
            eprintln!(
                "Metadata v{version} ({} topics): {} bytes in {took:?}",
                md.topics.len(),
                frame.len()
            );
        }
    }
    cluster.shutdown().await.unwrap();
}
