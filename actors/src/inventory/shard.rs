//! One inventory shard actor. Its mailbox orders the requests routed to it (every reservation
//! whose smallest SKU it owns, and the commits and releases that name that SKU); the ledger
//! behind it does the durable work (stock, reservations and outbox in one transaction) and is
//! what guarantees no oversell.
//!
//! Reservations are decided in batches: a `Reserve` is parked and a `Flush` is sent to the actor
//! itself, so every request already queued behind it joins the same batch, and each kind of
//! batch is one ledger transaction (commits have a flush of their own, below). Under a flash
//! sale the hot SKU's shard thus commits hundreds of reservations per transaction; at low load a
//! batch is one reservation and waits for nothing. Releases are parked and batched the same way.
//! Within a flush that decides all of them (a full batch, or the commits' own), reservations go
//! first, then commits, then releases, so a release takes effect after whatever was queued
//! before it (a commit always follows the answer to its order's reservation, so those two never
//! wait in the same batch). A reservation or commit of an order whose release is parked flushes
//! first, so it finds the order released, exactly as if every request had been decided one at a
//! time. Batching releases matters under a flash sale: every order that found no stock is
//! cancelled and released, and releases taken one at a time cut the hot SKU's batches into
//! slivers.
//!
//! Commits are not decided by the flushes reservations and releases ask for: they wait up to
//! `COMMIT_LINGER` for others and are then decided together. No order waits for its stock
//! commit (it is already `COMPLETED`), so the pause costs nothing a client sees, and it turns
//! one commit transaction per reservation batch into a few a second. A release of an order
//! whose commit is parked decides the commits first, so the order is settled as if each request
//! had been taken one at a time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

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
    /// Decide the parked requests (sent by the shard to itself).
    Flush,
    /// The same, sent by the shard to itself `COMMIT_LINGER` after a commit was parked alone.
    FlushLingering,
    Release {
        order_id: OrderId,
        correlation_id: CorrelationId,
        cause: ReleaseCause,
        reply: RpcReplyPort<Result<SettleOutcome, StoreError>>,
    },
}

/// A reservation waiting for the next flush, with whom to answer.
type Parked = (
    ReservationRequest,
    RpcReplyPort<Result<ReservationOutcome, StoreError>>,
);

/// Most reservations decided in one transaction.
const MAX_BATCH: usize = 512;

/// How long the first parked commit waits for others before the commits are decided.
const COMMIT_LINGER: Duration = Duration::from_millis(50);

/// A commit waiting for the next flush.
type ParkedCommit = (OrderId, RpcReplyPort<Result<SettleOutcome, StoreError>>);

/// A release waiting for the next flush.
struct ParkedRelease {
    order_id: OrderId,
    correlation_id: CorrelationId,
    cause: ReleaseCause,
    reply: RpcReplyPort<Result<SettleOutcome, StoreError>>,
}

pub struct ShardState {
    index: usize,
    ledger: Arc<dyn ReservationLedger>,
    clock: SharedClock,
    parked: Vec<Parked>,
    commits: Vec<ParkedCommit>,
    releases: Vec<ParkedRelease>,
    /// The orders in `releases`.
    releasing: HashSet<OrderId>,
    /// The orders in `commits`.
    committing: HashSet<OrderId>,
    /// A `Flush` is in the mailbox (sent by `after_parking`, not yet handled).
    flush_queued: bool,
    /// A delayed `Flush` for lingering commits is on its way.
    linger_armed: bool,
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
            parked: Vec::new(),
            commits: Vec::new(),
            releases: Vec::new(),
            releasing: HashSet::new(),
            committing: HashSet::new(),
            flush_queued: false,
            linger_armed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, ShardMessage::Flush | ShardMessage::FlushLingering) {
            crate::metrics::mailbox_dequeued(crate::metrics::INVENTORY_SHARD);
        }
        match message {
            ShardMessage::Reserve(request, reply) => {
                if state.releasing.contains(&request.order_id) {
                    state.flush().await;
                }
                state.parked.push((request, reply));
                state.after_parking(&myself).await;
            }
            ShardMessage::Commit(order_id, reply) => {
                if state.releasing.contains(&order_id) {
                    state.flush().await;
                }
                state.committing.insert(order_id);
                state.commits.push((order_id, reply));
                state.after_parking_commit(&myself).await;
            }
            ShardMessage::Flush => {
                state.flush_queued = false;
                state.flush_reservations().await;
                state.flush_releases().await;
            }
            ShardMessage::FlushLingering => {
                state.linger_armed = false;
                state.flush().await;
            }
            ShardMessage::Release {
                order_id,
                correlation_id,
                cause,
                reply,
            } => {
                if state.committing.contains(&order_id) {
                    state.flush_commits().await;
                }
                state.releasing.insert(order_id);
                state.releases.push(ParkedRelease {
                    order_id,
                    correlation_id,
                    cause,
                    reply,
                });
                state.after_parking(&myself).await;
            }
        }
        Ok(())
    }
}

