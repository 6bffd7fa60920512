//! Inventory: SKUs hash to N shard actors, and each shard handles its requests one at a time.
//!
//! An order's reservation goes to the shard that owns its smallest SKU and is decided in one
//! transaction over all its lines (all or nothing). So single-SKU orders (the flash-sale case) of
//! one SKU always queue in one shard's mailbox, while a multi-SKU order may touch SKUs owned by
//! other shards. A commit or release goes to the same shard, found from the SKUs its message
//! carries (`events::routing_skus`), or, for an expiry found by the sweeper, from the smallest
//! SKU the ledger still holds for it; so it queues and batches behind that shard's reservations
//! instead of locking their `products` rows from another shard (one that names no SKU goes to
//! the shard picked by the order id: slower, as correct). What makes an oversell impossible, inside a process and across processes, is Postgres: row locks
//! taken in SKU order and the CHECK constraints on `products`; the shards keep contention on a
//! hot SKU off the database and give the ledger a place to batch.

mod outcomes;
mod reservation_decision;
mod shard;
mod supervisor;

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, RpcReplyPort};

pub use outcomes::{ReleaseCause, release_messages, reservation_messages};
pub use reservation_decision::{ReservationDecision, StockLevel, decide_reservations};
pub use shard::{InventoryShard, ShardMessage};
pub use supervisor::{ShardSlots, ShardSupervisor, ShardSupervisorArgs};

use crate::domain::{OrderId, Sku};
use crate::events::{Envelope, EventBody};
use crate::ports::{
    ExpiredReservation, PriorReservation, ReservationLedger, ReservationOutcome,
    ReservationRequest, SharedClock, StoreError,
};
use crate::saga::{OrderStatus, SagaEvent};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("inventory shard unavailable: {0}")]
    ShardUnavailable(String),
}

/// The inventory role's entry point: turns messages into shard requests.
#[derive(Clone)]
pub struct InventoryShards {
    /// The current actor of each shard (a crashed one is replaced in its slot).
    shards: ShardSlots,
    count: usize,
    supervisor: ActorRef<()>,
    /// Read directly only to answer a repeated reservation request from its first decision.
    ledger: Arc<dyn ReservationLedger>,
    clock: SharedClock,
    reservation_ttl: chrono::Duration,
    timeout: Duration,
}

impl InventoryShards {
    /// Spawns `count` shard actors (at least one) sharing one ledger, under a supervisor that
    /// replaces any that crashes.
    pub async fn spawn(
        count: usize,
        ledger: Arc<dyn ReservationLedger>,
        clock: SharedClock,
        reservation_ttl: Duration,
    ) -> Result<Self, ractor::SpawnErr> {
        let count = count.max(1);
        let shards: ShardSlots = Arc::new(std::sync::RwLock::new(Vec::with_capacity(count)));
        let args = ShardSupervisorArgs {
            count,
            ledger: ledger.clone(),
            clock: clock.clone(),
            slots: shards.clone(),
        };
        let (supervisor, _join) = Actor::spawn(None, ShardSupervisor, args).await?;
        Ok(Self {
            shards,
            count,
            supervisor,
            ledger,
            clock,
            reservation_ttl: chrono::Duration::from_std(reservation_ttl)
                .unwrap_or_else(|_| chrono::Duration::minutes(15)),
            timeout: Duration::from_secs(30),
        })
    }

    pub fn shard_count(&self) -> usize {
        self.count
    }

    pub fn shard_of(&self, sku: &Sku) -> usize {
        (sku.shard_hash() % self.count as u64) as usize
    }

    fn shard_of_order(&self, order_id: OrderId) -> usize {
        (order_id.as_uuid().as_u128() % self.count as u128) as usize
    }

    /// Where a commit or release of this order goes: the shard of its smallest SKU, which took
    /// its reservation, or by the order id when the message names no SKUs.
    pub fn shard_for_settlement(&self, order_id: OrderId, skus: &[Sku]) -> usize {
        match skus.iter().min() {
            Some(sku) => self.shard_of(sku),
            None => self.shard_of_order(order_id),
        }
    }

    /// Where the sweeper sends an expired reservation's release: like a settlement, to the shard
    /// of its smallest SKU, so it queues behind (and batches with) that shard's other work on
    /// those rows instead of waiting on their locks from another shard.
    pub fn shard_for_expiry(&self, expired: &ExpiredReservation) -> usize {
        self.shard_for_settlement(expired.order_id, expired.routing_sku.as_slice())
    }

    /// The shard's current actor.
    fn shard(&self, index: usize) -> Option<ActorRef<ShardMessage>> {
        self.shards
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(index)
            .cloned()
    }

