//! `runnel perf`: produce and consume benchmarks that report their numbers
//! next to a baseline measured in the same run, on the same disk: sequential
//! writes of the same batch size, each followed by `fdatasync` — the most a
//! durable, fsync-per-batch produce path could reach on this machine.
//!
//! `runnel perf grpc …` runs native gRPC workloads shaped like librdkafka's
//! `rdkafka_performance` against a running cluster: the same-run baseline of
//! the Kafka edge benchmark (`tests/bench/edge.sh`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use runnel_client::{Admin, NewTopic, PlainRecord};
use runnel_proto::ingest::v1 as pb;
use runnel_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use runnel_proto::storage::v1 as st;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;

use crate::dev::{DevCluster, DevConfig};

#[derive(Subcommand, Debug)]
pub enum PerfCommand {
    /// The whole benchmark in one command: disk baseline, then produce and
    /// consume against an in-process cluster (`runnel dev` on port 0).
    Suite(SuiteArgs),
    /// Only the disk baseline: write + fdatasync of one batch size.
    Disk(DiskArgs),
    /// Native gRPC workloads shaped like librdkafka's `rdkafka_performance`,
    /// against a running cluster: the baseline of the Kafka edge benchmark
    /// (`tests/bench/edge.sh`).
    #[command(subcommand)]
    Grpc(GrpcCommand),
}

#[derive(Args, Debug, Clone)]
pub struct SuiteArgs {
    /// Where the cluster keeps its data (and the baseline writes its file);
    /// a temporary directory under the current one by default.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Bytes per produced batch.
    #[arg(long, default_value_t = 64 * 1024)]
    pub batch_bytes: usize,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// How long each phase runs.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// Produce requests in flight at once (1 = one fsync per batch).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Storage flush policy for the run: always (fsync before ack), interval, os.
    #[arg(long, default_value = "always")]
    pub flush: String,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DiskArgs {
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 64 * 1024)]
    pub batch_bytes: usize,
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
}

