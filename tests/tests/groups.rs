//! Consumer groups over native gRPC on a real etcd and real storage: two
//! groups nodes share the shards of `__consumer_offsets`; a group forms a
//! generation and commits offsets on one of them; that node dies without
//! handing anything over (its task is aborted, its lease lapses); the other
//! node takes the shard, replays it from storage, and serves the same
//! generation and exactly the acknowledged offsets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use bytes::Bytes;
use runnel_client::NewTopic;
use runnel_e2e::{InProcessCluster, SOON, eventually, wait_topic_ready};
use runnel_groups::GroupsConfig;
use runnel_proto::groups::v1 as pb;
use runnel_proto::groups::v1::groups_service_client::GroupsServiceClient;
use tokio::net::TcpListener;
use tonic::transport::Channel;

const SHARDS: i32 = 8;

/// A groups node on its own runtime, so killing it stops every task it
/// started at once, as a crashed process would (no shard handed back, the
/// lease left to lapse).
struct GroupsNode {
    address: String,
    kill: std::sync::mpsc::Sender<()>,
}

impl GroupsNode {
    fn kill(&self) {
        let _ = self.kill.send(());
    }
}

async fn start_groups_node(cluster: &InProcessCluster, node_id: i32) -> GroupsNode {
    start_groups_node_with(cluster, node_id, |_| {}).await
}

async fn start_groups_node_with(
    cluster: &InProcessCluster,
    node_id: i32,
    configure: impl FnOnce(&mut GroupsConfig),
) -> GroupsNode {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut config = GroupsConfig {
        node_id,
        metastore: cluster.etcd.url(),
        cluster: cluster.name.clone(),
        coordinator_address: Some(cluster.coordinator.clone()),
        advertised_address: Some(address.clone()),
        offsets_topic_partitions: SHARDS,
        lease_ttl_secs: 2,
        initial_rebalance_delay_ms: 0,
        ..Default::default()
    };
    configure(&mut config);
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            let store = runnel_metastore::open(&config.metastore.clone())
                .await
                .unwrap();
            let listener = TcpListener::from_std(listener).unwrap();
            runnel_groups::serve(config, store, listener, std::future::pending())
                .await
                .unwrap();
        });
        let _ = killed.recv();
        rt.shutdown_background();
    });
    GroupsNode { address, kill }
}

fn client(address: &str) -> GroupsServiceClient<Channel> {
    GroupsServiceClient::new(runnel_rpc::lazy_channel(address).unwrap())
}

/// The owner of every shard, once all are owned.
async fn shard_owners(cluster: &InProcessCluster) -> BTreeMap<i32, i32> {
    let store = runnel_metastore::open(&cluster.etcd.url()).await.unwrap();
    let prefix = runnel_cluster::Keys::new(&cluster.name).group_shards_prefix();
    eventually("every group shard owned", SOON, || {
        let store = store.clone();
        let prefix = prefix.clone();
        async move {
            let (kvs, _) = store.range(&prefix).await.map_err(|e| e.to_string())?;
            if kvs.len() != SHARDS as usize {
                return Err(format!("{} of {SHARDS} shards owned", kvs.len()));
            }
            Ok(kvs
                .iter()
                .map(|kv| {
                    let shard = kv.key.rsplit('/').next().unwrap().parse().unwrap();
                    let owner: runnel_cluster::GroupsNodeRecord =
                        serde_json::from_slice(&kv.value).unwrap();
                    (shard, owner.node_id)
                })
                .collect())
        }
    })
    .await
}

