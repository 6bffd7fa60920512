//! One inventory shard actor. Its mailbox orders the requests routed to it (every reservation
//! whose smallest SKU it owns); the ledger behind it does the durable work (stock, reservations
//! and outbox in one transaction) and is what guarantees no oversell.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, warn};

use super::outcomes::{ReleaseCause, release_messages, reservation_messages};
use crate::domain::{CorrelationId, OrderId};
use crate::ports::{
    ReservationLedger, ReservationOutcome, ReservationRequest, SettleOutcome, SharedClock,
    StoreError,
};

pub struct InventoryShard;

pub enum ShardMessage {
    Reserve(
        ReservationRequest,
        RpcReplyPort<Result<ReservationOutcome, StoreError>>,
    ),
    Commit(OrderId, RpcReplyPort<Result<SettleOutcome, StoreError>>),
    Release {
        order_id: OrderId,
        correlation_id: CorrelationId,
        cause: ReleaseCause,
        reply: RpcReplyPort<Result<SettleOutcome, StoreError>>,
    },
}

pub struct ShardState {
    index: usize,
    ledger: Arc<dyn ReservationLedger>,
    clock: SharedClock,
}

impl Actor for InventoryShard {
    type Msg = ShardMessage;
    type State = ShardState;
    type Arguments = (usize, Arc<dyn ReservationLedger>, SharedClock);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (index, ledger, clock): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ShardState {
            index,
            ledger,
            clock,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::metrics::mailbox_dequeued(crate::metrics::INVENTORY_SHARD);
        match message {
            ShardMessage::Reserve(request, reply) => {
                let messages = |outcome: &ReservationOutcome| {
                    reservation_messages(&request, outcome, state.clock.now())
                };
                let result = state.ledger.reserve(&request, &messages).await;
                debug!(shard = state.index, order_id = %request.order_id, correlation_id = %request.correlation_id, ?result, "reservation decided");
                if let Ok(ReservationOutcome::Reserved { low_stock }) = &result {
                    for alert in low_stock {
                        metrics::counter!(crate::metrics::LOW_STOCK_ALERTS).increment(1);
                        warn!(
                            sku = %alert.sku,
                            available = alert.available,
                            threshold = alert.threshold,
                            order_id = %request.order_id,
                            correlation_id = %request.correlation_id,
                            "low stock: available units fell to the product's threshold"
                        );
                    }
                }
                let _ = reply.send(result);
            }
            ShardMessage::Commit(order_id, reply) => {
                let result = state.ledger.commit(order_id, &|_| Vec::new()).await;
                let _ = reply.send(result);
            }
            ShardMessage::Release {
                order_id,
                correlation_id,
                cause,
                reply,
            } => {
                let messages = |outcome: &SettleOutcome| {
                    release_messages(
                        order_id,
                        &correlation_id,
                        &cause,
                        outcome,
                        state.clock.now(),
                    )
                };
                let result = state.ledger.release(order_id, &messages).await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}
