//! Producing with acknowledgements while something breaks, then checking
//! that every acknowledged record is there: the shared half of the crash,
//! failover and replication tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runnel_client::{ClientError, ConsumedRecord, Producer, Record, RecordMetadata};

use crate::{consume_all, scan_partition};

/// The value of the `i`-th record produced.
pub fn value_of(i: usize) -> Bytes {
    Bytes::from(format!("record-{i}"))
}

/// The produce-order number in a consumed value (`record-<i>`); panics on
/// anything else, which would be garbage.
pub fn index_of(r: &ConsumedRecord) -> usize {
    let v = r.value.as_deref().unwrap_or_default();
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.strip_prefix("record-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{}-{} holds a value nobody produced: {v:?}",
                r.partition, r.offset
            )
        })
}

pub type Outcome = (usize, i32, Result<RecordMetadata, ClientError>);

/// Produces to partitions `0..partitions` round robin until `stop`, then
/// waits for every delivery. `counter` is the number of records sent so far.
pub fn produce_until(
    producer: Producer,
    topic: &'static str,
    partitions: i32,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<Outcome>> {
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for _ in 0..20 {
                let i = counter.fetch_add(1, Ordering::SeqCst);
                let partition = (i % partitions as usize) as i32;
                let record = Record {
                    value: Some(value_of(i)),
                    partition: Some(partition),
                    ..Default::default()
                };
                pending.push((i, partition, producer.send(topic, record).await.unwrap()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for (i, partition, delivery) in pending {
            outcomes.push((i, partition, delivery.await));
        }
        outcomes
    })
}

/// Reads the whole topic (raw scan and native consumer) and checks every
/// acknowledged record is at its acknowledged offset with its value, and
/// that acknowledged records of a partition are in produce order. Returns
/// what was consumed.
pub async fn check_acked_present(
    coordinator: &str,
    topic: &str,
    acked: &[(usize, RecordMetadata)],
) -> BTreeMap<i32, Vec<ConsumedRecord>> {
    let consumed = consume_all(coordinator, topic).await;
    for (&p, records) in &consumed {
        scan_partition(coordinator, topic, p).await;
        for (k, r) in records.iter().enumerate() {
            assert_eq!(r.offset, k as i64, "partition {p}: offsets without gaps");
            let _ = index_of(r);
        }
    }
    let mut last: BTreeMap<i32, (usize, i64)> = BTreeMap::new();
    for (i, m) in acked {
        let records = &consumed[&m.partition];
        let r = records.get(m.offset as usize).unwrap_or_else(|| {
            panic!(
                "record {i} was acknowledged at {}-{} but the partition ends at {}",
                m.partition,
                m.offset,
                records.len()
            )
        });
        assert_eq!(
            index_of(r),
            *i,
            "{}-{} holds another record than acknowledged",
            m.partition,
            m.offset
        );
        if let Some((prev_i, prev_offset)) = last.get(&m.partition) {
            assert!(
                prev_i < i && prev_offset < &m.offset,
                "partition {}: record {i} at {} after record {prev_i} at {prev_offset}",
                m.partition,
                m.offset
            );
        }
        last.insert(m.partition, (*i, m.offset));
    }
    consumed
}

/// Checks no record was written twice: what an idempotent producer promises
/// however often it retried (each value is produced once).
pub fn assert_each_once(consumed: &BTreeMap<i32, Vec<ConsumedRecord>>) {
    let mut seen: BTreeMap<usize, (i32, i64)> = BTreeMap::new();
    for (&p, records) in consumed {
        for r in records {
            if let Some((p0, o0)) = seen.insert(index_of(r), (p, r.offset)) {
                panic!(
                    "record {} is in the log twice: {p0}-{o0} and {p}-{}",
                    index_of(r),
                    r.offset
                );
            }
        }
    }
}
