//! Several edges in one cluster: a consumer that knows both bootstrap
//! addresses keeps consuming while the edge it reads through is stopped and
//! restarted, and gets every record exactly once and in order.
//!
//! The consumer behaves like a Kafka client: it bootstraps from the first
//! address that answers, reads Metadata, fetches from the broker Metadata
//! names as each partition's leader, and on a broken connection or a
//! retriable error code goes back to bootstrapping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, KafkaConn, Options};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use runnel_records::{Compression, PlainRecord, build_batch, decode_records};
use tokio::sync::watch;

const TOPIC: &str = "failover";
const PARTITIONS: i32 = 4;
/// Records per produced batch.
const BATCH: usize = 5;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// The value of record `i` of a partition.
fn value(partition: i32, i: usize) -> String {
    format!("p{partition}-{i:06}")
}

/// Produces batches `from..to` of every partition through `address`.
async fn produce(address: &str, batches: std::ops::Range<usize>) {
    let mut c = KafkaConn::connect(address).await.unwrap();
    for b in batches {
        let partitions = (0..PARTITIONS)
            .map(|p| {
                let records: Vec<PlainRecord> = (b * BATCH..(b + 1) * BATCH)
                    .map(|i| PlainRecord {
                        key: None,
                        value: Some(Bytes::from(value(p, i))),
                        headers: vec![],
                        timestamp_ms: 1,
                    })
                    .collect();
                PartitionProduceData::default()
                    .with_index(p)
                    .with_records(Some(build_batch(&records, Compression::None).unwrap()))
            })
            .collect();
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(name(TOPIC))
                    .with_partition_data(partitions),
            ]);
        let r = c.call(&req, 9).await.unwrap();
        for p in &r.responses[0].partition_responses {
            assert_eq!(p.error_code, 0, "produce to partition {}", p.index);
        }
    }
}

/// A consumer that fails over between bootstrap addresses.
struct Consumer {
    bootstrap: Vec<String>,
    next_bootstrap: usize,
    /// The connection to the partitions' leader, once known.
    leader: Option<KafkaConn>,
    offsets: BTreeMap<i32, i64>,
    received: BTreeMap<i32, Vec<String>>,
    /// The brokers it fetched from, in order, without repeats.
    used: Vec<String>,
    failovers: usize,
}

impl Consumer {
    fn new(bootstrap: Vec<String>) -> Self {
        Consumer {
            bootstrap,
            next_bootstrap: 0,
            leader: None,
            offsets: (0..PARTITIONS).map(|p| (p, 0)).collect(),
            received: BTreeMap::new(),
            used: Vec::new(),
            failovers: 0,
        }
    }

    fn total(&self) -> usize {
        self.received.values().map(Vec::len).sum()
    }

