//! A batching producer.
//!
//! `send` hands a record to a background task that keeps one open batch per
//! partition. A batch is sent when it reaches `batch_bytes` or has waited
//! `linger`; all ready partitions go in one ingest request, at most one
//! request in flight per partition (so order within a partition holds, even
//! across retries) and `max_in_flight_requests` overall. Each record's
//! [`DeliveryFuture`] resolves with its offset or the error.
//!
//! With `idempotence` (the default, with acks=all) the producer gets a
//! producer id from ingest's InitProducerId and stamps each batch with it and
//! with per-partition sequence numbers. A retried batch is sent byte for byte
//! again, so a leader that already wrote it (the response was lost, or the
//! leader changed) answers with the first write's offsets instead of writing
//! it twice. A batch that fails for good leaves a gap in its partition's
//! sequence, so the producer then bumps its epoch and starts every sequence
//! again at 0 (as Kafka's clients do, KIP-360).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::ingest::v1 as pb;
use runnel_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use runnel_records::{Compression, PlainRecord, ProducerStamp, build_batch_as, partition_for_key};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::admin::Admin;
use crate::error::ClientError;
use crate::{Record, now_ms};

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Ingest address (host:port).
    pub ingest: String,
    /// Coordinator address (host:port), for partition counts.
    pub coordinator: String,
    /// How long a batch may wait for more records.
    pub linger: Duration,
    /// Send a partition's batch once it holds this many bytes.
    pub batch_bytes: usize,
    pub compression: Compression,
    /// 0, 1 or -1 (all).
    pub acks: i32,
    pub request_timeout: Duration,
    /// Attempts after the first for retriable errors. Without idempotence,
    /// retries after a lost response may duplicate records (at least once).
    pub retries: u32,
    /// Exactly once per partition across retries (see the module doc). Only
    /// with acks=-1; with acks 0 or 1 the producer is not idempotent.
    pub idempotence: bool,
    pub max_in_flight_requests: usize,
    /// Upper bound on record bytes buffered and in flight; `send` waits.
    pub buffer_bytes: usize,
}

impl ProducerConfig {
    pub fn new(ingest: &str, coordinator: &str) -> Self {
        ProducerConfig {
            ingest: ingest.to_string(),
            coordinator: coordinator.to_string(),
            linger: Duration::from_millis(5),
            batch_bytes: 256 * 1024,
            compression: Compression::None,
            acks: -1,
            request_timeout: Duration::from_secs(30),
            retries: 5,
            idempotence: true,
            max_in_flight_requests: 8,
            buffer_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: i32,
    /// -1 with acks=0.
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// Resolves when the record is acknowledged (or failed).
#[derive(Debug)]
pub struct DeliveryFuture(oneshot::Receiver<Result<RecordMetadata, ClientError>>);

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

enum Command {
    Send {
        topic: String,
        record: Record,
        reply: oneshot::Sender<Result<RecordMetadata, ClientError>>,
        permit: OwnedSemaphorePermit,
    },
    Flush(oneshot::Sender<()>),
}

/// A batching producer; cheap to clone, all clones share one background task.
#[derive(Debug, Clone)]
pub struct Producer {
    tx: mpsc::Sender<Command>,
    buffer: Arc<Semaphore>,
    buffer_bytes: usize,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Send { topic, .. } => write!(f, "Send({topic})"),
            Command::Flush(_) => write!(f, "Flush"),
        }
    }
}

impl Producer {
    pub fn new(config: ProducerConfig) -> Result<Self, ClientError> {
        if !matches!(config.acks, -1..=1) {
            return Err(ClientError::Invalid(format!(
                "acks must be 0, 1 or -1, not {}",
                config.acks
            )));
        }
        let channel = runnel_rpc::lazy_channel(&config.ingest)?;
        let ingest = IngestServiceClient::new(channel)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES);
        let admin = Admin::connect(&config.coordinator)?;
        let (tx, rx) = mpsc::channel(8192);
        let buffer_bytes = config.buffer_bytes.max(1);
        let buffer = Arc::new(Semaphore::new(buffer_bytes));
        tokio::spawn(Accumulator::new(config, ingest, admin).run(rx));
        Ok(Producer {
            tx,
            buffer,
            buffer_bytes,
        })
    }

