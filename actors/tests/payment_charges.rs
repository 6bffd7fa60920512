//! The payment service's answer to `payment.requested.v1`: one charge per order and attempt,
//! recorded with the messages it implies, and the failure-streak alert raised by declines.
//! Provider updates are in `payment_updates.rs`, refunds in `payment_refunds.rs`.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use actors::domain::{CorrelationId, OrderId};
use actors::events::{PaymentFailureStreak, subjects};
use actors::payments::PaymentError;
use actors::ports::{ChargeOutcome, GatewayError, ProviderStatus, StoreError};
use actors::saga::SagaEvent;

use common::payments::{
    FakeGateway, charge_declined, charge_processing, charge_succeeded, hinted_update,
    payment_requested, payments, payments_with_streak, provider_failed, update,
};
use common::{card, eur, order_created, pending, succeeded};

#[tokio::test]
async fn a_successful_charge_emits_payment_succeeded_alone() {
    let p = payments(vec![charge_succeeded("pi_1")]);
    let id = OrderId::new();
    let request = payment_requested(id, 1);

    p.on_message(&request).await;

    let charges = p.gateway.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].order_id, id);
    assert_eq!(charges[0].correlation_id, request.correlation_id);
    assert_eq!(charges[0].amount, eur(1000));
    assert_eq!(charges[0].payment_method, card());
    assert_eq!(
        charges[0].idempotency_key,
        format!("ordersaga-{id}-payment-1")
    );
    assert_eq!(charges[0].attempt, 1);

    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_SUCCEEDED]);
    let outbox = p.records.outbox();
    assert!(
        outbox
            .iter()
            .all(|e| e.order_id == id && e.correlation_id == request.correlation_id)
    );
    assert_eq!(
        SagaEvent::from_body(&outbox[0].body),
        Some(succeeded("pi_1"))
    );
    assert_eq!(p.records.record_of(id, 1), charge_succeeded("pi_1").ok());
    assert_eq!(
        p.records.charge(id, 1).map(|c| c.correlation_id),
        Some(request.correlation_id.clone()),
        "the record keeps the correlation id for later provider updates"
    );
}

#[tokio::test]
async fn a_charge_still_processing_emits_only_payment_pending() {
    let p = payments(vec![Ok(ChargeOutcome::Processing {
        reference: "pi_2".into(),
    })]);
    let id = OrderId::new();

    p.on_message(&payment_requested(id, 1)).await;

    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_PENDING]);
    assert_eq!(
        SagaEvent::from_body(&p.records.outbox()[0].body),
        Some(pending("pi_2"))
    );
}

#[tokio::test]
async fn a_declined_charge_emits_payment_failed_with_the_providers_code() {
    let p = payments(vec![charge_declined()]);
    let id = OrderId::new();

    p.on_message(&payment_requested(id, 1)).await;

    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_FAILED]);
    assert_eq!(
        SagaEvent::from_body(&p.records.outbox()[0].body),
        Some(SagaEvent::PaymentFailed {
            reference: Some("pi_declined".into()),
            code: "card_declined".into(),
            message: "Your card was declined.".into(),
        })
    );
    assert_eq!(p.records.count(), 1);
}

#[tokio::test]
async fn a_redelivered_payment_request_does_not_charge_again() {
    let p = payments(vec![charge_succeeded("pi_1")]);
    let id = OrderId::new();
    let request = payment_requested(id, 1);

    p.on_message(&request).await;
    p.on_message(&request).await;

    assert_eq!(p.gateway.calls(), 1);
    assert_eq!(p.records.count(), 1);
    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_SUCCEEDED]);
}

#[tokio::test]
async fn a_fresh_first_delivery_is_charged_without_reading_the_records() {
    let p = payments(vec![charge_succeeded("pi_1")]);
    let request = payment_requested(OrderId::new(), 1);

    p.on_delivery(&request, true).await;

    assert_eq!(p.records.reads(), 0, "nothing can be recorded yet");
    assert_eq!(p.gateway.calls(), 1);
    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_SUCCEEDED]);
}

