//! `runnel group …`: consumer-group administration, like Kafka's
//! `kafka-consumer-groups.sh` — list, describe (members, assignments,
//! committed offsets and lag), delete, and reset offsets (dry run unless
//! `--execute`).

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use runnel_client::groups_pb as pb;
use runnel_client::{Admin, Consumer, ConsumerConfig, Groups};

/// Where the group tools find the cluster.
#[derive(Args, Debug, Clone)]
pub struct GroupEndpoints {
    /// A groups node's gRPC address.
    #[arg(long, env = "RUNNEL_GROUPS", default_value = "127.0.0.1:7700")]
    pub groups: String,
    /// Coordinator address (topic metadata and log offsets).
    #[arg(long, env = "RUNNEL_COORDINATOR", default_value = "127.0.0.1:7400")]
    pub coordinator: String,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Every consumer group with its state.
    List {
        #[command(flatten)]
        endpoints: GroupEndpoints,
    },
    /// State, members and their partitions, committed offsets and lag.
    Describe {
        group: String,
        #[command(flatten)]
        endpoints: GroupEndpoints,
    },
    /// Delete an empty group and its committed offsets.
    Delete {
        group: String,
        #[command(flatten)]
        endpoints: GroupEndpoints,
    },
    /// Move an inactive group's committed offsets (a dry run unless --execute).
    ResetOffsets(ResetArgs),
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    group: String,
    /// `topic` or `topic:0,2,5` (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Every topic the group has committed offsets for.
    #[arg(long, conflicts_with = "topics")]
    all_topics: bool,
    #[command(flatten)]
    target: ResetTarget,
    /// Commit the new offsets (without it, only show them).
    #[arg(long)]
    execute: bool,
    #[command(flatten)]
    endpoints: GroupEndpoints,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ResetTarget {
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    /// RFC 3339 time or epoch milliseconds.
    #[arg(long)]
    to_datetime: Option<String>,
    #[arg(long)]
    to_offset: Option<i64>,
    /// Move each committed offset by N (negative goes back).
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
}

pub async fn run(cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List { endpoints } => {
            let groups = Groups::connect(&endpoints.groups)?.list().await?;
            println!(
                "{:<40} {:<20} {:<9} PROTOCOL-TYPE",
                "GROUP", "STATE", "TYPE"
            );
            for g in groups {
                println!(
                    "{:<40} {:<20} {:<9} {}",
                    g.group_id, g.state, g.group_type, g.protocol_type
                );
            }
            Ok(())
        }
        GroupCommand::Describe { group, endpoints } => describe(&group, &endpoints).await,
        GroupCommand::Delete { group, endpoints } => {
            Groups::connect(&endpoints.groups)?.delete(&group).await?;
            println!("deleted group {group}");
            Ok(())
        }
        GroupCommand::ResetOffsets(args) => reset(args).await,
    }
}

async fn describe(group: &str, endpoints: &GroupEndpoints) -> anyhow::Result<()> {
    let client = Groups::connect(&endpoints.groups)?;
    let d = client.describe(group).await?;
    let offsets = client.offsets(group).await?;
    println!(
        "group {}  state {}  protocol {}/{}  generation {}  members {}",
        d.group_id,
        d.state,
        d.protocol_type,
        d.protocol_name,
        d.generation_id,
        d.members.len()
    );
    // Which member owns each partition, from the consumer assignments.
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    if !d.members.is_empty() {
        println!(
            "\n{:<50} {:<20} {:<24} {:<16} ASSIGNMENT",
            "MEMBER", "INSTANCE", "CLIENT-ID", "HOST"
        );
    }
    for m in &d.members {
        let assigned = runnel_groups::consumer_protocol::assignment_partitions(&m.assignment)
            .unwrap_or_default();
        let shown: Vec<String> = assigned
            .iter()
            .map(|(t, ps)| format!("{t}:{}", join(ps)))
            .collect();
        for (t, ps) in &assigned {
            for p in ps {
                owner.insert((t.clone(), *p), m.member_id.clone());
            }
        }
        println!(
            "{:<50} {:<20} {:<24} {:<16} {}",
            m.member_id,
            m.group_instance_id.as_deref().unwrap_or("-"),
            m.client_id,
            m.client_host,
            shown.join(" ")
        );
    }
    println!(
        "\n{:<30} {:>9} {:>15} {:>15} {:>10}  CONSUMER",
        "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
    );
    for o in &offsets {
        let lag = if o.log_end_offset >= 0 {
            (o.log_end_offset - o.offset).max(0).to_string()
        } else {
            "-".into()
        };
        println!(
            "{:<30} {:>9} {:>15} {:>15} {:>10}  {}",
            o.topic,
            o.partition,
            o.offset,
            o.log_end_offset,
            lag,
            owner
                .get(&(o.topic.clone(), o.partition))
                .map_or("-", String::as_str)
        );
    }
    Ok(())
}

