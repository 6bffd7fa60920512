//! The messages that travel over NATS JetStream: one JSON envelope, versioned subjects.
//!
//! The subject of a message is its type (`order.created.v1`); a breaking change gets a new `.v2`
//! subject. Consumers park messages of types they do not know as dead letters, so they must
//! learn `.v2` before producers start sending it. Every envelope carries the order id, the
//! correlation id and a unique message id, which doubles as JetStream's `Nats-Msg-Id` dedup key.
//! Commands the saga sends (`payment.requested.v1`, `inventory.release_requested.v1`) use the same
//! envelope; they are named as requests so they can never be mistaken for facts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{
    CorrelationId, CustomerId, Money, OrderId, OrderLine, PaymentMethod, PricedLine, Sku,
};

/// One message, as published and as consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub message_id: Uuid,
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Envelope {
    pub fn new(
        order_id: OrderId,
        correlation_id: CorrelationId,
        occurred_at: DateTime<Utc>,
        body: EventBody,
    ) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            order_id,
            correlation_id,
            occurred_at,
            body,
        }
    }

    pub fn subject(&self) -> &'static str {
        self.body.subject()
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data structs with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Every message type ordersaga knows, tagged by its subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EventBody {
    #[serde(rename = "order.created.v1")]
    OrderCreated(OrderCreated),
    #[serde(rename = "order.confirmed.v1")]
    OrderConfirmed(OrderConfirmed),
    #[serde(rename = "order.cancelled.v1")]
    OrderCancelled(OrderCancelled),
    #[serde(rename = "inventory.reserved.v1")]
    InventoryReserved(InventoryReserved),
    #[serde(rename = "inventory.out_of_stock.v1")]
    InventoryOutOfStock(InventoryOutOfStock),
    #[serde(rename = "inventory.released.v1")]
    InventoryReleased(InventoryReleased),
    #[serde(rename = "inventory.release_requested.v1")]
    InventoryReleaseRequested(InventoryReleaseRequested),
    #[serde(rename = "inventory.low_stock.v1")]
    InventoryLowStock(InventoryLowStock),
    #[serde(rename = "payment.requested.v1")]
    PaymentRequested(PaymentRequested),
    #[serde(rename = "payment.pending.v1")]
    PaymentPending(PaymentPending),
    #[serde(rename = "payment.succeeded.v1")]
    PaymentSucceeded(PaymentSucceeded),
    #[serde(rename = "payment.failed.v1")]
    PaymentFailed(PaymentFailed),
    #[serde(rename = "payment.canceled.v1")]
    PaymentCanceled(PaymentCanceled),
    #[serde(rename = "payment.refund_requested.v1")]
    PaymentRefundRequested(PaymentRefundRequested),
    #[serde(rename = "payment.refunded.v1")]
    PaymentRefunded(PaymentRefunded),
    #[serde(rename = "payment.cancel_requested.v1")]
    PaymentCancelRequested(PaymentCancelRequested),
    #[serde(rename = "payment.failure_streak.v1")]
    PaymentFailureStreak(PaymentFailureStreak),
}

impl EventBody {
    pub fn subject(&self) -> &'static str {
        match self {
            EventBody::OrderCreated(_) => subjects::ORDER_CREATED,
            EventBody::OrderConfirmed(_) => subjects::ORDER_CONFIRMED,
            EventBody::OrderCancelled(_) => subjects::ORDER_CANCELLED,
            EventBody::InventoryReserved(_) => subjects::INVENTORY_RESERVED,
            EventBody::InventoryOutOfStock(_) => subjects::INVENTORY_OUT_OF_STOCK,
            EventBody::InventoryReleased(_) => subjects::INVENTORY_RELEASED,
            EventBody::InventoryReleaseRequested(_) => subjects::INVENTORY_RELEASE_REQUESTED,
            EventBody::InventoryLowStock(_) => subjects::INVENTORY_LOW_STOCK,
            EventBody::PaymentRequested(_) => subjects::PAYMENT_REQUESTED,
            EventBody::PaymentPending(_) => subjects::PAYMENT_PENDING,
            EventBody::PaymentSucceeded(_) => subjects::PAYMENT_SUCCEEDED,
            EventBody::PaymentFailed(_) => subjects::PAYMENT_FAILED,
            EventBody::PaymentCanceled(_) => subjects::PAYMENT_CANCELED,
            EventBody::PaymentRefundRequested(_) => subjects::PAYMENT_REFUND_REQUESTED,
            EventBody::PaymentRefunded(_) => subjects::PAYMENT_REFUNDED,
            EventBody::PaymentCancelRequested(_) => subjects::PAYMENT_CANCEL_REQUESTED,
            EventBody::PaymentFailureStreak(_) => subjects::PAYMENT_FAILURE_STREAK,
        }
    }
}

