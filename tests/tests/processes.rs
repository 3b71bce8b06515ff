//! Every role as its own `runnel` process (the binary built from this
//! workspace, see `runnel_e2e::runnel_binary`) on a real etcd: storage nodes
//! killed with SIGKILL keep every acknowledged record, a corrupt segment tail
//! is cut off at restart, a standby coordinator takes over from a killed
//! controller, and every process answers health, reflection and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use runnel_client::{Admin, ClientError, NewTopic, Producer, Record, RecordMetadata};
use runnel_e2e::{
    ProcessCluster, ProcessSpec, RoleKind, SOON, check_acked_present, consume_all, eventually,
    http_get, partition_leaders, produce_until, scan_partition, value_of, wait_topic_ready,
};
use runnel_proto::coordinator::v1 as coordinator_pb;
use runnel_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use runnel_records::{Compression, PlainRecord, build_batch};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Long enough for a lease TTL (3 s here) to run out and the controller to
/// act, with room for a loaded machine.
const LEASE_WAIT: Duration = Duration::from_secs(40);

/// The newest segment (`<base offset>.log`) of a partition directory.
fn newest_segment(partition_dir: &Path) -> PathBuf {
    std::fs::read_dir(partition_dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", partition_dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .unwrap_or_else(|| panic!("no segment in {}", partition_dir.display()))
}

fn append_to(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_survive_kill_9_and_a_corrupt_tail() {
    const TOPIC: &str = "crash";
    const PARTITIONS: i32 = 4;
    let mut cluster = ProcessCluster::start(ProcessSpec::default()).await;
    let coordinator = cluster.coordinator().to_string();
    let ingest = cluster.ingest().to_string();
    let admin = Admin::connect(&coordinator).unwrap();
    // Small segments: recovery deals with sealed segments and a tail.
    admin
        .create_topic(NewTopic::new(TOPIC, PARTITIONS).config("segment.bytes", "32768"))
        .await
        .unwrap();
    wait_topic_ready(&coordinator, Some(&ingest), TOPIC).await;
    let leaders = partition_leaders(&coordinator, TOPIC).await.unwrap();
    let nodes: BTreeSet<i32> = leaders.values().map(|(n, _)| *n).collect();
    assert_eq!(
        nodes.len(),
        2,
        "partitions spread over both storage nodes: {leaders:?}"
    );
    let victim = leaders[&1].0;
    let victim_partitions: Vec<i32> = leaders
        .iter()
        .filter(|(_, (n, _))| *n == victim)
        .map(|(p, _)| *p)
        .collect();

    // Produce with acks=all (and retries) the whole time.
    let mut config = runnel_client::ProducerConfig::new(&ingest, &coordinator);
    config.acks = -1;
    config.retries = 10;
    config.request_timeout = Duration::from_secs(30);
    let producer = Producer::new(config).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let task = produce_until(
        producer.clone(),
        TOPIC,
        PARTITIONS,
        stop.clone(),
        counter.clone(),
    );
    eventually("records flowing before the crash", SOON, || async {
        let n = counter.load(Ordering::SeqCst);
        if n >= 2000 {
            Ok(())
        } else {
            Err(format!("{n} sent"))
        }
    })
    .await;

    // kill -9 a storage node mid-run; the controller notices it is gone.
    cluster.storage_node(victim).kill_9();
    eventually(
        "the killed node's partitions go offline",
        LEASE_WAIT,
        || async {
            let t = admin
                .describe_topic(TOPIC)
                .await
                .map_err(|e| e.to_string())?;
            let offline: Vec<i32> = t
                .partitions
                .iter()
                .filter(|p| p.leader < 0)
                .map(|p| p.partition)
                .collect();
            if offline == victim_partitions {
                Ok(())
            } else {
                Err(format!(
                    "offline: {offline:?}, expected {victim_partitions:?}"
                ))
            }
        },
    )
    .await;

    // Restart it on the same data directory; it leads its partitions again.
    cluster.storage_node(victim).restart().await;
    let restarted_at = counter.load(Ordering::SeqCst);
    eventually("the restarted node leads again", LEASE_WAIT, || async {
        let now = partition_leaders(&coordinator, TOPIC).await?;
        if now == leaders {
            Ok(())
        } else {
            Err(format!("leaders {now:?}"))
        }
    })
    .await;
    eventually("records flowing after the restart", SOON, || async {
        let n = counter.load(Ordering::SeqCst);
        if n >= restarted_at + 2000 {
            Ok(())
        } else {
            Err(format!("{} sent since", n - restarted_at))
        }
    })
    .await;
    // Once more, mid-run, without waiting for the controller to notice: the
    // node comes back before its lease runs out and keeps leading.
    cluster.storage_node(victim).kill_9();
    cluster.storage_node(victim).restart().await;
    let quick_restart_at = counter.load(Ordering::SeqCst);
    eventually("records flowing after the quick restart", SOON, || async {
        let n = counter.load(Ordering::SeqCst);
        if n >= quick_restart_at + 2000 {
            Ok(())
        } else {
            Err(format!("{} sent since", n - quick_restart_at))
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let outcomes = task.await.unwrap();

    // Every acknowledged record is where its ack said, in order per
    // partition, and served cleanly.
    let acked: Vec<(usize, RecordMetadata)> = outcomes
        .iter()
        .filter_map(|(i, _, r)| r.as_ref().ok().map(|m| (*i, m.clone())))
        .collect();
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(i, _, r)| r.as_ref().err().map(|e| format!("{i}: {e}")))
        .take(5)
        .collect();
    eprintln!(
        "{} records sent, {} acknowledged; first failures: {failed:?}",
        outcomes.len(),
        acked.len()
    );
    for &p in &victim_partitions {
        assert!(
            acked
                .iter()
                .any(|(i, m)| m.partition == p && *i >= restarted_at),
            "appends to partition {p} continue after the restart"
        );
        assert!(
            acked
                .iter()
                .any(|(i, m)| m.partition == p && *i >= quick_restart_at),
            "appends to partition {p} continue after the quick restart"
        );
    }
    let consumed = check_acked_present(&coordinator, TOPIC, &acked).await;

    // Part two: garbage at the end of the newest segment of a stopped node.
    let before: BTreeMap<i32, i64> = consumed
        .iter()
        .map(|(&p, records)| (p, records.last().map_or(0, |r| r.offset + 1)))
        .collect();
    let node = cluster.storage_node(victim);
    node.kill_9();
    let data_dir = node.data_dir.clone().unwrap();
    let template = build_batch(
        &[PlainRecord {
            key: None,
            value: Some(value_of(usize::MAX)),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
        }],
        Compression::None,
    )
    .unwrap();
    let mut segments = Vec::new();
    for (n, &p) in victim_partitions.iter().enumerate() {
        let segment = newest_segment(&data_dir.join(format!("{TOPIC}-{p}")));
        let good_len = std::fs::metadata(&segment).unwrap().len();
        let mut batch = template.to_vec();
        batch[0..8].copy_from_slice(&before[&p].to_be_bytes());
        let junk: Vec<u8> = match n % 3 {
            // Bytes that are no batch at all.
            0 => vec![0xab; 100],
            // A whole batch with the next offset whose CRC does not match.
            1 => {
                let last = batch.len() - 1;
                batch[last] ^= 0xff;
                batch
            }
            // A torn write: the first half of a good batch.
            _ => batch[..batch.len() / 2].to_vec(),
        };
        append_to(&segment, &junk);
        segments.push((segment, good_len));
    }
    cluster.storage_node(victim).restart().await;
    wait_topic_ready(&coordinator, Some(&ingest), TOPIC).await;
    for (segment, good_len) in &segments {
        assert_eq!(
            std::fs::metadata(segment).unwrap().len(),
            *good_len,
            "recovery cuts the junk off {}",
            segment.display()
        );
    }

    let after = consume_all(&coordinator, TOPIC).await;
    assert_eq!(
        after, consumed,
        "recovery serves exactly the records from before, nothing more"
    );
    let mut consumer =
        runnel_client::Consumer::new(runnel_client::ConsumerConfig::new(&coordinator)).unwrap();
    for p in 0..PARTITIONS {
        let (_, end) = scan_partition(&coordinator, TOPIC, p).await;
        assert_eq!(
            end, before[&p],
            "partition {p}: the junk is not part of the log"
        );
        // The rebuilt indexes answer time queries as before the crash.
        let records = &after[&p];
        for probe in [
            &records[0],
            &records[records.len() / 2],
            records.last().unwrap(),
        ] {
            let expected = records
                .iter()
                .find(|r| r.timestamp_ms >= probe.timestamp_ms)
                .unwrap();
            assert_eq!(
                consumer
                    .list_offset(TOPIC, p, probe.timestamp_ms)
                    .await
                    .unwrap(),
                (expected.offset, expected.timestamp_ms),
                "partition {p}: offset for time {}",
                probe.timestamp_ms
            );
        }
    }
    // Appends continue right after the last good batch.
    let mut deliveries = Vec::new();
    let base = counter.load(Ordering::SeqCst);
    for (k, &p) in victim_partitions.iter().enumerate() {
        for j in 0..3 {
            let i = base + k * 3 + j;
            let record = Record {
                value: Some(value_of(i)),
                partition: Some(p),
                ..Default::default()
            };
            deliveries.push((i, producer.send(TOPIC, record).await.unwrap()));
        }
    }
    let mut acked_after = Vec::new();
    for (i, d) in deliveries {
        let m = d
            .await
            .unwrap_or_else(|e| panic!("produce after recovery: {e}"));
        acked_after.push((i, m));
    }
    for &p in &victim_partitions {
        let offsets: Vec<i64> = acked_after
            .iter()
            .filter(|(_, m)| m.partition == p)
            .map(|(_, m)| m.offset)
            .collect();
        let end = before[&p];
        assert_eq!(offsets, [end, end + 1, end + 2], "partition {p}");
    }
    check_acked_present(&coordinator, TOPIC, &acked_after).await;
}

async fn get_controller(address: &str) -> Result<coordinator_pb::GetControllerResponse, String> {
    let channel = runnel_rpc::lazy_channel(address).map_err(|e| e.to_string())?;
    CoordinatorServiceClient::new(channel)
        .get_controller(coordinator_pb::GetControllerRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

/// Creates a topic through `coordinator`, retrying while there is no
/// controller to take it.
async fn create_through(coordinator: &str, name: &str) {
    let admin = Admin::connect(coordinator).unwrap();
    eventually(
        &format!("creating {name} through {coordinator}"),
        LEASE_WAIT,
        || async {
            match admin.create_topic(NewTopic::new(name, 2)).await {
                Ok(_) => Ok(()),
                // An earlier attempt got through but its answer was lost.
                Err(ClientError::Rpc(s)) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_coordinator_takes_over_from_a_killed_controller() {
    let mut cluster = ProcessCluster::start(ProcessSpec {
        coordinators: 2,
        storage_nodes: 1,
        ingest: false,
        lease_ttl_secs: 3,
    })
    .await;
    let addresses: Vec<String> = cluster
        .coordinators
        .iter()
        .map(|c| c.address.clone())
        .collect();

    // Both instances agree on who is active.
    let active = eventually("both coordinators see the controller", SOON, || async {
        let a = get_controller(&addresses[0]).await?;
        let b = get_controller(&addresses[1]).await?;
        if a == b {
            Ok(a)
        } else {
            Err(format!("{a:?} vs {b:?}"))
        }
    })
    .await;
    let active_index = cluster
        .coordinators
        .iter()
        .position(|c| c.id == active.controller_id)
        .unwrap_or_else(|| panic!("controller id {} is no instance", active.controller_id));
    let standby_index = 1 - active_index;
    assert_eq!(active.address, addresses[active_index]);

    // A creation sent to the standby is forwarded to the controller.
    let standby = Admin::connect(&addresses[standby_index]).unwrap();
    let created = standby
        .create_topic(NewTopic::new("via-standby", 3))
        .await
        .unwrap();
    assert_eq!(created.partition_count, 3);
    let seen = Admin::connect(&addresses[active_index])
        .unwrap()
        .describe_topic("via-standby")
        .await
        .unwrap();
    assert_eq!(seen.topic_id, created.topic_id);

    // kill -9 the controller: the standby takes over once the lease expires.
    cluster.coordinators[active_index].kill_9();
    create_through(&addresses[standby_index], "after-failover").await;
    let now = get_controller(&addresses[standby_index]).await.unwrap();
    assert_eq!(now.controller_id, cluster.coordinators[standby_index].id);
    assert_eq!(now.address, addresses[standby_index]);
    let names: BTreeSet<String> = standby
        .list_topics(false)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["via-standby".to_string(), "after-failover".to_string()])
    );
    wait_topic_ready(&addresses[standby_index], None, "after-failover").await;

    // The old controller comes back as a standby and forwards.
    cluster.coordinators[active_index].restart().await;
    let back = eventually(
        "the restarted instance sees the new controller",
        SOON,
        || async {
            let c = get_controller(&addresses[active_index]).await?;
            if c.controller_id == now.controller_id {
                Ok(c)
            } else {
                Err(format!("{c:?}"))
            }
        },
    )
    .await;
    assert_eq!(back, now);
    create_through(&addresses[active_index], "via-old-controller").await;
    let t = standby.describe_topic("via-old-controller").await.unwrap();
    assert_eq!(t.partition_count, 2);
}

async fn list_services(address: &str, symbol: &str) -> (Vec<String>, usize) {
    let channel = runnel_rpc::lazy_channel(address).unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_string())),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap_or_else(|s| panic!("reflection at {address}: {s}"))
        .into_inner();
    let mut services = Vec::new();
    let mut descriptors = 0;
    while let Some(r) = responses.message().await.unwrap() {
        match r.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                services.extend(l.service.into_iter().map(|s| s.name));
            }
            Some(MessageResponse::FileDescriptorResponse(f)) => {
                descriptors += f.file_descriptor_proto.len();
            }
            other => panic!("reflection at {address} answered {other:?}"),
        }
    }
    (services, descriptors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_answers_health_reflection_and_metrics() {
    let mut cluster = ProcessCluster::start(ProcessSpec::default()).await;
    let coordinator = cluster.coordinator().to_string();
    let ingest = cluster.ingest().to_string();

    for role in cluster.roles() {
        let channel = runnel_rpc::lazy_channel(&role.address).unwrap();
        let mut health = HealthClient::new(channel);
        for service in ["", role.kind.service()] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("{}: health of {service:?}: {s}", role.process.name()))
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{}: {service:?}",
                role.process.name()
            );
        }
        let unknown = health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        let (services, descriptors) = list_services(&role.address, role.kind.service()).await;
        for expected in [role.kind.service(), "grpc.health.v1.Health"] {
            assert!(
                services.iter().any(|s| s == expected),
                "{}: reflection lists {services:?}, not {expected}",
                role.process.name()
            );
        }
        assert!(
            descriptors > 0,
            "{}: no descriptor for its service",
            role.process.name()
        );
    }

    // Some traffic through every role.
    Admin::connect(&coordinator)
        .unwrap()
        .create_topic(NewTopic::new("observed", 2))
        .await
        .unwrap();
    wait_topic_ready(&coordinator, Some(&ingest), "observed").await;
    let producer =
        Producer::new(runnel_client::ProducerConfig::new(&ingest, &coordinator)).unwrap();
    for i in 0..20 {
        let record = Record {
            value: Some(value_of(i)),
            partition: Some((i % 2) as i32),
            ..Default::default()
        };
        producer
            .send("observed", record)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumed = consume_all(&coordinator, "observed").await;
    assert_eq!(consumed.values().map(Vec::len).sum::<usize>(), 20);

    for role in cluster.roles() {
        let label = match role.kind {
            RoleKind::Coordinator => "service=\"coordinator\"",
            RoleKind::Storage => "service=\"storage\"",
            RoleKind::Ingest => "service=\"ingest\"",
        };
        let body = eventually(
            &format!("{} metrics", role.process.name()),
            SOON,
            || async {
                let response = http_get(&role.metrics_address, "/metrics").await?;
                if !response.starts_with("HTTP/1.1 200") {
                    return Err(format!(
                        "answer: {}",
                        response.lines().next().unwrap_or_default()
                    ));
                }
                let has_counter = response
                    .lines()
                    .any(|l| l.starts_with("runnel_requests_total{") && l.contains(label));
                if has_counter {
                    Ok(response)
                } else {
                    Err("no runnel_requests_total yet".into())
                }
            },
        )
        .await;
        assert!(
            body.contains("# TYPE runnel_requests_total counter"),
            "{}: Prometheus text format",
            role.process.name()
        );
    }

    // SIGTERM: every role drains and exits successfully.
    for role in cluster.roles_mut() {
        let name = role.process.name().to_string();
        let status = role
            .process
            .terminate(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{name} did not stop on SIGTERM"));
        assert!(status.success(), "{name} exited with {status} on SIGTERM");
    }
}

/// Names of the partition directories of `topic` under a data directory.
fn partition_dirs(data_dir: &Path, topic: &str) -> Vec<String> {
    std::fs::read_dir(data_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.starts_with(&format!("{topic}-")) || n.starts_with(&format!("{topic}."))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A topic deleted while a storage node is down must not keep its data on
/// that node forever: the node, back in the same cluster, removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_while_a_storage_node_is_down_is_removed_when_it_returns() {
    let mut cluster = ProcessCluster::start(ProcessSpec {
        coordinators: 1,
        storage_nodes: 1,
        ingest: true,
        lease_ttl_secs: 3,
    })
    .await;
    let coordinator = cluster.coordinator().to_string();
    let ingest = cluster.ingest().to_string();
    let admin = Admin::connect(&coordinator).unwrap();
    admin
        .create_topic(NewTopic::new("ephemeral", 2))
        .await
        .unwrap();
    wait_topic_ready(&coordinator, Some(&ingest), "ephemeral").await;
    let producer =
        Producer::new(runnel_client::ProducerConfig::new(&ingest, &coordinator)).unwrap();
    for i in 0..10 {
        let record = Record {
            value: Some(value_of(i)),
            partition: Some((i % 2) as i32),
            ..Default::default()
        };
        producer
            .send("ephemeral", record)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let node = cluster.storage_node(1);
    let data_dir = node.data_dir.clone().unwrap();
    let address = node.address.clone();
    assert_eq!(partition_dirs(&data_dir, "ephemeral").len(), 2);

    node.kill_9();
    admin.delete_topic("ephemeral").await.unwrap();
    cluster.storage_node(1).restart().await;
    cluster.wait_ready(&coordinator).await;

    // The returning node does not serve the deleted topic…
    let fetch = runnel_e2e::storage_client(&address)
        .fetch(runnel_proto::storage::v1::FetchRequest {
            partitions: vec![runnel_proto::storage::v1::PartitionFetch {
                topic: "ephemeral".into(),
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
        runnel_proto::common::v1::ErrorCode::UnknownTopicOrPartition as i32,
        "{:?}",
        fetch.results[0]
    );
    // …and gives its disk space back.
    eventually(
        "the deleted topic's data removed from the returning node",
        SOON,
        || {
            let dirs = partition_dirs(&data_dir, "ephemeral");
            let shown = data_dir.display().to_string();
            async move {
                if dirs.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still in {shown}: {dirs:?}"))
                }
            }
        },
    )
    .await;
}