impl ShardState {
    /// A parked reservation or release asks for a flush, queued behind everything already
    /// waiting (those join the batch), unless one is queued already; a full batch is flushed at
    /// once.
    async fn after_parking(&mut self, myself: &ActorRef<ShardMessage>) {
        if self.parked_count() >= MAX_BATCH {
            self.flush().await;
        } else if !self.flush_queued {
            self.flush_queued = true;
            let _ = myself.send_message(ShardMessage::Flush);
        }
    }

    /// A parked commit is decided by the delayed flush, armed by the first one.
    async fn after_parking_commit(&mut self, myself: &ActorRef<ShardMessage>) {
        if self.commits.len() >= MAX_BATCH {
            self.flush().await;
        } else if !self.linger_armed {
            self.linger_armed = true;
            myself.send_after(COMMIT_LINGER, || ShardMessage::FlushLingering);
        }
    }

    fn parked_count(&self) -> usize {
        self.parked.len() + self.commits.len() + self.releases.len()
    }

    /// Decides every parked request: the reservations in one ledger call, then the commits in
    /// another, then the releases, answering each.
    async fn flush(&mut self) {
        self.flush_reservations().await;
        self.flush_commits().await;
        self.flush_releases().await;
    }

    async fn flush_releases(&mut self) {
        if self.releases.is_empty() {
            return;
        }
        self.releasing.clear();
        let releases = std::mem::take(&mut self.releases);
        let orders: Vec<OrderId> = releases.iter().map(|r| r.order_id).collect();
        let now = self.clock.now();
        let messages = |i: usize, outcome: &SettleOutcome| {
            releases.get(i).map_or_else(Vec::new, |r| {
                release_messages(r.order_id, &r.correlation_id, &r.cause, outcome, now)
            })
        };
        let result = self.ledger.release_batch(&orders, &messages).await;
        answer_each(releases.into_iter().map(|r| r.reply), result);
    }

    async fn flush_commits(&mut self) {
        if self.commits.is_empty() {
            return;
        }
        self.committing.clear();
        let (orders, replies): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.commits).into_iter().unzip();
        answer_each(replies, self.ledger.commit_batch(&orders).await);
    }

    async fn flush_reservations(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        let (requests, replies): (Vec<_>, Vec<_>) = parked.into_iter().unzip();
        let now = self.clock.now();
        let messages = |request: &ReservationRequest, outcome: &ReservationOutcome| {
            reservation_messages(request, outcome, now)
        };
        metrics::histogram!(crate::metrics::RESERVATION_BATCH).record(requests.len() as f64);
        let result = self.ledger.reserve_batch(&requests, &messages).await;
        debug!(
            shard = self.index,
            batch = requests.len(),
            ok = result.is_ok(),
            "reservations decided"
        );
        if let Ok(outcomes) = &result {
            for (request, outcome) in requests.iter().zip(outcomes) {
                debug!(shard = self.index, order_id = %request.order_id, correlation_id = %request.correlation_id, ?outcome, "reservation decided");
                if let ReservationOutcome::Reserved { low_stock } = outcome {
                    alert_low_stock(request, low_stock);
                }
            }
        }
        answer_each(replies, result);
    }
}

/// Answers each caller of a batch with its own outcome (outcomes come in the callers' order),
/// or every caller with the batch's error.
fn answer_each<T: Send + 'static>(
    replies: impl IntoIterator<Item = RpcReplyPort<Result<T, StoreError>>>,
    result: Result<Vec<T>, StoreError>,
) {
    match result {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn alert_low_stock(request: &ReservationRequest, low_stock: &[crate::events::InventoryLowStock]) {
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
