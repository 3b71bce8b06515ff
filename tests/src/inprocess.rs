//! The roles as in-process gRPC servers on a real etcd.

use std::path::PathBuf;
use std::time::Duration;

use runnel_client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig};
use runnel_coordinator::CoordinatorConfig;
use runnel_ingest::IngestConfig;
use runnel_storage::StorageConfig;
use runnel_test_support::EtcdServer;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{SOON, eventually, init_tracing, start_etcd, unique_name};

/// A storage node of an [`InProcessCluster`].
#[derive(Debug, Clone)]
pub struct StorageNodeInfo {
    pub node_id: i32,
    pub address: String,
    pub data_dir: PathBuf,
}

/// A real etcd plus a coordinator, `n` storage nodes and an ingest instance,
/// each served by its role's `serve` on its own 127.0.0.1:0 listener with its
/// own metastore connection, under a cluster name no other test uses.
pub struct InProcessCluster {
    pub etcd: EtcdServer,
    /// The cluster name (metastore prefix).
    pub name: String,
    pub coordinator: String,
    pub ingest: String,
    pub storage: Vec<StorageNodeInfo>,
    stop: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<Result<(), String>>)>,
    _dir: TempDir,
}

impl std::fmt::Debug for InProcessCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessCluster")
            .field("name", &self.name)
            .field("etcd", &self.etcd)
            .field("coordinator", &self.coordinator)
            .field("ingest", &self.ingest)
            .field("storage", &self.storage)
            .finish()
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

impl InProcessCluster {
    /// Starts everything and waits until the controller is elected and every
    /// storage node is registered.
    pub async fn start(storage_nodes: usize) -> Self {
        Self::start_with(storage_nodes, |_| {}).await
    }

    /// [`InProcessCluster::start`], with `configure` applied to each storage
    /// node's config (after the harness filled in its own settings).
    pub async fn start_with(storage_nodes: usize, configure: impl Fn(&mut StorageConfig)) -> Self {
        init_tracing();
        let etcd = start_etcd().await;
        let url = etcd.url();
        let name = unique_name("inproc");
        let dir = tempfile::Builder::new()
            .prefix("runnel-e2e-")
            .tempdir()
            .unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let (listener, coordinator) = bind().await;
        let config = CoordinatorConfig {
            instance_id: 1,
            metastore: url.clone(),
            cluster: name.clone(),
            advertised_address: Some(coordinator.clone()),
            lease_ttl_secs: 5,
            ..Default::default()
        };
        let store = runnel_metastore::open(&url).await.unwrap();
        let rx = stop_rx.clone();
        tasks.push((
            "coordinator".to_string(),
            tokio::spawn(async move {
                runnel_coordinator::serve(config, store, listener, stopped(rx))
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));

        let mut storage = Vec::new();
        for i in 0..storage_nodes {
            let node_id = i as i32 + 1;
            let (listener, address) = bind().await;
            let data_dir = dir.path().join(format!("storage-{node_id}"));
            let mut config = StorageConfig {
                node_id,
                metastore: url.clone(),
                cluster: name.clone(),
                data_dir: data_dir.clone(),
                advertised_address: Some(address.clone()),
                lease_ttl_secs: 5,
                ..Default::default()
            };
            configure(&mut config);
            let store = runnel_metastore::open(&url).await.unwrap();
            let rx = stop_rx.clone();
            tasks.push((
                format!("storage-{node_id}"),
                tokio::spawn(async move {
                    runnel_storage::serve(config, store, listener, stopped(rx))
                        .await
                        .map_err(|e| e.to_string())
                }),
            ));
            storage.push(StorageNodeInfo {
                node_id,
                address,
                data_dir,
            });
        }

        let (listener, ingest) = bind().await;
        let config = IngestConfig {
            metastore: url.clone(),
            cluster: name.clone(),
            ..Default::default()
        };
        let store = runnel_metastore::open(&url).await.unwrap();
        let rx = stop_rx.clone();
        tasks.push((
            "ingest".to_string(),
            tokio::spawn(async move {
                runnel_ingest::serve(config, store, listener, stopped(rx))
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));

        let cluster = InProcessCluster {
            etcd,
            name,
            coordinator,
            ingest,
            storage,
            stop,
            tasks,
            _dir: dir,
        };
        cluster.wait_ready().await;
        cluster
    }

    async fn wait_ready(&self) {
        let admin = self.admin();
        let nodes = self.storage.len();
        eventually("in-process cluster ready", SOON, || {
            let admin = admin.clone();
            let finished: Vec<String> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.is_finished())
                .map(|(n, _)| n.clone())
                .collect();
            async move {
                assert!(
                    finished.is_empty(),
                    "roles stopped during start-up: {finished:?}"
                );
                let md = admin.metadata(&[]).await.map_err(|e| e.to_string())?;
                if md.controller_id < 0 || md.cluster_id.is_empty() || md.nodes.len() != nodes {
                    return Err(format!(
                        "controller {}, cluster id {:?}, {} of {nodes} storage nodes",
                        md.controller_id,
                        md.cluster_id,
                        md.nodes.len()
                    ));
                }
                Ok(())
            }
        })
        .await;
    }

    pub fn admin(&self) -> Admin {
        Admin::connect(&self.coordinator).unwrap()
    }

    pub fn producer_config(&self) -> ProducerConfig {
        ProducerConfig::new(&self.ingest, &self.coordinator)
    }

    pub fn producer(&self) -> Producer {
        Producer::new(self.producer_config()).unwrap()
    }

    pub fn consumer(&self) -> Consumer {
        let mut config = ConsumerConfig::new(&self.coordinator);
        config.max_wait = Duration::from_millis(200);
        Consumer::new(config).unwrap()
    }

    /// Stops every role through its shutdown future and checks each
    /// `serve` returned Ok.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            let outcome = tokio::time::timeout(SOON, task).await.unwrap_or_else(|_| {
                panic!("{name} did not stop after its shutdown future resolved")
            });
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("{name} failed: {e}"),
                Err(e) => panic!("{name} panicked: {e}"),
            }
        }
    }
}
