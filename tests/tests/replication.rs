//! Replication across real storage processes on a real etcd: with
//! replication factor 3 and `acks=all`, killing the leader (SIGKILL) loses
//! no acknowledged record, the old leader comes back as a follower and
//! converges on the new leader's log, a wiped node is rebuilt from its
//! peers, and with too few in-sync replicas `acks=all` is refused while
//! reads go on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use runnel_client::{Admin, ClientError, NewTopic, Producer, ProducerConfig, Record};
use runnel_e2e::{
    ProcessCluster, ProcessSpec, SOON, assert_each_once, check_acked_present, consume_all,
    eventually, http_get, produce_until, storage_client, value_of, wait_topic_ready,
};
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::coordinator::v1::PartitionInfo;
use runnel_proto::storage::v1 as storage_pb;

/// A lease TTL (3 s here) running out plus the controller acting, on a
/// loaded machine.
const LEASE_WAIT: Duration = Duration::from_secs(40);

/// `RUNNEL_SOAK_SEED` (tests/soak/replication.sh sets it; 0 otherwise):
/// varies which partition loses its leader and when.
fn seed() -> usize {
    std::env::var("RUNNEL_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn partitions(admin: &Admin, topic: &str) -> Result<Vec<PartitionInfo>, String> {
    Ok(admin
        .describe_topic(topic)
        .await
        .map_err(|e| e.to_string())?
        .partitions)
}

/// Waits until every partition has a leader and all `rf` replicas in sync.
async fn wait_fully_in_sync(admin: &Admin, topic: &str, rf: usize) -> Vec<PartitionInfo> {
    eventually("every replica back in sync", LEASE_WAIT, || async {
        let parts = partitions(admin, topic).await?;
        let lagging: Vec<_> = parts
            .iter()
            .filter(|p| p.leader < 0 || p.isr.len() != rf)
            .map(|p| (p.partition, p.leader, p.isr.clone()))
            .collect();
        if lagging.is_empty() {
            Ok(parts)
        } else {
            Err(format!("(partition, leader, isr) not in sync: {lagging:?}"))
        }
    })
    .await
}

/// Waits until every replica of every partition holds the same bytes
/// (equal log sizes on every node, nothing above the high watermark).
async fn wait_replicas_identical(cluster: &ProcessCluster, topic: &str) {
    eventually("replicas byte-identical", SOON, || async {
        let mut sizes: BTreeMap<i32, Vec<(i32, i64, i64)>> = BTreeMap::new();
        for node in &cluster.storage {
            let dirs = storage_client(&node.address)
                .describe_log_dirs(storage_pb::DescribeLogDirsRequest {
                    topics: vec![topic.to_string()],
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            for p in dirs.log_dirs.iter().flat_map(|d| &d.partitions) {
                sizes.entry(p.partition).or_default().push((
                    dirs.node_id,
                    p.size_bytes,
                    p.offset_lag,
                ));
            }
        }
        let differing: Vec<_> = sizes
            .iter()
            .filter(|(_, v)| {
                v.len() != cluster.storage.len()
                    || v.iter().any(|(_, size, lag)| *size != v[0].1 || *lag != 0)
            })
            .collect();
        if differing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "(node, size, uncommitted) per partition: {differing:?}"
            ))
        }
    })
    .await;
}