    pub fn stop(&self) {
        // The supervisor first: a shard stopping now is not to be replaced.
        self.supervisor.stop(None);
        for shard in self
            .shards
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            shard.stop(None);
        }
    }

    /// Handles one message from the bus. Messages inventory does not care about are accepted.
    pub async fn on_message(&self, envelope: &Envelope) -> Result<(), InventoryError> {
        self.answer(envelope).await.map(|_| ())
    }

    /// Handles one command and returns the saga's answer, if the saga waits for one: the
    /// reservation's outcome, or the confirmation of a requested release. A repeated reservation
    /// request is answered from the first decision, so a saga whose answer was lost (a crash
    /// between the two) gets it again. Messages inventory does not care about are accepted.
    pub async fn answer(&self, envelope: &Envelope) -> Result<Option<SagaEvent>, InventoryError> {
        let order_id = envelope.order_id;
        match &envelope.body {
            EventBody::OrderCreated(created) => {
                let lines = created.order_lines();
                let Some(first) = lines.iter().map(|l| &l.sku).min() else {
                    return Ok(None);
                };
                let shard = self.shard_of(first);
                let request = ReservationRequest {
                    order_id,
                    correlation_id: envelope.correlation_id.clone(),
                    lines,
                    expires_at: self.clock.now() + self.reservation_ttl,
                };
                let outcome = self
                    .call(shard, |reply| ShardMessage::Reserve(request, reply))
                    .await?;
                Ok(match outcome {
                    ReservationOutcome::Reserved { .. } => Some(SagaEvent::StockReserved),
                    ReservationOutcome::OutOfStock(shortages) => {
                        Some(SagaEvent::OutOfStock { shortages })
                    }
                    ReservationOutcome::AlreadyDecided => self
                        .ledger
                        .prior_decision(order_id)
                        .await?
                        .map(|prior| match prior {
                            PriorReservation::Reserved => SagaEvent::StockReserved,
                            // The shortages were told the first time; the saga needs the verdict.
                            PriorReservation::OutOfStock => SagaEvent::OutOfStock {
                                shortages: Vec::new(),
                            },
                            PriorReservation::Released => SagaEvent::StockReleased,
                        }),
                })
            }
            EventBody::OrderConfirmed(e) => {
                self.call(self.shard_for_settlement(order_id, &e.skus), |reply| {
                    ShardMessage::Commit(order_id, reply)
                })
                .await?;
                Ok(None)
            }
            EventBody::OrderCancelled(e) => {
                let cause = ReleaseCause::OrderCancelled(e.reason.clone());
                self.release(envelope, &e.skus, cause).await?;
                Ok(None)
            }
            EventBody::InventoryReleaseRequested(e) => {
                let cause = ReleaseCause::Requested(e.reason.clone());
                self.release(envelope, &e.skus, cause).await?;
                Ok(Some(SagaEvent::StockReleased))
            }
            _ => Ok(None),
        }
    }

    /// Settles what nobody else will (run periodically by the inventory role): releases every
    /// reservation whose TTL passed, and settles the stock of finished orders whose commit or
    /// release was lost (committed if the order completed). Returns how many orders were due.
    pub async fn sweep_expired(
        &self,
        ledger: &dyn ReservationLedger,
        limit: i64,
    ) -> Result<usize, InventoryError> {
        self.sweep(ledger, limit, |_| true, |_| {}).await
    }

    /// `sweep_expired` for the reservations `owns` says are this instance's (their routing
    /// SKU's partition is owned here; the other instances sweep theirs), telling `expired` each
    /// order whose units went back on sale because its reservation ran out: the saga must hear
    /// of it (the sweeper's `inventory.released.v1` carries the news through the broker; the
    /// caller hands it over directly when it can).
    pub async fn sweep(
        &self,
        ledger: &dyn ReservationLedger,
        limit: i64,
        owns: impl Fn(&ExpiredReservation) -> bool,
        expired_order: impl Fn(OrderId),
    ) -> Result<usize, InventoryError> {
        let due = ledger.due_for_expiry(self.clock.now(), limit).await?;
        let mut count = 0;
        for expired in due.into_iter().filter(|e| owns(e)) {
            count += 1;
            let shard = self.shard_for_expiry(&expired);
            let ExpiredReservation {
                order_id,
                correlation_id,
                finished,
                ..
            } = expired;
            let cause = match finished {
                Some(OrderStatus::Completed) => {
                    // Sold: the commit that followed the order's completion was lost.
                    self.call(shard, |reply| ShardMessage::Commit(order_id, reply))
                        .await?;
                    continue;
                }
                // The release that followed the cancellation was lost.
                Some(_) => ReleaseCause::OrderCancelled("order cancelled".into()),
                None => ReleaseCause::Expired,
            };
            let by_expiry = cause == ReleaseCause::Expired;
            let released = self
                .call(shard, |reply| ShardMessage::Release {
                    order_id,
                    correlation_id,
                    cause,
                    reply,
                })
                .await?;
            if by_expiry && released.rows_changed > 0 {
                metrics::counter!(crate::metrics::RESERVATIONS_EXPIRED).increment(1);
                expired_order(order_id);
            }
        }
        Ok(count)
    }

    async fn release(
        &self,
        envelope: &Envelope,
        skus: &[Sku],
        cause: ReleaseCause,
    ) -> Result<(), InventoryError> {
        let order_id = envelope.order_id;
        let correlation_id = envelope.correlation_id.clone();
        self.call(self.shard_for_settlement(order_id, skus), |reply| {
            ShardMessage::Release {
                order_id,
                correlation_id,
                cause,
                reply,
            }
        })
        .await?;
        Ok(())
    }

    async fn call<T: Send + 'static>(
        &self,
        shard: usize,
        build: impl FnOnce(RpcReplyPort<Result<T, StoreError>>) -> ShardMessage,
    ) -> Result<T, InventoryError> {
        let Some(actor) = self.shard(shard) else {
            return Err(InventoryError::ShardUnavailable(format!(
                "no shard {shard}"
            )));
        };
        crate::metrics::mailbox_enqueued(crate::metrics::INVENTORY_SHARD);
        match actor.call(build, Some(self.timeout)).await {
            Ok(CallResult::Success(result)) => Ok(result?),
            Ok(CallResult::Timeout) => Err(InventoryError::ShardUnavailable("timed out".into())),
            Ok(CallResult::SenderError) => {
                Err(InventoryError::ShardUnavailable("no answer".into()))
            }
            Err(e) => {
                crate::metrics::mailbox_dequeued(crate::metrics::INVENTORY_SHARD);
                Err(InventoryError::ShardUnavailable(e.to_string()))
            }
        }
    }
}
