//! `runnel`: one binary, a subcommand per role, `dev`, and tools.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use runnel::dev::{DevCluster, DevConfig};
use runnel::settings;
use runnel_client::{
    Admin, Compression, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig, Record,
    StartOffset,
};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "runnel",
    version,
    about = "A Kafka-compatible event streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every role in one process on an embedded metastore.
    Dev(DevArgs),
    /// Run a coordinator (cluster metadata and controller).
    Coordinator(CoordinatorArgs),
    /// Run a storage node.
    Storage(StorageArgs),
    /// Run an ingest instance (the gRPC write front door).
    Ingest(IngestArgs),
    /// Run a Kafka edge (the Kafka wire protocol for standard clients).
    Edge(EdgeArgs),
    /// Run a groups node (consumer-group coordination and committed offsets).
    Groups(GroupsArgs),
    /// Create, list, describe, alter and delete topics; delete records.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce lines from stdin, one record per line.
    Produce(ProduceArgs),
    /// Print records, one per line.
    Consume(ConsumeArgs),
    /// List, describe, delete consumer groups and reset their offsets.
    #[command(subcommand)]
    Group(runnel::group_cli::GroupCommand),
    /// Move partition replicas between storage nodes; preferred leaders.
    #[command(subcommand)]
    Partitions(runnel::partitions_cli::PartitionsCommand),
    /// Benchmarks, each with a baseline measured in the same run.
    #[command(subcommand)]
    Perf(runnel::perf::PerfCommand),
}

/// Flags shared by the server roles.
#[derive(Args, Debug, Serialize)]
struct RoleArgs {
    /// TOML config file; RUNNEL_<KEY> variables and flags override it.
    #[arg(long, short = 'c', env = "RUNNEL_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Prometheus /metrics listen address ("" to disable).
    #[arg(long, env = "RUNNEL_METRICS_LISTEN")]
    #[serde(skip)]
    metrics_listen: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metastore: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
}

#[derive(Args, Debug, Serialize)]
struct DevArgs {
    #[arg(long, short = 'c', env = "RUNNEL_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where data and the embedded metastore live.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    /// Kafka listener port (0 picks a free one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka_port: Option<u16>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_port: Option<u16>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_port: Option<u16>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ingest_port: Option<u16>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    groups_port: Option<u16>,
    /// How long a new consumer group waits for more members (ms).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_rebalance_delay_ms: Option<u64>,
    /// How often KIP-848 consumer-group members heartbeat (ms).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_heartbeat_interval_ms: Option<i32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    /// Storage flush policy: always, interval, os.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    flush: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_create_topics: Option<bool>,
}

#[derive(Args, Debug, Serialize)]
struct CoordinatorArgs {
    #[command(flatten)]
    #[serde(flatten)]
    role: RoleArgs,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<i32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertised_address: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl_secs: Option<u64>,
}

#[derive(Args, Debug, Serialize)]
struct StorageArgs {
    #[command(flatten)]
    #[serde(flatten)]
    role: RoleArgs,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<i32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertised_address: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    flush: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl_secs: Option<u64>,
}

#[derive(Args, Debug, Serialize)]
struct IngestArgs {
    #[command(flatten)]
    #[serde(flatten)]
    role: RoleArgs,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_create_topics: Option<bool>,
}

#[derive(Args, Debug, Serialize)]
struct EdgeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    role: RoleArgs,
    /// Broker id, unique among edges.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<i32>,
    /// host:port Kafka clients should connect to.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertised_address: Option<String>,
    /// An ingest instance's gRPC address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ingest_address: Option<String>,
    /// A coordinator's gRPC address (default: the active controller's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_address: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_create_topics: Option<bool>,
}

#[derive(Args, Debug, Serialize)]
struct GroupsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    role: RoleArgs,
    /// Unique among groups nodes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<i32>,
    /// host:port the edge and clients should dial.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertised_address: Option<String>,
    /// A coordinator's gRPC address (default: the active controller's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_address: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl_secs: Option<u64>,
    /// Partitions of __consumer_offsets when this node creates it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    offsets_topic_partitions: Option<i32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_rebalance_delay_ms: Option<u64>,
}

