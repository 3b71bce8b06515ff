//! Idempotent producers: the sequence numbers of each producer's batches in
//! one partition, so that the leader writes a retried batch once (Kafka's
//! producer state, for non-transactional idempotent producers).
//!
//! A producer (id and epoch from InitProducerId) numbers its batches per
//! partition; each batch carries its first sequence number and covers one
//! number per record. The leader keeps, per producer, its epoch and its last
//! five batches (a client has at most five requests in flight):
//! - a batch equal to one of those is a retry: answered with the offsets it
//!   got the first time, written again never;
//! - the next batch must start right after the newest one (numbers wrap
//!   past `i32::MAX` to 0), else OUT_OF_ORDER_SEQUENCE_NUMBER;
//! - an older epoch is INVALID_PRODUCER_EPOCH; a newer one must start at 0;
//! - a producer the partition has no state for (new, or forgotten after
//!   expiry or retention) may start anywhere, as in Kafka.
//!
//! Followers record the same state from the batches they copy, so a new
//! leader deduplicates as the old one did. The state is written to a
//! snapshot file at every segment roll and rebuilt on open from the newest
//! snapshot plus the batches after it.

use std::collections::{HashMap, VecDeque};

use runnel_records::batch::BatchHeader;
use serde::{Deserialize, Serialize};

/// Batches kept per producer (Kafka's, and the clients' in-flight limit).
const RETAINED_BATCHES: usize = 5;

/// What the sequence check needs of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSeq {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
    /// Where the batch is in the log (unknown, -1, before it is written).
    pub first_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
}

impl BatchSeq {
    /// The batch's sequence facts, if it comes from an idempotent producer.
    pub fn from_header(h: &BatchHeader) -> Option<Self> {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return None;
        }
        Some(BatchSeq {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            first_seq: h.base_sequence,
            last_seq: seq_add(h.base_sequence, h.last_offset_delta),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
        })
    }

    /// The same batch placed at `first_offset`.
    pub fn at(mut self, first_offset: i64) -> Self {
        self.last_offset = first_offset + (self.last_offset - self.first_offset);
        self.first_offset = first_offset;
        self
    }
}

/// `seq + n` with Kafka's wrap-around.
fn seq_add(seq: i32, n: i32) -> i32 {
    let sum = i64::from(seq) + i64::from(n);
    (sum % (i64::from(i32::MAX) + 1)) as i32
}

/// The verdict on a producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// New data: write it.
    Append,
    /// A retry of a batch already in the log at these offsets.
    Duplicate { first_offset: i64, last_offset: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    #[error("producer {producer_id}: sequence {got} follows {last}, expected {}", seq_add(*last, 1))]
    OutOfOrder {
        producer_id: i64,
        last: i32,
        got: i32,
    },
    #[error("producer {producer_id}: a new epoch {epoch} must start at sequence 0, not {got}")]
    NewEpochNotAtZero {
        producer_id: i64,
        epoch: i16,
        got: i32,
    },
    #[error("producer {producer_id}: epoch {got} is older than the current {current}")]
    StaleEpoch {
        producer_id: i64,
        current: i16,
        got: i16,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Producer {
    epoch: i16,
    /// Oldest first.
    batches: VecDeque<BatchSeq>,
}

impl Producer {
    fn last_timestamp(&self) -> i64 {
        self.batches.back().map_or(i64::MIN, |b| b.max_timestamp)
    }
}

/// The idempotent producers of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
}

/// A snapshot file's contents.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// The state covers every batch below this offset.
    end_offset: i64,
    batches: Vec<BatchSeq>,
}

