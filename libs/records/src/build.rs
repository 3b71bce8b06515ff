//! Building batches from plain records, and decoding them back, through the
//! `kafka-protocol` crate (which also does the compression codecs).

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record,
    RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub use kafka_protocol::records::Compression;

/// A record as an application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: i64,
}

/// A record read back from a batch, with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub log_append_time: bool,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("record batch codec: {0}")]
pub struct CodecError(String);

/// Builds one RecordBatch v2 (base offset 0; the storage leader assigns the
/// real one) from the records, compressed with `compression`.
pub fn build_batch(records: &[PlainRecord], compression: Compression) -> Result<Bytes, CodecError> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever `offset - sequence`
            // changes; counting up from NO_SEQUENCE keeps one batch and a
            // base sequence of -1 (no idempotence).
            sequence: NO_SEQUENCE + i as i32,
            timestamp: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| CodecError(e.to_string()))?;
    Ok(buf.freeze())
}

/// Decodes every record of the whole batches in `buf` (any codec). Control
/// records (transaction markers) are skipped.
pub fn decode_records(buf: Bytes) -> Result<Vec<StoredRecord>, CodecError> {
    let mut buf = buf;
    let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| CodecError(e.to_string()))?;
    Ok(sets
        .into_iter()
        .flat_map(|set| set.records)
        .filter(|r| !r.control)
        .map(|r| StoredRecord {
            offset: r.offset,
            timestamp_ms: r.timestamp,
            log_append_time: r.timestamp_type == TimestampType::LogAppend,
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let records: Vec<PlainRecord> = (0..100)
            .map(|i| PlainRecord {
                key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(vec![b'x'; i])),
                headers: vec![("h".into(), Some(Bytes::from_static(b"v"))), ("n".into(), None)],
                timestamp_ms: 1_700_000_000_000 + i as i64,
            })
            .collect();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = build_batch(&records, c).unwrap();
            crate::batch::validate(&batch).unwrap();
            let back = decode_records(batch).unwrap();
            assert_eq!(back.len(), 100, "{c:?}");
            for (i, (r, orig)) in back.iter().zip(&records).enumerate() {
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.key, orig.key);
                assert_eq!(r.value, orig.value);
                assert_eq!(r.headers, orig.headers);
                assert_eq!(r.timestamp_ms, orig.timestamp_ms);
            }
        }
    }
}
