//! `runnel perf`: produce and consume benchmarks that report their numbers
//! next to a baseline measured in the same run, on the same disk: sequential
//! writes of the same batch size, each followed by `fdatasync` — the most a
//! durable, fsync-per-batch produce path could reach on this machine.

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