    /// Queues a record; waits only while the buffer is full. Await the
    /// returned future for the offset.
    pub async fn send(&self, topic: &str, record: Record) -> Result<DeliveryFuture, ClientError> {
        let size = record_size(&record).clamp(1, self.buffer_bytes) as u32;
        let permit = self
            .buffer
            .clone()
            .acquire_many_owned(size)
            .await
            .map_err(|_| ClientError::Closed)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Send {
                topic: topic.to_string(),
                record,
                reply,
                permit,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(DeliveryFuture(rx))
    }

    /// Sends everything buffered and waits until all of it is acknowledged
    /// or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

fn record_size(r: &Record) -> usize {
    r.key.as_ref().map_or(0, Bytes::len)
        + r.value.as_ref().map_or(0, Bytes::len)
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
            .sum::<usize>()
        + 16
}

type Waiter = (
    oneshot::Sender<Result<RecordMetadata, ClientError>>,
    OwnedSemaphorePermit,
);

#[derive(Default)]
struct OpenBatch {
    records: Vec<PlainRecord>,
    waiters: Vec<Waiter>,
    bytes: usize,
    opened: Option<Instant>,
    ready: bool,
}

type Tp = (String, i32);

struct Accumulator {
    config: ProducerConfig,
    ingest: IngestServiceClient<Channel>,
    admin: Admin,
    partitions: HashMap<String, i32>,
    sticky: HashMap<String, i32>,
    open: HashMap<Tp, OpenBatch>,
    in_flight: HashSet<Tp>,
    requests: usize,
    flushes: Vec<oneshot::Sender<()>>,
    idempotence: Option<Idempotence>,
}

/// An idempotent producer's id, epoch and next sequence per partition.
#[derive(Default)]
struct Idempotence {
    /// `(producer id, epoch)`; `None` until InitProducerId answers, and again
    /// after a batch failed for good (then the epoch is bumped).
    producer: Option<(i64, i16)>,
    /// The last producer this accumulator had, to have its epoch bumped.
    previous: Option<(i64, i16)>,
    next_sequence: HashMap<Tp, i32>,
}

impl Idempotence {
    /// The stamp for a batch of `count` records to `tp`, or `None` when the
    /// producer must first (re)initialise: it has no id yet, or the batch
    /// would cross the sequence wrap-around (a batch must not).
    fn stamp(&mut self, tp: &Tp, count: usize) -> Option<ProducerStamp> {
        let (producer_id, epoch) = self.producer?;
        let base_sequence = self.next_sequence.get(tp).copied().unwrap_or(0);
        let last = i64::from(base_sequence) + count as i64 - 1;
        if last > i64::from(i32::MAX) {
            self.reset();
            return None;
        }
        let next = ((last + 1) % (i64::from(i32::MAX) + 1)) as i32;
        self.next_sequence.insert(tp.clone(), next);
        Some(ProducerStamp {
            producer_id,
            epoch,
            base_sequence,
        })
    }

    /// A new epoch is needed: every partition's sequence restarts at 0.
    fn reset(&mut self) {
        self.previous = self.producer.take().or(self.previous);
        self.next_sequence.clear();
    }
}

impl Accumulator {
    fn new(config: ProducerConfig, ingest: IngestServiceClient<Channel>, admin: Admin) -> Self {
        let idempotence = (config.idempotence && config.acks == -1).then(Idempotence::default);
        Accumulator {
            config,
            ingest,
            admin,
            partitions: HashMap::new(),
            sticky: HashMap::new(),
            open: HashMap::new(),
            in_flight: HashSet::new(),
            requests: 0,
            flushes: Vec::new(),
            idempotence,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut tick = tokio::time::interval(self.config.linger.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = false;
        loop {
            tokio::select! {
                cmd = rx.recv(), if !closing => match cmd {
                    Some(Command::Send { topic, record, reply, permit }) => {
                        self.add(topic, record, (reply, permit)).await;
                    }
                    Some(Command::Flush(tx)) => {
                        self.flushes.push(tx);
                        self.open.values_mut().for_each(|b| b.ready = true);
                    }
                    None => {
                        closing = true;
                        self.open.values_mut().for_each(|b| b.ready = true);
                    }
                },
                _ = tick.tick() => {
                    let linger = self.config.linger;
                    for b in self.open.values_mut() {
                        if b.opened.is_some_and(|t| t.elapsed() >= linger) {
                            b.ready = true;
                        }
                    }
                }
                Some(done) = done_rx.recv() => {
                    self.requests -= 1;
                    for tp in done.partitions {
                        self.in_flight.remove(&tp);
                    }
                    if done.failed
                        && let Some(idempotence) = &mut self.idempotence
                    {
                        idempotence.reset();
                    }
                }
            }
            self.init_producer().await;
            self.dispatch(&done_tx);
            if self.open.is_empty() && self.in_flight.is_empty() {
                for f in self.flushes.drain(..) {
                    let _ = f.send(());
                }
                if closing {
                    return;
                }
            }
        }
    }

    /// Gets a producer id (or a bumped epoch) when the idempotent producer
    /// needs one and has something to send. On failure the ready batches
    /// fail: they cannot be sent without it.
    async fn init_producer(&mut self) {
        let Some(idempotence) = &mut self.idempotence else {
            return;
        };
        if idempotence.producer.is_some() || !self.open.values().any(|b| b.ready) {
            return;
        }
        let request = pb::InitProducerIdRequest {
            producer_id: idempotence.previous.map(|p| p.0),
            producer_epoch: idempotence.previous.map(|p| i32::from(p.1)),
        };
        let mut attempt = 0;
        loop {
            let mut call = tonic::Request::new(request);
            call.set_timeout(self.config.request_timeout);
            match self.ingest.init_producer_id(call).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let epoch = i16::try_from(r.producer_epoch).unwrap_or(0);
                    tracing::debug!(
                        producer_id = r.producer_id,
                        epoch,
                        "idempotent producer ready"
                    );
                    idempotence.producer = Some((r.producer_id, epoch));
                    return;
                }
                Err(status) if attempt < self.config.retries => {
                    attempt += 1;
                    tracing::debug!(attempt, %status, "retrying InitProducerId");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(status) => {
                    let ready: Vec<Tp> = self
                        .open
                        .iter()
                        .filter(|(_, b)| b.ready)
                        .map(|(tp, _)| tp.clone())
                        .collect();
                    for tp in ready {
                        if let Some(b) = self.open.remove(&tp) {
                            fail(b, status.clone().into());
                        }
                    }
                    return;
                }
            }
        }
    }

    async fn partition_count(&mut self, topic: &str) -> Result<i32, ClientError> {
        if let Some(&n) = self.partitions.get(topic) {
            return Ok(n);
        }
        let md = self.admin.metadata(&[topic.to_string()]).await?;
        let n = md
            .topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partition_count)
            .ok_or_else(|| ClientError::UnknownTopic(topic.to_string()))?;
        self.partitions.insert(topic.to_string(), n);
        Ok(n)
    }

    async fn add(&mut self, topic: String, record: Record, waiter: Waiter) {
        let partitions = match self.partition_count(&topic).await {
            Ok(n) => n,
            Err(e) => {
                let _ = waiter.0.send(Err(e));
                return;
            }
        };
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => *self
                .sticky
                .entry(topic.clone())
                .or_insert_with(|| rand::rng().random_range(0..partitions)),
        };
        if partition < 0 || partition >= partitions {
            let _ = waiter.0.send(Err(ClientError::Invalid(format!(
                "partition {partition} is out of range for {topic} ({partitions} partitions)"
            ))));
            return;
        }
        let size = record_size(&record);
        let batch = self.open.entry((topic.clone(), partition)).or_default();
        batch.opened.get_or_insert_with(Instant::now);
        batch.bytes += size;
        batch.records.push(PlainRecord {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
        });
        batch.waiters.push(waiter);
        if batch.bytes >= self.config.batch_bytes {
            batch.ready = true;
            // A full sticky batch moves the sticky partition on.
            if record.partition.is_none() && self.sticky.get(&topic) == Some(&partition) {
                self.sticky
                    .insert(topic, rand::rng().random_range(0..partitions));
            }
        }
    }

    fn dispatch(&mut self, done: &mpsc::UnboundedSender<Done>) {
        while self.requests < self.config.max_in_flight_requests {
            let ready: Vec<Tp> = self
                .open
                .iter()
                .filter(|(tp, b)| b.ready && !self.in_flight.contains(*tp))
                .map(|(tp, _)| tp.clone())
                .collect();
            if ready.is_empty() {
                return;
            }
            let mut batches = Vec::with_capacity(ready.len());
            for tp in ready {
                let stamp = match &mut self.idempotence {
                    None => None,
                    Some(idempotence) => {
                        let count = self.open.get(&tp).map_or(0, |b| b.records.len());
                        match idempotence.stamp(&tp, count) {
                            Some(stamp) => Some(stamp),
                            // Not ready to stamp: wait for InitProducerId.
                            None => continue,
                        }
                    }
                };
                if let Some(b) = self.open.remove(&tp) {
                    self.in_flight.insert(tp.clone());
                    batches.push((tp, b, stamp));
                }
            }
            if batches.is_empty() {
                return;
            }
            self.requests += 1;
            let task = SendTask {
                ingest: self.ingest.clone(),
                acks: self.config.acks,
                timeout: self.config.request_timeout,
                retries: self.config.retries,
                compression: self.config.compression,
            };
            let done = done.clone();
            tokio::spawn(async move {
                let partitions = batches.iter().map(|(tp, _, _)| tp.clone()).collect();
                let failed = task.send(batches).await;
                let _ = done.send(Done { partitions, failed });
            });
        }
    }
}

/// A finished produce request: its partitions may send again; `failed` when
/// a batch failed for good (an idempotent producer must then bump its epoch).
struct Done {
    partitions: Vec<Tp>,
    failed: bool,
}

struct SendTask {
    ingest: IngestServiceClient<Channel>,
    acks: i32,
    timeout: Duration,
    retries: u32,
    compression: Compression,
}

fn retriable(code: i32) -> bool {
    [
        ErrorCode::NotLeaderOrFollower,
        ErrorCode::LeaderNotAvailable,
        ErrorCode::RequestTimedOut,
        ErrorCode::NotEnoughReplicas,
        ErrorCode::NotEnoughReplicasAfterAppend,
        ErrorCode::KafkaStorageError,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

impl SendTask {
    /// Sends the batches until each is acknowledged or has failed for good;
    /// true when any failed.
    async fn send(self, batches: Vec<(Tp, OpenBatch, Option<ProducerStamp>)>) -> bool {
        let mut failed = false;
        let mut pending: Vec<(Tp, OpenBatch, Bytes)> = Vec::with_capacity(batches.len());
        for (tp, b, stamp) in batches {
            match build_batch_as(&b.records, self.compression, stamp) {
                Ok(bytes) => pending.push((tp, b, bytes)),
                Err(e) => {
                    failed = true;
                    fail(b, ClientError::Invalid(e.to_string()));
                }
            }
        }
        let mut attempt = 0;
        while !pending.is_empty() {
            let request = pb::ProduceRequest {
                partitions: pending
                    .iter()
                    .map(|((topic, partition), _, bytes)| pb::TopicPartitionBatches {
                        topic: topic.clone(),
                        partition: *partition,
                        batches: bytes.clone(),
                    })
                    .collect(),
                acks: self.acks,
                timeout_ms: self.timeout.as_millis() as u32,
            };
            let mut request = tonic::Request::new(request);
            request.set_timeout(self.timeout + Duration::from_secs(5));
            let outcome = self.ingest.clone().produce(request).await;
            let mut retry = Vec::new();
            match outcome {
                Ok(response) => {
                    let results = response.into_inner().results;
                    if results.len() != pending.len() {
                        let e = ClientError::Invalid(
                            "ingest answered a different partition count".into(),
                        );
                        pending.into_iter().for_each(|(_, b, _)| fail(b, e.clone()));
                        return true;
                    }
                    for (item, r) in pending.into_iter().zip(results) {
                        let ((topic, partition), b, bytes) = item;
                        if r.error == 0 {
                            succeed(&topic, partition, b, &r, self.acks);
                        } else if retriable(r.error) && attempt < self.retries {
                            retry.push(((topic, partition), b, bytes));
                        } else {
                            failed = true;
                            fail(
                                b,
                                ClientError::partition(&topic, partition, r.error, r.error_message),
                            );
                        }
                    }
                }
                Err(status) => {
                    let transient = matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                    );
                    if transient && attempt < self.retries {
                        retry = pending;
                    } else {
                        pending
                            .into_iter()
                            .for_each(|(_, b, _)| fail(b, status.clone().into()));
                        return true;
                    }
                }
            }
            pending = retry;
            attempt += 1;
            if !pending.is_empty() {
                tracing::debug!(attempt, partitions = pending.len(), "retrying produce");
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
        }
        failed
    }
}

fn succeed(topic: &str, partition: i32, b: OpenBatch, r: &pb::PartitionResult, acks: i32) {
    for (i, ((reply, _permit), record)) in b.waiters.into_iter().zip(b.records).enumerate() {
        let offset = if acks == 0 || r.base_offset < 0 {
            -1
        } else {
            r.base_offset + i as i64
        };
        let timestamp_ms = if r.log_append_time_ms >= 0 {
            r.log_append_time_ms
        } else {
            record.timestamp_ms
        };
        let _ = reply.send(Ok(RecordMetadata {
            topic: topic.to_string(),
            partition,
            offset,
            timestamp_ms,
        }));
    }
}

fn fail(b: OpenBatch, e: ClientError) {
    for (reply, _permit) in b.waiters {
        let _ = reply.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".to_string(), p)
    }

    #[test]
    fn sequences_count_up_per_partition() {
        let mut i = Idempotence {
            producer: Some((7, 2)),
            ..Idempotence::default()
        };
        let a = i.stamp(&tp(0), 10);
        let b = i.stamp(&tp(0), 5);
        let c = i.stamp(&tp(1), 3);
        let stamp = |base_sequence| {
            Some(ProducerStamp {
                producer_id: 7,
                epoch: 2,
                base_sequence,
            })
        };
        assert_eq!((a, b, c), (stamp(0), stamp(10), stamp(0)));
    }

    #[test]
    fn a_batch_that_would_cross_the_wrap_waits_for_a_new_epoch() {
        let mut i = Idempotence {
            producer: Some((7, 2)),
            ..Idempotence::default()
        };
        i.next_sequence.insert(tp(0), i32::MAX - 4);
        // Exactly up to i32::MAX is fine and wraps the next one to 0.
        assert!(i.stamp(&tp(0), 5).is_some());
        assert_eq!(i.next_sequence[&tp(0)], 0);
        i.next_sequence.insert(tp(0), i32::MAX - 4);
        assert_eq!(i.stamp(&tp(0), 6), None);
        assert_eq!(i.producer, None);
        assert_eq!(i.previous, Some((7, 2)), "asks for a bump of this epoch");
        assert!(i.next_sequence.is_empty());
    }

    #[test]
    fn a_reset_before_any_id_keeps_nothing_to_bump() {
        let mut i = Idempotence::default();
        assert_eq!(i.stamp(&tp(0), 1), None);
        i.reset();
        assert_eq!((i.producer, i.previous), (None, None));
    }
}
