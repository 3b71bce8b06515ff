//! Runs a storage node: open the logs, register, follow assignments, serve.

use std::future::Future;
use std::sync::Arc;

use runnel_cluster::{Keys, MetadataWatcher};
use runnel_metastore::MetaStore;
use runnel_proto::storage::v1::storage_service_server::StorageServiceServer;
use tokio::net::TcpListener;

use crate::config::StorageConfig;
use crate::grpc::StorageGrpc;
use crate::log::{LogManager, LogManagerOptions};
use crate::node::StorageNode;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid storage config: {0}")]
    Config(String),
    #[error("opening the data directory: {0}")]
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    Meta(#[from] runnel_metastore::MetaError),
    #[error(transparent)]
    Rpc(#[from] runnel_rpc::RpcError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves a storage node on `listener` until `shutdown` resolves. On shutdown
/// the node deregisters (so leadership moves at once) and flushes its logs.
pub async fn serve(
    config: StorageConfig,
    store: Arc<dyn MetaStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let flush = config.flush_policy().map_err(ServeError::Config)?;
    let local = listener.local_addr()?;
    let advertised = config
        .advertised_address
        .clone()
        .unwrap_or_else(|| runnel_rpc::advertised_address(local));
    let data_dir = config.data_dir.clone();
    tracing::info!(data_dir = %data_dir.display(), "opening partition logs (recovering unclean tails)");
    let logs = tokio::task::spawn_blocking(move || {
        // Until the metadata says otherwise a log counts as replicated: it
        // shows nothing above its start until its high watermark is known.
        let options = LogManagerOptions {
            default_config: crate::log::LogConfig {
                replicated: true,
                ..Default::default()
            },
            ..Default::default()
        };
        LogManager::open_with(&data_dir, options)
    })
    .await
    .map_err(|e| ServeError::Config(format!("log manager start-up panicked: {e}")))??;
    let keys = Keys::new(&config.cluster);
    let watcher = MetadataWatcher::start(store.clone(), keys.clone()).await?;
    let node = Arc::new(StorageNode {
        node_id: config.node_id,
        config: config.clone(),
        store,
        keys,
        watcher,
        logs,
        flush,
        replication: crate::replication::Replication::new(
            config.node_id,
            std::time::Duration::from_millis(config.replica_lag_time_max_ms),
        ),
        lease_confirmed_ms: std::sync::atomic::AtomicI64::new(0),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sync = tokio::spawn(node.clone().sync_assignments(stop_rx.clone()));
    let retention = tokio::spawn(node.clone().retention_loop(stop_rx.clone()));
    let cleaner = tokio::spawn(node.clone().cleaner_loop(stop_rx.clone()));
    let isr = tokio::spawn(node.clone().isr_loop(stop_rx.clone()));
    let fetchers = tokio::spawn(crate::replica_fetcher::run(node.clone(), stop_rx.clone()));
    let registration = tokio::spawn(node.clone().keep_registered(advertised.clone(), stop_rx));

    let (health, health_svc, reflection) = runnel_rpc::health_and_reflection()?;
    health
        .set_serving::<StorageServiceServer<StorageGrpc>>()
        .await;
    let svc = StorageServiceServer::new(StorageGrpc::new(node.clone()))
        .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
    let router = runnel_rpc::server()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(svc);
    tracing::info!(node_id = node.node_id, listen = %local, advertised = %advertised, "storage node serving");
    let result = runnel_rpc::serve(router, listener, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    let _ = registration.await;
    let _ = sync.await;
    let _ = retention.await;
    let _ = cleaner.await;
    let _ = isr.await;
    let _ = fetchers.await;
    for (topic, _, partition) in node.logs.list() {
        if let Some(log) = node.logs.get(&topic, partition)
            && let Err(e) = log.flush().await
        {
            tracing::warn!(%topic, partition, error = %e, "flush at shutdown failed");
        }
    }
    result.map_err(Into::into)
}
