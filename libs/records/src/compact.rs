//! What log compaction needs from a batch: its records as raw slices (with
//! offset, key and whether it is a tombstone), and a batch rebuilt from some
//! of them. A kept record keeps its bytes, and so its offset and timestamp
//! deltas; the rebuilt batch keeps the original header (base offset, last
//! offset delta, timestamps, producer fields, codec), so offsets stay where
//! they were and batches stay in order, as Kafka's cleaner does.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

use crate::batch::{BatchHeader, CRC_START, HEADER_LEN, LOG_OVERHEAD};
use crate::build::{CodecError, Cursor, decompress};

/// One record of a batch, as stored.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub offset: i64,
    /// Its timestamp (the batch's for LogAppendTime).
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    /// A null value: the key's deletion marker.
    pub tombstone: bool,
    /// The record's bytes, its length prefix included.
    pub bytes: Bytes,
}

/// The records of one whole batch (any codec), in order.
pub fn raw_records(header: &BatchHeader, batch: &Bytes) -> Result<Vec<RawRecord>, CodecError> {
    if batch.len() < header.total_len() || batch.len() < HEADER_LEN {
        return Err(CodecError("batch shorter than its header says".into()));
    }
    let payload = batch.slice(HEADER_LEN..header.total_len());
    let records = decompress(header.compression(), payload)?;
    let count = header.records_count.max(0) as usize;
    let mut out = Vec::with_capacity(count.min(records.len() / 7));
    let mut cur = Cursor { buf: records };
    for _ in 0..count {
        let before = cur.buf.clone();
        let len = cur.varint()?;
        if len < 0 {
            return Err(Cursor::err("negative record length"));
        }
        let mut rec = Cursor {
            buf: cur.bytes(len as usize)?,
        };
        let bytes = before.slice(..before.len() - cur.buf.len());
        if rec.buf.is_empty() {
            return Err(Cursor::err("empty record"));
        }
        rec.buf.advance(1); // attributes
        let timestamp_delta = rec.varlong()?;
        let offset_delta = rec.varint()?;
        let key = rec.nullable()?.map(|k| Bytes::copy_from_slice(&k));
        let tombstone = rec.nullable()?.is_none();
        out.push(RawRecord {
            offset: header.base_offset + i64::from(offset_delta),
            timestamp_ms: if header.is_log_append_time() {
                header.max_timestamp
            } else {
                header.base_timestamp.wrapping_add(timestamp_delta)
            },
            key,
            tombstone,
            bytes,
        });
    }
    Ok(out)
}

/// `batch` with only the `kept` records (a subset of its own, in order):
/// the same header but for length, count and CRC; recompressed with the
/// batch's codec.
pub fn rebuild_batch(
    header: &BatchHeader,
    batch: &[u8],
    kept: &[RawRecord],
) -> Result<Bytes, CodecError> {
    let mut records = BytesMut::with_capacity(kept.iter().map(|r| r.bytes.len()).sum());
    for r in kept {
        records.extend_from_slice(&r.bytes);
    }
    let mut out = BytesMut::with_capacity(HEADER_LEN + records.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    let fill = |buf: &mut BytesMut| {
        buf.extend_from_slice(&records);
        Ok(())
    };
    let compressed = match header.compression() {
        0 => {
            out.extend_from_slice(&records);
            Ok(())
        }
        1 => Gzip::compress(&mut out, fill),
        2 => Snappy::compress(&mut out, fill),
        3 => Lz4::compress(&mut out, fill),
        4 => Zstd::compress(&mut out, fill),
        other => return Err(CodecError(format!("unknown compression codec {other}"))),
    };
    compressed.map_err(|e| CodecError(format!("recompressing: {e}")))?;
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD)
        .map_err(|_| CodecError("rebuilt batch too large".into()))?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::validate;
    use crate::build::{Compression, PlainRecord, build_batch, decode_records};

    fn batch(compression: Compression) -> Bytes {
        let records: Vec<PlainRecord> = (0..6)
            .map(|i| PlainRecord {
                key: (i != 5).then(|| Bytes::from(format!("k{}", i % 3))),
                value: (i != 4).then(|| Bytes::from(format!("v{i}"))),
                headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
                timestamp_ms: 1_000 + i as i64,
            })
            .collect();
        let mut b = build_batch(&records, compression).unwrap().to_vec();
        crate::batch::set_base_offset(&mut b, 100);
        Bytes::from(b)
    }

    #[test]
    fn keeps_a_subset_with_offsets_timestamps_and_header_intact() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let original = batch(codec);
            let header = validate(&original).unwrap();
            let raw = raw_records(&header, &original).unwrap();
            assert_eq!(raw.len(), 6);
            assert_eq!(raw[1].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(raw[2].timestamp_ms, 1_002);
            assert!(raw[4].tombstone && !raw[3].tombstone);
            assert_eq!(raw[5].key, None);
            let kept: Vec<RawRecord> = raw.iter().filter(|r| r.offset % 2 == 1).cloned().collect();
            let rebuilt = rebuild_batch(&header, &original, &kept).unwrap();
            let h = validate(&rebuilt).unwrap();
            assert_eq!(
                (h.base_offset, h.last_offset_delta, h.records_count),
                (100, 5, 3),
                "{codec:?}"
            );
            assert_eq!(
                (h.base_timestamp, h.max_timestamp, h.compression()),
                (
                    header.base_timestamp,
                    header.max_timestamp,
                    header.compression()
                )
            );
            let decoded = decode_records(rebuilt).unwrap();
            let offsets: Vec<i64> = decoded.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![101, 103, 105]);
            assert_eq!(decoded[0].timestamp_ms, 1_001);
            assert_eq!(decoded[0].value.as_deref(), Some(&b"v1"[..]));
            assert_eq!(decoded[0].headers.len(), 1);
        }
    }

    #[test]
    fn truncated_batches_fail_cleanly() {
        let original = batch(Compression::None);
        let header = validate(&original).unwrap();
        assert!(raw_records(&header, &original.slice(..original.len() - 3)).is_err());
    }
}