#[tokio::test]
async fn a_redelivery_reads_the_records_and_does_not_charge_again() {
    let p = payments(vec![charge_succeeded("pi_1")]);
    let request = payment_requested(OrderId::new(), 1);

    p.on_delivery(&request, true).await;
    p.on_delivery(&request, false).await;

    assert_eq!(p.records.reads(), 1);
    assert_eq!(p.gateway.calls(), 1);
    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_SUCCEEDED]);
}

#[tokio::test]
async fn a_duplicate_publication_reuses_the_idempotency_key_and_records_nothing_new() {
    // The same request published twice (each copy a first delivery): the provider is asked
    // twice under one key, so it answers with the charge it made; the record written first stands.
    let p = payments(vec![charge_succeeded("pi_1"), charge_succeeded("pi_1")]);
    let request = payment_requested(OrderId::new(), 1);

    p.on_delivery(&request, true).await;
    p.on_delivery(&request, true).await;

    assert_eq!(p.gateway.calls(), 2);
    assert_eq!(p.gateway.distinct_idempotency_keys(), 1);
    assert_eq!(p.records.count(), 1);
    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_SUCCEEDED],
        "one success reaches the saga"
    );
}

#[tokio::test]
async fn an_old_request_on_its_first_delivery_reads_the_records_first() {
    // Replayed long after it was made (a dead letter, say): the provider may have forgotten the
    // idempotency key by now, so only the records can tell it was charged.
    let p = payments(vec![charge_succeeded("pi_1")]);
    let mut request = payment_requested(OrderId::new(), 1);
    p.on_delivery(&request, true).await;

    request.occurred_at -= chrono::TimeDelta::hours(2);
    p.on_delivery(&request, true).await;

    assert_eq!(p.records.reads(), 1);
    assert_eq!(p.gateway.calls(), 1);
}

#[tokio::test]
async fn a_transient_gateway_error_is_returned_for_redelivery_without_recording() {
    let p = payments(vec![
        Err(GatewayError::Transient("503".into())),
        charge_succeeded("pi_1"),
    ]);
    let id = OrderId::new();
    let request = payment_requested(id, 1);

    let first = p.service.on_message(&request).await;
    assert_eq!(
        first,
        Err(PaymentError::Gateway(GatewayError::Transient("503".into())))
    );
    assert_eq!(p.records.count(), 0);
    assert!(p.records.outbox().is_empty());

    p.on_message(&request).await;

    assert_eq!(p.gateway.calls(), 2);
    assert_eq!(
        p.gateway.distinct_idempotency_keys(),
        1,
        "the retry reuses the key"
    );
    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_SUCCEEDED]);
}

#[tokio::test]
async fn a_permanent_gateway_error_fails_the_payment_with_payment_provider_error() {
    let p = payments(vec![Err(GatewayError::Permanent("invalid api key".into()))]);
    let id = OrderId::new();

    p.on_message(&payment_requested(id, 1)).await;

    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_FAILED]);
    assert_eq!(
        SagaEvent::from_body(&p.records.outbox()[0].body),
        Some(SagaEvent::PaymentFailed {
            reference: None,
            code: "payment_provider_error".into(),
            message: "invalid api key".into(),
        })
    );
    assert!(p.records.record_of(id, 1).is_some());
}

#[tokio::test]
async fn a_new_payment_attempt_gets_a_fresh_idempotency_key() {
    let p = payments(vec![charge_declined(), charge_succeeded("pi_2")]);
    let id = OrderId::new();

    p.on_message(&payment_requested(id, 1)).await;
    p.on_message(&payment_requested(id, 2)).await;

    let attempts: Vec<u32> = p.gateway.charges().iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, vec![1, 2]);
    assert_eq!(p.gateway.calls(), 2);
    assert_eq!(p.gateway.distinct_idempotency_keys(), 2);
    assert_eq!(p.records.count(), 2);
    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_FAILED, subjects::PAYMENT_SUCCEEDED]
    );
}

#[tokio::test]
async fn a_records_outage_fails_before_anything_is_charged() {
    let p = payments(vec![]);
    p.records.set_unavailable(true);

    let result = p
        .service
        .on_message(&payment_requested(OrderId::new(), 1))
        .await;

    assert!(
        matches!(result, Err(PaymentError::Store(StoreError::Unavailable(_)))),
        "{result:?}"
    );
    assert_eq!(p.gateway.calls(), 0);
}