/// Subject names, in one place so adapters, docs and tests agree.
pub mod subjects {
    pub const ORDER_CREATED: &str = "order.created.v1";
    pub const ORDER_CONFIRMED: &str = "order.confirmed.v1";
    pub const ORDER_CANCELLED: &str = "order.cancelled.v1";
    pub const INVENTORY_RESERVED: &str = "inventory.reserved.v1";
    pub const INVENTORY_OUT_OF_STOCK: &str = "inventory.out_of_stock.v1";
    pub const INVENTORY_RELEASED: &str = "inventory.released.v1";
    pub const INVENTORY_RELEASE_REQUESTED: &str = "inventory.release_requested.v1";
    pub const INVENTORY_LOW_STOCK: &str = "inventory.low_stock.v1";
    pub const PAYMENT_REQUESTED: &str = "payment.requested.v1";
    pub const PAYMENT_PENDING: &str = "payment.pending.v1";
    pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded.v1";
    pub const PAYMENT_FAILED: &str = "payment.failed.v1";
    pub const PAYMENT_CANCELED: &str = "payment.canceled.v1";
    pub const PAYMENT_REFUND_REQUESTED: &str = "payment.refund_requested.v1";
    pub const PAYMENT_REFUNDED: &str = "payment.refunded.v1";
    pub const PAYMENT_CANCEL_REQUESTED: &str = "payment.cancel_requested.v1";
    pub const PAYMENT_FAILURE_STREAK: &str = "payment.failure_streak.v1";
}

/// The order exists and is priced; inventory reserves its lines in response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub customer_id: CustomerId,
    pub lines: Vec<PricedLine>,
    pub amount: Money,
}

impl OrderCreated {
    pub fn order_lines(&self) -> Vec<OrderLine> {
        self.lines
            .iter()
            .map(|l| OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
            })
            .collect()
    }
}

/// Payment succeeded: the order is COMPLETED and inventory commits the reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub amount: Money,
    pub payment_reference: Option<String>,
    /// The order's SKUs (see [`routing_skus`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skus: Vec<Sku>,
}

/// The order is CANCELLED; inventory releases anything still reserved for it (a no-op normally,
/// a safety net for reservations that arrive late).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub reason: String,
    /// The order's SKUs (see [`routing_skus`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skus: Vec<Sku>,
}

/// The SKU whose shard (and, with several instances, whose partition's owner) takes an inventory
/// command: the smallest SKU it concerns, so an order's reservation, commit and release all go
/// to the same place. `None` for a message that is not an inventory command, or names no SKU.
pub fn routing_sku(body: &EventBody) -> Option<&Sku> {
    match body {
        EventBody::OrderCreated(created) => created.lines.iter().map(|l| &l.sku).min(),
        EventBody::OrderConfirmed(e) => e.skus.iter().min(),
        EventBody::OrderCancelled(e) => e.skus.iter().min(),
        EventBody::InventoryReleaseRequested(e) => e.skus.iter().min(),
        _ => None,
    }
}

