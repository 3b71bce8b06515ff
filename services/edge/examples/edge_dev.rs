//! A whole runnel cluster in one process with a Kafka edge in front, for
//! running real Kafka clients against (the Python tests in `tests/python`).
//!
//! ```text
//! RUNNEL_EDGE_KAFKA_PORT=19092 cargo run -p runnel-edge --example edge_dev
//! ```
//!
//! Environment (all optional): `RUNNEL_EDGE_HOST` (127.0.0.1),
//! `RUNNEL_EDGE_KAFKA_PORT` (9092), `RUNNEL_EDGE_COORDINATOR_PORT`,
//! `RUNNEL_EDGE_STORAGE_PORT`, `RUNNEL_EDGE_INGEST_PORT` (0: any free port),
//! `RUNNEL_EDGE_DATA_DIR` (a temporary directory),
//! `RUNNEL_EDGE_AUTO_CREATE` (false), `RUNNEL_EDGE_PARTITIONS` (1).
//! Prints `READY host:port` (the Kafka bootstrap address) once clients can
//! connect, and runs until interrupted.

#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;

fn env<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,hyper=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = common::Options {
        host: env("RUNNEL_EDGE_HOST", "127.0.0.1".to_string())?,
        kafka_port: env("RUNNEL_EDGE_KAFKA_PORT", 9092)?,
        coordinator_port: env("RUNNEL_EDGE_COORDINATOR_PORT", 0)?,
        storage_port: env("RUNNEL_EDGE_STORAGE_PORT", 0)?,
        ingest_port: env("RUNNEL_EDGE_INGEST_PORT", 0)?,
        data_dir: std::env::var_os("RUNNEL_EDGE_DATA_DIR").map(Into::into),
        auto_create_topics: env("RUNNEL_EDGE_AUTO_CREATE", false)?,
        default_partitions: env("RUNNEL_EDGE_PARTITIONS", 1)?,
        edge: Default::default(),
    };
    let cluster = common::Cluster::start(options).await?;
    println!("READY {}", cluster.kafka());
    std::io::stdout().flush()?;
    runnel_rpc::shutdown_signal().await;
    cluster.shutdown().await
}
