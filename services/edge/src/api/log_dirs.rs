//! DescribeLogDirs: every edge stands for the whole cluster, so it asks
//! every live storage node (`DescribeLogDirs` over gRPC, all at once) and
//! answers with all their log directories. A node that does not answer is
//! listed with KAFKA_STORAGE_ERROR. Volume sizes are not known (-1).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::future::join_all;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::*;
use runnel_proto::storage::v1 as st;

use super::Ctx;
use crate::error::code;
use crate::frame::str_bytes;

/// Which partitions the client asked about: `None` for all.
type Filter = Option<HashMap<String, BTreeSet<i32>>>;

fn wanted(filter: &Filter, topic: &str, partition: i32) -> bool {
    match filter {
        None => true,
        Some(f) => f.get(topic).is_some_and(|ps| ps.contains(&partition)),
    }
}

fn log_dir_result(
    path: String,
    partitions: &[st::LogDirPartition],
    filter: &Filter,
) -> DescribeLogDirsResult {
    let mut topics: BTreeMap<&str, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for p in partitions
        .iter()
        .filter(|p| wanted(filter, &p.topic, p.partition))
    {
        topics.entry(&p.topic).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(p.partition)
                .with_partition_size(p.size_bytes)
                .with_offset_lag(p.offset_lag)
                .with_is_future_key(false),
        );
    }
    DescribeLogDirsResult::default()
        .with_error_code(code::NONE)
        .with_log_dir(str_bytes(path))
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
        .with_total_bytes(-1)
        .with_usable_bytes(-1)
}

pub async fn describe_log_dirs(
    ctx: &mut Ctx<'_>,
    req: DescribeLogDirsRequest,
    _version: i16,
) -> DescribeLogDirsResponse {
    let edge = ctx.edge;
    let md = edge.metadata();
    let filter: Filter = req.topics.map(|topics| {
        let mut f: HashMap<String, BTreeSet<i32>> = HashMap::new();
        for t in topics {
            f.entry(t.topic.0.to_string())
                .or_default()
                .extend(t.partitions);
        }
        f
    });
    let topics: Vec<String> = match &filter {
        Some(f) if !f.is_empty() => f.keys().cloned().collect(),
        // Everything (an empty filter still lists the directories).
        _ => Vec::new(),
    };
    let timeout = edge.rpc_timeout();
    let calls = md.nodes.values().map(|node| {
        let request = st::DescribeLogDirsRequest {
            topics: topics.clone(),
        };
        async move {
            let outcome = async {
                let mut client = edge.storage(&node.address)?;
                let mut call = tonic::Request::new(request);
                call.set_timeout(timeout);
                Ok::<_, tonic::Status>(client.describe_log_dirs(call).await?.into_inner())
            }
            .await;
            (node, outcome)
        }
    });
    let answers = join_all(calls).await;
    // Paths are per machine: when two nodes use the same one, name the node.
    let mut path_count: HashMap<&str, usize> = HashMap::new();
    for (_, outcome) in &answers {
        if let Ok(r) = outcome {
            for d in &r.log_dirs {
                *path_count.entry(d.path.as_str()).or_default() += 1;
            }
        }
    }
    let mut results = Vec::new();
    for (node, outcome) in &answers {
        match outcome {
            Ok(r) => {
                for d in &r.log_dirs {
                    let path = if path_count.get(d.path.as_str()).copied().unwrap_or(0) > 1 {
                        format!("node{}:{}", node.node_id, d.path)
                    } else {
                        d.path.clone()
                    };
                    results.push(log_dir_result(path, &d.partitions, &filter));
                }
            }
            Err(status) => {
                tracing::debug!(node = node.node_id, error = %status, "describing log dirs failed");
                ctx.note(code::KAFKA_STORAGE_ERROR);
                results.push(
                    DescribeLogDirsResult::default()
                        .with_error_code(code::KAFKA_STORAGE_ERROR)
                        .with_log_dir(str_bytes(format!(
                            "node{}:{} (unreachable)",
                            node.node_id, node.address
                        )))
                        .with_total_bytes(-1)
                        .with_usable_bytes(-1),
                );
            }
        }
    }
    DescribeLogDirsResponse::default()
        .with_error_code(code::NONE)
        .with_results(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_groups() {
        let parts = vec![
            st::LogDirPartition {
                topic: "a".into(),
                partition: 0,
                size_bytes: 10,
                offset_lag: 0,
            },
            st::LogDirPartition {
                topic: "a".into(),
                partition: 1,
                size_bytes: 20,
                offset_lag: 0,
            },
            st::LogDirPartition {
                topic: "b".into(),
                partition: 0,
                size_bytes: 30,
                offset_lag: 0,
            },
        ];
        let all = log_dir_result("/d".into(), &parts, &None);
        assert_eq!(all.topics.len(), 2);
        assert_eq!(all.topics[0].partitions.len(), 2);
        assert_eq!(all.topics[1].partitions[0].partition_size, 30);
        let mut f = HashMap::new();
        f.insert("a".to_string(), BTreeSet::from([1]));
        let some = log_dir_result("/d".into(), &parts, &Some(f));
        assert_eq!(some.topics.len(), 1);
        assert_eq!(some.topics[0].partitions[0].partition_index, 1);
        let none = log_dir_result("/d".into(), &parts, &Some(HashMap::new()));
        assert!(none.topics.is_empty());
    }
}
