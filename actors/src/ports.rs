//! Ports: the small traits through which actors reach storage, messaging and payment providers.
//! Implementations live in the `adapters` crate (Postgres, NATS, Stripe); in-memory ones live in
//! tests. Keeping them narrow keeps the actors honest about what they need.
//!
//! Every port that changes state also takes the messages to emit (`outbox`) and commits both in one
//! transaction: that is the transactional outbox, and it is why a crash can never leave a
//! transition persisted with its messages lost, or messages sent for a transition that never was.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{CorrelationId, Money, OrderId, OrderLine, PaymentMethod, Sku};
use crate::events::{Envelope, InventoryLowStock, Shortage};
use crate::saga::OrderState;

/// Failures of a storage port, split by what the caller should do about them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another writer advanced the order first (optimistic concurrency). Reload and re-decide.
    #[error("version conflict: expected version {expected}")]
    VersionConflict { expected: i64 },
    /// The store could not be reached or failed; the operation may be retried later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The write was fenced off: this instance no longer owns the key's partition (another took
    /// it over). Nothing was written; the new owner carries on from the stored state.
    #[error("not the owner: {0}")]
    NotOwner(String),
}

/// Carries work to the instance that owns its key when that is not this one: an answer (a
/// `SagaEvent`) to the owner of its order's partition, an inventory command to the owner of its
/// routing SKU's partition. Each owner listens for its partitions' mail. At most once: a lost
/// letter is made up for by the saga itself (its re-sends and its deadline), like any lost
/// message.
pub trait ClusterMail: Send + Sync + 'static {
    fn to_order_owner(&self, order_id: OrderId, event: crate::saga::SagaEvent);
    fn to_sku_owner(&self, sku: &Sku, command: &Envelope);
}

/// Where order snapshots live. A snapshot is the whole `OrderState`, written with its version.
#[async_trait]
pub trait OrderSnapshotStore: Send + Sync + 'static {
    async fn load(&self, order_id: OrderId) -> Result<Option<OrderState>, StoreError>;

    /// Stores the first snapshot and its messages. Returns `false`, writing nothing, if the order
    /// already exists (placing an order is idempotent).
    async fn create(&self, first: &OrderState, outbox: &[Envelope]) -> Result<bool, StoreError>;

    /// Stores `next` if the stored version is still `expected` (the version the transition was
    /// decided on), else `VersionConflict`. A transition adds one version per history entry it
    /// appends: usually one; a success reported at once adds two (PAYMENT_PROCESSING, COMPLETED)
    /// and a resume adds one per held event it decides.
    async fn commit(
        &self,
        expected: i64,
        next: &OrderState,
        outbox: &[Envelope],
    ) -> Result<(), StoreError>;

    /// Every order that is not finished, with its current deadline: what crash recovery re-arms.
    async fn live_deadlines(&self) -> Result<Vec<(OrderId, Option<DateTime<Utc>>)>, StoreError>;
}

/// A request to reserve every line of one order, all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRequest {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub lines: Vec<OrderLine>,
    pub expires_at: DateTime<Utc>,
}

/// An order whose reservation outlived its TTL, as the inventory role's sweeper finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredReservation {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    /// The smallest SKU it still holds (byte order, as `Sku`'s `Ord` and
    /// `events::routing_skus`): its release goes to that SKU's shard, the one that took the
    /// reservation and takes the order's commit. `None` only if the stored SKU no longer parses.
    pub routing_sku: Option<Sku>,
    /// The order's status when it finished (`COMPLETED` or `CANCELLED`) and the settlement that
    /// follows was lost (a crash between the saga's commit and the shard's): the sweeper commits
    /// a completed order's units (they were sold) and releases a cancelled one's. `None`: the
    /// order is live, or gone, and the reservation simply expired.
    pub finished: Option<crate::saga::OrderStatus>,
}

/// What inventory decided the first time about an order, to answer a repeated request the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorReservation {
    /// Its units are held (or were sold).
    Reserved,
    /// It was refused for lack of stock.
    OutOfStock,
    /// Its units went back on sale (released, expired), or it was cancelled before any were held.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationOutcome {
    /// Reserved; `low_stock` lists the products this reservation took down to (or below) their
    /// low-stock threshold (empty almost always).
    Reserved {
        low_stock: Vec<InventoryLowStock>,
    },
    OutOfStock(Vec<Shortage>),
    /// The order was already decided (reserved, refused or cancelled) by an earlier delivery.
    AlreadyDecided,
}

/// What happened when an order's reservation was committed or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleOutcome {
    /// Reservation rows that changed state in this call (0 for a repeat).
    pub rows_changed: u64,
}

/// Derives the messages to commit together with a ledger outcome.
pub type OutcomeMessages<'a, O> = &'a (dyn Fn(&O) -> Vec<Envelope> + Send + Sync);

