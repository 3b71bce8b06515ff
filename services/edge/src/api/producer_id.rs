//! InitProducerId for idempotent (non-transactional) producers.
//!
//! kafka-python 3 and the Java client turn idempotence on by default, so
//! without InitProducerId they cannot produce at all. The edge hands out
//! producer ids and bumps epochs as KIP-360 asks (`runnel_cluster::producer_id`,
//! shared with ingest's gRPC InitProducerId). The partition leaders check each
//! batch's producer id, epoch and sequence numbers: a retried batch is
//! written once and answered with its first offsets, a gap gets
//! OUT_OF_ORDER_SEQUENCE_NUMBER and an old epoch INVALID_PRODUCER_EPOCH
//! (see the storage log's `idempotence` module). Transactional ids are
//! refused: transactions need a transaction coordinator.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use runnel_cluster::{ProducerIdentity, init_producer};

use super::Ctx;
use crate::error::code;

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
    // Before v3 a producer cannot ask for a bump: it always gets a new id.
    let current = (version >= 3).then_some(ProducerIdentity {
        producer_id: req.producer_id.0,
        epoch: req.producer_epoch,
    });
    let ProducerIdentity {
        producer_id: id,
        epoch,
    } = init_producer(current);
    tracing::debug!(peer = %ctx.conn.peer, producer_id = id, epoch, "producer id assigned");
    InitProducerIdResponse::default()
        .with_error_code(code::NONE)
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch)
}
