//! Runs a groups node: register, own shards, serve gRPC until shutdown,
//! then hand the shards back so other nodes take over at once.

use std::future::Future;
use std::sync::Arc;

use runnel_cluster::{GroupsNodeRecord, Keys, MetadataWatcher};
use runnel_metastore::MetaStore;
use runnel_proto::groups::v1::groups_service_server::GroupsServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::GroupsConfig;
use crate::grpc::GroupsGrpc;
use crate::node::GroupsNode;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid groups config: {0}")]
    Config(String),
    #[error(transparent)]
    Meta(#[from] runnel_metastore::MetaError),
    #[error(transparent)]
    Rpc(#[from] runnel_rpc::RpcError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the groups role on `listener` until `shutdown` resolves.
pub async fn serve(
    config: GroupsConfig,
    store: Arc<dyn MetaStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.check().map_err(ServeError::Config)?;
    let local = listener.local_addr()?;
    let address = config
        .advertised_address
        .clone()
        .unwrap_or_else(|| runnel_rpc::advertised_address(local));
    let keys = Keys::new(&config.cluster);
    let watcher = Arc::new(MetadataWatcher::start(store.clone(), keys).await?);
    let me = GroupsNodeRecord {
        node_id: config.node_id,
        address: address.clone(),
        started_at_ms: runnel_cluster::now_ms(),
    };
    let node = Arc::new(GroupsNode::new(config, me, store, watcher));
    let (stop_tx, stop_rx) = watch::channel(false);
    let ownership = tokio::spawn(node.clone().run_ownership(stop_rx.clone()));
    let timers = tokio::spawn(node.clone().run_timers(stop_rx.clone()));
    let lag = tokio::spawn(node.clone().run_lag(stop_rx));

    let (health, health_svc, reflection) = runnel_rpc::health_and_reflection()?;
    health
        .set_serving::<GroupsServiceServer<GroupsGrpc>>()
        .await;
    let router = runnel_rpc::server()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(GroupsServiceServer::new(GroupsGrpc::new(node.clone())));
    tracing::info!(listen = %local, advertised = %address, node_id = node.me.node_id, "groups serving");
    let served = runnel_rpc::serve(router, listener, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = ownership.await;
    timers.abort();
    lag.abort();
    served.map_err(Into::into)
}