fn join(ps: &[i32]) -> String {
    ps.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

async fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let client = Groups::connect(&args.endpoints.groups)?;
    let d = client.describe(&args.group).await?;
    if args.execute && !d.members.is_empty() {
        anyhow::bail!(
            "group {} is not inactive (state {}, {} members): stop its consumers first",
            args.group,
            d.state,
            d.members.len()
        );
    }
    let committed: BTreeMap<(String, i32), i64> = client
        .offsets(&args.group)
        .await?
        .into_iter()
        .map(|o| ((o.topic, o.partition), o.offset))
        .collect();
    let admin = Admin::connect(&args.endpoints.coordinator)?;
    let mut partitions: Vec<(String, i32)> = Vec::new();
    if args.all_topics {
        partitions.extend(committed.keys().cloned());
    } else if args.topics.is_empty() {
        anyhow::bail!("name the partitions: --topic T[:p,p] (repeatable) or --all-topics");
    }
    for spec in &args.topics {
        match spec.split_once(':') {
            Some((t, ps)) => {
                for p in ps.split(',') {
                    let p = p
                        .trim()
                        .parse()
                        .with_context(|| format!("invalid partition in {spec:?}"))?;
                    partitions.push((t.to_string(), p));
                }
            }
            None => {
                let info = admin.describe_topic(spec).await?;
                partitions.extend((0..info.partition_count).map(|p| (spec.clone(), p)));
            }
        }
    }
    let mut consumer = Consumer::new(ConsumerConfig::new(&args.endpoints.coordinator))?;
    let mut plan = Vec::new();
    for (topic, partition) in partitions {
        let earliest = consumer.list_offset(&topic, partition, -2).await?.0;
        let latest = consumer.list_offset(&topic, partition, -1).await?.0;
        let current = committed.get(&(topic.clone(), partition)).copied();
        let t = &args.target;
        let wanted = if t.to_earliest {
            earliest
        } else if t.to_latest {
            latest
        } else if let Some(o) = t.to_offset {
            o
        } else if let Some(n) = t.shift_by {
            current.unwrap_or(earliest).saturating_add(n)
        } else if let Some(when) = &t.to_datetime {
            let ms = crate::parse_time(when)?;
            match consumer.list_offset(&topic, partition, ms).await?.0 {
                -1 => latest,
                o => o,
            }
        } else {
            anyhow::bail!(
                "choose a target: --to-earliest, --to-latest, --to-datetime, --to-offset or --shift-by"
            );
        };
        // Kafka clamps to what the log holds.
        plan.push((topic, partition, current, wanted.clamp(earliest, latest)));
    }
    println!(
        "{:<30} {:>9} {:>15} {:>15}",
        "TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"
    );
    for (t, p, cur, new) in &plan {
        let cur = cur.map_or("-".to_string(), |c| c.to_string());
        println!("{t:<30} {p:>9} {cur:>15} {new:>15}");
    }
    if !args.execute {
        println!("\n(dry run: add --execute to commit these offsets)");
        return Ok(());
    }
    let offsets = plan
        .into_iter()
        .map(|(topic, partition, _, offset)| pb::PartitionOffset {
            topic,
            partition,
            offset,
            leader_epoch: -1,
            metadata: None,
        })
        .collect();
    client.commit(&args.group, offsets).await?;
    println!("\ncommitted the new offsets for group {}", args.group);
    Ok(())
}
