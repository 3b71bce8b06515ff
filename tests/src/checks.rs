//! Checks and clients shared by the tests.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use runnel_client::{Admin, ConsumedRecord, Consumer, ConsumerConfig, StartOffset};
use runnel_proto::ingest::v1 as ingest_pb;
use runnel_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use runnel_proto::storage::v1 as storage_pb;
use runnel_proto::storage::v1::storage_service_client::StorageServiceClient;
use runnel_records::BatchHeader;
use tonic::transport::Channel;

use crate::{SOON, eventually};

/// A raw ingest client (for requests the native producer would never send).
pub fn ingest_client(address: &str) -> IngestServiceClient<Channel> {
    IngestServiceClient::new(runnel_rpc::lazy_channel(address).unwrap())
        .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
}

/// A raw storage node client.
pub fn storage_client(address: &str) -> StorageServiceClient<Channel> {
    StorageServiceClient::new(runnel_rpc::lazy_channel(address).unwrap())
        .max_decoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(runnel_rpc::MAX_MESSAGE_BYTES)
}

/// Leader node id and address of every partition of a topic (an error
/// while a partition has no live leader).
pub async fn partition_leaders(
    coordinator: &str,
    topic: &str,
) -> Result<BTreeMap<i32, (i32, String)>, String> {
    let md = Admin::connect(coordinator)
        .map_err(|e| e.to_string())?
        .metadata(&[topic.to_string()])
        .await
        .map_err(|e| e.to_string())?;
    let t = md
        .topics
        .iter()
        .find(|t| t.name == topic)
        .ok_or_else(|| format!("topic {topic} not in metadata"))?;
    let mut leaders = BTreeMap::new();
    for p in &t.partitions {
        let node = md
            .nodes
            .iter()
            .find(|n| n.node_id == p.leader)
            .ok_or_else(|| format!("partition {} has no live leader ({p:?})", p.partition))?;
        leaders.insert(p.partition, (node.node_id, node.address.clone()));
    }
    if leaders.len() as i32 != t.partition_count {
        return Err(format!(
            "{} of {} partitions in metadata",
            leaders.len(),
            t.partition_count
        ));
    }
    Ok(leaders)
}

