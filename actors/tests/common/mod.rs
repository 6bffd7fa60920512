//! What the actor tests share: in-memory implementations of the ports (one file per port
//! family), harnesses that wire them to the actors, and small builders for domain values.
//!
//! Every test file declares `mod common;` and uses only part of it, hence the
//! `#[allow(dead_code)]` on those declarations.

pub mod ledger;
pub mod orders;
pub mod payments;
pub mod snapshots;

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actors::domain::{
    CorrelationId, Currency, CustomerId, Money, OrderId, PaymentMethod, PricedLine, Quantity, Sku,
};
use actors::events::{Envelope, EventBody, OrderCreated, Shortage};
use actors::ports::StoreError;
use actors::saga::{NewOrder, SagaEvent};
use chrono::{DateTime, TimeZone, Utc};
use tokio::time::Instant;

/// Upper bound on anything a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn unavailable() -> StoreError {
    StoreError::Unavailable("the fake store is switched off".into())
}

pub fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0)
        .single()
        .expect("valid timestamp")
}

/// Polls `check` until it holds, failing the test after a deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Builders
// ------------------------------------------------------------------------------------------------

pub fn sku(raw: &str) -> Sku {
    Sku::parse(raw).unwrap()
}

pub fn quantity(n: i64) -> Quantity {
    Quantity::try_from(n).unwrap()
}

pub fn eur(cents: i64) -> Money {
    let eur = Currency::parse("EUR").unwrap();
    Money::new(cents, eur).unwrap()
}

pub fn card() -> PaymentMethod {
    PaymentMethod::parse("pm_card_visa").unwrap()
}

pub fn customer(raw: &str) -> CustomerId {
    CustomerId::parse(raw).unwrap()
}

pub fn priced(lines: &[(&str, i64)]) -> Vec<PricedLine> {
    lines
        .iter()
        .map(|(s, n)| PricedLine {
            sku: sku(s),
            quantity: quantity(*n),
            unit_price: eur(500),
        })
        .collect()
}

/// Two units of SKU-1 at 5.00 EUR, paid by card.
pub fn new_order() -> NewOrder {
    NewOrder {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        customer_id: customer("c-1"),
        lines: priced(&[("SKU-1", 2)]),
        amount: eur(1000),
        payment_method: card(),
    }
}

pub fn succeeded(reference: &str) -> SagaEvent {
    SagaEvent::PaymentSucceeded {
        reference: reference.into(),
    }
}

pub fn pending(reference: &str) -> SagaEvent {
    SagaEvent::PaymentPending {
        reference: reference.into(),
    }
}

pub fn out_of_stock() -> SagaEvent {
    SagaEvent::OutOfStock {
        shortages: vec![Shortage {
            sku: sku("SKU-1"),
            requested: 2,
            available: 0,
        }],
    }
}

pub fn envelope(order_id: OrderId, correlation_id: &CorrelationId, body: EventBody) -> Envelope {
    Envelope::new(order_id, correlation_id.clone(), t0(), body)
}

pub fn order_created(order_id: OrderId, lines: &[(&str, i64)]) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::OrderCreated(OrderCreated {
            customer_id: customer("c-1"),
            lines: priced(lines),
            amount: eur(1000),
        }),
    )
}
