//! `payment.refund_requested.v1` → exactly one refund per charge, announced by
//! `payment.refunded.v1`.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use actors::domain::OrderId;
use actors::events::{EventBody, PaymentRefunded, subjects};
use actors::payments::PaymentError;
use actors::ports::{GatewayError, StoreError};
use actors::saga::SagaEvent;

use common::payments::{FakeGateway, Payments, payments_with_streak, refund_requested};

fn refunds(results: Vec<Result<String, GatewayError>>) -> Payments {
    payments_with_streak(FakeGateway::scripted(vec![]).with_refunds(results), 5)
}

#[tokio::test]
async fn a_refund_request_refunds_the_charge_once_and_emits_payment_refunded() {
    let p = refunds(vec![Ok("re_1".into())]);
    let id = OrderId::new();
    let request = refund_requested(id, "pi_1");

    p.on_message(&request).await;

    let calls = p.gateway.refunds();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].order_id, id);
    assert_eq!(calls[0].payment_reference, "pi_1");
    assert_eq!(
        calls[0].idempotency_key,
        format!("ordersaga-{id}-refund-pi_1")
    );
    assert_eq!(
        p.gateway.cancel_calls(),
        0,
        "a succeeded charge is refunded"
    );

    let outbox = p.records.outbox();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].order_id, id);
    assert_eq!(outbox[0].correlation_id, request.correlation_id);
    assert_eq!(
        outbox[0].body,
        EventBody::PaymentRefunded(PaymentRefunded {
            payment_reference: "pi_1".into(),
            refund_id: "re_1".into(),
        })
    );
    assert_eq!(
        SagaEvent::from_body(&outbox[0].body),
        Some(SagaEvent::PaymentRefunded {
            reference: "pi_1".into(),
            refund_id: "re_1".into(),
        })
    );
    assert_eq!(p.records.refund_of("pi_1"), Some((id, "re_1".to_owned())));
}

#[tokio::test]
async fn a_redelivered_refund_request_does_not_refund_again() {
    // A second refund call would exhaust the script and fail the test.
    let p = refunds(vec![Ok("re_1".into())]);
    let id = OrderId::new();
    let request = refund_requested(id, "pi_1");

    p.on_message(&request).await;
    p.on_message(&request).await;
    p.on_message(&refund_requested(id, "pi_1")).await;

    assert_eq!(p.gateway.refund_calls(), 1);
    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_REFUNDED]);
}

#[tokio::test]
async fn a_permanent_refund_error_is_acknowledged_and_records_nothing() {
    let p = refunds(vec![Err(GatewayError::Permanent(
        "charge_already_refunded".into(),
    ))]);
    let id = OrderId::new();

    let result = p.service.on_message(&refund_requested(id, "pi_1")).await;

    assert_eq!(result, Ok(()), "redelivering cannot help");
    assert_eq!(p.gateway.refund_calls(), 1);
    assert_eq!(p.records.refund_of("pi_1"), None);
    assert!(p.records.outbox().is_empty());
}

#[tokio::test]
async fn a_transient_refund_error_is_returned_and_the_retry_reuses_the_idempotency_key() {
    let p = refunds(vec![
        Err(GatewayError::Transient("503".into())),
        Ok("re_1".into()),
    ]);
    let id = OrderId::new();
    let request = refund_requested(id, "pi_1");

    let first = p.service.on_message(&request).await;
    assert_eq!(
        first,
        Err(PaymentError::Gateway(GatewayError::Transient("503".into())))
    );
    assert_eq!(p.records.refund_of("pi_1"), None);
    assert!(p.records.outbox().is_empty());

    p.on_message(&request).await;

    let keys: Vec<String> = p
        .gateway
        .refunds()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the retry cannot refund twice");
    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_REFUNDED]);
}

#[tokio::test]
async fn a_records_outage_fails_before_anything_is_refunded() {
    let p = refunds(vec![]);
    p.records.set_unavailable(true);

    let result = p
        .service
        .on_message(&refund_requested(OrderId::new(), "pi_1"))
        .await;

    assert!(
        matches!(result, Err(PaymentError::Store(StoreError::Unavailable(_)))),
        "{result:?}"
    );
    assert_eq!(p.gateway.refund_calls(), 0);
}
