//! What a saga remembers about its order. This struct is the snapshot persisted in Postgres
//! (as JSONB) after every transition, so every field must be serialisable and self-describing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{CorrelationId, CustomerId, Money, OrderId, PaymentMethod, PricedLine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    StockReserved,
    PaymentProcessing,
    Completed,
    Cancelled,
}

impl OrderStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Completed | OrderStatus::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::StockReserved => "STOCK_RESERVED",
            OrderStatus::PaymentProcessing => "PAYMENT_PROCESSING",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }
}

/// One line of the order's history: every transition appends one, never rewrites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub at: DateTime<Utc>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Requested,
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailure {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentInfo {
    pub status: PaymentStatus,
    pub attempt: u32,
    /// The provider's id for the charge (a PaymentIntent id with Stripe).
    pub reference: Option<String>,
    pub failure: Option<PaymentFailure>,
}

/// The saga is undoing its work: stock is being released. The order becomes CANCELLED only when
/// inventory confirms the release, so CANCELLED always means "the units are back on sale".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compensation {
    pub reason: String,
    pub started_at: DateTime<Utc>,
}

/// A payment that succeeded after the order was cancelled (or while it was being cancelled).
/// Money was taken for an order we will not fulfil: the saga asks for a refund and records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatePayment {
    pub reference: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub refund_id: Option<String>,
    #[serde(default)]
    pub refunded_at: Option<DateTime<Utc>>,
}

/// How long each step may take before the saga gives up on it. Stored in every snapshot, so an
/// order keeps the limits it was placed with even if the configuration changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTimeouts {
    /// From placement until inventory answers (reserved or out of stock), and for inventory to
    /// confirm a release during compensation.
    pub inventory_ms: u64,
    /// From the reservation until the payment's outcome is known.
    pub payment_ms: u64,
}

impl Default for StepTimeouts {
    fn default() -> Self {
        Self {
            inventory_ms: 30_000,
            payment_ms: 60_000,
        }
    }
}

impl StepTimeouts {
    pub fn inventory(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(i64::try_from(self.inventory_ms).unwrap_or(i64::MAX / 2))
    }

    pub fn payment(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(i64::try_from(self.payment_ms).unwrap_or(i64::MAX / 2))
    }
}

/// Everything needed to place an order, already parsed and priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub customer_id: CustomerId,
    pub lines: Vec<PricedLine>,
    pub amount: Money,
    pub payment_method: PaymentMethod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub customer_id: CustomerId,
    pub lines: Vec<PricedLine>,
    pub amount: Money,
    pub payment_method: PaymentMethod,
    pub status: OrderStatus,
    /// Incremented by every transition; the snapshot store refuses a write whose expected version
    /// is stale, so two processes can never both advance one order.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub payment: Option<PaymentInfo>,
    pub compensation: Option<Compensation>,
    pub cancel_reason: Option<String>,
    pub late_payment: Option<LatePayment>,
    pub history: Vec<HistoryEntry>,
    #[serde(default)]
    pub timeouts: StepTimeouts,
    /// When the current step times out (`None` once terminal, and while paused). Persisted, so
    /// a restart re-arms it.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// Set while an operator holds the saga (`None` almost always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Pause>,
}

/// An operator paused the saga: it takes no step and its deadline is held. Events that arrive
/// meanwhile are kept here, in the snapshot, and decided in arrival order on resume, so pausing
/// never loses a payment outcome or a stock release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub by: String,
    pub reason: String,
    pub at: DateTime<Utc>,
    /// What was left of the step's time when paused; the step gets it back on resume.
    pub remaining_ms: Option<i64>,
    /// Events received while paused, oldest first.
    #[serde(default)]
    pub held: Vec<crate::saga::SagaEvent>,
}

impl OrderState {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}