#[tokio::test]
async fn messages_other_than_payment_requested_are_ignored_by_the_payment_role() {
    let p = payments(vec![]);

    p.on_message(&order_created(OrderId::new(), &[("SKU-A", 1)]))
        .await;

    assert_eq!(p.gateway.calls(), 0);
    assert!(p.records.outbox().is_empty());
}

// ------------------------------------------------------------------------------------------------
// Failure streak
// ------------------------------------------------------------------------------------------------

fn streak_alert(consecutive_failures: u32, last_code: &str) -> PaymentFailureStreak {
    PaymentFailureStreak {
        consecutive_failures,
        threshold: 3,
        last_code: last_code.into(),
    }
}

#[tokio::test]
async fn three_declines_in_a_row_put_exactly_one_streak_alert_in_the_outbox_with_the_third() {
    let p = payments_with_streak(
        FakeGateway::scripted(vec![
            charge_declined(),
            charge_declined(),
            charge_declined(),
        ]),
        3,
    );
    let ids = [OrderId::new(), OrderId::new(), OrderId::new()];

    for id in &ids[..2] {
        p.on_message(&payment_requested(*id, 1)).await;
    }
    assert!(
        p.records.streak_alerts().is_empty(),
        "no alert below the threshold"
    );
    let third = payment_requested(ids[2], 1);
    p.on_message(&third).await;

    assert_eq!(
        p.records.streak_alerts(),
        vec![(ids[2], streak_alert(3, "card_declined"))]
    );
    assert_eq!(
        p.records.subjects(),
        vec![
            subjects::PAYMENT_FAILED,
            subjects::PAYMENT_FAILED,
            subjects::PAYMENT_FAILED,
            subjects::PAYMENT_FAILURE_STREAK
        ],
        "the alert is committed with the third failure"
    );
    let outbox = p.records.outbox();
    assert_eq!(outbox[3].correlation_id, third.correlation_id);
    assert_eq!(p.service.streak().current(), 3);
}

#[tokio::test]
async fn a_redelivered_decline_is_not_counted_twice_in_the_streak() {
    let p = payments_with_streak(FakeGateway::scripted(vec![charge_declined()]), 3);
    let request = payment_requested(OrderId::new(), 1);

    p.on_message(&request).await;
    p.on_message(&request).await;
    p.on_message(&request).await;

    assert_eq!(p.gateway.calls(), 1);
    assert_eq!(p.service.streak().current(), 1);
    assert!(p.records.streak_alerts().is_empty());
}

#[tokio::test]
async fn a_success_between_declines_resets_the_failure_streak() {
    let p = payments_with_streak(
        FakeGateway::scripted(vec![
            charge_declined(),
            charge_declined(),
            charge_succeeded("pi_ok"),
            charge_declined(),
            charge_declined(),
            charge_declined(),
        ]),
        3,
    );
    let ids: Vec<OrderId> = (0..6).map(|_| OrderId::new()).collect();

    for id in &ids[..5] {
        p.on_message(&payment_requested(*id, 1)).await;
    }
    assert!(
        p.records.streak_alerts().is_empty(),
        "four failures, but never three in a row"
    );
    assert_eq!(p.service.streak().current(), 2);

    p.on_message(&payment_requested(ids[5], 1)).await;
    assert_eq!(
        p.records.streak_alerts(),
        vec![(ids[5], streak_alert(3, "card_declined"))]
    );
}

#[tokio::test]
async fn a_charge_still_processing_neither_counts_nor_resets_the_streak() {
    let p = payments_with_streak(
        FakeGateway::scripted(vec![
            charge_declined(),
            charge_declined(),
            charge_processing("pi_slow"),
            charge_declined(),
        ]),
        3,
    );
    let ids: Vec<OrderId> = (0..4).map(|_| OrderId::new()).collect();

    for id in &ids {
        p.on_message(&payment_requested(*id, 1)).await;
    }

    assert_eq!(
        p.records.streak_alerts(),
        vec![(ids[3], streak_alert(3, "card_declined"))]
    );
}

