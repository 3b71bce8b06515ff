//! InitProducerId for idempotent (non-transactional) producers.
//!
//! kafka-python 3 and the Java client turn idempotence on by default, so
//! without InitProducerId they cannot produce at all. The edge hands out
//! producer ids that are unique with overwhelming probability (62 random
//! bits) and bumps epochs as KIP-360 asks. The partition leaders check each
//! batch's producer id, epoch and sequence numbers: a retried batch is
//! written once and answered with its first offsets, a gap gets
//! OUT_OF_ORDER_SEQUENCE_NUMBER and an old epoch INVALID_PRODUCER_EPOCH
//! (see the storage log's `idempotence` module). Transactional ids are
//! refused: transactions need a transaction coordinator.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::Ctx;
use crate::error::code;

fn new_producer_id() -> i64 {
    (uuid::Uuid::new_v4().as_u128() >> 66) as i64
}

pub fn handle(
    ctx: &mut Ctx<'_>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    if req.transactional_id.is_some() {
        ctx.note(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
        tracing::info!(peer = %ctx.conn.peer, "transactional producer refused: transactions are not supported yet");
        return InitProducerIdResponse::default()
            .with_error_code(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let (id, epoch) = if version >= 3 && req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        // KIP-360: the producer asks for its epoch to be bumped.
        if req.producer_epoch < i16::MAX - 1 {
            (req.producer_id.0, req.producer_epoch + 1)
        } else {
            (new_producer_id(), 0)
        }
    } else {
        (new_producer_id(), 0)
    };
    tracing::debug!(peer = %ctx.conn.peer, producer_id = id, epoch, "producer id assigned");
    InitProducerIdResponse::default()
        .with_error_code(code::NONE)
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch)
}
