//! Producer ids for idempotent producers (Kafka's InitProducerId), shared by
//! the Kafka edge and ingest's gRPC API.
//!
//! Ids are 62 random bits rather than a counter in the metastore: any edge
//! or ingest instance hands them out without a round trip, and two producers
//! share an id with probability about n²/2⁶³ (one in ten million for a
//! million producers). Each partition leader checks the id, epoch and
//! sequence numbers of every batch (storage's `log::idempotence`).

use rand::Rng;

/// A producer's identity: its id and the epoch that fences older instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub epoch: i16,
}

/// A fresh id at epoch 0.
pub fn new_producer() -> ProducerIdentity {
    ProducerIdentity {
        producer_id: rand::rng().random_range(0..1i64 << 62),
        epoch: 0,
    }
}

/// The answer to InitProducerId: `current` (when the producer sends the id
/// and epoch it has) gets its epoch bumped (KIP-360), which fences its older
/// self and lets it restart its sequences at 0; otherwise, or when the epoch
/// is exhausted, a fresh id.
pub fn init_producer(current: Option<ProducerIdentity>) -> ProducerIdentity {
    match current {
        Some(p) if p.producer_id >= 0 && (0..i16::MAX - 1).contains(&p.epoch) => ProducerIdentity {
            producer_id: p.producer_id,
            epoch: p.epoch + 1,
        },
        _ => new_producer(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_non_negative_and_differ() {
        let a = init_producer(None);
        let b = init_producer(None);
        assert!(a.producer_id >= 0 && b.producer_id >= 0);
        assert_ne!(a.producer_id, b.producer_id);
        assert_eq!((a.epoch, b.epoch), (0, 0));
    }

    #[test]
    fn a_known_producer_gets_its_epoch_bumped() {
        let p = ProducerIdentity {
            producer_id: 42,
            epoch: 7,
        };
        assert_eq!(
            init_producer(Some(p)),
            ProducerIdentity {
                producer_id: 42,
                epoch: 8
            }
        );
    }

    #[test]
    fn an_exhausted_epoch_or_invalid_id_gets_a_new_id() {
        let worn = ProducerIdentity {
            producer_id: 42,
            epoch: i16::MAX - 1,
        };
        let fresh = init_producer(Some(worn));
        assert_ne!(fresh.producer_id, 42);
        assert_eq!(fresh.epoch, 0);
        let invalid = ProducerIdentity {
            producer_id: -1,
            epoch: 3,
        };
        assert_eq!(init_producer(Some(invalid)).epoch, 0);
    }
}
