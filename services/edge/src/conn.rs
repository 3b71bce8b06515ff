//! One client connection. A reader task takes frames off the socket while
//! the request before them is being served, so a client that pipelines
//! (librdkafka keeps several produce requests in flight) is never waiting on
//! the edge to read. Requests are still handled and answered strictly in
//! order, as a Kafka broker does; Produce requests found queued together
//! are stored with one ingest call (see `api::produce`), which keeps their
//! order and costs one append instead of several.
//!
//! Queued frames are bounded per connection (`max_queued_requests`) and
//! across the edge (`max_queued_request_bytes`), so read-ahead never holds
//! more memory than configured.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::Instrument;

use crate::api::{Ctx, dispatch, produce};
use crate::error::{ProtocolError, name};
use crate::frame::{
    Parsed, Request, api_name, encode_response, parse_request, read_frame, unsupported_api_versions,
};
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

/// A frame read ahead, holding its share of the edge's read-ahead budget
/// until it has been handled.
struct Queued {
    frame: Bytes,
    _budget: OwnedSemaphorePermit,
}

/// How many bytes of read-ahead frames the whole edge may hold, counted in
/// KiB permits. A frame larger than the whole budget takes all of it.
#[derive(Debug, Clone)]
pub struct ReadAhead {
    permits: Arc<Semaphore>,
    units: u32,
}

const BUDGET_UNIT: usize = 1024;