impl ProducerStates {
    /// Checks a batch a producer sent; changes nothing.
    pub fn check(&self, b: &BatchSeq) -> Result<SeqCheck, SeqError> {
        let Some(p) = self.producers.get(&b.producer_id) else {
            return Ok(SeqCheck::Append);
        };
        if b.epoch < p.epoch {
            return Err(SeqError::StaleEpoch {
                producer_id: b.producer_id,
                current: p.epoch,
                got: b.epoch,
            });
        }
        if b.epoch > p.epoch {
            return if b.first_seq == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err(SeqError::NewEpochNotAtZero {
                    producer_id: b.producer_id,
                    epoch: b.epoch,
                    got: b.first_seq,
                })
            };
        }
        if let Some(dup) = p
            .batches
            .iter()
            .find(|k| k.first_seq == b.first_seq && k.last_seq == b.last_seq)
        {
            return Ok(SeqCheck::Duplicate {
                first_offset: dup.first_offset,
                last_offset: dup.last_offset,
            });
        }
        match p.batches.back() {
            Some(last) if seq_add(last.last_seq, 1) != b.first_seq => Err(SeqError::OutOfOrder {
                producer_id: b.producer_id,
                last: last.last_seq,
                got: b.first_seq,
            }),
            _ => Ok(SeqCheck::Append),
        }
    }

    /// Records a batch now in the log (leader after writing, follower after
    /// copying, recovery after reading). Trusts the log: never fails.
    pub fn record(&mut self, b: BatchSeq) {
        let p = self.producers.entry(b.producer_id).or_default();
        if b.epoch != p.epoch {
            p.epoch = b.epoch;
            p.batches.clear();
        }
        p.batches.push_back(b);
        while p.batches.len() > RETAINED_BATCHES {
            p.batches.pop_front();
        }
    }

    /// Forgets producers whose newest batch is older than `now_ms -
    /// expiration_ms` (Kafka's `producer.id.expiration.ms`). Returns how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        let cutoff = now_ms.saturating_sub(expiration_ms);
        self.producers.retain(|_, p| p.last_timestamp() >= cutoff);
        before - self.producers.len()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The snapshot of a state that covers the log below `end_offset`.
    pub fn to_snapshot(&self, end_offset: i64) -> Vec<u8> {
        let batches = self
            .producers
            .values()
            .flat_map(|p| p.batches.iter().copied())
            .collect();
        serde_json::to_vec(&Snapshot {
            end_offset,
            batches,
        })
        .unwrap_or_default()
    }

    /// A snapshot read back: the state and the offset it covers up to.
    pub fn from_snapshot(bytes: &[u8]) -> Result<(Self, i64), String> {
        let snapshot: Snapshot =
            serde_json::from_slice(bytes).map_err(|e| format!("bad producer snapshot: {e}"))?;
        let mut batches = snapshot.batches;
        batches.sort_by_key(|b| b.first_offset);
        let mut state = ProducerStates::default();
        for b in batches {
            state.record(b);
        }
        Ok((state, snapshot.end_offset))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn batch(pid: i64, epoch: i16, first_seq: i32, records: i32, offset: i64) -> BatchSeq {
        BatchSeq {
            producer_id: pid,
            epoch,
            first_seq,
            last_seq: seq_add(first_seq, records - 1),
            first_offset: offset,
            last_offset: offset + i64::from(records) - 1,
            max_timestamp: 1_000 + offset,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut s = ProducerStates::default();
        let mut offset = 0;
        for i in 0..7 {
            let b = batch(7, 0, i * 3, 3, offset);
            assert_eq!(s.check(&b), Ok(SeqCheck::Append));
            s.record(b);
            offset += 3;
        }
        // The newest and an older retained batch come back: same offsets.
        assert_eq!(
            s.check(&batch(7, 0, 18, 3, -1)),
            Ok(SeqCheck::Duplicate {
                first_offset: 18,
                last_offset: 20
            })
        );
        assert_eq!(
            s.check(&batch(7, 0, 6, 3, -1)),
            Ok(SeqCheck::Duplicate {
                first_offset: 6,
                last_offset: 8
            })
        );
        // Older than the five kept: not recognised, and out of order.
        assert!(matches!(
            s.check(&batch(7, 0, 3, 3, -1)),
            Err(SeqError::OutOfOrder { .. })
        ));
        // A gap.
        assert_eq!(
            s.check(&batch(7, 0, 22, 1, -1)),
            Err(SeqError::OutOfOrder {
                producer_id: 7,
                last: 20,
                got: 22
            })
        );
        assert_eq!(s.check(&batch(7, 0, 21, 1, -1)), Ok(SeqCheck::Append));
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut s = ProducerStates::default();
        s.record(batch(1, 3, 0, 2, 0));
        assert!(matches!(
            s.check(&batch(1, 2, 2, 1, -1)),
            Err(SeqError::StaleEpoch {
                current: 3,
                got: 2,
                ..
            })
        ));
        assert!(matches!(
            s.check(&batch(1, 4, 5, 1, -1)),
            Err(SeqError::NewEpochNotAtZero { .. })
        ));
        assert_eq!(s.check(&batch(1, 4, 0, 1, -1)), Ok(SeqCheck::Append));
        s.record(batch(1, 4, 0, 1, 2));
        assert!(matches!(
            s.check(&batch(1, 3, 2, 1, -1)),
            Err(SeqError::StaleEpoch { .. })
        ));
        // Unknown producers may start anywhere (their state may be gone).
        assert_eq!(s.check(&batch(2, 0, 41, 1, -1)), Ok(SeqCheck::Append));
    }

    #[test]
    fn sequences_wrap_past_i32_max() {
        let mut s = ProducerStates::default();
        let b = batch(5, 0, i32::MAX - 1, 2, 0);
        assert_eq!(b.last_seq, i32::MAX);
        s.record(b);
        assert_eq!(s.check(&batch(5, 0, 0, 3, -1)), Ok(SeqCheck::Append));
        assert!(s.check(&batch(5, 0, 1, 3, -1)).is_err());
        let wrapped = batch(5, 0, i32::MAX, 3, 0);
        assert_eq!((wrapped.first_seq, wrapped.last_seq), (i32::MAX, 1));
    }

    #[test]
    fn expiry_and_snapshots() {
        let mut s = ProducerStates::default();
        s.record(batch(1, 0, 0, 1, 0));
        s.record(batch(2, 0, 0, 1, 5_000));
        s.record(batch(2, 0, 1, 1, 5_001));
        let (back, end) = ProducerStates::from_snapshot(&s.to_snapshot(5_002)).unwrap();
        assert_eq!((back.clone(), end), (s.clone(), 5_002));
        assert!(ProducerStates::from_snapshot(b"{not json").is_err());
        // Producer 1's last batch is at 1_000 ms, producer 2's at 6_001.
        assert_eq!(s.expire(10_000, 5_000), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.check(&batch(2, 0, 1, 1, -1)),
            Ok(SeqCheck::Duplicate {
                first_offset: 5_001,
                last_offset: 5_001
            })
        );
    }

    #[test]
    fn headers_of_plain_batches_have_no_sequence() {
        let h = BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: 1,
        };
        assert_eq!(BatchSeq::from_header(&h), None);
        let idempotent = BatchHeader {
            producer_id: 9,
            producer_epoch: 1,
            base_sequence: 4,
            last_offset_delta: 2,
            base_offset: 10,
            ..h
        };
        let b = BatchSeq::from_header(&idempotent).unwrap();
        assert_eq!(
            (b.first_seq, b.last_seq, b.first_offset, b.last_offset),
            (4, 6, 10, 12)
        );
    }
}
