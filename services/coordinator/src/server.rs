//! Runs a coordinator: the controller campaign plus the gRPC server.

use std::future::Future;
use std::sync::Arc;

use runnel_metastore::MetaStore;
use runnel_proto::coordinator::v1::coordinator_service_server::CoordinatorServiceServer;
use tokio::net::TcpListener;

use crate::config::CoordinatorConfig;
use crate::controller::Controller;
use crate::error::CoordinatorError;
use crate::grpc::CoordinatorGrpc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error(transparent)]
    Rpc(#[from] runnel_rpc::RpcError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the coordinator on `listener` until `shutdown` resolves; on
/// shutdown an active controller resigns so a standby takes over at once.
pub async fn serve(
    config: CoordinatorConfig,
    store: Arc<dyn MetaStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    let advertised = config
        .advertised_address
        .clone()
        .unwrap_or_else(|| runnel_rpc::advertised_address(local));
    let controller = Controller::new(store, config, advertised.clone()).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let campaign = tokio::spawn(controller.clone().run(stop_rx));

    let (health, health_svc, reflection) = runnel_rpc::health_and_reflection()?;
    health
        .set_serving::<CoordinatorServiceServer<CoordinatorGrpc>>()
        .await;
    let svc = CoordinatorServiceServer::new(CoordinatorGrpc::new(controller))
        .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
    let router = runnel_rpc::server()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(svc);
    tracing::info!(listen = %local, advertised = %advertised, "coordinator serving");
    let result = runnel_rpc::serve(router, listener, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    let _ = campaign.await;
    result.map_err(Into::into)
}