/// Throughput and latency of one phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub bytes: u64,
    pub records: u64,
    pub mb_per_s: f64,
    pub records_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl Phase {
    fn new(name: &str, elapsed: Duration, bytes: u64, records: u64, h: &Histogram<u64>) -> Self {
        let s = elapsed.as_secs_f64().max(1e-9);
        Phase {
            name: name.to_string(),
            seconds: s,
            bytes,
            records,
            mb_per_s: bytes as f64 / s / 1e6,
            records_per_s: records as f64 / s,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
        }
    }

    fn print(&self) {
        println!(
            "{:<28} {:>9.1} MB/s {:>11.0} rec/s   p50 {:>7} µs  p99 {:>7} µs  p99.9 {:>7} µs",
            self.name, self.mb_per_s, self.records_per_s, self.p50_us, self.p99_us, self.p999_us
        );
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

pub async fn run(cmd: PerfCommand) -> anyhow::Result<()> {
    match cmd {
        PerfCommand::Disk(args) => {
            let dir = args.dir.clone();
            let phase = tokio::task::spawn_blocking(move || {
                disk_baseline(&dir, args.batch_bytes, *args.duration)
            })
            .await??;
            phase.print();
            Ok(())
        }
        PerfCommand::Suite(args) => suite(args).await,
        PerfCommand::Grpc(cmd) => grpc(cmd).await,
    }
}

/// Sequential writes of `batch_bytes`, each followed by fdatasync, into a
/// fresh file in `dir`.
pub fn disk_baseline(dir: &Path, batch_bytes: usize, duration: Duration) -> anyhow::Result<Phase> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("perf-baseline.tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let buf = vec![0x5au8; batch_bytes];
    let mut h = histogram()?;
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < duration {
        let t = Instant::now();
        file.write_all(&buf)?;
        file.sync_data()?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
        written += batch_bytes as u64;
    }
    let elapsed = start.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(Phase::new(
        "disk write+fdatasync",
        elapsed,
        written,
        h.len(),
        &h,
    ))
}

fn perf_batch(batch_bytes: usize, record_bytes: usize) -> anyhow::Result<(Bytes, u64)> {
    let per_record = record_bytes + 20;
    let count = (batch_bytes.saturating_sub(61) / per_record).max(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let records: Vec<PlainRecord> = (0..count)
        .map(|i| PlainRecord {
            key: Some(Bytes::from(format!("key-{i:08}"))),
            value: Some(Bytes::from(
                (0..record_bytes)
                    .map(|j| (i * 31 + j) as u8)
                    .collect::<Vec<u8>>(),
            )),
            headers: Vec::new(),
            timestamp_ms: now,
        })
        .collect();
    let batch = runnel_records::build_batch(&records, runnel_records::Compression::None)?;
    Ok((batch, count as u64))
}

async fn suite(args: SuiteArgs) -> anyhow::Result<()> {
    let base = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("runnel-perf-")
        .tempdir_in(&base)?;
    let data_dir = tmp.path().to_path_buf();
    let duration = *args.duration;
    println!(
        "runnel perf: batch {} B, record {} B, {} s per phase, concurrency {}, data in {}",
        args.batch_bytes,
        args.record_bytes,
        duration.as_secs_f64(),
        args.concurrency,
        data_dir.display()
    );

    // 1. The hardware ceiling for this pattern, same disk, same run.
    let dir = data_dir.join("baseline");
    let batch_bytes = args.batch_bytes;
    let disk =
        tokio::task::spawn_blocking(move || disk_baseline(&dir, batch_bytes, duration)).await??;
    disk.print();

    // 2. Produce into a one-partition topic, acks=all, fsync before ack:
    //    straight to the leader, then through ingest as clients do.
    let cluster = DevCluster::start(DevConfig {
        data_dir: data_dir.join("cluster"),
        coordinator_port: 0,
        storage_port: 0,
        ingest_port: 0,
        kafka_port: 0,
        metrics_listen: String::new(),
        flush: args.flush.clone(),
        ..DevConfig::default()
    })
    .await?;
    let admin = Admin::connect(&cluster.coordinator)?;
    admin
        .create_topic(
            NewTopic::new("perf", 1)
                .config("max.message.bytes", &(args.batch_bytes * 2).to_string()),
        )
        .await?;
    let (batch, per_batch) = perf_batch(args.batch_bytes, args.record_bytes)?;
    let direct = produce_phase(
        &cluster.storage,
        Route::Storage,
        batch.clone(),
        per_batch,
        args.concurrency,
        duration,
        "append direct to storage",
    )
    .await?;
    direct.print();
    let produce = produce_phase(
        &cluster.ingest,
        Route::Ingest,
        batch.clone(),
        per_batch,
        args.concurrency,
        duration,
        &format!("produce acks=all flush={}", args.flush),
    )
    .await?;
    produce.print();

    // 3. Consume it all back from the leader: raw fetch (what the Kafka edge
    //    passes through) and with record decoding (what a native consumer does).
    let total = direct.records + produce.records;
    let fetch = consume_phase(&cluster.storage, total, false).await?;
    // Consumers read everything written: compare with the produce rate.
    fetch.print();
    let decoded = consume_phase(&cluster.storage, total, true).await?;
    decoded.print();

    println!();
    println!(
        "produce / disk ceiling        {:.2}x",
        produce.mb_per_s / disk.mb_per_s
    );
    println!(
        "direct append / disk ceiling  {:.2}x",
        direct.mb_per_s / disk.mb_per_s
    );
    println!(
        "produce / direct append       {:.2}x",
        produce.mb_per_s / direct.mb_per_s
    );
    println!(
        "consume (raw) / produce       {:.2}x",
        fetch.mb_per_s / produce.mb_per_s
    );
    println!(
        "consume (decoded) / produce   {:.2}x",
        decoded.mb_per_s / produce.mb_per_s
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "batch_bytes": args.batch_bytes,
                "record_bytes": args.record_bytes,
                "concurrency": args.concurrency,
                "phases": [disk, direct, produce, fetch, decoded],
            }))?
        );
    }
    cluster.shutdown().await?;
    Ok(())
}

/// Where the produce phase sends its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Through ingest, as clients do (two gRPC hops).
    Ingest,
    /// Straight to the partition leader's `Append` (one hop): the same-run
    /// baseline that shows what the ingest hop costs.
    Storage,
}

