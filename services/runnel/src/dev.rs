//! `runnel dev`: every role in one process (coordinator, storage, ingest,
//! groups and the Kafka edge).
//!
//! The metastore is embedded (a file in the data directory) and each role
//! serves its own gRPC port on loopback; roles reach each other through those
//! ports exactly as separate deployments do, so this mode exercises the same
//! code paths. Tests and the benchmark start it on port 0.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use runnel_coordinator::CoordinatorConfig;
use runnel_ingest::IngestConfig;
use runnel_metastore::MetaStore;
use runnel_storage::StorageConfig;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Settings of `runnel dev`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// Everything runnel stores: partition logs and the embedded metastore.
    pub data_dir: PathBuf,
    /// Host the gRPC ports bind to.
    pub host: String,
    pub coordinator_port: u16,
    pub storage_port: u16,
    pub ingest_port: u16,
    pub groups_port: u16,
    /// How long a new consumer group waits for more members before its
    /// first generation (Kafka's `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
    /// How often members of KIP-848 consumer groups heartbeat
    /// (`group.consumer.heartbeat.interval.ms`).
    pub consumer_heartbeat_interval_ms: i32,
    /// The Kafka listener (the edge).
    pub kafka_port: u16,
    /// Prometheus `/metrics` for the whole process; empty to disable.
    pub metrics_listen: String,
    /// A metastore URL instead of the embedded file (e.g. `etcd://…`).
    pub metastore: Option<String>,
    /// Storage flush policy: always, interval or os.
    pub flush: String,
    pub auto_create_topics: bool,
    /// Seconds a registration lease lives without keep-alive.
    pub lease_ttl_secs: u64,
    /// How often storage applies retention (Kafka's
    /// `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// How often storage looks for compacted partitions to clean (Kafka's
    /// `log.cleaner.backoff.ms`).
    pub log_cleaner_interval_ms: u64,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            data_dir: PathBuf::from("data"),
            host: "127.0.0.1".into(),
            coordinator_port: 7400,
            storage_port: 7500,
            ingest_port: 7600,
            groups_port: 7700,
            initial_rebalance_delay_ms: 3_000,
            consumer_heartbeat_interval_ms: 5_000,
            kafka_port: 9092,
            metrics_listen: "127.0.0.1:9644".into(),
            metastore: None,
            flush: "always".into(),
            auto_create_topics: false,
            lease_ttl_secs: 10,
            retention_check_interval_ms: StorageConfig::default().retention_check_interval_ms,
            log_cleaner_interval_ms: StorageConfig::default().log_cleaner_interval_ms,
        }
    }
}

