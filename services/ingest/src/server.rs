//! Runs an ingest instance.

use std::future::Future;
use std::sync::Arc;

use runnel_metastore::MetaStore;
use runnel_proto::ingest::v1::ingest_service_server::IngestServiceServer;
use tokio::net::TcpListener;

use crate::config::IngestConfig;
use crate::grpc::IngestGrpc;
use crate::router::Router;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Meta(#[from] runnel_metastore::MetaError),
    #[error(transparent)]
    Rpc(#[from] runnel_rpc::RpcError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves ingest on `listener` until `shutdown` resolves.
pub async fn serve(
    config: IngestConfig,
    store: Arc<dyn MetaStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    let router = Arc::new(Router::new(config, store).await?);
    let (health, health_svc, reflection) = runnel_rpc::health_and_reflection()?;
    health
        .set_serving::<IngestServiceServer<IngestGrpc>>()
        .await;
    let svc = IngestServiceServer::new(IngestGrpc::new(router))
        .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
    let router = runnel_rpc::server()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(svc);
    tracing::info!(listen = %local, "ingest serving");
    runnel_rpc::serve(router, listener, shutdown)
        .await
        .map_err(Into::into)
}