/// Derives the messages of a charge's recorded outcome. Owned (not borrowed) because the record
/// may be written by another task, in one transaction with other orders' charges; it is called
/// there, before the commit, only when this record is new.
pub type ChargeMessages = Box<dyn FnOnce(&ChargeOutcome) -> Vec<Envelope> + Send>;

/// Derives the messages of one reservation of a batch from its request and outcome.
pub type BatchMessages<'a> =
    &'a (dyn Fn(&ReservationRequest, &ReservationOutcome) -> Vec<Envelope> + Send + Sync);

/// Derives the messages of one release of a batch from its position in the batch and its outcome.
pub type ReleaseMessages<'a> = &'a (dyn Fn(usize, &SettleOutcome) -> Vec<Envelope> + Send + Sync);

/// Stock and reservations, in batches: the inventory shard hands its ledger what queued in its
/// mailbox, and one transaction per batch is what keeps a hot SKU affordable. Each batch has the
/// result of its requests taken one after the other (the decision rule is
/// `inventory::decide_reservations`). Postgres's CHECK constraints back every implementation's
/// promise that nothing is oversold, even with several processes.
#[async_trait]
pub trait ReservationLedger: Send + Sync + 'static {
    /// Decides reservations, in order, each all or nothing over its lines; outcomes in the same
    /// order. An order decided before (or earlier in the batch) is `AlreadyDecided`.
    async fn reserve_batch(
        &self,
        requests: &[ReservationRequest],
        messages: BatchMessages<'_>,
    ) -> Result<Vec<ReservationOutcome>, StoreError>;

    /// The orders completed: their reserved units leave stock for good (no messages); outcomes
    /// in the same order. A repeated order in one batch is committed by its first occurrence.
    /// An order whose reservation expired before it completed takes its units again if they are
    /// still there.
    async fn commit_batch(&self, order_ids: &[OrderId]) -> Result<Vec<SettleOutcome>, StoreError>;

    /// The orders will not complete: their reserved units go back on sale. Also marks each order
    /// decided, so a reservation request that arrives after the cancellation is refused.
    /// Outcomes in the same order; a repeated order is released by its first occurrence.
    async fn release_batch(
        &self,
        order_ids: &[OrderId],
        messages: ReleaseMessages<'_>,
    ) -> Result<Vec<SettleOutcome>, StoreError>;

    /// What was decided for this order's reservation, if anything: a repeated request (a saga
    /// re-sending after its answer was lost) is answered from it.
    async fn prior_decision(
        &self,
        order_id: OrderId,
    ) -> Result<Option<PriorReservation>, StoreError>;

    /// Orders holding reservations that expired at `now`, or whose order finished a while before
    /// `now` without its stock being settled; oldest first, at most `limit`.
    async fn due_for_expiry(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ExpiredReservation>, StoreError>;

    /// One reservation: a batch of one.
    async fn reserve(
        &self,
        request: &ReservationRequest,
        messages: OutcomeMessages<'_, ReservationOutcome>,
    ) -> Result<ReservationOutcome, StoreError> {
        let batch = std::slice::from_ref(request);
        one(self.reserve_batch(batch, &|_, o| messages(o)).await?)
    }

    /// One commit: a batch of one.
    async fn commit(&self, order_id: OrderId) -> Result<SettleOutcome, StoreError> {
        one(self.commit_batch(&[order_id]).await?)
    }

    /// One release: a batch of one.
    async fn release(
        &self,
        order_id: OrderId,
        messages: OutcomeMessages<'_, SettleOutcome>,
    ) -> Result<SettleOutcome, StoreError> {
        one(self.release_batch(&[order_id], &|_, o| messages(o)).await?)
    }
}

/// The outcome of a batch of one.
fn one<T>(outcomes: Vec<T>) -> Result<T, StoreError> {
    outcomes.into_iter().next().ok_or_else(|| {
        StoreError::Unavailable("the ledger answered a batch of one with none".into())
    })
}

/// One charge, as the payment role asks a provider for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub amount: Money,
    pub payment_method: PaymentMethod,
    pub attempt: u32,
    /// Derived from order id and attempt: a redelivered request reuses it, so the provider
    /// replays its first answer instead of charging again.
    pub idempotency_key: String,
}

/// Give back the money of one charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub order_id: OrderId,
    pub payment_reference: String,
    /// Derived from the order and the charge: a retried refund never refunds twice.
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        reference: String,
    },
    /// Accepted, final outcome later (a webhook, with Stripe).
    Processing {
        reference: String,
    },
    Declined {
        reference: Option<String>,
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Worth retrying later (network, provider 5xx, rate limit).
    #[error("payment provider temporarily unavailable: {0}")]
    Transient(String),
    /// Retrying cannot help (bad request, bad credentials).
    #[error("payment provider refused the request: {0}")]
    Permanent(String),
}