/// The SKUs a saga message about an order's stock carries: its lines' SKUs, sorted, once each.
/// They let inventory send a commit or release to the shard that took the reservation (the one
/// owning the smallest SKU) instead of one picked by the order id, where it would lock
/// `products` rows that another shard's batches hold.
pub fn routing_skus(lines: &[PricedLine]) -> Vec<Sku> {
    let mut skus: Vec<Sku> = lines.iter().map(|l| l.sku.clone()).collect();
    skus.sort();
    skus.dedup();
    skus
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReserved {
    pub lines: Vec<OrderLine>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortage {
    pub sku: Sku,
    pub requested: u32,
    /// Units that were available when the reservation was refused (0 for an unknown SKU).
    pub available: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryOutOfStock {
    pub shortages: Vec<Shortage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleased {
    pub reason: String,
}

/// A reservation took a product's available stock down to its low-stock threshold (published
/// once per crossing: a restock above the threshold re-arms it). The envelope's order is the one
/// whose reservation crossed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryLowStock {
    pub sku: Sku,
    /// Units still available (on hand minus reserved) after the reservation.
    pub available: i64,
    pub threshold: i64,
}

/// The saga asks inventory to give an order's reserved units back (compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleaseRequested {
    pub reason: String,
    /// The order's SKUs (see [`routing_skus`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skus: Vec<Sku>,
}

/// The saga asks the payment role to charge the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRequested {
    pub amount: Money,
    pub payment_method: PaymentMethod,
    /// 1 for the first attempt. Part of the provider idempotency key, so a retried message
    /// reuses the key (no double charge) while a deliberate new attempt gets a fresh one.
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentPending {
    pub payment_reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub payment_reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub payment_reference: Option<String>,
    pub code: String,
    pub message: String,
}

/// The provider canceled the charge (e.g. it stayed in processing and was canceled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCanceled {
    pub payment_reference: String,
}

/// The saga asks the payment role to give back money taken for an order it will not fulfil.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefundRequested {
    pub payment_reference: String,
    pub amount: Money,
}

/// The saga gave up on the payment (timeout, expired reservation): cancel the charge if it has
/// not succeeded. A success that still happens is refunded through the late-payment path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCancelRequested {
    /// `None` if the charge's id is not known yet: nothing can be canceled then, and a charge
    /// that still happens is refunded through the late-payment path.
    pub payment_reference: Option<String>,
    pub attempt: u32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_reference: String,
    pub refund_id: String,
}

/// Alert: this many payments failed in a row (the order id is that of the last failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailureStreak {
    pub consecutive_failures: u32,
    pub threshold: u32,
    pub last_code: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settlement_published_before_messages_named_their_skus_still_decodes_without_them() {
        let old = br#"{
            "message_id": "01a21c81-6634-7c08-9d3e-61b2f0a7e5c4",
            "order_id": "01a21c81-65ae-7d55-b9c4-7e0f2a6d93c8",
            "correlation_id": "c-1",
            "occurred_at": "2026-11-27T10:16:12Z",
            "type": "order.confirmed.v1",
            "data": {
                "amount": { "amount_cents": 1000, "currency": "EUR" },
                "payment_reference": "pi_1"
            }
        }"#;
        let env = Envelope::from_json(old).unwrap();
        let EventBody::OrderConfirmed(confirmed) = &env.body else {
            panic!("not order.confirmed.v1: {:?}", env.body);
        };
        assert!(confirmed.skus.is_empty());
        let json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        assert!(
            json["data"].get("skus").is_none(),
            "no empty list is written"
        );
    }

    #[test]
    fn envelopes_round_trip_and_carry_their_type_as_subject() {
        let env = Envelope::new(
            OrderId::new(),
            CorrelationId::new(),
            Utc::now(),
            EventBody::OrderCancelled(OrderCancelled {
                reason: "out_of_stock".into(),
                skus: vec![Sku::parse("SKU-1").unwrap()],
            }),
        );
        let json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(json["type"], "order.cancelled.v1");
        assert_eq!(json["data"]["reason"], "out_of_stock");
        assert_eq!(json["data"]["skus"], serde_json::json!(["SKU-1"]));
        assert_eq!(json["order_id"], env.order_id.to_string());
        let back = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.subject(), "order.cancelled.v1");
    }

    #[test]
    fn unknown_types_are_refused_not_misread() {
        let raw = br#"{"message_id":"0190b6e4-2b7c-7cc4-9a4e-0d5d1f2f6a11","order_id":"0190b6e4-2b7c-7cc4-9a4e-0d5d1f2f6a11","correlation_id":"c","occurred_at":"2026-01-01T00:00:00Z","type":"order.exploded.v1","data":{}}"#;
        assert!(Envelope::from_json(raw).is_err());
    }
}
