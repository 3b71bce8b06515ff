//! `runnel partitions …`: moving replicas and leadership.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use runnel_client::Admin;

#[derive(Subcommand, Debug)]
pub enum PartitionsCommand {
    /// Move a partition to a new set of storage nodes: the new replicas
    /// copy the log (at most --throttle bytes per second), join the
    /// in-sync replicas, then the old ones leave. Shows progress until done
    /// unless --no-wait.
    Reassign {
        topic: String,
        partition: i32,
        /// The new replica set, preferred leader first: node ids, comma
        /// separated.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<i32>,
        /// Copy rate limit for the new replicas while they catch up, in
        /// bytes per second (0: unlimited).
        #[arg(long, default_value_t = 0)]
        throttle: i64,
        /// Start the move and return at once.
        #[arg(long)]
        no_wait: bool,
        /// Coordinator address.
        #[arg(long, env = "RUNNEL_COORDINATOR", default_value = "127.0.0.1:7400")]
        coordinator: String,
    },
    /// Give leadership back to each partition's preferred replica (the
    /// first in its list) where it is in sync.
    ElectPreferred {
        /// Only these topics (all when none).
        topics: Vec<String>,
        /// Coordinator address.
        #[arg(long, env = "RUNNEL_COORDINATOR", default_value = "127.0.0.1:7400")]
        coordinator: String,
    },
}

pub async fn run(cmd: PartitionsCommand) -> anyhow::Result<()> {
    match cmd {
        PartitionsCommand::Reassign {
            topic,
            partition,
            replicas,
            throttle,
            no_wait,
            coordinator,
        } => {
            let admin = Admin::connect(&coordinator)?;
            admin
                .reassign_partition(&topic, partition, replicas.clone(), throttle)
                .await
                .context("starting the reassignment")?;
            println!("{topic}-{partition}: moving to replicas {replicas:?}");
            if !no_wait {
                wait_moved(&admin, &topic, partition, &replicas).await?;
            }
        }
        PartitionsCommand::ElectPreferred {
            topics,
            coordinator,
        } => {
            let moved = Admin::connect(&coordinator)?
                .elect_preferred_leaders(topics)
                .await?;
            println!("leadership moved to the preferred replica in {moved} partitions");
        }
    }
    Ok(())
}

/// Prints each change of the partition's replicas and ISR until its replica
/// set is `target` and no move is pending.
async fn wait_moved(
    admin: &Admin,
    topic: &str,
    partition: i32,
    target: &[i32],
) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let info = admin.describe_topic(topic).await?;
        let Some(p) = info.partitions.iter().find(|p| p.partition == partition) else {
            bail!("{topic}-{partition} no longer exists");
        };
        let now = format!(
            "replicas={:?} isr={:?} leader={} pending={:?}",
            p.replicas, p.isr, p.leader, p.target_replicas
        );
        if now != last {
            println!("{topic}-{partition}: {now}");
            last = now;
        }
        if p.target_replicas.is_empty() && p.replicas == target {
            println!("{topic}-{partition}: done");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