/// A payment provider (Stripe, or the project's Stripe-compatible fake behind the same client).
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError>;

    /// Refunds the charge `request.payment_reference`; returns the provider's refund id.
    async fn refund(&self, request: &RefundRequest) -> Result<String, GatewayError>;

    /// Cancels a charge that has not succeeded (e.g. one stuck in processing).
    async fn cancel(&self, reference: &str, idempotency_key: &str) -> Result<(), GatewayError>;
}

/// What a provider says about a charge (from a webhook), in the order of "progress": a status
/// is only applied if it moves the charge forward (`PaymentRecords::apply_update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    Processing,
    Failed { code: String, message: String },
    Canceled,
    Succeeded,
}

impl ProviderStatus {
    /// Progress rank: a charge never moves to a lower rank. A failed or canceled charge may
    /// still succeed later (it is then refunded if the order is gone); nothing follows success.
    pub fn rank(&self) -> u8 {
        match self {
            ProviderStatus::Processing => 1,
            ProviderStatus::Failed { .. } | ProviderStatus::Canceled => 2,
            ProviderStatus::Succeeded => 3,
        }
    }
}

/// A provider's news about one charge, routed by its reference, with the order named in the
/// charge's metadata as fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentUpdate {
    pub reference: String,
    pub status: ProviderStatus,
    /// `metadata.order_id` and `metadata.attempt` of the charge, when present.
    pub order_hint: Option<(OrderId, u32)>,
    pub correlation_hint: Option<CorrelationId>,
}

/// A charge as the payment role's records hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCharge {
    pub reference: Option<String>,
    pub status: ProviderStatus,
}

/// The charge an update was applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedUpdate {
    pub order_id: OrderId,
    pub attempt: u32,
    pub correlation_id: CorrelationId,
}

/// Held by the payment role from a charge call until its outcome is recorded (or the attempt is
/// given up). While it lives, a provider update about this charge that overtakes the call's
/// answer (a webhook often does) can wait for the answer's record instead of being written down
/// on its own. Dropping it ends the registration.
pub struct ChargeInFlight(#[allow(dead_code)] Option<Box<dyn Send + Sync>>);

impl ChargeInFlight {
    /// Nothing is tracked (records that do not care).
    pub fn untracked() -> Self {
        Self(None)
    }

    /// Tracked until `guard` is dropped.
    pub fn tracked(guard: impl Send + Sync + 'static) -> Self {
        Self(Some(Box::new(guard)))
    }
}

/// The payment role's record of charges: makes handling `payment.requested.v1` idempotent and
/// keeps each charge's status from regressing.
#[async_trait]
pub trait PaymentRecords: Send + Sync + 'static {
    /// A charge call for this order and attempt is about to start (see `ChargeInFlight`).
    fn charging(&self, _order_id: OrderId, _attempt: u32) -> ChargeInFlight {
        ChargeInFlight::untracked()
    }

    /// Whether an outcome is already recorded for this order and attempt.
    async fn is_recorded(&self, order_id: OrderId, attempt: u32) -> Result<bool, StoreError>;

    /// The charge recorded for this order and attempt as it stands now (webhooks included):
    /// a repeated request (a saga re-sending after its answer was lost) is answered from it.
    async fn recorded_charge(
        &self,
        order_id: OrderId,
        attempt: u32,
    ) -> Result<Option<RecordedCharge>, StoreError>;

    /// Records the outcome with the messages `messages` derives from it (called only when the
    /// record is new, inside the transaction); a second record of the same attempt is a no-op
    /// that returns `false`.
    async fn record(
        &self,
        order_id: OrderId,
        attempt: u32,
        correlation_id: &CorrelationId,
        outcome: &ChargeOutcome,
        messages: ChargeMessages,
    ) -> Result<bool, StoreError>;

    /// Applies a provider update if it moves the charge forward, with the messages derived
    /// from it (`messages` is called only when the update applies, inside the transaction).
    /// `None`: unknown charge, duplicate, or a regression (nothing written).
    async fn apply_update(
        &self,
        update: &PaymentUpdate,
        messages: OutcomeMessages<'_, AppliedUpdate>,
    ) -> Result<Option<AppliedUpdate>, StoreError>;

    /// Whether this charge was refunded already.
    async fn is_refunded(&self, reference: &str) -> Result<bool, StoreError>;

    /// Records a refund with its messages; `false` if it was recorded before.
    async fn record_refund(
        &self,
        order_id: OrderId,
        reference: &str,
        refund_id: &str,
        outbox: &[Envelope],
    ) -> Result<bool, StoreError>;
}

/// The source of "now", injectable so tests can control time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// A clock that stands still until told to move: for tests and benchmarks, where "now" must be
/// exact and a deadline must pass only when the test says so.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn at(now: DateTime<Utc>) -> Self {
        Self(std::sync::Mutex::new(now))
    }

    /// Moves the clock to `now` (forwards or back).
    pub fn set(&self, now: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