    /// Bootstraps from the next address that answers and connects to the
    /// leader Metadata names (each edge names itself).
    async fn connect(&mut self) -> anyhow::Result<()> {
        let address = self.bootstrap[self.next_bootstrap % self.bootstrap.len()].clone();
        self.next_bootstrap += 1;
        let mut c = KafkaConn::connect(&address).await?;
        let md = c
            .call(
                &MetadataRequest::default().with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(name(TOPIC))),
                ])),
                12,
            )
            .await?;
        let topic = &md.topics[0];
        anyhow::ensure!(topic.error_code == 0, "metadata error {}", topic.error_code);
        let leader = topic.partitions[0].leader_id;
        anyhow::ensure!(
            topic.partitions.iter().all(|p| p.leader_id == leader),
            "one edge leads every partition it reports"
        );
        let broker = md
            .brokers
            .iter()
            .find(|b| b.node_id == leader)
            .ok_or_else(|| anyhow::anyhow!("leader {leader:?} is not a listed broker"))?;
        let leader_address = format!("{}:{}", broker.host.as_str(), broker.port);
        self.leader = Some(if leader_address == address {
            c
        } else {
            KafkaConn::connect(&leader_address).await?
        });
        if self.used.last() != Some(&leader_address) {
            self.used.push(leader_address);
        }
        Ok(())
    }

    /// One fetch round; small per-partition limits so a round returns about
    /// one batch per partition and consuming takes many rounds.
    async fn poll(&mut self) -> anyhow::Result<()> {
        if self.leader.is_none() {
            self.connect().await?;
        }
        let conn = self.leader.as_mut().expect("connected");
        let partitions = self
            .offsets
            .iter()
            .map(|(&p, &offset)| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1)
            })
            .collect();
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(name(TOPIC))
                    .with_partitions(partitions),
            ]);
        let response = conn.call(&req, 12).await?;
        for p in &response.responses[0].partitions {
            anyhow::ensure!(p.error_code == 0, "fetch error {}", p.error_code);
            let records = decode_records(p.records.clone().unwrap_or_default())?;
            let offset = self.offsets.get_mut(&p.partition_index).expect("asked");
            for r in records {
                // A batch may start before the offset asked for.
                if r.offset < *offset {
                    continue;
                }
                anyhow::ensure!(r.offset == *offset, "gap at offset {}", *offset);
                *offset += 1;
                let v = String::from_utf8(r.value.unwrap_or_default().to_vec())?;
                self.received.entry(p.partition_index).or_default().push(v);
            }
        }
        Ok(())
    }

    /// Consumes until `want` records arrived; every failed round drops the
    /// connection and bootstraps again.
    async fn run(mut self, want: usize, progress: watch::Sender<usize>) -> Self {
        let mut errors_in_a_row = 0;
        while self.total() < want {
            match self.poll().await {
                Ok(()) => errors_in_a_row = 0,
                Err(e) => {
                    errors_in_a_row += 1;
                    assert!(errors_in_a_row < 200, "no edge answers: {e:#}");
                    if self.leader.take().is_some() {
                        self.failovers += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            progress.send_replace(self.total());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self
    }
}

/// Waits until the edge at `address` lists exactly `brokers` as brokers.
async fn wait_for_brokers(address: &str, brokers: &[i32]) {
    for _ in 0..200 {
        if let Ok(mut c) = KafkaConn::connect(address).await
            && let Ok(md) = c
                .call(&MetadataRequest::default().with_topics(Some(vec![])), 12)
                .await
        {
            let mut ids: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
            ids.sort();
            if ids == brokers {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{address} never listed brokers {brokers:?}");
}

async fn wait_for_progress(progress: &mut watch::Receiver<usize>, at_least: usize) {
    tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|n| *n >= at_least),
    )
    .await
    .expect("the consumer makes progress")
    .expect("the consumer is running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_carries_on_while_an_edge_restarts() {
    let mut cluster = Cluster::start(Options::default()).await.unwrap();
    let first = cluster.kafka().to_string();
    let second = cluster.add_edge(2, 0).await.unwrap();
    wait_for_brokers(&first, &[1, 2]).await;
    wait_for_brokers(&second, &[1, 2]).await;

    let mut c = KafkaConn::connect(&first).await.unwrap();
    let created = c
        .call(
            &CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(name(TOPIC))
                        .with_num_partitions(PARTITIONS)
                        .with_replication_factor(-1),
                ]),
            7,
        )
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0);

    // 100 batches per partition before consuming starts, 40 more later
    // through the restarted edge.
    let (early, late) = (100, 40);
    produce(&second, 0..early).await;
    let want = (early + late) * BATCH * PARTITIONS as usize;

    let (progress_tx, mut progress) = watch::channel(0);
    let consumer = Consumer::new(vec![first.clone(), second.clone()]);
    let consuming = tokio::spawn(consumer.run(want, progress_tx));

    // Stop the edge the consumer reads through (the first bootstrap
    // address) a quarter of the way in.
    wait_for_progress(&mut progress, want / 4).await;
    let stopped_at = *progress.borrow();
    let address = cluster.stop_edge(1).await.unwrap();
    eprintln!("edge 1 stopped after {stopped_at} of {want} records");
    assert_eq!(address, first);
    wait_for_brokers(&second, &[2]).await;
    // The consumer carries on through the other edge.
    wait_for_progress(&mut progress, stopped_at + 100).await;

    // Restart the first edge on its address; both list both again.
    let port: u16 = first.rsplit_once(':').unwrap().1.parse().unwrap();
    let restarted = cluster.add_edge(1, port).await.unwrap();
    assert_eq!(restarted, first);
    wait_for_brokers(&first, &[1, 2]).await;
    wait_for_brokers(&second, &[1, 2]).await;

    // Now stop the second edge: the consumer must come back to the first.
    wait_for_progress(&mut progress, want / 2).await;
    let at = *progress.borrow();
    cluster.stop_edge(2).await.unwrap();
    eprintln!("edge 2 stopped after {at} of {want} records");
    produce(&first, early..early + late).await;

    let consumer = tokio::time::timeout(Duration::from_secs(120), consuming)
        .await
        .expect("the consumer finishes")
        .unwrap();
    eprintln!(
        "consumed {} records through {:?} with {} failovers",
        consumer.total(),
        consumer.used,
        consumer.failovers
    );
    assert_eq!(consumer.total(), want);
    for p in 0..PARTITIONS {
        let expected: Vec<String> = (0..(early + late) * BATCH).map(|i| value(p, i)).collect();
        assert_eq!(
            consumer.received[&p], expected,
            "partition {p}: every record once, in order"
        );
    }
    assert!(
        consumer.failovers >= 2,
        "failed over {} times",
        consumer.failovers
    );
    assert_eq!(
        consumer.used,
        vec![first.clone(), second.clone(), first.clone()],
        "read through the first edge, the second, then the restarted first"
    );
    cluster.shutdown().await.unwrap();
}
