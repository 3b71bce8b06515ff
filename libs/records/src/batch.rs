//! The RecordBatch v2 header: parsing, checking and stamping.
//!
//! Layout (big endian), as Kafka defines it:
//! ```text
//!  0 baseOffset int64        | outside the CRC: the leader assigns it
//!  8 batchLength int32       | bytes after this field
//! 12 partitionLeaderEpoch i32| outside the CRC: the leader writes it
//! 16 magic int8 (= 2)
//! 17 crc uint32              | CRC-32C of bytes 21..end
//! 21 attributes int16
//! 23 lastOffsetDelta int32
//! 27 baseTimestamp int64
//! 35 maxTimestamp int64
//! 43 producerId int64
//! 51 producerEpoch int16
//! 53 baseSequence int32
//! 57 recordsCount int32
//! 61 records…
//! ```

use bytes::{Buf, Bytes};

/// Size of the fixed part of a v2 batch.
pub const HEADER_LEN: usize = 61;
/// Offset of the first CRC-covered byte (attributes).
pub(crate) const CRC_START: usize = 21;
/// The bytes before `batchLength` counts.
pub(crate) const LOG_OVERHEAD: usize = 12;

/// Attribute bits.
pub const COMPRESSION_MASK: i16 = 0x07;
pub const TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
pub const TRANSACTIONAL: i16 = 0x10;
pub const CONTROL: i16 = 0x20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("batch length {0} is invalid")]
    BadLength(i32),
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    UnsupportedMagic(i8),
    #[error("batch CRC mismatch: header says {expected:#010x}, data has {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("batch says {count} records but lastOffsetDelta is {last_offset_delta}")]
    BadRecordCount { count: i32, last_offset_delta: i32 },
    #[error("empty request: no record batch")]
    Empty,
}

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf` without checking the CRC. The
    /// buffer must hold at least the fixed header.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                have: buf.len(),
                need: HEADER_LEN,
            });
        }
        let mut b = buf;
        let header = BatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            partition_leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            records_count: b.get_i32(),
        };
        if header.magic != 2 {
            return Err(BatchError::UnsupportedMagic(header.magic));
        }
        if (header.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::BadLength(header.batch_length));
        }
        Ok(header)
    }

    /// Whole size of the batch on the wire and on disk.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Offset that follows the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_LOG_APPEND != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
}

/// Checks the CRC-32C of one whole batch.
pub fn check_crc(batch: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let actual = crc32c::crc32c(&batch[CRC_START..header.total_len()]);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(())
}

/// Parses and fully checks a batch a client sent: header, length, CRC and
/// record count. Returns its header.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if batch.len() < header.total_len() {
        return Err(BatchError::Truncated {
            have: batch.len(),
            need: header.total_len(),
        });
    }
    if header.records_count < 0
        || header.last_offset_delta < 0
        || (header.records_count > 0 && header.records_count - 1 > header.last_offset_delta)
    {
        return Err(BatchError::BadRecordCount {
            count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    check_crc(batch, &header)?;
    Ok(header)
}

/// Most records a produced batch may claim (librdkafka's own ceiling).
pub const MAX_RECORDS_PER_BATCH: i32 = 1_000_000;
/// Smallest encoding of one record: length, attributes, timestamp delta,
/// offset delta, key length, value length and header count, a byte each.
const MIN_RECORD_BYTES: usize = 7;

/// [`validate`] plus the rules for a batch a producer sends: at least one
/// record, offset deltas 0..count (no gaps, as Kafka requires of clients),
/// and a record count the bytes can hold — so a hostile header cannot make a
/// later decoder allocate for billions of records.
pub fn validate_produced(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate(batch)?;
    let bad = || BatchError::BadRecordCount {
        count: header.records_count,
        last_offset_delta: header.last_offset_delta,
    };
    if header.records_count < 1
        || header.records_count > MAX_RECORDS_PER_BATCH
        || header.last_offset_delta != header.records_count - 1
    {
        return Err(bad());
    }
    let payload = header.total_len() - HEADER_LEN;
    if header.compression() == 0 && header.records_count as usize * MIN_RECORD_BYTES > payload {
        return Err(bad());
    }
    Ok(header)
}

/// Iterates the batches of a buffer that must hold whole, valid batches only
/// (what a producer sends). Each item is checked with [`validate_produced`].
#[derive(Debug, Clone)]
pub struct Batches {
    rest: Bytes,
}

impl Batches {
    pub fn new(buf: Bytes) -> Self {
        Batches { rest: buf }
    }

    /// Splits and validates every batch; fails on the first bad one, and on an
    /// empty buffer.
    pub fn validate_all(buf: Bytes) -> Result<Vec<(BatchHeader, Bytes)>, BatchError> {
        if buf.is_empty() {
            return Err(BatchError::Empty);
        }
        Batches::new(buf).collect()
    }
}

impl Iterator for Batches {
    type Item = Result<(BatchHeader, Bytes), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match validate_produced(&self.rest) {
            Ok(header) => {
                let batch = self.rest.split_to(header.total_len());
                Some(Ok((header, batch)))
            }
            Err(e) => {
                self.rest.clear();
                Some(Err(e))
            }
        }
    }
}

/// Writes the base offset (outside the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the partition leader epoch (outside the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks a batch as LogAppendTime with the given time. Both fields are inside
/// the CRC, so the CRC is recomputed, as Kafka does.
pub fn set_log_append_time(batch: &mut [u8], header: &BatchHeader, now_ms: i64) {
    let attributes = header.attributes | TIMESTAMP_TYPE_LOG_APPEND;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..header.total_len()]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Makes a batch an idempotent producer's: its producer id, epoch and
/// first sequence number (inside the CRC, which is recomputed).
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let end = BatchHeader::parse(batch).map_or(batch.len(), |h| h.total_len().min(batch.len()));
    let crc = crc32c::crc32c(&batch[CRC_START..end]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::build::{Compression, PlainRecord, build_batch};

    fn sample() -> Bytes {
        let records: Vec<PlainRecord> = (0..5)
            .map(|i| PlainRecord {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("v{i}"))),
                headers: vec![],
                timestamp_ms: 1_000 + i,
            })
            .collect();
        build_batch(&records, Compression::None).unwrap()
    }

    #[test]
    fn parses_and_validates_a_built_batch() {
        let b = sample();
        let h = validate(&b).unwrap();
        assert_eq!(h.records_count, 5);
        assert_eq!(h.last_offset_delta, 4);
        assert_eq!(h.total_len(), b.len());
        assert_eq!(h.base_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_004);
    }

    #[test]
    fn stamping_outside_the_crc_keeps_it_valid() {
        let mut b = sample().to_vec();
        set_base_offset(&mut b, 42);
        set_partition_leader_epoch(&mut b, 7);
        let h = validate(&b).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(h.last_offset(), 46);
    }

    #[test]
    fn log_append_time_rewrites_crc() {
        let mut b = sample().to_vec();
        let h = validate(&b).unwrap();
        set_log_append_time(&mut b, &h, 99);
        let h2 = validate(&b).unwrap();
        assert!(h2.is_log_append_time());
        assert_eq!(h2.max_timestamp, 99);
    }

    #[test]
    fn detects_corruption() {
        let mut b = sample().to_vec();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(validate(&b), Err(BatchError::CrcMismatch { .. })));
        let mut b = sample().to_vec();
        b[16] = 1;
        assert_eq!(validate(&b), Err(BatchError::UnsupportedMagic(1)));
        let b = sample();
        assert!(matches!(
            validate(&b[..b.len() - 3]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate(&b[..10]),
            Err(BatchError::Truncated { .. })
        ));
        let mut b = sample().to_vec();
        b[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(validate(&b), Err(BatchError::BadLength(-5)));
    }

    #[test]
    fn produced_batches_must_have_honest_counts() {
        let good = sample();
        assert!(validate_produced(&good).is_ok());
        // Claim a billion records in a small uncompressed batch, CRC fixed up.
        let mut b = good.to_vec();
        b[23..27].copy_from_slice(&999_999i32.to_be_bytes());
        b[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(validate(&b).is_ok(), "structurally fine");
        assert!(matches!(
            validate_produced(&b),
            Err(BatchError::BadRecordCount { .. })
        ));
        // A gap between the count and the last offset delta.
        let mut b = good.to_vec();
        b[23..27].copy_from_slice(&10i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(validate_produced(&b).is_err());
    }

    #[test]
    fn splits_concatenated_batches() {
        let mut buf = sample().to_vec();
        buf.extend_from_slice(&sample());
        let all = Batches::validate_all(Bytes::from(buf)).unwrap();
        assert_eq!(all.len(), 2);
        assert!(matches!(
            Batches::validate_all(Bytes::new()),
            Err(BatchError::Empty)
        ));
        let mut buf = sample().to_vec();
        buf.extend_from_slice(&sample()[..20]);
        assert!(Batches::validate_all(Bytes::from(buf)).is_err());
    }
}
