//! Building batches from plain records, and decoding them back, through the
//! `kafka-protocol` crate (which also does the compression codecs).

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record,
    RecordBatchEncoder, RecordEncodeOptions, TimestampType,
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
pub struct CodecError(pub(crate) String);

/// The idempotent producer's stamp on a batch: its id, epoch and the
/// sequence number of the batch's first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

/// Builds one RecordBatch v2 (base offset 0; the storage leader assigns the
/// real one) from the records, compressed with `compression`.
pub fn build_batch(records: &[PlainRecord], compression: Compression) -> Result<Bytes, CodecError> {
    build_batch_as(records, compression, None)
}

/// [`build_batch`] for an idempotent producer when `producer` is given: the
/// partition leader then writes the batch once however often it is retried.
pub fn build_batch_as(
    records: &[PlainRecord],
    compression: Compression,
    producer: Option<ProducerStamp>,
) -> Result<Bytes, CodecError> {
    let (producer_id, producer_epoch, base_sequence) = match producer {
        Some(p) => (p.producer_id, p.epoch, p.base_sequence),
        // Counting up from NO_SEQUENCE keeps a base sequence of -1.
        None => (NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE),
    };
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever `offset - sequence`
            // changes, so the sequence counts up with the offset.
            sequence: base_sequence.wrapping_add(i as i32),
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
///
/// This is runnel's own bounds-checked parser rather than the
/// `kafka-protocol` decoder: a hostile batch (its CRC made valid) could make
/// that one allocate for billions of headers (found by `cargo fuzz`). Every
/// count and length here is checked against the bytes left before anything
/// is allocated.
pub fn decode_records(buf: Bytes) -> Result<Vec<StoredRecord>, CodecError> {
    let mut rest = buf;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let header =
            crate::batch::BatchHeader::parse(&rest).map_err(|e| CodecError(e.to_string()))?;
        if rest.len() < header.total_len() {
            return Err(CodecError(format!(
                "batch truncated: {} of {} bytes",
                rest.len(),
                header.total_len()
            )));
        }
        let batch = rest.split_to(header.total_len());
        if header.is_control() {
            continue;
        }
        let payload = batch.slice(crate::batch::HEADER_LEN..);
        let records = decompress(header.compression(), payload)?;
        decode_batch_records(&header, records, &mut out)?;
    }
    Ok(out)
}

/// Largest decompressed size of one batch. A batch may legitimately expand
/// far beyond `max.message.bytes`, but not without bound: a compression bomb
/// must not take the process's memory.
pub const MAX_DECOMPRESSED_BATCH: usize = 128 * 1024 * 1024;

pub(crate) fn decompress(codec: i16, payload: Bytes) -> Result<Bytes, CodecError> {
    use std::io::Read;
    let err = |what: &str, e: &dyn std::fmt::Display| CodecError(format!("{what}: {e}"));
    let bounded = |reader: &mut dyn Read, what: &str| -> Result<Bytes, CodecError> {
        let mut out = Vec::new();
        reader
            .take(MAX_DECOMPRESSED_BATCH as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| err(what, &e))?;
        if out.len() > MAX_DECOMPRESSED_BATCH {
            return Err(CodecError(format!(
                "{what}: batch expands beyond {MAX_DECOMPRESSED_BATCH} bytes"
            )));
        }
        Ok(Bytes::from(out))
    };
    match codec {
        0 => Ok(payload),
        1 => bounded(&mut flate2::read::GzDecoder::new(&payload[..]), "gzip"),
        2 => snappy(&payload),
        3 => {
            let mut d = lz4::Decoder::new(&payload[..]).map_err(|e| err("lz4", &e))?;
            bounded(&mut d, "lz4")
        }
        4 => {
            let mut d =
                zstd::stream::read::Decoder::new(&payload[..]).map_err(|e| err("zstd", &e))?;
            bounded(&mut d, "zstd")
        }
        other => Err(CodecError(format!("unknown compression codec {other}"))),
    }
}