/// Waits until every partition of `topic` has a live leader that serves it
/// and the ingest instance at `ingest` (if any) knows the topic, so the
/// first produce and the first consume do not race the metadata watches.
pub async fn wait_topic_ready(coordinator: &str, ingest: Option<&str>, topic: &str) {
    eventually(
        &format!("topic {topic} served by its leaders"),
        SOON,
        || async {
            let leaders = partition_leaders(coordinator, topic).await?;
            for (partition, (_, address)) in leaders {
                let r = storage_client(&address)
                    .list_offsets(storage_pb::ListOffsetsRequest {
                        queries: vec![storage_pb::OffsetQuery {
                            topic: topic.to_string(),
                            partition,
                            timestamp: -1,
                        }],
                    })
                    .await
                    .map_err(|s| format!("list offsets at {address}: {s}"))?
                    .into_inner();
                let r = &r.results[0];
                if r.error != 0 {
                    return Err(format!(
                        "{topic}-{partition} at {address}: {} {}",
                        r.error, r.error_message
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    if let Some(ingest) = ingest {
        eventually(&format!("ingest knows topic {topic}"), SOON, || async {
            // No records: only the topic lookup happens.
            ingest_client(ingest)
                .produce_records(ingest_pb::ProduceRecordsRequest {
                    topic: topic.to_string(),
                    records: Vec::new(),
                    acks: -1,
                    timeout_ms: 1000,
                    compression: 0,
                })
                .await
                .map(|_| ())
                .map_err(|s| s.to_string())
        })
        .await;
    }
}

/// Reads every partition of `topic` from the earliest offset up to the
/// latest offset at the time of the call, with the native consumer.
pub async fn consume_all(coordinator: &str, topic: &str) -> BTreeMap<i32, Vec<ConsumedRecord>> {
    let mut config = ConsumerConfig::new(coordinator);
    config.max_wait = Duration::from_millis(200);
    let mut consumer = Consumer::new(config).unwrap();
    consumer
        .assign(topic, None, StartOffset::Earliest)
        .await
        .unwrap_or_else(|e| panic!("assigning {topic}: {e}"));
    drain(&mut consumer, coordinator, topic).await
}

/// Polls `consumer` (assigned partitions of `topic`) until each partition's
/// position reaches the latest offset it had when this was called; returns
/// what was read, per partition.
pub async fn drain(
    consumer: &mut Consumer,
    coordinator: &str,
    topic: &str,
) -> BTreeMap<i32, Vec<ConsumedRecord>> {
    let info = Admin::connect(coordinator)
        .unwrap()
        .describe_topic(topic)
        .await
        .unwrap_or_else(|e| panic!("describing {topic}: {e}"));
    let mut ends = BTreeMap::new();
    let mut out: BTreeMap<i32, Vec<ConsumedRecord>> = BTreeMap::new();
    for p in 0..info.partition_count {
        if consumer.position(topic, p).is_none() {
            continue;
        }
        let (end, _) = consumer
            .list_offset(topic, p, -1)
            .await
            .unwrap_or_else(|e| panic!("latest offset of {topic}-{p}: {e}"));
        ends.insert(p, end);
        out.insert(p, Vec::new());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let behind: Vec<(i32, i64, i64)> = ends
            .iter()
            .map(|(&p, &end)| (p, consumer.position(topic, p).unwrap_or(-1), end))
            .filter(|(_, pos, end)| pos < end)
            .collect();
        if behind.is_empty() {
            return out;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "consuming {topic}: partitions still behind (partition, position, end): {behind:?}"
            );
        }
        let records = consumer
            .poll()
            .await
            .unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
        for r in records {
            out.entry(r.partition).or_default().push(r);
        }
    }
}

/// One batch as a storage node serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub records: i32,
    /// The codec bits of the batch attributes (0 none, 1 gzip, 2 snappy,
    /// 3 lz4, 4 zstd).
    pub compression: i16,
    /// The idempotent producer's stamp (-1 when the producer was not).
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// Reads a partition's raw bytes from its leader, from the log start to the
/// high watermark, and checks what a consumer relies on: every batch parses,
/// passes its CRC-32C, decodes, and follows the previous one without a gap
/// or overlap. Returns the batches and the high watermark.
pub async fn scan_partition(
    coordinator: &str,
    topic: &str,
    partition: i32,
) -> (Vec<ServedBatch>, i64) {
    let leaders = eventually("partition leaders", SOON, || {
        partition_leaders(coordinator, topic)
    })
    .await;
    let address = leaders[&partition].1.clone();
    let mut client = storage_client(&address);
    let fetch = |offset: i64| storage_pb::FetchRequest {
        partitions: vec![storage_pb::PartitionFetch {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes: 1024 * 1024,
        }],
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 0,
    };
    let first = client.fetch(fetch(0)).await.unwrap().into_inner().results;
    let mut offset = first[0].log_start_offset.max(0);
    let mut batches = Vec::new();
    let mut high_watermark = first[0].high_watermark;
    loop {
        let r = client
            .fetch(fetch(offset))
            .await
            .unwrap_or_else(|s| panic!("fetching {topic}-{partition}@{offset} from {address}: {s}"))
            .into_inner()
            .results
            .remove(0);
        assert_eq!(
            r.error, 0,
            "fetching {topic}-{partition}@{offset}: {}",
            r.error_message
        );
        high_watermark = high_watermark.max(r.high_watermark);
        if r.records.is_empty() {
            assert!(
                offset >= r.high_watermark,
                "{topic}-{partition}: empty read at {offset} below the high watermark {}",
                r.high_watermark
            );
            return (batches, high_watermark);
        }
        let mut rest: Bytes = r.records.clone();
        while !rest.is_empty() {
            let header = BatchHeader::parse(&rest).unwrap_or_else(|e| {
                panic!("{topic}-{partition}: garbage served after offset {offset}: {e}")
            });
            let len = header.total_len();
            assert!(
                len <= rest.len(),
                "{topic}-{partition}: a partial batch was served at {} ({} of {len} bytes)",
                header.base_offset,
                rest.len()
            );
            let batch = rest.split_to(len);
            runnel_records::batch::validate(&batch).unwrap_or_else(|e| {
                panic!(
                    "{topic}-{partition}: batch at {} fails its checks: {e}",
                    header.base_offset
                )
            });
            let records = runnel_records::decode_records(batch).unwrap_or_else(|e| {
                panic!(
                    "{topic}-{partition}: batch at {} does not decode: {e}",
                    header.base_offset
                )
            });
            assert_eq!(
                records.len() as i32,
                header.records_count,
                "{topic}-{partition}: batch at {} record count",
                header.base_offset
            );
            if let Some(prev) = batches.last() {
                let prev: &ServedBatch = prev;
                assert_eq!(
                    header.base_offset,
                    prev.last_offset + 1,
                    "{topic}-{partition}: batches not contiguous"
                );
            }
            batches.push(ServedBatch {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
                records: header.records_count,
                compression: header.compression(),
                producer_id: header.producer_id,
                producer_epoch: header.producer_epoch,
                base_sequence: header.base_sequence,
            });
        }
        offset = batches.last().map(|b| b.last_offset + 1).unwrap_or(offset);
    }
}

/// The text a plain HTTP `GET path` at `address` answers (status line,
/// headers and body).
pub async fn http_get(address: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| format!("connecting to {address} timed out"))?
    .map_err(|e| format!("connecting to {address}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| format!("reading GET {path} from {address} timed out"))?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
