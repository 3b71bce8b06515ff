//! Log compaction on an in-process cluster on a real etcd: a
//! `cleanup.policy=compact` topic that took 100,000 updates over 1,000 keys
//! is compacted by the storage node's cleaner to the latest value per key,
//! in offset order; the tombstones of deleted keys are kept for
//! `delete.retention.ms` and then go.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use runnel_client::{NewTopic, Producer, Record};
use runnel_e2e::{InProcessCluster, consume_all, eventually, wait_topic_ready};
use runnel_proto::common::v1::ErrorCode;

const TOPIC: &str = "changelog";
const UPDATES: usize = 100_000;
const KEYS: usize = 1_000;
/// Keys 0..DELETED get a tombstone as their last update.
const DELETED: usize = 100;

fn key(k: usize) -> Bytes {
    Bytes::from(format!("key-{k}"))
}

/// Update `i` of key `i % KEYS`; the last update of a deleted key is a
/// tombstone.
fn update(i: usize) -> Record {
    let k = i % KEYS;
    let deleted = i + KEYS >= UPDATES && k < DELETED;
    Record {
        key: Some(key(k)),
        value: (!deleted).then(|| Bytes::from(format!("value {i} of key {k}"))),
        ..Default::default()
    }
}

/// What a consumer from the start sees: per key its last value (None for
/// a tombstone), checking offsets grow in each partition.
async fn latest(cluster: &InProcessCluster) -> (BTreeMap<Bytes, Option<Bytes>>, usize, usize) {
    let consumed = consume_all(&cluster.coordinator, TOPIC).await;
    let mut latest = BTreeMap::new();
    let (mut records, mut tombstones) = (0, 0);
    for (p, partition) in &consumed {
        assert!(
            partition.windows(2).all(|w| w[0].offset < w[1].offset),
            "partition {p}: offsets out of order"
        );
        for r in partition {
            records += 1;
            tombstones += usize::from(r.value.is_none());
            latest.insert(r.key.clone().unwrap(), r.value.clone());
        }
    }
    (latest, records, tombstones)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_keeps_the_latest_value_per_key_and_tombstones_expire() {
    let cluster = InProcessCluster::start_with(1, |c| c.log_cleaner_interval_ms = 200).await;
    let topic = NewTopic::new(TOPIC, 2)
        .config("cleanup.policy", "compact")
        .config("segment.bytes", "65536")
        // Roll the active segment soon, so the newest updates compact too.
        .config("segment.ms", "500")
        .config("min.cleanable.dirty.ratio", "0.01")
        .config("delete.retention.ms", "3000");
    cluster.admin().create_topic(topic).await.unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), TOPIC).await;

    let producer = Producer::new(cluster.producer_config()).unwrap();
    // Kafka's rule: no record without a key on a compacted topic.
    let keyless = Record {
        value: Some(Bytes::from_static(b"no key")),
        ..Default::default()
    };
    let refused = producer
        .send(TOPIC, keyless)
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::InvalidRecord), "{refused}");
    assert!(refused.to_string().contains("without a key"), "{refused}");
    let mut deliveries = Vec::with_capacity(UPDATES);
    for i in 0..UPDATES {
        deliveries.push(producer.send(TOPIC, update(i)).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in deliveries {
        d.await.unwrap();
    }
    let expected: BTreeMap<Bytes, Option<Bytes>> = (0..UPDATES)
        .map(|i| {
            let r = update(i);
            (r.key.unwrap(), r.value)
        })
        .collect();

    // A filler record per attempt rolls the aged active segment and gives
    // the cleaner new dirty data, as live traffic would.
    let filler = |n: usize| Record {
        key: Some(Bytes::from_static(b"filler")),
        value: Some(Bytes::from(n.to_string())),
        ..Default::default()
    };
    let mut attempt = 0;
    let (compacted, records) = eventually("compaction", Duration::from_secs(120), || {
        attempt += 1;
        let (producer, cluster, expected) = (&producer, &cluster, &expected);
        async move {
            for p in 0..2 {
                let r = Record {
                    partition: Some(p),
                    ..filler(attempt)
                };
                producer.send(TOPIC, r).await.unwrap();
            }
            producer.flush().await.unwrap();
            let (mut latest, records, tombstones) = latest(cluster).await;
            latest.remove(&Bytes::from_static(b"filler"));
            // Every key's newest update is what a reader from the start ends with.
            for (k, v) in expected {
                if v.is_some() && latest.get(k) != Some(v) {
                    return Err(format!("{k:?}: {:?}, expected {v:?}", latest.get(k)));
                }
            }
            if records > KEYS + 20 || tombstones > 0 {
                return Err(format!("{records} records, {tombstones} tombstones left"));
            }
            Ok((latest, records))
        }
    })
    .await;
    let deleted: Vec<_> = (0..DELETED)
        .map(key)
        .filter(|k| compacted.contains_key(k))
        .collect();
    assert!(deleted.is_empty(), "deleted keys came back: {deleted:?}");
    assert_eq!(compacted.len(), KEYS - DELETED);
    eprintln!("{UPDATES} updates compacted to {records} records ({attempt} attempts)");
    cluster.shutdown().await;
}
