//! The postman hands charges to the payment role a bounded number at once, counts every command
//! until it is answered, and never hands the same command over twice while it is in flight.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use actors::ports::ManualClock;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actors::domain::OrderId;
use actors::payments::PaymentService;
use actors::ports::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, RefundRequest};
use actors::postman::Postman;
use async_trait::async_trait;
use tokio::sync::Semaphore;

use common::payments::{InMemoryPaymentRecords, payment_requested};
use common::{eventually, t0};

/// A provider whose charges wait until the test lets them through, counting how many it holds
/// at once.
struct HeldGateway {
    release: Semaphore,
    holding: AtomicUsize,
    most_held: AtomicUsize,
    calls: AtomicUsize,
}

#[async_trait]
impl PaymentGateway for HeldGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.holding.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_held.fetch_max(now, Ordering::SeqCst);
        let permit = self.release.acquire().await;
        drop(permit);
        self.holding.fetch_sub(1, Ordering::SeqCst);
        Ok(ChargeOutcome::Succeeded {
            reference: format!("pi_{}", request.order_id),
        })
    }

    async fn refund(&self, _: &RefundRequest) -> Result<String, GatewayError> {
        Err(GatewayError::Permanent("no refunds here".into()))
    }

    async fn cancel(&self, _: &str, _: &str) -> Result<(), GatewayError> {
        Ok(())
    }
}

#[tokio::test]
async fn charges_go_to_the_payment_role_a_bounded_number_at_once_and_each_command_once() {
    let gateway = Arc::new(HeldGateway {
        release: Semaphore::new(0),
        holding: AtomicUsize::new(0),
        most_held: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    });
    let service = PaymentService::new(
        gateway.clone(),
        Arc::new(InMemoryPaymentRecords::default()),
        Arc::new(ManualClock::at(t0())),
    );
    let postman = Postman::new(3, 2);
    postman.serve_payments(service);

    let commands: Vec<_> = (0..5)
        .map(|_| payment_requested(OrderId::new(), 1))
        .collect();
    postman.dispatch(&commands, true);
    // A re-send that overtakes the first answer is not handed over again.
    postman.dispatch(&commands[..1], false);

    eventually("two charges held by the provider", || {
        std::future::ready(gateway.holding.load(Ordering::SeqCst) == 2)
    })
    .await;
    assert_eq!(postman.in_flight(), 5, "waiting charges count as in flight");
    assert!(postman.saturated(), "5 in flight is over the bound of 3");

    gateway.release.add_permits(5);
    eventually("every charge answered", || {
        std::future::ready(postman.in_flight() == 0)
    })
    .await;
    assert_eq!(gateway.most_held.load(Ordering::SeqCst), 2);
    assert_eq!(
        gateway.calls.load(Ordering::SeqCst),
        5,
        "one call per order"
    );
    assert!(!postman.saturated());
}