async fn find(any: &str, group: &str) -> pb::FindCoordinatorResponse {
    eventually("the group has a coordinator", SOON, || async {
        let r = client(any)
            .find_coordinator(pb::FindCoordinatorRequest {
                group_id: group.into(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if r.error_code != 0 {
            return Err(format!("error {}", r.error_code));
        }
        Ok(r)
    })
    .await
}

/// The group's committed offsets, once `address` serves them.
async fn committed_offsets(address: &str, group: &str, what: &str) -> Vec<pb::CommittedOffset> {
    eventually(what, SOON, || async {
        let r = client(address)
            .offset_fetch(pb::OffsetFetchRequest {
                group_id: group.into(),
                all_topics: true,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if r.error_code != 0 {
            return Err(format!("error {}", r.error_code));
        }
        Ok(r.offsets)
    })
    .await
}

fn join_request(group: &str, member: &str) -> pb::JoinGroupRequest {
    pb::JoinGroupRequest {
        group_id: group.into(),
        member_id: member.into(),
        group_instance_id: None,
        protocol_type: "consumer".into(),
        protocols: vec![pb::Protocol {
            name: "range".into(),
            metadata: Bytes::from_static(b"sub"),
        }],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        require_known_member_id: true,
        client_id: "e2e".into(),
        client_host: "127.0.0.1".into(),
        request_version: 9,
        reason: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_survives_the_loss_of_its_coordinator() {
    let cluster = InProcessCluster::start(1).await;
    let admin = cluster.admin();
    admin
        .create_topic(NewTopic::new("orders", 4))
        .await
        .unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), "orders").await;
    let nodes = [
        start_groups_node(&cluster, 1).await,
        start_groups_node(&cluster, 2).await,
    ];
    let owners = shard_owners(&cluster).await;
    // Both nodes got a share of the shards.
    for id in [1, 2] {
        assert!(
            owners.values().any(|o| *o == id),
            "node {id} owns no shard: {owners:?}"
        );
    }

    let group = "payments";
    let coordinator = find(&nodes[0].address, group).await;
    let owner_index = nodes
        .iter()
        .position(|n| n.address == coordinator.address)
        .expect("the coordinator is one of the nodes");
    let other = &nodes[1 - owner_index];

    // The node that does not own the group sends callers away.
    let away = client(&other.address)
        .join_group(join_request(group, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(away.error_code, 16, "NOT_COORDINATOR from a non-owner");

    // Join (KIP-394: first MEMBER_ID_REQUIRED), then sync as the leader.
    let mut owner = client(&coordinator.address);
    let first = owner
        .join_group(join_request(group, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    let joined = owner
        .join_group(join_request(group, &first.member_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.leader, first.member_id);
    let synced = owner
        .sync_group(pb::SyncGroupRequest {
            group_id: group.into(),
            generation_id: 1,
            member_id: first.member_id.clone(),
            assignments: vec![pb::Assignment {
                member_id: first.member_id.clone(),
                assignment: Bytes::from_static(b"all of it"),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(synced.error_code, 0);
    assert_eq!(synced.assignment, Bytes::from_static(b"all of it"));

    // Commit offsets (with metadata); a stale generation and an unknown
    // partition are refused.
    let commit = |generation: i32, partition: i32, offset: i64| pb::OffsetCommitRequest {
        group_id: group.into(),
        generation_id: generation,
        member_id: first.member_id.clone(),
        group_instance_id: None,
        offsets: vec![pb::PartitionOffset {
            topic: "orders".into(),
            partition,
            offset,
            leader_epoch: 0,
            metadata: Some(format!("m{offset}")),
        }],
    };
    for (p, o) in [(0, 10), (1, 20), (2, 30), (0, 11)] {
        let r = owner
            .offset_commit(commit(1, p, o))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.partitions[0].error_code, 0);
    }
    let stale = owner
        .offset_commit(commit(0, 3, 99))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stale.partitions[0].error_code, 22, "ILLEGAL_GENERATION");
    let unknown = owner
        .offset_commit(commit(1, 9, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unknown.partitions[0].error_code, 3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );

    // The owner dies without handing the shard back.
    nodes[owner_index].kill();

    let moved = eventually("the group moves to the surviving node", SOON, || async {
        let r = find(&other.address, group).await;
        if r.address == other.address {
            Ok(r)
        } else {
            Err(format!("still owned by {}", r.address))
        }
    })
    .await;
    assert_eq!(moved.shard, coordinator.shard);
    let mut survivor = client(&other.address);
    let fetched = committed_offsets(
        &other.address,
        group,
        "the new coordinator serves the offsets",
    )
    .await;
    let got: Vec<(i32, i64, String)> = fetched
        .iter()
        .map(|o| (o.partition, o.offset, o.metadata.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 11, "m11".into()),
            (1, 20, "m20".into()),
            (2, 30, "m30".into())
        ]
    );

    // The same member and generation carry on: no rejoin needed.
    let hb = survivor
        .heartbeat(pb::HeartbeatRequest {
            group_id: group.into(),
            generation_id: 1,
            member_id: first.member_id.clone(),
            group_instance_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hb.error_code, 0,
        "the restored generation accepts the member"
    );
    let described = survivor
        .describe_groups(pb::DescribeGroupsRequest {
            group_ids: vec![group.into()],
        })
        .await
        .unwrap()
        .into_inner();
    let d = &described.groups[0];
    assert_eq!(
        (d.state.as_str(), d.generation_id, d.members.len()),
        ("Stable", 1, 1)
    );
    assert_eq!(d.members[0].assignment, Bytes::from_static(b"all of it"));

    // An active group cannot be deleted; once its member leaves it can.
    let del = survivor
        .delete_groups(pb::DeleteGroupsRequest {
            group_ids: vec![group.into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.groups[0].error_code, 68, "NON_EMPTY_GROUP");
    let left = survivor
        .leave_group(pb::LeaveGroupRequest {
            group_id: group.into(),
            members: vec![pb::LeavingMember {
                member_id: first.member_id.clone(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.members[0].error_code, 0);
    let del = survivor
        .delete_groups(pb::DeleteGroupsRequest {
            group_ids: vec![group.into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.groups[0].error_code, 0);
    let gone = survivor
        .offset_fetch(pb::OffsetFetchRequest {
            group_id: group.into(),
            all_topics: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        gone.offsets.is_empty(),
        "offsets of a deleted group: {gone:?}"
    );
    let again = survivor
        .delete_groups(pb::DeleteGroupsRequest {
            group_ids: vec![group.into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.groups[0].error_code, 69, "GROUP_ID_NOT_FOUND");

    for n in &nodes {
        n.kill();
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_stored_before_they_are_acknowledged() {
    // Commit a burst concurrently, restart the only groups node, and find
    // every acknowledged offset: each commit waits for its append to
    // storage (acks=all) before it is answered.
    let cluster = InProcessCluster::start(1).await;
    let admin = cluster.admin();
    admin
        .create_topic(NewTopic::new("events", 2))
        .await
        .unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), "events").await;
    let node = start_groups_node(&cluster, 1).await;
    shard_owners(&cluster).await;

    let groups: Vec<String> = (0..20).map(|i| format!("g{i}")).collect();
    let mut commits = Vec::new();
    for g in &groups {
        let address = find(&node.address, g).await.address;
        for offset in 1..=5i64 {
            let mut c = client(&address);
            let g = g.clone();
            commits.push(tokio::spawn(async move {
                c.offset_commit(pb::OffsetCommitRequest {
                    group_id: g,
                    generation_id: -1,
                    member_id: String::new(),
                    group_instance_id: None,
                    offsets: vec![pb::PartitionOffset {
                        topic: "events".into(),
                        partition: (offset % 2) as i32,
                        offset,
                        leader_epoch: -1,
                        metadata: None,
                    }],
                })
                .await
                .unwrap()
                .into_inner()
            }));
        }
    }
    for c in commits {
        assert_eq!(c.await.unwrap().partitions[0].error_code, 0);
    }
    node.kill();
    let node = start_groups_node(&cluster, 1).await;
    for g in &groups {
        let offsets = committed_offsets(&node.address, g, "offsets after the restart").await;
        // Concurrent commits to one partition land in some order; every
        // one was acknowledged, so the stored value is one of them and
        // both partitions are there.
        let by_partition: BTreeMap<i32, i64> =
            offsets.iter().map(|o| (o.partition, o.offset)).collect();
        assert_eq!(by_partition.len(), 2, "group {g}: {offsets:?}");
        assert!([2, 4].contains(&by_partition[&0]));
        assert!([1, 3, 5].contains(&by_partition[&1]));
    }
    node.kill();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_a_group_empty_past_retention_are_deleted() {
    // Retention 0 minutes, checked every 200 ms: an empty group's offsets go
    // at the next check, and stay gone after a restart (tombstones).
    let cluster = InProcessCluster::start(1).await;
    cluster
        .admin()
        .create_topic(NewTopic::new("audit", 1))
        .await
        .unwrap();
    wait_topic_ready(&cluster.coordinator, Some(&cluster.ingest), "audit").await;
    let retain = |c: &mut GroupsConfig| {
        c.offsets_retention_minutes = 0;
        c.offsets_retention_check_interval_ms = 200;
    };
    let node = start_groups_node_with(&cluster, 1, retain).await;
    shard_owners(&cluster).await;
    let address = find(&node.address, "forgotten").await.address;
    let r = client(&address)
        .offset_commit(pb::OffsetCommitRequest {
            group_id: "forgotten".into(),
            generation_id: -1,
            offsets: vec![pb::PartitionOffset {
                topic: "audit".into(),
                partition: 0,
                offset: 42,
                leader_epoch: -1,
                metadata: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.partitions[0].error_code, 0);
    eventually("the offsets expire", SOON, || async {
        let left = committed_offsets(&address, "forgotten", "offsets readable").await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {left:?}"))
        }
    })
    .await;
    node.kill();
    let node = start_groups_node(&cluster, 1).await;
    shard_owners(&cluster).await;
    let after = committed_offsets(&node.address, "forgotten", "offsets after the restart").await;
    assert!(after.is_empty(), "expired offsets came back: {after:?}");
    node.kill();
    cluster.shutdown().await;
}