/// Where the tools find the cluster.
#[derive(Args, Debug, Clone)]
struct Endpoints {
    /// Coordinator address.
    #[arg(long, env = "RUNNEL_COORDINATOR", default_value = "127.0.0.1:7400")]
    coordinator: String,
    /// Ingest address.
    #[arg(long, env = "RUNNEL_INGEST", default_value = "127.0.0.1:7600")]
    ingest: String,
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// 0 for the cluster default.
        #[arg(long, short = 'r', default_value_t = 0)]
        replication_factor: i32,
        /// A topic config, key=value (repeatable).
        #[arg(long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        /// Check everything, create nothing.
        #[arg(long)]
        validate_only: bool,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    List {
        /// Include internal topics.
        #[arg(long)]
        internal: bool,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    Describe {
        name: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    Delete {
        name: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Change configs (set or remove keys) and grow the partition count.
    Alter {
        name: String,
        /// Set a config, key=value (repeatable).
        #[arg(long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        /// Remove a config back to its default (repeatable).
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
        /// New total partition count (can only grow).
        #[arg(long)]
        partitions: Option<i32>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Delete the records below an offset (Kafka's DeleteRecords): each
    /// partition's log start offset moves up to it, and the new one (the
    /// low watermark) is printed.
    DeleteRecords {
        name: String,
        /// A partition (repeatable).
        #[arg(long = "partition", required_unless_present = "all_partitions")]
        partitions: Vec<i32>,
        /// Every partition of the topic.
        #[arg(long, conflicts_with = "partitions")]
        all_partitions: bool,
        /// Delete the records below this offset (at most the high
        /// watermark).
        #[arg(
            long,
            value_parser = clap::value_parser!(i64).range(0..),
            allow_hyphen_values = true,
            required_unless_present = "to_high_watermark",
            conflicts_with = "to_high_watermark"
        )]
        before_offset: Option<i64>,
        /// Delete every record there is now (up to the high watermark).
        #[arg(long)]
        to_high_watermark: bool,
        #[command(flatten)]
        endpoints: Endpoints,
    },
}

#[derive(Args, Debug)]
struct ProduceArgs {
    topic: String,
    /// Split each line into key and value at the first occurrence of this.
    #[arg(long)]
    key_separator: Option<String>,
    /// A header on every record, key=value (repeatable).
    #[arg(long = "header", value_parser = parse_kv)]
    headers: Vec<(String, String)>,
    #[arg(long)]
    partition: Option<i32>,
    /// 0, 1 or -1 (all).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    acks: i32,
    /// none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    compression: Compression,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    topic: String,
    /// Only these partitions (repeatable); all by default.
    #[arg(long = "partition")]
    partitions: Vec<i32>,
    /// Start at the earliest offset (default: only new records).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at this offset.
    #[arg(long)]
    offset: Option<i64>,
    /// Start at the first record at or after this time (RFC 3339 or ms).
    #[arg(long)]
    from_time: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop when no record arrives for this long (e.g. 5s).
    #[arg(long)]
    idle_timeout: Option<humantime::Duration>,
    /// Print the key before the value, separated by this.
    #[arg(long)]
    key_separator: Option<String>,
    /// Print partition, offset and timestamp before each record.
    #[arg(long)]
    print_offsets: bool,
    /// Print headers after each record.
    #[arg(long)]
    print_headers: bool,
    #[command(flatten)]
    endpoints: Endpoints,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    Ok(match s {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => {
            return Err(format!(
                "unknown compression {s:?}: none, gzip, snappy, lz4, zstd"
            ));
        }
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on, with the causes chained.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn metrics(listen: Option<String>, default: &str) -> anyhow::Result<()> {
    let addr = listen.unwrap_or_else(|| default.to_string());
    if addr.is_empty() {
        return Ok(());
    }
    let addr = addr
        .parse()
        .with_context(|| format!("invalid metrics address {addr:?}"))?;
    runnel_telemetry::serve_prometheus(addr)?;
    tracing::info!(%addr, "Prometheus metrics on /metrics");
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => {
            let _telemetry = runnel_telemetry::init("runnel-dev")?;
            let config: DevConfig = settings::load(args.config.as_deref(), &args)?;
            metrics(Some(config.metrics_listen.clone()), "")?;
            let mut cluster = DevCluster::start(config.clone()).await?;
            println!(
                "runnel dev is running (data in {})",
                config.data_dir.display()
            );
            println!("  coordinator gRPC  {}", cluster.coordinator);
            println!("  storage gRPC      {}", cluster.storage);
            println!("  ingest gRPC       {}", cluster.ingest);
            println!("  groups gRPC       {}", cluster.groups);
            println!("  Kafka (edge)      {}", cluster.kafka);
            if !config.metrics_listen.is_empty() {
                println!(
                    "  metrics           http://{}/metrics",
                    config.metrics_listen
                );
            }
            println!("Try: runnel topic create demo --partitions 3");
            tokio::select! {
                _ = runnel_rpc::shutdown_signal() => {}
                r = cluster.any_stopped() => r?,
            }
            cluster.shutdown().await
        }
        Command::Coordinator(args) => {
            run_role(
                "runnel-coordinator",
                &args.role,
                &args,
                "0.0.0.0:9401",
                |c, s, l| runnel_coordinator::serve(c, s, l, runnel_rpc::shutdown_signal()),
            )
            .await
        }
        Command::Storage(args) => {
            run_role(
                "runnel-storage",
                &args.role,
                &args,
                "0.0.0.0:9501",
                |c, s, l| runnel_storage::serve(c, s, l, runnel_rpc::shutdown_signal()),
            )
            .await
        }
        Command::Ingest(args) => {
            run_role(
                "runnel-ingest",
                &args.role,
                &args,
                "0.0.0.0:9601",
                |c, s, l| runnel_ingest::serve(c, s, l, runnel_rpc::shutdown_signal()),
            )
            .await
        }
        Command::Edge(args) => {
            run_role(
                "runnel-edge",
                &args.role,
                &args,
                "0.0.0.0:9701",
                |c, s, l| runnel_edge::serve(c, s, l, runnel_rpc::shutdown_signal()),
            )
            .await
        }
        Command::Groups(args) => {
            run_role(
                "runnel-groups",
                &args.role,
                &args,
                "0.0.0.0:9801",
                |c, s, l| runnel_groups::serve(c, s, l, runnel_rpc::shutdown_signal()),
            )
            .await
        }
        Command::Topic(cmd) => topic(cmd).await,
        Command::Produce(args) => produce(args).await,
        Command::Consume(args) => consume(args).await,
        Command::Group(cmd) => runnel::group_cli::run(cmd).await,
        Command::Partitions(cmd) => runnel::partitions_cli::run(cmd).await,
        Command::Perf(cmd) => runnel::perf::run(cmd).await,
    }
}

/// The two settings every role's config has.
trait RoleConfig {
    fn metastore(&self) -> &str;
    fn listen(&self) -> &str;
}

macro_rules! role_config {
    ($($t:ty),*) => {$(
        impl RoleConfig for $t {
            fn metastore(&self) -> &str {
                &self.metastore
            }
            fn listen(&self) -> &str {
                &self.listen
            }
        }
    )*};
}
role_config!(
    runnel_coordinator::CoordinatorConfig,
    runnel_storage::StorageConfig,
    runnel_ingest::IngestConfig,
    runnel_edge::EdgeConfig,
    runnel_groups::GroupsConfig
);

/// Runs one role as its own process: telemetry, layered config, metrics,
/// the metastore, the listener, then `serve` until SIGINT/SIGTERM.
async fn run_role<C, F, Fut, E>(
    service: &str,
    role: &RoleArgs,
    overrides: &impl Serialize,
    default_metrics: &str,
    serve: F,
) -> anyhow::Result<()>
where
    C: RoleConfig + Default + Serialize + serde::de::DeserializeOwned,
    F: FnOnce(C, std::sync::Arc<dyn runnel_metastore::MetaStore>, tokio::net::TcpListener) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let _telemetry = runnel_telemetry::init(service)?;
    let config: C = settings::load(role.config.as_deref(), overrides)?;
    metrics(role.metrics_listen.clone(), default_metrics)?;
    let store = runnel_metastore::open(config.metastore()).await?;
    let listener = bind(config.listen()).await?;
    serve(config, store, listener).await.map_err(Into::into)
}

async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

fn print_topic(t: &runnel_client::TopicInfo) {
    println!(
        "{}\tid={}\tpartitions={}\treplication_factor={}",
        t.name, t.topic_id, t.partition_count, t.replication_factor
    );
    let mut configs: Vec<_> = t.configs.iter().collect();
    configs.sort();
    for (k, v) in configs {
        println!("  config {k}={v}");
    }
    for p in &t.partitions {
        println!(
            "  partition {}\tleader={}\tepoch={}\treplicas={:?}\tisr={:?}{}{}",
            p.partition,
            p.leader,
            p.leader_epoch,
            p.replicas,
            p.isr,
            if p.offline { "\tOFFLINE" } else { "" },
            if p.target_replicas.is_empty() {
                String::new()
            } else {
                format!("\tmoving_to={:?}", p.target_replicas)
            }
        );
    }
}

async fn topic(cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            validate_only,
            endpoints,
        } => {
            let admin = Admin::connect(&endpoints.coordinator)?;
            let topic = NewTopic {
                name,
                partitions,
                replication_factor,
                configs: configs.into_iter().collect(),
            };
            let info = if validate_only {
                admin.validate_topic(topic).await?
            } else {
                admin.create_topic(topic).await?
            };
            if validate_only {
                println!("valid: {} ({} partitions)", info.name, info.partition_count);
            } else {
                print_topic(&info);
            }
        }
        TopicCommand::List {
            internal,
            endpoints,
        } => {
            for t in Admin::connect(&endpoints.coordinator)?
                .list_topics(internal)
                .await?
            {
                println!("{}", t.name);
            }
        }
        TopicCommand::Describe { name, endpoints } => {
            print_topic(
                &Admin::connect(&endpoints.coordinator)?
                    .describe_topic(&name)
                    .await?,
            );
        }
        TopicCommand::Alter {
            name,
            configs,
            delete_configs,
            partitions,
            endpoints,
        } => {
            let admin = Admin::connect(&endpoints.coordinator)?;
            let mut info = None;
            if !configs.is_empty() || !delete_configs.is_empty() {
                info = Some(
                    admin
                        .alter_configs(&name, configs.into_iter().collect(), delete_configs)
                        .await?,
                );
            }
            if let Some(total) = partitions {
                info = Some(admin.create_partitions(&name, total).await?);
            }
            match info {
                Some(info) => print_topic(&info),
                None => anyhow::bail!(
                    "nothing to change: give --config, --delete-config or --partitions"
                ),
            }
        }
        TopicCommand::Delete { name, endpoints } => {
            Admin::connect(&endpoints.coordinator)?
                .delete_topic(&name)
                .await?;
            println!("deleted {name}");
        }
        TopicCommand::DeleteRecords {
            name,
            partitions,
            all_partitions,
            before_offset,
            to_high_watermark: _,
            endpoints,
        } => {
            let admin = Admin::connect(&endpoints.coordinator)?;
            let partitions = if all_partitions {
                (0..admin.describe_topic(&name).await?.partition_count).collect()
            } else {
                partitions
            };
            // -1 asks each leader for its high watermark.
            let offset = before_offset.unwrap_or(-1);
            let offsets = partitions.iter().map(|&p| (p, offset)).collect();
            let mut failed = 0;
            for (partition, outcome) in admin.delete_records(&name, &offsets).await? {
                match outcome {
                    Ok(low_watermark) => {
                        println!("{name}\tpartition={partition}\tlow_watermark={low_watermark}")
                    }
                    Err(e) => {
                        eprintln!("{name}\tpartition={partition}\terror: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("records of {failed} partition(s) were not deleted");
            }
        }
    }
    Ok(())
}

async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let mut config = ProducerConfig::new(&args.endpoints.ingest, &args.endpoints.coordinator);
    config.acks = args.acks;
    config.compression = args.compression;
    let producer = Producer::new(config)?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();
    // Read lines on a blocking thread; send as they come.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line?).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut deliveries = Vec::new();
    let mut count = 0u64;
    while let Some(line) = rx.recv().await {
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(Bytes::from(k.to_string())), Bytes::from(v.to_string())),
                None => (None, Bytes::from(line)),
            },
            None => (None, Bytes::from(line)),
        };
        let record = Record {
            key,
            value: Some(value),
            headers: headers.clone(),
            timestamp_ms: None,
            partition: args.partition,
        };
        deliveries.push(producer.send(&args.topic, record).await?);
        count += 1;
        if deliveries.len() >= 10_000 {
            for d in deliveries.drain(..) {
                d.await?;
            }
        }
    }
    reader.await??;
    for d in deliveries {
        d.await?;
    }
    producer.flush().await?;
    eprintln!("produced {count} records to {}", args.topic);
    Ok(())
}

async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let mut consumer = Consumer::new(ConsumerConfig::new(&args.endpoints.coordinator))?;
    let start = if args.from_beginning {
        StartOffset::Earliest
    } else if let Some(o) = args.offset {
        if o < 0 {
            anyhow::bail!("--offset must not be negative");
        }
        StartOffset::Offset(o)
    } else if let Some(t) = &args.from_time {
        StartOffset::Timestamp(runnel::parse_time(t)?)
    } else {
        StartOffset::Latest
    };
    let partitions = (!args.partitions.is_empty()).then(|| args.partitions.clone());
    consumer.assign(&args.topic, partitions, start).await?;
    let stdout = std::io::stdout();
    let mut seen = 0u64;
    let mut last = tokio::time::Instant::now();
    loop {
        let records = consumer.poll().await?;
        if records.is_empty() {
            if let Some(idle) = args.idle_timeout
                && last.elapsed() >= *idle
            {
                return Ok(());
            }
            continue;
        }
        last = tokio::time::Instant::now();
        let mut out = stdout.lock();
        for r in records {
            if args.print_offsets {
                write!(out, "{}\t{}\t{}\t", r.partition, r.offset, r.timestamp_ms)?;
            }
            if let Some(sep) = &args.key_separator {
                let key = r
                    .key
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                write!(out, "{key}{sep}")?;
            }
            let value = r
                .value
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            write!(out, "{value}")?;
            if args.print_headers {
                for (k, v) in &r.headers {
                    let v = v
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    write!(out, "\t{k}={v}")?;
                }
            }
            writeln!(out)?;
            seen += 1;
            if args.max_messages.is_some_and(|m| seen >= m) {
                return Ok(());
            }
        }
        out.flush()?;
    }
}
