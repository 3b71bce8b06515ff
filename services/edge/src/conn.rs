//! One client connection: read a frame, handle it, write the response, in
//! order. Like a Kafka broker, the edge handles one request of a connection
//! at a time, which is what keeps a producer's pipelined requests for a
//! partition in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use crate::api::{Ctx, dispatch};
use crate::error::{ProtocolError, name};
use crate::frame::{Parsed, api_name, parse_request, read_frame, unsupported_api_versions};
use crate::state::Edge;

/// What the edge knows about a connection. Authentication (SASL) will keep
/// its state here: the mechanism negotiated and the principal.
#[derive(Debug)]
pub struct ConnState {
    pub peer: SocketAddr,
    /// From the request header of the last request.
    pub client_id: Option<String>,
    /// `name/version` from ApiVersions v3+.
    pub software: Option<String>,
    /// The authenticated principal; `None` until SASL exists.
    pub principal: Option<String>,
    pub requests: u64,
}

impl ConnState {
    pub fn new(peer: SocketAddr) -> Self {
        ConnState {
            peer,
            client_id: None,
            software: None,
            principal: None,
            requests: 0,
        }
    }
}

/// Serves a connection until the client leaves, breaks the protocol, stays
/// idle too long, or the edge shuts down.
pub async fn serve(
    edge: Arc<Edge>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut io = BufReader::with_capacity(64 * 1024, stream);
    let mut state = ConnState::new(peer);
    let idle = Duration::from_millis(edge.config.connections_max_idle_ms.max(1));
    let max = edge.config.max_request_bytes;
    let outcome: Result<(), ProtocolError> = async {
        loop {
            let frame = tokio::select! {
                _ = crate::server::stopped(&mut stop) => return Ok(()),
                read = tokio::time::timeout(idle, read_frame(&mut io, max)) => match read {
                    Err(_) => return Err(ProtocolError::Idle(idle.as_millis() as u64)),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Ok(Some(frame))) => frame,
                },
            };
            metrics::counter!("runnel_edge_received_bytes_total").increment(frame.len() as u64 + 4);
            // A request in flight is finished even during shutdown (the
            // server gives connections a drain period), so a produce the
            // client sent is answered rather than cut off.
            let response = handle_frame(&edge, &mut state, frame).await?;
            if let Some(bytes) = response {
                metrics::counter!("runnel_edge_sent_bytes_total").increment(bytes.len() as u64);
                io.get_mut().write_all(&bytes).await?;
            }
        }
    }
    .await;
    match outcome {
        Ok(()) => tracing::debug!(%peer, requests = state.requests, "connection closed"),
        Err(ProtocolError::Io(e)) => {
            tracing::debug!(%peer, error = %e, "connection closed by I/O error")
        }
        Err(e) => {
            metrics::counter!("runnel_edge_protocol_errors_total", "reason" => e.label())
                .increment(1);
            tracing::info!(
                %peer,
                client_id = state.client_id.as_deref().unwrap_or(""),
                error = %e,
                "closing connection"
            );
        }
    }
    let _ = io.get_mut().shutdown().await;
}

async fn handle_frame(
    edge: &Edge,
    state: &mut ConnState,
    frame: bytes::Bytes,
) -> Result<Option<bytes::BytesMut>, ProtocolError> {
    state.requests += 1;
    let (api, version, header, request) = match parse_request(frame)? {
        Parsed::UnsupportedApiVersions {
            correlation_id,
            version,
        } => {
            tracing::debug!(peer = %state.peer, version, "ApiVersions version not supported; answering with v0");
            metrics::counter!("runnel_edge_requests_total", "api" => "ApiVersions", "error" => "UNSUPPORTED_VERSION").increment(1);
            return unsupported_api_versions(correlation_id).map(Some);
        }
        Parsed::Request {
            api,
            version,
            header,
            request,
        } => (api, version, header, request),
    };
    if let Some(id) = &header.client_id
        && state.client_id.as_deref() != Some(id.as_str())
    {
        state.client_id = Some(id.to_string());
    }
    let api_label = api_name(api);
    let span = tracing::debug_span!(
        "kafka_request",
        api = api_label,
        version,
        correlation_id = header.correlation_id,
        client_id = state.client_id.as_deref().unwrap_or(""),
        peer = %state.peer,
    );
    let started = Instant::now();
    let mut ctx = Ctx {
        edge,
        conn: state,
        error: 0,
    };
    let response = dispatch(&mut ctx, api, version, header.correlation_id, *request)
        .instrument(span)
        .await;
    let error = ctx.error;
    metrics::counter!("runnel_edge_requests_total", "api" => api_label, "error" => name(error))
        .increment(1);
    metrics::histogram!("runnel_edge_request_duration_seconds", "api" => api_label)
        .record(started.elapsed().as_secs_f64());
    response
}