async fn produce_phase(
    address: &str,
    route: Route,
    batch: Bytes,
    per_batch: u64,
    concurrency: usize,
    duration: Duration,
    name: &str,
) -> anyhow::Result<Phase> {
    let channel = runnel_rpc::lazy_channel(address)?;
    let ingest = IngestServiceClient::new(channel.clone())
        .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
    let storage =
        StorageServiceClient::new(channel).max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
    let start = Instant::now();
    let results = Arc::new(tokio::sync::Mutex::new(histogram()?));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (mut ingest, mut storage) = (ingest.clone(), storage.clone());
        let batch = batch.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = histogram()?;
            let mut batches = 0u64;
            while start.elapsed() < duration {
                let t = Instant::now();
                let failure = match route {
                    Route::Ingest => ingest
                        .produce(pb::ProduceRequest {
                            partitions: vec![pb::TopicPartitionBatches {
                                topic: "perf".into(),
                                partition: 0,
                                batches: batch.clone(),
                            }],
                            acks: -1,
                            timeout_ms: 30_000,
                        })
                        .await?
                        .into_inner()
                        .results
                        .into_iter()
                        .find(|r| r.error != 0)
                        .map(|r| r.error_message),
                    Route::Storage => storage
                        .append(st::AppendRequest {
                            partitions: vec![st::PartitionBatches {
                                topic: "perf".into(),
                                partition: 0,
                                batches: batch.clone(),
                            }],
                            acks: -1,
                            timeout_ms: 30_000,
                        })
                        .await?
                        .into_inner()
                        .results
                        .into_iter()
                        .find(|r| r.error != 0)
                        .map(|r| r.error_message),
                };
                if let Some(message) = failure {
                    anyhow::bail!("produce failed: {message}");
                }
                local.record(t.elapsed().as_micros().max(1) as u64)?;
                batches += 1;
            }
            results.lock().await.add(&local)?;
            Ok::<u64, anyhow::Error>(batches)
        }));
    }
    let mut batches = 0;
    for t in tasks {
        batches += t.await??;
    }
    let elapsed = start.elapsed();
    let h = results.lock().await;
    Ok(Phase::new(
        name,
        elapsed,
        batches * batch.len() as u64,
        batches * per_batch,
        &h,
    ))
}