/// A running in-process cluster.
#[derive(Debug)]
pub struct DevCluster {
    pub coordinator: String,
    pub storage: String,
    pub ingest: String,
    pub groups: String,
    /// The Kafka bootstrap address (host:port).
    pub kafka: String,
    pub store: Arc<dyn MetaStore>,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

/// Runs one role's `serve` future as a named task.
fn spawn_role<E: Into<anyhow::Error>>(
    name: &'static str,
    serve: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> (&'static str, JoinHandle<anyhow::Result<()>>) {
    (
        name,
        tokio::spawn(async move { serve.await.map_err(Into::into) }),
    )
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

impl DevCluster {
    /// Binds every port, then starts the roles.
    pub async fn start(config: DevConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let data_dir = config.data_dir.canonicalize()?;
        let metastore_url = config
            .metastore
            .clone()
            .unwrap_or_else(|| format!("file://{}", data_dir.join("metastore.json").display()));
        let store = runnel_metastore::open(&metastore_url)
            .await
            .with_context(|| format!("opening metastore {metastore_url}"))?;
        let bind = |port: u16| {
            let addr = format!("{}:{port}", config.host);
            async move {
                TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("binding {addr} (is another runnel running?)"))
            }
        };
        let coordinator_l = bind(config.coordinator_port).await?;
        let storage_l = bind(config.storage_port).await?;
        let ingest_l = bind(config.ingest_port).await?;
        let groups_l = bind(config.groups_port).await?;
        let kafka_l = bind(config.kafka_port).await?;
        let addr = |l: &TcpListener| l.local_addr().map(runnel_rpc::advertised_address);
        let coordinator = addr(&coordinator_l)?;
        let storage = addr(&storage_l)?;
        let ingest = addr(&ingest_l)?;
        let groups = addr(&groups_l)?;
        let kafka = addr(&kafka_l)?;

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = Vec::new();

        let c = CoordinatorConfig {
            metastore: metastore_url.clone(),
            advertised_address: Some(coordinator.clone()),
            lease_ttl_secs: config.lease_ttl_secs,
            ..Default::default()
        };
        tasks.push(spawn_role(
            "coordinator",
            runnel_coordinator::serve(c, store.clone(), coordinator_l, stopped(stop_rx.clone())),
        ));

        let st = StorageConfig {
            node_id: 1,
            data_dir: data_dir.join("storage"),
            metastore: metastore_url.clone(),
            advertised_address: Some(storage.clone()),
            flush: config.flush.clone(),
            lease_ttl_secs: config.lease_ttl_secs,
            retention_check_interval_ms: config.retention_check_interval_ms,
            log_cleaner_interval_ms: config.log_cleaner_interval_ms,
            ..Default::default()
        };
        tasks.push(spawn_role(
            "storage",
            runnel_storage::serve(st, store.clone(), storage_l, stopped(stop_rx.clone())),
        ));

        let i = IngestConfig {
            metastore: metastore_url.clone(),
            auto_create_topics: config.auto_create_topics,
            ..Default::default()
        };
        tasks.push(spawn_role(
            "ingest",
            runnel_ingest::serve(i, store.clone(), ingest_l, stopped(stop_rx.clone())),
        ));

        let g = runnel_groups::GroupsConfig {
            metastore: metastore_url.clone(),
            advertised_address: Some(groups.clone()),
            coordinator_address: Some(coordinator.clone()),
            lease_ttl_secs: config.lease_ttl_secs,
            initial_rebalance_delay_ms: config.initial_rebalance_delay_ms,
            consumer_heartbeat_interval_ms: config.consumer_heartbeat_interval_ms,
            lag_interval_secs: 10,
            ..Default::default()
        };
        tasks.push(spawn_role(
            "groups",
            runnel_groups::serve(g, store.clone(), groups_l, stopped(stop_rx.clone())),
        ));

        let e = runnel_edge::EdgeConfig {
            node_id: 1,
            metastore: metastore_url.clone(),
            advertised_address: Some(kafka.clone()),
            ingest_address: ingest.clone(),
            coordinator_address: Some(coordinator.clone()),
            auto_create_topics: config.auto_create_topics,
            lease_ttl_secs: config.lease_ttl_secs,
            ..Default::default()
        };
        tasks.push(spawn_role(
            "edge",
            runnel_edge::serve(e, store.clone(), kafka_l, stopped(stop_rx.clone())),
        ));

        let cluster = DevCluster {
            coordinator,
            storage,
            ingest,
            groups,
            kafka,
            store,
            stop,
            tasks,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Waits until the controller is elected, the storage node registered
    /// and every consumer-group shard owned, so the first topic creation and
    /// the first consumer group succeed.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let admin = runnel_client::Admin::connect(&self.coordinator)?;
        let shards_prefix =
            runnel_cluster::Keys::new(&runnel_groups::GroupsConfig::default().cluster)
                .group_shards_prefix();
        let shards = runnel_groups::GroupsConfig::default().offsets_topic_partitions as usize;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some((name, task)) = self.tasks.iter().find(|(_, t)| t.is_finished()) {
                let _ = task;
                anyhow::bail!("{name} stopped during start-up; see the log above");
            }
            if let Ok(md) = admin.metadata(&[]).await
                && md.controller_id >= 0
                && !md.nodes.is_empty()
                && !md.cluster_id.is_empty()
                && self
                    .store
                    .range(&shards_prefix)
                    .await
                    .is_ok_and(|(kvs, _)| kvs.len() >= shards)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("runnel dev did not become ready in 30 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Stops every role and waits for them.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut first_error = None;
        for (name, task) in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(role = name, error = %e, "role failed");
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(anyhow::anyhow!("{name} panicked: {e}"));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Resolves when any role stops on its own (an error).
    pub async fn any_stopped(&mut self) -> anyhow::Result<()> {
        let (result, index, _) =
            futures::future::select_all(self.tasks.iter_mut().map(|(_, t)| t)).await;
        let name = self.tasks[index].0;
        match result {
            Ok(Ok(())) => anyhow::bail!("{name} stopped"),
            Ok(Err(e)) => Err(e.context(format!("{name} failed"))),
            Err(e) => anyhow::bail!("{name} panicked: {e}"),
        }
    }
}