#[tokio::test]
async fn failed_provider_updates_count_towards_the_streak_cancellations_do_not_and_a_success_resets_it()
 {
    let p = payments_with_streak(
        FakeGateway::scripted(vec![
            charge_declined(),
            charge_processing("pi_a"),
            charge_processing("pi_b"),
            charge_processing("pi_c"),
        ]),
        3,
    );
    let ids: Vec<OrderId> = (0..4).map(|_| OrderId::new()).collect();
    for id in &ids {
        p.on_message(&payment_requested(*id, 1)).await;
    }

    // Decline at charge time, then a failure reported by the provider: two in a row.
    p.on_update(&update("pi_a", provider_failed())).await;
    assert_eq!(p.service.streak().current(), 2);
    // A canceled charge is neither a failure nor a success: the streak stands.
    p.on_update(&update("pi_c", ProviderStatus::Canceled)).await;
    assert_eq!(p.service.streak().current(), 2);
    // A success reported by the provider ends the streak.
    p.on_update(&update("pi_b", ProviderStatus::Succeeded))
        .await;
    assert_eq!(p.service.streak().current(), 0);
    assert!(p.records.streak_alerts().is_empty());
}

#[tokio::test]
async fn the_third_failure_reported_by_the_provider_raises_the_alert_on_its_order() {
    let p = payments_with_streak(
        FakeGateway::scripted(vec![charge_declined(), charge_declined()]),
        3,
    );
    p.on_message(&payment_requested(OrderId::new(), 1)).await;
    p.on_message(&payment_requested(OrderId::new(), 1)).await;
    let late = OrderId::new();
    let correlation = CorrelationId::new();

    let applied = p
        .on_update(&hinted_update(
            "pi_late",
            ProviderStatus::Failed {
                code: "expired_card".into(),
                message: "Your card has expired.".into(),
            },
            late,
            1,
            &correlation,
        ))
        .await;

    assert!(applied.is_some());
    assert_eq!(
        p.records.streak_alerts(),
        vec![(late, streak_alert(3, "expired_card"))]
    );
    let alert = p
        .records
        .outbox()
        .into_iter()
        .find(|e| e.subject() == subjects::PAYMENT_FAILURE_STREAK)
        .expect("no alert");
    assert_eq!(alert.correlation_id, correlation);
}

#[tokio::test]
async fn a_decline_whose_record_failed_is_counted_once_when_redelivered() {
    let p = payments_with_streak(
        FakeGateway::scripted(vec![
            charge_declined(),
            charge_declined(),
            charge_declined(),
            // The provider replays its answer for the redelivered request (same key).
            charge_declined(),
        ]),
        3,
    );
    p.on_message(&payment_requested(OrderId::new(), 1)).await;
    p.on_message(&payment_requested(OrderId::new(), 1)).await;
    let third = payment_requested(OrderId::new(), 1);

    p.records.fail_next_record();
    let failed = p.service.on_message(&third).await;
    assert!(
        matches!(failed, Err(PaymentError::Store(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    p.on_message(&third).await;

    assert_eq!(p.service.streak().current(), 3, "three payments failed");
    assert_eq!(
        p.records.streak_alerts(),
        vec![(third.order_id, streak_alert(3, "card_declined"))],
        "three failures in a row must raise the alert once"
    );
}

#[tokio::test]
async fn a_decline_already_reported_by_the_provider_is_not_counted_again() {
    let p = payments_with_streak(FakeGateway::scripted(vec![charge_declined()]), 3);
    let request = payment_requested(OrderId::new(), 1);
    // The provider's webhook for this charge lands while the charge call is still in flight:
    // it records the failure (one failure counted) after our `is_recorded` check.
    let applied = p
        .on_update(&hinted_update(
            "pi_declined",
            provider_failed(),
            request.order_id,
            1,
            &request.correlation_id,
        ))
        .await;
    assert!(applied.is_some());
    p.records.hide_next_is_recorded();

    p.on_message(&request).await;

    assert_eq!(p.gateway.calls(), 1);
    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_FAILED],
        "the charge's own answer adds nothing"
    );
    assert_eq!(p.service.streak().current(), 1, "one payment failed");
}