/// The leader's `runnel_replica_follower_lag_offsets` for one follower of
/// `topic`-`partition`, from its Prometheus endpoint.
async fn follower_lag(
    metrics_address: &str,
    topic: &str,
    partition: i32,
    follower: i32,
) -> Result<f64, String> {
    let body = http_get(metrics_address, "/metrics").await?;
    let labels = [
        format!("topic=\"{topic}\""),
        format!("partition=\"{partition}\""),
        format!("follower=\"{follower}\""),
    ];
    body.lines()
        .find(|l| {
            l.starts_with("runnel_replica_follower_lag_offsets{")
                && labels.iter().all(|label| l.contains(label.as_str()))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .ok_or_else(|| format!("no lag for follower {follower} at {metrics_address}"))
}

fn acks_all_producer(cluster: &ProcessCluster, timeout: Duration, retries: u32) -> Producer {
    let mut config = ProducerConfig::new(cluster.ingest(), cluster.coordinator());
    config.acks = -1;
    config.idempotence = true;
    config.retries = retries;
    config.request_timeout = timeout;
    Producer::new(config).unwrap()
}

/// Produces until `counter` has grown by `more`.
async fn keep_producing_for(counter: &AtomicUsize, more: usize, what: &str) {
    let from = counter.load(Ordering::SeqCst);
    eventually(what, SOON, || async {
        let n = counter.load(Ordering::SeqCst);
        if n >= from + more {
            Ok(())
        } else {
            Err(format!("{} sent since", n - from))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_record() {
    const TOPIC: &str = "replicated";
    const PARTITIONS: i32 = 3;
    let mut cluster = ProcessCluster::start(ProcessSpec {
        storage_nodes: 3,
        ..ProcessSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.coordinator()).unwrap();
    let mut topic = NewTopic::new(TOPIC, PARTITIONS)
        .config("min.insync.replicas", "2")
        .config("segment.bytes", "65536");
    topic.replication_factor = 3;
    admin.create_topic(topic).await.unwrap();
    wait_topic_ready(cluster.coordinator(), Some(cluster.ingest()), TOPIC).await;
    let before = wait_fully_in_sync(&admin, TOPIC, 3).await;

    let producer = acks_all_producer(&cluster, Duration::from_secs(30), 20);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let task = produce_until(producer, TOPIC, PARTITIONS, stop.clone(), counter.clone());
    keep_producing_for(
        &counter,
        500 + seed() * 397 % 3000,
        "records flowing before the kill",
    )
    .await;

    // SIGKILL the leader of one partition: no flush, no goodbye.
    let p = seed() % PARTITIONS as usize;
    let victim = before[p].leader;
    let old_epoch = before[p].leader_epoch;
    cluster.storage_node(victim).kill_9();
    let after = eventually("a new leader from the ISR", LEASE_WAIT, || async {
        let parts = partitions(&admin, TOPIC).await?;
        let now = &parts[p];
        if now.leader >= 0 && now.leader != victim && !now.isr.contains(&victim) {
            Ok(parts)
        } else {
            Err(format!("partition {p}: {now:?}"))
        }
    })
    .await;
    assert!(after[p].leader_epoch > old_epoch, "the epoch moves on");
    assert_eq!(
        after[p].isr.len(),
        2,
        "the two live replicas: {:?}",
        after[p]
    );
    keep_producing_for(&counter, 2000, "records flowing with the new leader").await;
    // The new leader reports the dead replica falling behind.
    let metrics = cluster
        .storage_node(after[p].leader)
        .metrics_address
        .clone();
    let lag = eventually(
        "the new leader reports the dead follower's lag",
        SOON,
        || async {
            match follower_lag(&metrics, TOPIC, p as i32, victim).await? {
                lag if lag > 0.0 => Ok(lag),
                lag => Err(format!("lag {lag}")),
            }
        },
    )
    .await;
    eprintln!("node {victim} is {lag} offsets behind on {TOPIC}-{p}");

    // The old leader returns as a follower, drops whatever it wrote that
    // the others never got, and catches up.
    cluster.storage_node(victim).restart().await;
    keep_producing_for(&counter, 1000, "records flowing while it catches up").await;
    stop.store(true, Ordering::SeqCst);
    let outcomes = task.await.unwrap();
    wait_fully_in_sync(&admin, TOPIC, 3).await;
    wait_replicas_identical(&cluster, TOPIC).await;

    let mut acked = Vec::new();
    let mut failed = 0;
    for (i, _, outcome) in outcomes {
        match outcome {
            Ok(m) => acked.push((i, m)),
            Err(_) => failed += 1,
        }
    }
    assert!(acked.len() >= 3000, "{} acknowledged", acked.len());
    let consumed = check_acked_present(cluster.coordinator(), TOPIC, &acked).await;
    // The producer is idempotent (the client's default with acks=all): the
    // batches it retried across the failover are in the log once.
    assert_each_once(&consumed);
    let total: usize = consumed.values().map(Vec::len).sum();
    eprintln!(
        "{} acknowledged, {failed} failed, {total} records in the log, all acknowledged present in order, none twice",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_in_sync_replicas_refuse_acks_all_and_a_wiped_node_is_rebuilt() {
    const TOPIC: &str = "min-isr";
    let mut cluster = ProcessCluster::start(ProcessSpec {
        storage_nodes: 3,
        ..ProcessSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.coordinator()).unwrap();
    let mut topic = NewTopic::new(TOPIC, 1)
        .config("min.insync.replicas", "2")
        .config("segment.bytes", "16384");
    topic.replication_factor = 3;
    admin.create_topic(topic).await.unwrap();
    wait_topic_ready(cluster.coordinator(), Some(cluster.ingest()), TOPIC).await;
    let p = wait_fully_in_sync(&admin, TOPIC, 3).await.remove(0);
    let followers: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|&n| n != p.leader)
        .collect();

    let producer = acks_all_producer(&cluster, Duration::from_secs(10), 0);
    for i in 0..2000 {
        let record = Record {
            value: Some(value_of(i)),
            partition: Some(0),
            ..Default::default()
        };
        producer.send(TOPIC, record).await.unwrap();
    }
    producer.flush().await.unwrap();

    // Both followers die: one replica left, below min.insync.replicas.
    for &f in &followers {
        cluster.storage_node(f).kill_9();
    }
    eventually("the ISR shrinks to the leader", LEASE_WAIT, || async {
        let parts = partitions(&admin, TOPIC).await?;
        if parts[0].isr == vec![p.leader] {
            Ok(())
        } else {
            Err(format!("{:?}", parts[0]))
        }
    })
    .await;
    let refused = producer
        .send(
            TOPIC,
            Record {
                value: Some(value_of(usize::MAX)),
                partition: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .await;
    match refused {
        Err(ClientError::Partition { code, .. }) => {
            assert_eq!(code, ErrorCode::NotEnoughReplicas)
        }
        other => panic!("acks=all with one in-sync replica: {other:?}"),
    }
    // Reads still work, and acks=1 is still taken.
    let consumed = consume_all(cluster.coordinator(), TOPIC).await;
    assert_eq!(consumed[&0].len(), 2000);
    let mut one = ProducerConfig::new(cluster.ingest(), cluster.coordinator());
    one.acks = 1;
    let acks_one = Producer::new(one).unwrap();
    let m = acks_one
        .send(
            TOPIC,
            Record {
                value: Some(value_of(2000)),
                partition: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(m.offset, 2000);

    // One follower comes back with its disk wiped: rebuilt from the leader.
    let wiped = followers[0];
    let node = cluster.storage_node(wiped);
    let dir = node.data_dir.clone().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    node.restart().await;
    eventually("the wiped node rejoins the ISR", LEASE_WAIT, || async {
        let parts = partitions(&admin, TOPIC).await?;
        if parts[0].isr.contains(&wiped) {
            Ok(())
        } else {
            Err(format!("{:?}", parts[0]))
        }
    })
    .await;
    // Two in sync again: acks=all is accepted.
    let m = producer
        .send(
            TOPIC,
            Record {
                value: Some(value_of(2001)),
                partition: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(m.offset, 2001);
    cluster.storage_node(followers[1]).restart().await;
    wait_fully_in_sync(&admin, TOPIC, 3).await;
    wait_replicas_identical(&cluster, TOPIC).await;
    let consumed = consume_all(cluster.coordinator(), TOPIC).await;
    assert_eq!(consumed[&0].len(), 2002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_rejoins_when_it_wakes() {
    const TOPIC: &str = "frozen";
    let mut cluster = ProcessCluster::start(ProcessSpec {
        storage_nodes: 3,
        ..ProcessSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.coordinator()).unwrap();
    let mut topic = NewTopic::new(TOPIC, 1).config("min.insync.replicas", "2");
    topic.replication_factor = 3;
    admin.create_topic(topic).await.unwrap();
    wait_topic_ready(cluster.coordinator(), Some(cluster.ingest()), TOPIC).await;
    let before = wait_fully_in_sync(&admin, TOPIC, 3).await.remove(0);

    let producer = acks_all_producer(&cluster, Duration::from_secs(8), 50);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let task = produce_until(producer, TOPIC, 1, stop.clone(), counter.clone());
    keep_producing_for(
        &counter,
        300 + seed() * 211 % 2000,
        "records flowing before the freeze",
    )
    .await;

    // SIGSTOP: to everyone else the leader is cut off (no lease renewals,
    // no answers), but it keeps its state and wakes up later believing it
    // still leads.
    cluster.storage_node(before.leader).process.pause();
    eventually(
        "a new leader while the old one is frozen",
        LEASE_WAIT,
        || async {
            let p = partitions(&admin, TOPIC).await?.remove(0);
            if p.leader >= 0 && p.leader != before.leader {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .await;
    keep_producing_for(&counter, 1000, "records flowing with the new leader").await;
    cluster.storage_node(before.leader).process.resume();
    keep_producing_for(&counter, 500, "records flowing after the wake-up").await;
    stop.store(true, Ordering::SeqCst);
    let outcomes = task.await.unwrap();
    wait_fully_in_sync(&admin, TOPIC, 3).await;
    wait_replicas_identical(&cluster, TOPIC).await;
    let acked: Vec<_> = outcomes
        .into_iter()
        .filter_map(|(i, _, o)| o.ok().map(|m| (i, m)))
        .collect();
    let consumed = check_acked_present(cluster.coordinator(), TOPIC, &acked).await;
    assert_each_once(&consumed);
    let truncated = cluster
        .storage_node(before.leader)
        .log_tail(400)
        .contains("truncating records the new leader does not have");
    eprintln!(
        "{} acknowledged records present in order, none twice; the woken leader truncated a divergent tail: {truncated}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_tail_is_truncated_when_the_old_leader_returns() {
    const TOPIC: &str = "diverge";
    let mut cluster = ProcessCluster::start(ProcessSpec {
        storage_nodes: 3,
        ..ProcessSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.coordinator()).unwrap();
    let mut topic = NewTopic::new(TOPIC, 1);
    topic.replication_factor = 3;
    admin.create_topic(topic).await.unwrap();
    wait_topic_ready(cluster.coordinator(), Some(cluster.ingest()), TOPIC).await;
    let p = wait_fully_in_sync(&admin, TOPIC, 3).await.remove(0);
    let followers: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|&n| n != p.leader)
        .collect();
    let record = |i: usize| Record {
        value: Some(value_of(i)),
        partition: Some(0),
        ..Default::default()
    };
    let all = acks_all_producer(&cluster, Duration::from_secs(10), 20);
    for i in 0..100 {
        all.send(TOPIC, record(i)).await.unwrap();
    }
    all.flush().await.unwrap();

    // The followers freeze briefly (well inside their lease), and the
    // leader takes acks=1 writes they never see: a tail only it holds.
    for &f in &followers {
        cluster.storage_node(f).process.pause();
    }
    let mut one = ProducerConfig::new(cluster.ingest(), cluster.coordinator());
    one.acks = 1;
    let acks_one = Producer::new(one).unwrap();
    let mut tail = 0;
    for i in 100..150 {
        let d = acks_one.send(TOPIC, record(i)).await.unwrap();
        if d.await.is_ok() {
            tail += 1;
        }
    }
    assert!(tail > 0, "the leader took acks=1 writes alone");
    // Now the leader freezes and the followers wake: one of them leads.
    cluster.storage_node(p.leader).process.pause();
    for &f in &followers {
        cluster.storage_node(f).process.resume();
    }
    let new_leader = eventually("a follower takes over", LEASE_WAIT, || async {
        let now = partitions(&admin, TOPIC).await?.remove(0);
        if followers.contains(&now.leader) {
            Ok(now.leader)
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    for i in 150..200 {
        all.send(TOPIC, record(i)).await.unwrap();
    }
    all.flush().await.unwrap();

    // The old leader wakes as a follower, drops its tail and converges.
    cluster.storage_node(p.leader).process.resume();
    wait_fully_in_sync(&admin, TOPIC, 3).await;
    wait_replicas_identical(&cluster, TOPIC).await;
    let log = cluster.storage_node(p.leader).log_tail(2000);
    assert!(
        log.contains("truncating records the new leader does not have"),
        "the old leader truncated its tail:\n{log}"
    );
    let consumed = consume_all(cluster.coordinator(), TOPIC).await;
    let values: Vec<usize> = consumed[&0].iter().map(runnel_e2e::index_of).collect();
    // A follower may have fetched the first few acks=1 records just before
    // it froze; the rest of the tail is gone, and nothing else is.
    let kept = values.len() - 150;
    assert!(kept < tail, "the tail of {tail} was truncated, {kept} kept");
    let expected: Vec<usize> = (0..100 + kept).chain(150..200).collect();
    assert_eq!(
        values, expected,
        "new leader {new_leader}: the acks=all records, in order, without the lost acks=1 tail"
    );
}

/// One idempotent producer's batch of `n` records, numbered from `seq`.
fn idempotent_batch(pid: i64, seq: i32, n: usize) -> bytes::Bytes {
    let records: Vec<runnel_records::PlainRecord> = (0..n)
        .map(|i| runnel_records::PlainRecord {
            key: None,
            value: Some(value_of(seq as usize + i)),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    let mut bytes = runnel_records::build_batch(&records, runnel_records::Compression::None)
        .unwrap()
        .to_vec();
    runnel_records::batch::set_producer(&mut bytes, pid, 0, seq);
    bytes::Bytes::from(bytes)
}

/// Appends one batch to partition 0 on `address` with acks=all.
async fn append(address: &str, topic: &str, batch: bytes::Bytes) -> storage_pb::AppendResult {
    storage_client(address)
        .append(storage_pb::AppendRequest {
            partitions: vec![storage_pb::PartitionBatches {
                topic: topic.to_string(),
                partition: 0,
                batches: batch,
            }],
            acks: -1,
            timeout_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_deduplicated_across_a_failover() {
    const TOPIC: &str = "idempotent";
    const PID: i64 = 4711;
    let mut cluster = ProcessCluster::start(ProcessSpec {
        storage_nodes: 3,
        ..ProcessSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.coordinator()).unwrap();
    let mut topic = NewTopic::new(TOPIC, 1).config("min.insync.replicas", "2");
    topic.replication_factor = 3;
    admin.create_topic(topic).await.unwrap();
    wait_topic_ready(cluster.coordinator(), Some(cluster.ingest()), TOPIC).await;
    let before = wait_fully_in_sync(&admin, TOPIC, 3).await.remove(0);
    let address = |cluster: &mut ProcessCluster, id: i32| cluster.storage_node(id).address.clone();
    let leader = address(&mut cluster, before.leader);

    for seq in (0..50).step_by(5) {
        let r = append(&leader, TOPIC, idempotent_batch(PID, seq, 5)).await;
        assert_eq!((r.error, r.base_offset), (0, i64::from(seq)), "{r:?}");
    }
    // A retry of the last batch: its original offsets, not a new copy.
    let r = append(&leader, TOPIC, idempotent_batch(PID, 45, 5)).await;
    assert_eq!((r.error, r.base_offset, r.last_offset), (0, 45, 49));

    // The leader dies; the new one knows the producer from the replicated
    // batches and recognises the same retry.
    cluster.storage_node(before.leader).kill_9();
    let after = eventually("a new leader", LEASE_WAIT, || async {
        let p = partitions(&admin, TOPIC).await?.remove(0);
        if p.leader >= 0 && p.leader != before.leader {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    let new_leader = address(&mut cluster, after.leader);
    let r = eventually("the new leader takes appends", SOON, || async {
        let r = append(&new_leader, TOPIC, idempotent_batch(PID, 45, 5)).await;
        if r.error == ErrorCode::NotLeaderOrFollower as i32 {
            Err(format!("{r:?}"))
        } else {
            Ok(r)
        }
    })
    .await;
    assert_eq!(
        (r.error, r.base_offset, r.last_offset),
        (0, 45, 49),
        "{r:?}"
    );
    let r = append(&new_leader, TOPIC, idempotent_batch(PID, 50, 5)).await;
    assert_eq!((r.error, r.base_offset), (0, 50));
    let r = append(&new_leader, TOPIC, idempotent_batch(PID, 60, 1)).await;
    assert_eq!(r.error, ErrorCode::OutOfOrderSequenceNumber as i32, "{r:?}");
    let consumed = consume_all(cluster.coordinator(), TOPIC).await;
    let values: Vec<usize> = consumed[&0].iter().map(runnel_e2e::index_of).collect();
    assert_eq!(
        values,
        (0..55).collect::<Vec<_>>(),
        "every record once, in order"
    );
    eprintln!("55 acknowledged records, each once, across the failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_at_once_keeps_every_acknowledged_record() {
    const TOPIC: &str = "blackout";
    const PARTITIONS: i32 = 3;
    let mut cluster = ProcessCluster::start(ProcessSpec {
        storage_nodes: 3,
        ..ProcessSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.coordinator()).unwrap();
    let mut topic = NewTopic::new(TOPIC, PARTITIONS).config("min.insync.replicas", "2");
    topic.replication_factor = 3;
    admin.create_topic(topic).await.unwrap();
    wait_topic_ready(cluster.coordinator(), Some(cluster.ingest()), TOPIC).await;
    wait_fully_in_sync(&admin, TOPIC, 3).await;

    let producer = acks_all_producer(&cluster, Duration::from_secs(5), 0);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let task = produce_until(producer, TOPIC, PARTITIONS, stop.clone(), counter.clone());
    keep_producing_for(
        &counter,
        1000 + seed() * 541 % 3000,
        "records flowing before the blackout",
    )
    .await;
    // Power cut: every storage node dies at once, mid-stream.
    for id in 1..=3 {
        cluster.storage_node(id).kill_9();
    }
    stop.store(true, Ordering::SeqCst);
    let outcomes = task.await.unwrap();
    for id in 1..=3 {
        cluster.storage_node(id).restart().await;
    }
    wait_fully_in_sync(&admin, TOPIC, 3).await;
    wait_replicas_identical(&cluster, TOPIC).await;
    let acked: Vec<_> = outcomes
        .into_iter()
        .filter_map(|(i, _, o)| o.ok().map(|m| (i, m)))
        .collect();
    assert!(acked.len() >= 1000, "{} acknowledged", acked.len());
    check_acked_present(cluster.coordinator(), TOPIC, &acked).await;
    eprintln!(
        "{} acknowledged records survived killing every node at once",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_to_other_nodes_with_the_cli_while_it_takes_writes() {
    const TOPIC: &str = "moving";
    let cluster = ProcessCluster::start(ProcessSpec {
        storage_nodes: 4,
        ..ProcessSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.coordinator()).unwrap();
    let mut topic = NewTopic::new(TOPIC, 1).config("segment.bytes", "65536");
    topic.replication_factor = 2;
    admin.create_topic(topic).await.unwrap();
    wait_topic_ready(cluster.coordinator(), Some(cluster.ingest()), TOPIC).await;
    let before = wait_fully_in_sync(&admin, TOPIC, 2).await.remove(0);
    let to: Vec<i32> = (1..=4).filter(|n| !before.replicas.contains(n)).collect();

    let producer = acks_all_producer(&cluster, Duration::from_secs(30), 20);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let task = produce_until(producer, TOPIC, 1, stop.clone(), counter.clone());
    keep_producing_for(&counter, 5000, "a log worth copying").await;

    // Throttled to 2 MB/s; the CLI prints progress until the move is done.
    let bin = tokio::task::spawn_blocking(runnel_e2e::runnel_binary)
        .await
        .unwrap();
    let replicas = to.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let out = tokio::process::Command::new(bin)
        .args([
            "partitions",
            "reassign",
            TOPIC,
            "0",
            "--replicas",
            &replicas,
        ])
        .args([
            "--throttle",
            "2000000",
            "--coordinator",
            cluster.coordinator(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("done"), "{stdout}");
    stop.store(true, Ordering::SeqCst);
    let outcomes = task.await.unwrap();

    let after = partitions(&admin, TOPIC).await.unwrap().remove(0);
    assert_eq!(after.replicas, to);
    assert!(to.contains(&after.leader), "{after:?}");
    assert!(after.target_replicas.is_empty());
    // The old replicas drop their copy; the new ones hold the same bytes.
    eventually("the old replicas removed their copies", SOON, || async {
        let mut holders = Vec::new();
        for node in &cluster.storage {
            let dirs = storage_client(&node.address)
                .describe_log_dirs(storage_pb::DescribeLogDirsRequest {
                    topics: vec![TOPIC.to_string()],
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let sizes: Vec<i64> = dirs
                .log_dirs
                .iter()
                .flat_map(|d| &d.partitions)
                .map(|p| p.size_bytes)
                .collect();
            if !sizes.is_empty() {
                holders.push((node.id, sizes[0]));
            }
        }
        let ids: Vec<i32> = holders.iter().map(|h| h.0).collect();
        if ids == to && holders[0].1 == holders[1].1 {
            Ok(())
        } else {
            Err(format!("(node, size) holding a copy: {holders:?}"))
        }
    })
    .await;
    let acked: Vec<_> = outcomes
        .into_iter()
        .filter_map(|(i, _, o)| o.ok().map(|m| (i, m)))
        .collect();
    check_acked_present(cluster.coordinator(), TOPIC, &acked).await;
    eprintln!(
        "moved {TOPIC}-0 from {:?} to {to:?} under load; {} acknowledged records present; progress:\n{stdout}",
        before.replicas,
        acked.len()
    );
}

/// The base offsets of the segments in a partition directory, oldest first.
fn segment_bases(dir: &std::path::Path) -> Vec<i64> {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort();
    bases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_follow_delete_records_and_a_new_leader_keeps_the_start() {
    const TOPIC: &str = "trimmed";
    let mut cluster = ProcessCluster::start(ProcessSpec {
        storage_nodes: 3,
        ..ProcessSpec::default()
    })
    .await;
    let admin = Admin::connect(cluster.coordinator()).unwrap();
    let mut topic = NewTopic::new(TOPIC, 1).config("segment.bytes", "4096");
    topic.replication_factor = 3;
    admin.create_topic(topic).await.unwrap();
    wait_topic_ready(cluster.coordinator(), Some(cluster.ingest()), TOPIC).await;
    let p = wait_fully_in_sync(&admin, TOPIC, 3).await.remove(0);
    // Batches of 20 records, several per segment.
    const RECORDS: usize = 1000;
    let producer = acks_all_producer(&cluster, Duration::from_secs(10), 20);
    for i in 0..RECORDS {
        let record = Record {
            value: Some(value_of(i)),
            partition: Some(0),
            ..Default::default()
        };
        producer.send(TOPIC, record).await.unwrap();
        if i % 20 == 19 {
            producer.flush().await.unwrap();
        }
    }
    producer.flush().await.unwrap();
    wait_replicas_identical(&cluster, TOPIC).await;

    let partition_dir = |cluster: &mut ProcessCluster, node: i32| {
        let dir = cluster.storage_node(node).data_dir.clone().unwrap();
        dir.join(format!("{TOPIC}-0"))
    };
    let bases = segment_bases(&partition_dir(&mut cluster, p.leader));
    assert!(bases.len() > 4, "{bases:?}");
    let target = bases[2] + 3;
    assert!(target < bases[3]);
    let deleted = admin
        .delete_records(TOPIC, &std::collections::BTreeMap::from([(0, target)]))
        .await
        .unwrap();
    assert_eq!(deleted[&0].as_ref().unwrap(), &target);

    // Each follower records the leader's start and drops what lies wholly
    // below it, on its next fetch.
    for &node in p.replicas.iter().filter(|&&n| n != p.leader) {
        let dir = partition_dir(&mut cluster, node);
        eventually("the follower follows the log start", SOON, || async {
            let recorded =
                std::fs::read_to_string(dir.join("log-start-offset")).unwrap_or_default();
            let bases = segment_bases(&dir);
            if recorded.trim() == target.to_string() && bases[0] <= target && bases[1] > target {
                Ok(())
            } else {
                Err(format!(
                    "node {node}: start {recorded:?}, segments {bases:?}"
                ))
            }
        })
        .await;
    }

    // The leader dies: the new one answers with the same start, and reads
    // below it are out of range.
    cluster.storage_node(p.leader).kill_9();
    let new_leader = eventually("a new leader", LEASE_WAIT, || async {
        let now = partitions(&admin, TOPIC).await?.remove(0);
        if now.leader >= 0 && now.leader != p.leader {
            Ok(now.leader)
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    let address = cluster.storage_node(new_leader).address.clone();
    let earliest = eventually("the new leader answers", SOON, || async {
        let r = storage_client(&address)
            .list_offsets(storage_pb::ListOffsetsRequest {
                queries: vec![storage_pb::OffsetQuery {
                    topic: TOPIC.into(),
                    partition: 0,
                    timestamp: -2,
                }],
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .results
            .remove(0);
        if r.error == 0 {
            Ok(r.offset)
        } else {
            Err(r.error_message)
        }
    })
    .await;
    assert_eq!(earliest, target, "new leader {new_leader}");
    let below = storage_client(&address)
        .fetch(storage_pb::FetchRequest {
            partitions: vec![storage_pb::PartitionFetch {
                topic: TOPIC.into(),
                partition: 0,
                offset: target - 1,
                max_bytes: 1 << 20,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0);
    assert_eq!(below.error, ErrorCode::OffsetOutOfRange as i32);
    assert_eq!(below.log_start_offset, target);
    let consumed = consume_all(cluster.coordinator(), TOPIC).await;
    let values: Vec<usize> = consumed[&0].iter().map(runnel_e2e::index_of).collect();
    assert_eq!(values, (target as usize..RECORDS).collect::<Vec<_>>());
}