async fn consume_phase(storage: &str, records: u64, decode: bool) -> anyhow::Result<Phase> {
    let mut client = StorageServiceClient::new(runnel_rpc::lazy_channel(storage)?)
        .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
    let mut h = histogram()?;
    let mut offset = 0i64;
    let mut bytes = 0u64;
    let mut seen = 0u64;
    let start = Instant::now();
    while (offset as u64) < records {
        let t = Instant::now();
        let response = client
            .fetch(st::FetchRequest {
                partitions: vec![st::PartitionFetch {
                    topic: "perf".into(),
                    partition: 0,
                    offset,
                    max_bytes: 4 * 1024 * 1024,
                }],
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 8 * 1024 * 1024,
            })
            .await?
            .into_inner();
        let r = response
            .results
            .into_iter()
            .next()
            .context("empty fetch answer")?;
        if r.error != 0 {
            anyhow::bail!("fetch failed: {}", r.error_message);
        }
        if r.records.is_empty() {
            break;
        }
        bytes += r.records.len() as u64;
        let mut rest: &[u8] = &r.records;
        while let Ok(hdr) = runnel_records::BatchHeader::parse(rest) {
            offset = hdr.next_offset();
            seen += hdr.records_count as u64;
            rest = &rest[hdr.total_len().min(rest.len())..];
        }
        if decode {
            let decoded = runnel_records::decode_records(r.records)?;
            std::hint::black_box(decoded.len());
        }
        h.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let name = if decode {
        "consume (decoded records)"
    } else {
        "consume (raw fetch)"
    };
    Ok(Phase::new(name, start.elapsed(), bytes, seen, &h))
}

// ---------------------------------------------------------------------------
// Native gRPC workloads matching `rdkafka_performance`.
//
// The Kafka edge benchmark drives the edge with librdkafka's load generator
// and needs the same workload over runnel's own gRPC API in the same run, on
// the same cluster, so the edge's cost is a ratio: keyless records of the
// same size, the same count, the same acks, partitions, records per batch and
// requests in flight. Each workload prints a human line and, with `--json`,
// one JSON line for the script.

#[derive(Subcommand, Debug)]
pub enum GrpcCommand {
    /// Produce `--records` keyless records through ingest in batches of
    /// `--batch-records`, `--in-flight` requests at once; the client encodes
    /// each batch while the previous one is in flight, as librdkafka does
    /// (`rdkafka_performance -P`).
    Produce(GrpcProduceArgs),
    /// Read `--records` records from offset 0 of every partition straight
    /// from the storage leaders, fetching ahead while decoding unless
    /// `--serial` (`rdkafka_performance -C -o beginning`).
    Consume(GrpcConsumeArgs),
    /// One record per request at a fixed rate, with a long-polling consumer:
    /// acknowledgement latency and end-to-end latency
    /// (`rdkafka_performance -P -l -r` with `-C -l`).
    Latency(GrpcLatencyArgs),
    /// One record per request at a fixed rate into partition 0 for a while,
    /// meant to run while that partition's leader is killed: the longest gap
    /// between two acknowledgements is the failover time a producer sees
    /// (ingest holds a request until the new leader takes it).
    Failover(GrpcFailoverArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GrpcFailoverArgs {
    #[command(flatten)]
    pub target: GrpcTarget,
    /// Records per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// How long to produce.
    #[arg(long, default_value = "20s")]
    pub duration: humantime::Duration,
    /// 0, 1 or -1 (all).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i32,
}

#[derive(Args, Debug, Clone)]
pub struct GrpcTarget {
    /// Coordinator gRPC address: creates the topic, names the leaders.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub coordinator: String,
    /// Ingest gRPC address: where produce requests go.
    #[arg(long, default_value = "127.0.0.1:7600")]
    pub ingest: String,
    #[arg(long, default_value = "perf-grpc")]
    pub topic: String,
    /// Partitions of the topic; it is created with this many if missing.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Bytes per record value (the `-s` of rdkafka_performance).
    #[arg(long, default_value_t = 100)]
    pub record_bytes: usize,
    /// Print one JSON line with the results as well.
    #[arg(long)]
    pub json: bool,
    /// Replication factor of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// A config of the topic when it is created, key=value (repeatable).
    #[arg(long = "topic-config", value_parser = parse_kv)]
    pub topic_configs: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[derive(Args, Debug, Clone)]
pub struct GrpcProduceArgs {
    #[command(flatten)]
    pub target: GrpcTarget,
    /// Records to produce (the `-c` of rdkafka_performance).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Records per batch (librdkafka's `batch.num.messages`).
    #[arg(long, default_value_t = 1000)]
    pub batch_records: u64,
    /// Produce requests in flight at once (librdkafka's
    /// `max.in.flight.requests.per.connection`).
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,
    /// 0, 1 or -1 (all).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i32,
}

#[derive(Args, Debug, Clone)]
pub struct GrpcConsumeArgs {
    #[command(flatten)]
    pub target: GrpcTarget,
    /// Records to read before stopping.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Bytes per partition per fetch (librdkafka's `fetch.message.max.bytes`).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub partition_max_bytes: i32,
    /// Bytes per fetch response (librdkafka's `fetch.max.bytes`).
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    pub max_bytes: i32,
    /// Long-poll wait of a fetch (librdkafka's `fetch.wait.max.ms`).
    #[arg(long, default_value_t = 500)]
    pub max_wait_ms: u32,
    /// Give up after this long.
    #[arg(long, default_value = "120s")]
    pub timeout: humantime::Duration,
    /// Decode each response before sending the next fetch (no fetching
    /// ahead): one fetcher thread that also parses, like librdkafka's
    /// broker thread.
    #[arg(long)]
    pub serial: bool,
}

#[derive(Args, Debug, Clone)]
pub struct GrpcLatencyArgs {
    #[command(flatten)]
    pub target: GrpcTarget,
    /// Records to send, one per request, into partition 0.
    #[arg(long, default_value_t = 5_000)]
    pub records: u64,
    /// Records per second (the `-r` of rdkafka_performance).
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// 0, 1 or -1 (all).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i32,
    /// Long-poll wait of the consumer's fetches.
    #[arg(long, default_value_t = 500)]
    pub max_wait_ms: u32,
}

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Results of one native gRPC workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrpcResult {
    pub workload: &'static str,
    pub topic: String,
    pub partitions: i32,
    pub record_bytes: usize,
    pub records: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    /// Value bytes per second (1 MB = 10^6 B), as rdkafka_performance counts.
    pub mb_per_s: f64,
    /// RecordBatch bytes on the wire per second.
    pub wire_mb_per_s: f64,
    pub requests: u64,
    /// Produce: per-request time to acknowledgement. Consume: per-fetch time.
    /// Latency workload: time from send to acknowledgement.
    pub latency: Latency,
    /// Latency workload only: from send to the consumer holding the record.
    pub end_to_end: Option<Latency>,
    /// Produce only: client time spent encoding batches, per batch.
    pub encode_us_per_batch: Option<f64>,
}

impl GrpcResult {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        println!(
            "grpc {:<8} {:>10.0} rec/s {:>8.2} MB/s (wire {:>7.2})  {} records in {:.2} s, {} requests  p50 {} µs  p99 {} µs",
            self.workload,
            self.records_per_s,
            self.mb_per_s,
            self.wire_mb_per_s,
            self.records,
            self.seconds,
            self.requests,
            self.latency.p50_us,
            self.latency.p99_us
        );
        if let Some(e) = &self.end_to_end {
            println!(
                "grpc end-to-end  p50 {} µs  p99 {} µs  p99.9 {} µs  ({} records)",
                e.p50_us, e.p99_us, e.p999_us, e.count
            );
        }
        if json {
            println!("{}", serde_json::to_string(self)?);
        }
        Ok(())
    }
}

async fn grpc(cmd: GrpcCommand) -> anyhow::Result<()> {
    let (result, json) = match cmd {
        GrpcCommand::Produce(args) => {
            let json = args.target.json;
            (grpc_produce(args).await?, json)
        }
        GrpcCommand::Consume(args) => {
            let json = args.target.json;
            (grpc_consume(args).await?, json)
        }
        GrpcCommand::Latency(args) => {
            let json = args.target.json;
            (grpc_latency(args).await?, json)
        }
        GrpcCommand::Failover(args) => {
            let json = args.target.json;
            return grpc_failover(args).await?.print(json);
        }
    };
    result.print(json)
}

/// Creates the topic unless it exists; returns its partitions' leaders'
/// storage addresses by partition.
async fn ensure_topic(target: &GrpcTarget) -> anyhow::Result<Vec<(i32, String)>> {
    let admin = Admin::connect(&target.coordinator)?;
    if admin.describe_topic(&target.topic).await.is_err() {
        let mut topic = NewTopic::new(target.topic.clone(), target.partitions);
        topic.replication_factor = target.replication_factor;
        for (k, v) in &target.topic_configs {
            topic = topic.config(k, v);
        }
        admin
            .create_topic(topic)
            .await
            .with_context(|| format!("creating topic {}", target.topic))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = admin.metadata(std::slice::from_ref(&target.topic)).await?;
        let topic = md
            .topics
            .iter()
            .find(|t| t.name == target.topic)
            .with_context(|| format!("topic {} not in the metadata", target.topic))?;
        let leaders: Vec<(i32, String)> = topic
            .partitions
            .iter()
            .filter_map(|p| {
                md.nodes
                    .iter()
                    .find(|n| n.node_id == p.leader)
                    .map(|n| (p.partition, n.address.clone()))
            })
            .collect();
        if !leaders.is_empty() && leaders.len() == topic.partitions.len() {
            return Ok(leaders);
        }
        if Instant::now() > deadline {
            anyhow::bail!("topic {} has partitions without a leader", target.topic);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wall_clock_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// rdkafka_performance's default payload pattern, repeated to `len` bytes.
fn payload(len: usize) -> Bytes {
    const PATTERN: &[u8] = b"The quick brown fox jumps over the lazy dog. ";
    Bytes::from(
        PATTERN
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect::<Vec<u8>>(),
    )
}

/// One RecordBatch of `count` keyless records with the given value.
fn keyless_batch(value: &Bytes, count: u64) -> anyhow::Result<Bytes> {
    let now = wall_clock_us() / 1000;
    let records: Vec<PlainRecord> = (0..count)
        .map(|_| PlainRecord {
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
            timestamp_ms: now,
        })
        .collect();
    Ok(runnel_records::build_batch(
        &records,
        runnel_records::Compression::None,
    )?)
}

/// An ingest client for `address` (a macro: the channel type is tonic's,
/// which this crate does not name).
macro_rules! ingest_client {
    ($address:expr) => {
        IngestServiceClient::new(runnel_rpc::lazy_channel($address)?)
            .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
    };
}

macro_rules! storage_client {
    ($address:expr) => {
        StorageServiceClient::new(runnel_rpc::lazy_channel($address)?)
            .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
    };
}

/// Opens the connection with an empty produce request, so connecting is not
/// timed (answers and errors are ignored).
macro_rules! warm_up {
    ($client:expr) => {{
        let mut client = $client;
        let _ = client
            .produce(pb::ProduceRequest {
                partitions: Vec::new(),
                acks: 1,
                timeout_ms: 1_000,
            })
            .await;
    }};
}

fn produce_request(topic: &str, partition: i32, batch: Bytes, acks: i32) -> pb::ProduceRequest {
    pb::ProduceRequest {
        partitions: vec![pb::TopicPartitionBatches {
            topic: topic.to_string(),
            partition,
            batches: batch,
        }],
        acks,
        timeout_ms: 30_000,
    }
}

fn check_produced(response: pb::ProduceResponse) -> anyhow::Result<()> {
    if let Some(r) = response.results.into_iter().find(|r| r.error != 0) {
        anyhow::bail!(
            "produce to {}-{} failed: {}",
            r.topic,
            r.partition,
            r.error_message
        );
    }
    Ok(())
}

async fn grpc_produce(args: GrpcProduceArgs) -> anyhow::Result<GrpcResult> {
    let target = args.target.clone();
    ensure_topic(&target).await?;
    let client = ingest_client!(&target.ingest);
    let per_batch = args.batch_records.max(1);
    let total = args.records;
    let batches = total.div_ceil(per_batch);
    let partitions = target.partitions.max(1) as u64;
    let value = payload(target.record_bytes);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Connect before the clock starts (rdkafka_performance's clock starts
    // after its bootstrap too).
    warm_up!(client.clone());
    let start = Instant::now();
    let mut lanes = Vec::new();
    for _ in 0..args.in_flight.max(1) {
        let (mut client, next, value, topic) = (
            client.clone(),
            next.clone(),
            value.clone(),
            target.topic.clone(),
        );
        lanes.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let (mut wire, mut encode) = (0u64, Duration::ZERO);
            // Takes the next batch number and encodes that batch.
            let mut take = || -> anyhow::Result<Option<(u64, Bytes)>> {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= batches {
                    return Ok(None);
                }
                let t = Instant::now();
                let batch = keyless_batch(&value, per_batch.min(total - i * per_batch))?;
                encode += t.elapsed();
                Ok(Some((i, batch)))
            };
            // The next batch is encoded while the request is in flight, as
            // librdkafka builds batches while earlier ones are on the wire.
            let mut pending = take()?;
            while let Some((i, batch)) = pending.take() {
                wire += batch.len() as u64;
                let request = produce_request(&topic, (i % partitions) as i32, batch, args.acks);
                let call = async {
                    let t = Instant::now();
                    let response = client.produce(request).await;
                    (response, t.elapsed())
                };
                let ((response, took), following) = tokio::join!(call, async { take() });
                check_produced(response?.into_inner())?;
                h.record(took.as_micros().max(1) as u64)?;
                pending = following?;
            }
            Ok::<_, anyhow::Error>((h, wire, encode))
        }));
    }
    let mut h = histogram()?;
    let (mut wire, mut encode) = (0u64, Duration::ZERO);
    for lane in lanes {
        let (lh, lw, le) = lane.await??;
        h.add(&lh)?;
        wire += lw;
        encode += le;
    }
    let s = start.elapsed().as_secs_f64().max(1e-9);
    Ok(GrpcResult {
        workload: "produce",
        topic: target.topic,
        partitions: target.partitions,
        record_bytes: target.record_bytes,
        records: total,
        seconds: s,
        records_per_s: total as f64 / s,
        mb_per_s: (total * target.record_bytes as u64) as f64 / s / 1e6,
        wire_mb_per_s: wire as f64 / s / 1e6,
        requests: h.len(),
        latency: Latency::of(&h),
        end_to_end: None,
        encode_us_per_batch: Some(encode.as_secs_f64() * 1e6 / batches.max(1) as f64),
    })
}

/// The offset after the last whole batch in `records`.
fn next_offset(records: &[u8], mut offset: i64) -> i64 {
    let mut rest = records;
    while let Ok(h) = runnel_records::BatchHeader::parse(rest) {
        offset = h.next_offset();
        rest = &rest[h.total_len().min(rest.len())..];
    }
    offset
}

async fn grpc_consume(args: GrpcConsumeArgs) -> anyhow::Result<GrpcResult> {
    let target = args.target.clone();
    let leaders = ensure_topic(&target).await?;
    let mut by_leader: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for (partition, address) in leaders {
        by_leader.entry(address).or_default().push(partition);
    }
    // One fetcher per storage node (librdkafka: one fetch in flight per
    // broker), handing responses to the decoder through a short queue so
    // fetching and decoding overlap; with `--serial` the fetcher waits for
    // each response to be decoded first.
    type Decoded = tokio::sync::oneshot::Sender<()>;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Bytes, Option<Decoded>)>(4);
    let serial = args.serial;
    let start = Instant::now();
    let mut fetchers = Vec::new();
    for (address, partitions) in by_leader {
        let mut client = storage_client!(&address);
        let tx = tx.clone();
        let topic = target.topic.clone();
        let (partition_max, max_bytes, max_wait) =
            (args.partition_max_bytes, args.max_bytes, args.max_wait_ms);
        fetchers.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let mut offsets: Vec<(i32, i64)> = partitions.into_iter().map(|p| (p, 0)).collect();
            // Until the decoder has all it wants (and drops its end).
            while !tx.is_closed() {
                let t = Instant::now();
                let results = client
                    .fetch(st::FetchRequest {
                        partitions: offsets
                            .iter()
                            .map(|&(partition, offset)| st::PartitionFetch {
                                topic: topic.clone(),
                                partition,
                                offset,
                                max_bytes: partition_max,
                            })
                            .collect(),
                        max_wait_ms: max_wait,
                        min_bytes: 1,
                        max_bytes,
                    })
                    .await?
                    .into_inner()
                    .results;
                // Fetches that found nothing (the long poll at the end) are
                // not timed.
                if results.iter().any(|r| !r.records.is_empty()) {
                    h.record(t.elapsed().as_micros().max(1) as u64)?;
                }
                for r in results {
                    if r.error != 0 {
                        anyhow::bail!("fetch {}-{}: {}", r.topic, r.partition, r.error_message);
                    }
                    if r.records.is_empty() {
                        continue;
                    }
                    if let Some(slot) = offsets.iter_mut().find(|(p, _)| *p == r.partition) {
                        slot.1 = next_offset(&r.records, slot.1);
                    }
                    let (done, decoded) = if serial {
                        let (done, decoded) = tokio::sync::oneshot::channel();
                        (Some(done), Some(decoded))
                    } else {
                        (None, None)
                    };
                    if tx.send((r.records, done)).await.is_err() {
                        break;
                    }
                    if let Some(decoded) = decoded {
                        let _ = decoded.await;
                    }
                }
            }
            Ok::<_, anyhow::Error>(h)
        }));
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + *args.timeout;
    let (mut records, mut value_bytes, mut wire) = (0u64, 0u64, 0u64);
    while records < args.records {
        let chunk = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => anyhow::bail!(
                "read {records} of {} records before the timeout",
                args.records
            ),
            Ok(None) => break,
            Ok(Some(chunk)) => chunk,
        };
        let (chunk, done) = chunk;
        wire += chunk.len() as u64;
        for r in runnel_records::decode_records(chunk)? {
            records += 1;
            value_bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
            std::hint::black_box(&r);
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
    let elapsed = start.elapsed();
    drop(rx);
    let mut h = histogram()?;
    for f in fetchers {
        match f.await? {
            Ok(fh) => h.add(&fh)?,
            Err(e) if records < args.records => return Err(e),
            Err(_) => {}
        }
    }
    if records < args.records {
        anyhow::bail!(
            "the topic ended after {records} of {} records",
            args.records
        );
    }
    let s = elapsed.as_secs_f64().max(1e-9);
    Ok(GrpcResult {
        workload: if serial { "consume-serial" } else { "consume" },
        topic: target.topic,
        partitions: target.partitions,
        record_bytes: target.record_bytes,
        records,
        seconds: s,
        records_per_s: records as f64 / s,
        mb_per_s: value_bytes as f64 / s / 1e6,
        wire_mb_per_s: wire as f64 / s / 1e6,
        requests: h.len(),
        latency: Latency::of(&h),
        end_to_end: None,
        encode_us_per_batch: None,
    })
}

const LATENCY_TAG: &[u8] = b"LATENCY:";

async fn grpc_latency(args: GrpcLatencyArgs) -> anyhow::Result<GrpcResult> {
    let target = args.target.clone();
    let leaders = ensure_topic(&target).await?;
    let leader = leaders
        .iter()
        .find(|(p, _)| *p == 0)
        .map(|(_, a)| a.clone())
        .context("partition 0 has no leader")?;
    let mut storage = storage_client!(&leader);
    let fetch = |offset: i64, max_bytes: i32, max_wait_ms: u32| st::FetchRequest {
        partitions: vec![st::PartitionFetch {
            topic: target.topic.clone(),
            partition: 0,
            offset,
            max_bytes,
        }],
        max_wait_ms,
        min_bytes: 1,
        max_bytes,
    };
    // The consumer starts at the end (`-o end`).
    let start_offset = storage
        .fetch(fetch(0, 1, 0))
        .await?
        .into_inner()
        .results
        .first()
        .map_or(0, |r| r.high_watermark.max(0));
    let wanted = args.records;
    let consumer = {
        let request = fetch(start_offset, 1024 * 1024, args.max_wait_ms);
        tokio::spawn(async move {
            let mut request = request;
            let mut h = histogram()?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while h.len() < wanted && Instant::now() < deadline {
                let results = storage.fetch(request.clone()).await?.into_inner().results;
                let Some(r) = results.into_iter().next() else {
                    continue;
                };
                if r.error != 0 {
                    anyhow::bail!("fetch: {}", r.error_message);
                }
                let now = wall_clock_us();
                request.partitions[0].offset =
                    next_offset(&r.records, request.partitions[0].offset);
                for record in runnel_records::decode_records(r.records)? {
                    let Some(v) = record.value else { continue };
                    let Some(rest) = v.strip_prefix(LATENCY_TAG) else {
                        continue;
                    };
                    let digits: Vec<u8> = rest
                        .iter()
                        .copied()
                        .take_while(u8::is_ascii_digit)
                        .collect();
                    if let Ok(sent) = std::str::from_utf8(&digits)?.parse::<i64>() {
                        h.record((now - sent).max(1) as u64)?;
                    }
                }
            }
            Ok::<_, anyhow::Error>(h)
        })
    };
    // Let the consumer's first long poll reach the storage node.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let client = ingest_client!(&target.ingest);
    warm_up!(client.clone());
    let base = payload(target.record_bytes.max(LATENCY_TAG.len() + 21));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sends = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..wanted {
        tick.tick().await;
        let mut value = base.to_vec();
        let stamp = format!("LATENCY:{} ", wall_clock_us());
        value[..stamp.len()].copy_from_slice(stamp.as_bytes());
        let batch = keyless_batch(&Bytes::from(value), 1)?;
        let mut client = client.clone();
        let (topic, acks) = (target.topic.clone(), args.acks);
        sends.spawn(async move {
            let t = Instant::now();
            let request = produce_request(&topic, 0, batch, acks);
            check_produced(client.produce(request).await?.into_inner())?;
            Ok::<_, anyhow::Error>(t.elapsed())
        });
    }
    let mut h = histogram()?;
    while let Some(done) = sends.join_next().await {
        h.record(done??.as_micros().max(1) as u64)?;
    }
    let elapsed = start.elapsed();
    let e2e = consumer.await??;
    let s = elapsed.as_secs_f64().max(1e-9);
    Ok(GrpcResult {
        workload: "latency",
        topic: target.topic,
        partitions: target.partitions,
        record_bytes: base.len(),
        records: wanted,
        seconds: s,
        records_per_s: wanted as f64 / s,
        mb_per_s: (wanted * base.len() as u64) as f64 / s / 1e6,
        wire_mb_per_s: 0.0,
        requests: h.len(),
        latency: Latency::of(&h),
        end_to_end: Some(Latency::of(&e2e)),
        encode_us_per_batch: None,
    })
}

/// What `runnel perf grpc failover` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverResult {
    pub topic: String,
    pub acks: i32,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// The longest time between two consecutive acknowledgements.
    pub longest_gap_ms: f64,
    /// When that gap began, in seconds from the start.
    pub gap_started_s: f64,
    pub latency: Latency,
}

impl FailoverResult {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        println!(
            "grpc failover  longest gap between acks {:.0} ms (from {:.2} s)  {} sent, {} acknowledged, {} failed  ack p50 {} µs  p99 {} µs  max {} µs",
            self.longest_gap_ms,
            self.gap_started_s,
            self.sent,
            self.acknowledged,
            self.failed,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.max_us
        );
        if json {
            println!("{}", serde_json::to_string(self)?);
        }
        Ok(())
    }
}