/// Kafka's snappy: xerial framing (what the Java client writes: a magic
/// header, then length-prefixed raw snappy chunks) or plain raw snappy (what
/// librdkafka may write). Declared lengths are checked before allocating.
fn snappy(payload: &[u8]) -> Result<Bytes, CodecError> {
    const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
    let raw = |chunk: &[u8], out: &mut Vec<u8>| -> Result<(), CodecError> {
        let len =
            snap::raw::decompress_len(chunk).map_err(|e| CodecError(format!("snappy: {e}")))?;
        // Snappy cannot expand more than ~21x; anything claiming more lies.
        if len > chunk.len().saturating_mul(32) || out.len() + len > MAX_DECOMPRESSED_BATCH {
            return Err(CodecError(format!("snappy: implausible length {len}")));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(chunk, &mut out[start..])
            .map_err(|e| CodecError(format!("snappy: {e}")))?;
        Ok(())
    };
    let mut out = Vec::new();
    if payload.len() >= 16 && &payload[..8] == XERIAL_MAGIC {
        let mut rest = &payload[16..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(CodecError("snappy: truncated chunk length".into()));
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if len > rest.len() {
                return Err(CodecError("snappy: chunk beyond the end".into()));
            }
            raw(&rest[..len], &mut out)?;
            rest = &rest[len..];
        }
    } else {
        raw(payload, &mut out)?;
    }
    Ok(Bytes::from(out))
}

/// A cursor over record bytes that refuses to read past the end.
pub(crate) struct Cursor {
    pub(crate) buf: Bytes,
}

impl Cursor {
    pub(crate) fn err(what: &str) -> CodecError {
        CodecError(format!("malformed record: {what}"))
    }

    pub(crate) fn varlong(&mut self) -> Result<i64, CodecError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.first() else {
                return Err(Self::err("truncated varint"));
            };
            self.buf.advance(1);
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                // Zigzag decoding, as Kafka's ByteUtils.readVarlong.
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(Self::err("varint longer than 10 bytes"))
    }

    pub(crate) fn varint(&mut self) -> Result<i32, CodecError> {
        i32::try_from(self.varlong()?).map_err(|_| Self::err("varint out of range"))
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Result<Bytes, CodecError> {
        if len > self.buf.len() {
            return Err(Self::err("length beyond the end of the batch"));
        }
        Ok(self.buf.split_to(len))
    }

    /// A length-prefixed field; -1 means null.
    pub(crate) fn nullable(&mut self) -> Result<Option<Bytes>, CodecError> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < 0 => Err(Self::err("negative length")),
            n => self.bytes(n as usize).map(Some),
        }
    }
}

use bytes::Buf;

fn decode_batch_records(
    header: &crate::batch::BatchHeader,
    records: Bytes,
    out: &mut Vec<StoredRecord>,
) -> Result<(), CodecError> {
    let log_append_time = header.is_log_append_time();
    let count = header.records_count.max(0) as usize;
    // Each record takes at least 7 bytes; never reserve more than that allows.
    out.reserve(count.min(records.len() / 7));
    let mut cur = Cursor { buf: records };
    for _ in 0..count {
        let len = cur.varint()?;
        if len < 0 {
            return Err(Cursor::err("negative record length"));
        }
        let mut rec = Cursor {
            buf: cur.bytes(len as usize)?,
        };
        if rec.buf.is_empty() {
            return Err(Cursor::err("empty record"));
        }
        rec.buf.advance(1); // attributes: unused in v2
        let timestamp_delta = rec.varlong()?;
        let offset_delta = rec.varint()?;
        let key = rec.nullable()?;
        let value = rec.nullable()?;
        let header_count = rec.varint()?;
        if header_count < 0 || header_count as usize > rec.buf.len() / 2 {
            return Err(Cursor::err("header count larger than the record"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let key_len = rec.varint()?;
            if key_len < 0 {
                return Err(Cursor::err("null header key"));
            }
            let key = rec.bytes(key_len as usize)?;
            let value = rec.nullable()?;
            headers.push((String::from_utf8_lossy(&key).into_owned(), value));
        }
        out.push(StoredRecord {
            offset: header.base_offset + i64::from(offset_delta),
            timestamp_ms: if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp.wrapping_add(timestamp_delta)
            },
            log_append_time,
            key,
            value,
            headers,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn hostile_counts_fail_cleanly() {
        // The input cargo fuzz found: a header count of billions.
        let mut batch = build_batch(
            &[PlainRecord {
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: vec![],
                timestamp_ms: 0,
            }],
            Compression::None,
        )
        .unwrap()
        .to_vec();
        // Record layout: len, attrs, ts delta, offset delta, key -1, value len 1, 'v', header count.
        let last = batch.len() - 1;
        batch[last] = 0xfe; // a varint that does not end
        batch.extend_from_slice(&[0xff, 0xff, 0xff, 0x0f]);
        let len = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(decode_records(Bytes::from(batch)).is_err());
    }

    #[test]
    fn every_codec_round_trips() {
        let records: Vec<PlainRecord> = (0..100)
            .map(|i| PlainRecord {
                key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(vec![b'x'; i])),
                headers: vec![
                    ("h".into(), Some(Bytes::from_static(b"v"))),
                    ("n".into(), None),
                ],
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
