//! gRPC plumbing shared by every role.
//!
//! - [`server`] builds a tonic server with gRPC health and reflection already
//!   registered and serves it on a bound listener until a shutdown future
//!   resolves (so tests run real servers on port 0);
//! - [`ChannelPool`] hands out one lazily connected channel per address;
//! - [`MAX_MESSAGE_BYTES`] is the message size limit every runnel server and
//!   client uses (tonic's default of 4 MiB is too small for record batches).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

pub use tonic_health::server::HealthReporter;

/// Largest gRPC message a runnel server or client accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("invalid address {0:?}: {1}")]
    InvalidAddress(String, String),
}

/// A tonic server builder with runnel's transport settings.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        // Batches are tens of KiB and up: larger HTTP/2 frames mean fewer
        // frames, wake-ups and copies per message than the 16 KiB default.
        .max_frame_size(Some(HTTP2_FRAME_BYTES))
}

/// HTTP/2 frame size both sides advertise.
const HTTP2_FRAME_BYTES: u32 = 1024 * 1024;

/// The health and reflection services every role serves, plus the health
/// reporter to mark services serving or not.
pub fn health_and_reflection() -> Result<
    (
        HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
    ),
    RpcError,
> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(runnel_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RpcError::Reflection(e.to_string()))?;
    Ok((reporter, health, reflection))
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RpcError> {
    // With our own listener tonic does not apply the builder's TCP options,
    // so set them here: without TCP_NODELAY small responses wait for the
    // peer's delayed ACK (a 40 ms tail).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(RpcError::from)
}

/// An endpoint for `host:port` (or a full `http://` URL) with runnel's client
/// settings.
pub fn endpoint(address: &str) -> Result<Endpoint, RpcError> {
    let url = if address.starts_with("http://") || address.starts_with("https://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(url)
        .map_err(|e| RpcError::InvalidAddress(address.to_string(), e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .max_frame_size(Some(HTTP2_FRAME_BYTES)))
}

/// A channel to `address` that connects on first use and reconnects after
/// failures.
pub fn lazy_channel(address: &str) -> Result<Channel, RpcError> {
    Ok(endpoint(address)?.connect_lazy())
}

/// One channel per address, shared by every caller (a channel multiplexes
/// many concurrent calls over HTTP/2).
#[derive(Debug, Clone, Default)]
pub struct ChannelPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ChannelPool {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, address: &str) -> Result<Channel, RpcError> {
        let mut map = self.channels.lock();
        if let Some(ch) = map.get(address) {
            return Ok(ch.clone());
        }
        let ch = lazy_channel(address)?;
        map.insert(address.to_string(), ch.clone());
        Ok(ch)
    }

    /// Forgets a channel (e.g. after the node at that address changed).
    pub fn forget(&self, address: &str) {
        self.channels.lock().remove(address);
    }
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// The address to advertise when none is configured: the bound address, with
/// a wildcard host (`0.0.0.0`, `[::]`) replaced by loopback.
pub fn advertised_address(bound: std::net::SocketAddr) -> String {
    if bound.ip().is_unspecified() {
        format!("127.0.0.1:{}", bound.port())
    } else {
        bound.to_string()
    }
}