impl ReadAhead {
    pub fn new(bytes: usize) -> Self {
        let units = (bytes / BUDGET_UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        ReadAhead {
            permits: Arc::new(Semaphore::new(units)),
            units: units as u32,
        }
    }

    async fn reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let want = u32::try_from(len.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
        self.permits
            .clone()
            .acquire_many_owned(want.min(self.units))
            .await
            .ok()
    }
}

fn is_produce(frame: &Bytes) -> bool {
    frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::Produce as i16
}

/// Reads frames into `queue` until the client leaves, breaks the framing,
/// or the connection is done with.
async fn read_ahead(
    read: tokio::net::tcp::OwnedReadHalf,
    max: usize,
    budget: ReadAhead,
    queue: mpsc::Sender<Result<Queued, ProtocolError>>,
) {
    let mut io = BufReader::with_capacity(64 * 1024, read);
    loop {
        let item = match read_frame(&mut io, max).await {
            Ok(None) => return,
            Ok(Some(frame)) => match budget.reserve(frame.len()).await {
                Some(permit) => Ok(Queued {
                    frame,
                    _budget: permit,
                }),
                None => return,
            },
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if queue.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// Serves a connection until the client leaves, breaks the protocol, stays
/// idle too long, or the edge shuts down.
pub async fn serve(
    edge: Arc<Edge>,
    budget: ReadAhead,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel(edge.config.max_queued_requests.max(1));
    let reader = tokio::spawn(read_ahead(read, edge.config.max_request_bytes, budget, tx));
    let mut state = ConnState::new(peer);
    let idle = Duration::from_millis(edge.config.connections_max_idle_ms.max(1));
    // Frames taken off the queue but not handled yet, in order.
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let outcome: Result<(), ProtocolError> = async {
        loop {
            let first = match pending.pop_front() {
                Some(q) => q,
                None => tokio::select! {
                    _ = crate::server::stopped(&mut stop) => return Ok(()),
                    next = tokio::time::timeout(idle, rx.recv()) => match next {
                        Err(_) => return Err(ProtocolError::Idle(idle.as_millis() as u64)),
                        Ok(None) => return Ok(()),
                        Ok(Some(Err(e))) => return Err(e),
                        Ok(Some(Ok(q))) => q,
                    },
                },
            };
            // A request in flight is finished even during shutdown (the
            // server gives connections a drain period), so a produce the
            // client sent is answered rather than cut off.
            let mut broken = None;
            let responses = if is_produce(&first.frame) && pending.is_empty() {
                // Produce requests queued right behind this one are stored
                // together with it.
                let mut run = vec![first];
                while let Ok(next) = rx.try_recv() {
                    match next {
                        Ok(q) if is_produce(&q.frame) => run.push(q),
                        Ok(q) => {
                            pending.push_back(q);
                            break;
                        }
                        Err(e) => {
                            // Answer what came before the broken frame first.
                            broken = Some(e);
                            break;
                        }
                    }
                }
                handle_produce_run(&edge, &mut state, run, &mut pending).await?
            } else {
                handle_frame(&edge, &mut state, first.frame).await?
            };
            write_all(&mut write, responses).await?;
            if let Some(e) = broken {
                while let Some(q) = pending.pop_front() {
                    let responses = handle_frame(&edge, &mut state, q.frame).await?;
                    write_all(&mut write, responses).await?;
                }
                return Err(e);
            }
        }
    }
    .await;
    reader.abort();
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
    let _ = write.shutdown().await;
}

async fn write_all(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    responses: Vec<BytesMut>,
) -> Result<(), ProtocolError> {
    for bytes in responses {
        metrics::counter!("runnel_edge_sent_bytes_total").increment(bytes.len() as u64);
        write.write_all(&bytes).await?;
    }
    Ok(())
}

/// Handles a run of queued Produce frames: the longest prefix that parses
/// and can be stored together goes as one ingest call; the rest is put back
/// at the front of `pending`, in order, to be handled one by one.
async fn handle_produce_run(
    edge: &Edge,
    state: &mut ConnState,
    run: Vec<Queued>,
    pending: &mut VecDeque<Queued>,
) -> Result<Vec<BytesMut>, ProtocolError> {
    if run.len() == 1 {
        let q = run.into_iter().next().map(|q| q.frame).unwrap_or_default();
        return handle_frame(edge, state, q).await;
    }
    let mut parsed: Vec<ParsedProduce> = Vec::new();
    let mut rest = Vec::new();
    for q in run {
        if !rest.is_empty() {
            rest.push(q);
            continue;
        }
        let len = q.frame.len();
        match parse_request(q.frame.clone()) {
            Ok(Parsed::Request {
                version,
                header,
                request,
                ..
            }) => match *request {
                Request::Produce(r)
                    if r.transactional_id.is_none()
                        && produce::mergeable(&[(r.clone(), version)])
                        && parsed.first().is_none_or(|f| f.req.acks == r.acks) =>
                {
                    parsed.push(ParsedProduce {
                        req: r,
                        version,
                        header,
                        len,
                    });
                }
                _ => rest.push(q),
            },
            _ => rest.push(q),
        }
    }
    for q in rest.into_iter().rev() {
        pending.push_front(q);
    }
    if parsed.len() <= 1 {
        // Nothing to merge: handle the lone one (or none) the normal way.
        let mut out = Vec::new();
        for p in parsed {
            metrics::counter!("runnel_edge_received_bytes_total").increment(p.len as u64 + 4);
            state.requests += 1;
            let request = Request::Produce(p.req);
            out.extend(
                handle_parsed(edge, state, ApiKey::Produce, p.version, p.header, request).await?,
            );
        }
        return Ok(out);
    }
    let started = Instant::now();
    state.requests += parsed.len() as u64;
    for p in &parsed {
        metrics::counter!("runnel_edge_received_bytes_total").increment(p.len as u64 + 4);
        note_client(state, &p.header);
    }
    let reqs: Vec<_> = parsed.iter().map(|p| (p.req.clone(), p.version)).collect();
    let span = tracing::debug_span!(
        "kafka_request",
        api = "Produce",
        merged = reqs.len(),
        client_id = state.client_id.as_deref().unwrap_or(""),
        peer = %state.peer,
    );
    let answers = produce::handle_merged(edge, &reqs).instrument(span).await;
    let mut out = Vec::with_capacity(answers.len());
    for ((response, codes), p) in answers.into_iter().zip(&parsed) {
        let error = codes.iter().copied().find(|c| *c != 0).unwrap_or(0);
        metrics::counter!("runnel_edge_requests_total", "api" => "Produce", "error" => name(error))
            .increment(1);
        metrics::histogram!("runnel_edge_request_duration_seconds", "api" => "Produce")
            .record(started.elapsed().as_secs_f64());
        if let Some(response) = response {
            out.push(encode_response(
                ApiKey::Produce,
                p.version,
                p.header.correlation_id,
                &response,
            )?);
        }
    }
    Ok(out)
}

/// A Produce request taken off the queue, parsed.
struct ParsedProduce {
    req: kafka_protocol::messages::ProduceRequest,
    version: i16,
    header: kafka_protocol::messages::RequestHeader,
    len: usize,
}

fn note_client(state: &mut ConnState, header: &kafka_protocol::messages::RequestHeader) {
    if let Some(id) = &header.client_id
        && state.client_id.as_deref() != Some(id.as_str())
    {
        state.client_id = Some(id.to_string());
    }
}

async fn handle_frame(
    edge: &Edge,
    state: &mut ConnState,
    frame: Bytes,
) -> Result<Vec<BytesMut>, ProtocolError> {
    metrics::counter!("runnel_edge_received_bytes_total").increment(frame.len() as u64 + 4);
    state.requests += 1;
    match parse_request(frame)? {
        Parsed::UnsupportedApiVersions {
            correlation_id,
            version,
        } => {
            tracing::debug!(peer = %state.peer, version, "ApiVersions version not supported; answering with v0");
            metrics::counter!("runnel_edge_requests_total", "api" => "ApiVersions", "error" => "UNSUPPORTED_VERSION").increment(1);
            unsupported_api_versions(correlation_id).map(|r| vec![r])
        }
        Parsed::Request {
            api,
            version,
            header,
            request,
        } => handle_parsed(edge, state, api, version, header, *request).await,
    }
}

async fn handle_parsed(
    edge: &Edge,
    state: &mut ConnState,
    api: ApiKey,
    version: i16,
    header: kafka_protocol::messages::RequestHeader,
    request: Request,
) -> Result<Vec<BytesMut>, ProtocolError> {
    note_client(state, &header);
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
    let response = dispatch(&mut ctx, api, version, header.correlation_id, request)
        .instrument(span)
        .await;
    let error = ctx.error;
    metrics::counter!("runnel_edge_requests_total", "api" => api_label, "error" => name(error))
        .increment(1);
    metrics::histogram!("runnel_edge_request_duration_seconds", "api" => api_label)
        .record(started.elapsed().as_secs_f64());
    Ok(response?.into_iter().collect())
}
