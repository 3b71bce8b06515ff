//! A consumer of assigned partitions, reading from partition leaders.
//!
//! `poll` sends one long-poll fetch per leader node for all the partitions it
//! leads, decodes the batches, skips records before each position (a fetch
//! starts at the batch holding the position) and advances positions. When a
//! leader moves it refreshes metadata and carries on.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use runnel_proto::common::v1::ErrorCode;
use runnel_proto::storage::v1 as st;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;
use tonic::transport::Channel;

use crate::admin::Admin;
use crate::error::ClientError;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record with a timestamp at or after this (ms); the end of
    /// the log if there is none.
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Coordinator address (host:port).
    pub coordinator: String,
    /// How long a fetch may wait for data.
    pub max_wait: Duration,
    pub min_bytes: i32,
    pub max_partition_bytes: i32,
    pub max_bytes: i32,
    /// Where to go when a position falls outside the log (None: report it).
    pub auto_offset_reset: Option<StartOffset>,
}

impl ConsumerConfig {
    pub fn new(coordinator: &str) -> Self {
        ConsumerConfig {
            coordinator: coordinator.to_string(),
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_partition_bytes: 1024 * 1024,
            max_bytes: 50 * 1024 * 1024,
            auto_offset_reset: None,
        }
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

type Tp = (String, i32);

#[derive(Debug)]
pub struct Consumer {
    config: ConsumerConfig,
    admin: Admin,
    pool: runnel_rpc::ChannelPool,
    positions: BTreeMap<Tp, i64>,
    /// Leader address per partition, from the last metadata refresh.
    leaders: HashMap<Tp, String>,
    high_watermarks: HashMap<Tp, i64>,
}

impl Consumer {
    pub fn new(config: ConsumerConfig) -> Result<Self, ClientError> {
        let admin = Admin::connect(&config.coordinator)?;
        Ok(Consumer {
            config,
            admin,
            pool: runnel_rpc::ChannelPool::new(),
            positions: BTreeMap::new(),
            leaders: HashMap::new(),
            high_watermarks: HashMap::new(),
        })
    }

    fn storage(&self, address: &str) -> Result<StorageServiceClient<Channel>, ClientError> {
        Ok(StorageServiceClient::new(self.pool.get(address)?)
            .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES))
    }

    async fn refresh_leaders(&mut self, topics: &[String]) -> Result<(), ClientError> {
        let md = self.admin.metadata(topics).await?;
        let nodes: HashMap<i32, String> = md
            .nodes
            .into_iter()
            .map(|n| (n.node_id, n.address))
            .collect();
        for t in md.topics {
            for p in t.partitions {
                let key = (t.name.clone(), p.partition);
                match nodes.get(&p.leader) {
                    Some(addr) => {
                        self.leaders.insert(key, addr.clone());
                    }
                    None => {
                        self.leaders.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Assigns partitions of a topic (all of them when `partitions` is None)
    /// and sets where each starts.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: Option<Vec<i32>>,
        start: StartOffset,
    ) -> Result<Vec<i32>, ClientError> {
        let info = self.admin.describe_topic(topic).await?;
        let all: Vec<i32> = (0..info.partition_count).collect();
        let chosen = match partitions {
            Some(ps) => {
                if let Some(bad) = ps.iter().find(|p| !all.contains(p)) {
                    return Err(ClientError::Invalid(format!(
                        "partition {bad} does not exist: {topic} has {} partitions",
                        info.partition_count
                    )));
                }
                ps
            }
            None => all,
        };
        self.refresh_leaders(&[topic.to_string()]).await?;
        for &p in &chosen {
            let offset = self.resolve(topic, p, start).await?;
            self.positions.insert((topic.to_string(), p), offset);
        }
        Ok(chosen)
    }

    /// Moves a partition's position.
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: i32,
        start: StartOffset,
    ) -> Result<i64, ClientError> {
        let offset = self.resolve(topic, partition, start).await?;
        self.positions
            .insert((topic.to_string(), partition), offset);
        Ok(offset)
    }

    /// The next offset to be read from a partition.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.positions.get(&(topic.to_string(), partition)).copied()
    }

    /// The high watermark seen by the last fetch of a partition.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.high_watermarks
            .get(&(topic.to_string(), partition))
            .copied()
    }

    /// Lists an offset: `timestamp` -1 latest, -2 earliest, -3 max timestamp,
    /// or a time in ms. Returns (offset, timestamp); offset -1 if none.
    pub async fn list_offset(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<(i64, i64), ClientError> {
        let key = (topic.to_string(), partition);
        if !self.leaders.contains_key(&key) {
            self.refresh_leaders(&[topic.to_string()]).await?;
        }
        let address = self.leaders.get(&key).cloned().ok_or_else(|| {
            ClientError::partition(
                topic,
                partition,
                ErrorCode::LeaderNotAvailable as i32,
                "no leader".into(),
            )
        })?;
        let response = self
            .storage(&address)?
            .list_offsets(st::ListOffsetsRequest {
                queries: vec![st::OffsetQuery {
                    topic: topic.to_string(),
                    partition,
                    timestamp,
                }],
            })
            .await?
            .into_inner();
        let r = response
            .results
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Invalid("empty list-offsets answer".into()))?;
        if r.error != 0 {
            self.leaders.remove(&key);
            return Err(ClientError::partition(
                topic,
                partition,
                r.error,
                r.error_message,
            ));
        }
        Ok((r.offset, r.timestamp))
    }

    async fn resolve(
        &mut self,
        topic: &str,
        partition: i32,
        start: StartOffset,
    ) -> Result<i64, ClientError> {
        Ok(match start {
            StartOffset::Offset(o) => o,
            StartOffset::Earliest => self.list_offset(topic, partition, -2).await?.0,
            StartOffset::Latest => self.list_offset(topic, partition, -1).await?.0,
            StartOffset::Timestamp(ts) => match self.list_offset(topic, partition, ts).await?.0 {
                -1 => self.list_offset(topic, partition, -1).await?.0,
                o => o,
            },
        })
    }

    /// Fetches what is available (waiting up to `max_wait` for data) and
    /// returns the records in offset order per partition.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, ClientError> {
        if self.positions.is_empty() {
            return Err(ClientError::Invalid("no partitions assigned".into()));
        }
        let mut by_node: BTreeMap<String, Vec<st::PartitionFetch>> = BTreeMap::new();
        let mut missing_leader = false;
        for ((topic, partition), &offset) in &self.positions {
            match self.leaders.get(&(topic.clone(), *partition)) {
                Some(addr) => by_node
                    .entry(addr.clone())
                    .or_default()
                    .push(st::PartitionFetch {
                        topic: topic.clone(),
                        partition: *partition,
                        offset,
                        max_bytes: self.config.max_partition_bytes,
                    }),
                None => missing_leader = true,
            }
        }
        if missing_leader {
            let topics: Vec<String> = self.positions.keys().map(|(t, _)| t.clone()).collect();
            self.refresh_leaders(&topics).await?;
            if by_node.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(Vec::new());
            }
        }
        let fetches = by_node.into_iter().map(|(address, partitions)| {
            let client = self.storage(&address);
            let request = st::FetchRequest {
                partitions,
                max_wait_ms: self.config.max_wait.as_millis() as u32,
                min_bytes: self.config.min_bytes,
                max_bytes: self.config.max_bytes,
            };
            async move {
                let mut client = client?;
                Ok::<_, ClientError>((address, client.fetch(request).await))
            }
        });
        let mut records = Vec::new();
        let mut refresh = false;
        for outcome in futures::future::join_all(fetches).await {
            let (address, response) = outcome?;
            let response = match response {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    tracing::debug!(%address, %status, "fetch failed; refreshing metadata");
                    self.pool.forget(&address);
                    self.leaders.retain(|_, a| *a != address);
                    refresh = true;
                    continue;
                }
            };
            for r in response.results {
                let key = (r.topic.clone(), r.partition);
                if r.error != 0 {
                    if r.error == ErrorCode::OffsetOutOfRange as i32 {
                        match self.config.auto_offset_reset {
                            Some(reset) => {
                                let o = self.resolve(&r.topic, r.partition, reset).await?;
                                self.positions.insert(key, o);
                                continue;
                            }
                            None => {
                                return Err(ClientError::partition(
                                    &r.topic,
                                    r.partition,
                                    r.error,
                                    r.error_message,
                                ));
                            }
                        }
                    }
                    let retriable = r.error == ErrorCode::NotLeaderOrFollower as i32
                        || r.error == ErrorCode::LeaderNotAvailable as i32
                        || r.error == ErrorCode::UnknownTopicOrPartition as i32;
                    if !retriable {
                        return Err(ClientError::partition(
                            &r.topic,
                            r.partition,
                            r.error,
                            r.error_message,
                        ));
                    }
                    self.leaders.remove(&key);
                    refresh = true;
                    continue;
                }
                self.high_watermarks.insert(key.clone(), r.high_watermark);
                if r.records.is_empty() {
                    continue;
                }
                let position = self.positions.get(&key).copied().unwrap_or(0);
                let next = next_offset_after(&r.records).unwrap_or(position);
                let decoded = runnel_records::decode_records(r.records).map_err(|e| {
                    ClientError::Invalid(format!(
                        "undecodable batch from {}-{}: {e}",
                        r.topic, r.partition
                    ))
                })?;
                for rec in decoded {
                    if rec.offset < position {
                        continue;
                    }
                    records.push(ConsumedRecord {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        offset: rec.offset,
                        timestamp_ms: rec.timestamp_ms,
                        key: rec.key,
                        value: rec.value,
                        headers: rec.headers,
                    });
                }
                self.positions.insert(key, next.max(position));
            }
        }
        if refresh {
            let topics: Vec<String> = self.positions.keys().map(|(t, _)| t.clone()).collect();
            if let Err(e) = self.refresh_leaders(&topics).await {
                tracing::debug!(error = %e, "metadata refresh failed");
            }
        }
        Ok(records)
    }
}

/// The offset after the last whole batch in `buf`.
fn next_offset_after(buf: &Bytes) -> Option<i64> {
    let mut rest: &[u8] = buf;
    let mut next = None;
    while let Ok(h) = runnel_records::BatchHeader::parse(rest) {
        if rest.len() < h.total_len() {
            break;
        }
        next = Some(h.next_offset());
        rest = &rest[h.total_len()..];
    }
    next
}