async fn grpc_failover(args: GrpcFailoverArgs) -> anyhow::Result<FailoverResult> {
    let target = args.target;
    ensure_topic(&target).await?;
    let client = ingest_client!(&target.ingest);
    warm_up!(client.clone());
    let value = payload(target.record_bytes);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sends = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < *args.duration {
        tick.tick().await;
        let batch = keyless_batch(&value, 1)?;
        let mut client = client.clone();
        let (topic, acks) = (target.topic.clone(), args.acks);
        sends.spawn(async move {
            let t = Instant::now();
            let request = produce_request(&topic, 0, batch, acks);
            let outcome = match client.produce(request).await {
                Ok(r) => check_produced(r.into_inner()),
                Err(status) => Err(anyhow::anyhow!(status)),
            };
            (t, outcome.map(|()| Instant::now()))
        });
        sent += 1;
    }
    let mut h = histogram()?;
    let mut acked_at = Vec::new();
    let mut failed = 0;
    while let Some(done) = sends.join_next().await {
        match done? {
            (t, Ok(at)) => {
                h.record(at.duration_since(t).as_micros().max(1) as u64)?;
                acked_at.push(at.duration_since(start));
            }
            (_, Err(_)) => failed += 1,
        }
    }
    acked_at.sort();
    let (gap, from) = acked_at
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or_default();
    Ok(FailoverResult {
        topic: target.topic,
        acks: args.acks,
        sent,
        acknowledged: acked_at.len() as u64,
        failed,
        longest_gap_ms: gap.as_secs_f64() * 1e3,
        gap_started_s: from.as_secs_f64(),
        latency: Latency::of(&h),
    })
}
