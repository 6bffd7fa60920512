//! What the provider reports about a charge (Stripe webhooks) → payment events, applied only
//! when they move the charge forward: processing < failed = canceled < succeeded.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use actors::domain::{CorrelationId, OrderId};
use actors::events::subjects;
use actors::payments::PaymentError;
use actors::ports::{AppliedUpdate, ProviderStatus, StoreError};
use actors::saga::SagaEvent;

use common::payments::{
    ChargeStatus, charge_processing, hinted_update, payment_requested, payments, provider_failed,
    update,
};
use common::{pending, succeeded};

/// The saga's reading of everything in the payment outbox.
fn saga_events(p: &common::payments::Payments) -> Vec<Option<SagaEvent>> {
    p.records
        .outbox()
        .iter()
        .map(|e| SagaEvent::from_body(&e.body))
        .collect()
}

#[tokio::test]
async fn a_processing_then_a_succeeded_update_both_apply() {
    let p = payments(vec![]);
    let id = OrderId::new();
    let correlation = CorrelationId::new();
    let expected = Some(AppliedUpdate {
        order_id: id,
        attempt: 1,
        correlation_id: correlation.clone(),
    });

    let processing = hinted_update("pi_1", ProviderStatus::Processing, id, 1, &correlation);
    assert_eq!(p.on_update(&processing).await, expected);
    let done = hinted_update("pi_1", ProviderStatus::Succeeded, id, 1, &correlation);
    assert_eq!(p.on_update(&done).await, expected);

    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_PENDING, subjects::PAYMENT_SUCCEEDED]
    );
    assert_eq!(
        saga_events(&p),
        vec![Some(pending("pi_1")), Some(succeeded("pi_1"))]
    );
    assert!(
        p.records
            .outbox()
            .iter()
            .all(|e| e.order_id == id && e.correlation_id == correlation)
    );
    assert_eq!(
        p.records.charge(id, 1).map(|c| c.status),
        Some(ChargeStatus::Succeeded)
    );
}

#[tokio::test]
async fn a_processing_update_after_succeeded_is_ignored() {
    let p = payments(vec![]);
    let id = OrderId::new();
    let correlation = CorrelationId::new();
    let done = hinted_update("pi_1", ProviderStatus::Succeeded, id, 1, &correlation);
    assert!(p.on_update(&done).await.is_some());

    let late = hinted_update("pi_1", ProviderStatus::Processing, id, 1, &correlation);
    assert_eq!(p.on_update(&late).await, None);
    assert_eq!(p.on_update(&update("pi_1", provider_failed())).await, None);
    assert_eq!(
        p.on_update(&done).await,
        None,
        "a duplicate changes nothing"
    );

    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_SUCCEEDED]);
    assert_eq!(
        p.records.charge(id, 1).map(|c| c.status),
        Some(ChargeStatus::Succeeded)
    );
}

#[tokio::test]
async fn an_update_for_an_unknown_reference_without_a_hint_is_ignored() {
    let p = payments(vec![]);

    let applied = p
        .on_update(&update("pi_nobody", ProviderStatus::Succeeded))
        .await;

    assert_eq!(applied, None);
    assert_eq!(p.records.count(), 0, "nothing is invented");
    assert!(p.records.outbox().is_empty());
}

#[tokio::test]
async fn an_update_for_an_unknown_reference_with_a_hint_is_applied_to_the_hinted_order() {
    let p = payments(vec![]);
    let id = OrderId::new();
    let correlation = CorrelationId::new();

    let applied = p
        .on_update(&hinted_update(
            "pi_early",
            ProviderStatus::Succeeded,
            id,
            2,
            &correlation,
        ))
        .await;

    assert_eq!(
        applied,
        Some(AppliedUpdate {
            order_id: id,
            attempt: 2,
            correlation_id: correlation.clone(),
        })
    );
    let outbox = p.records.outbox();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].order_id, id);
    assert_eq!(outbox[0].correlation_id, correlation);
    assert_eq!(
        SagaEvent::from_body(&outbox[0].body),
        Some(succeeded("pi_early"))
    );
    let charge = p
        .records
        .charge(id, 2)
        .expect("no record for the hinted charge");
    assert_eq!(charge.reference.as_deref(), Some("pi_early"));
    assert_eq!(charge.status, ChargeStatus::Succeeded);

    // Later updates find the charge by its reference alone.
    assert_eq!(
        p.on_update(&update("pi_early", ProviderStatus::Processing))
            .await,
        None
    );
    // The charge's own request, arriving after the webhook, does not charge again.
    p.on_message(&payment_requested(id, 2)).await;
    assert_eq!(p.gateway.calls(), 0);
    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_SUCCEEDED]);
}

#[tokio::test]
async fn an_update_for_a_charge_recorded_at_charge_time_is_routed_by_its_reference() {
    let p = payments(vec![charge_processing("pi_1")]);
    let id = OrderId::new();
    let request = payment_requested(id, 1);
    p.on_message(&request).await;

    let duplicate = p
        .on_update(&update("pi_1", ProviderStatus::Processing))
        .await;
    let done = p
        .on_update(&update("pi_1", ProviderStatus::Succeeded))
        .await;

    assert_eq!(duplicate, None, "processing was recorded with the charge");
    assert_eq!(
        done,
        Some(AppliedUpdate {
            order_id: id,
            attempt: 1,
            correlation_id: request.correlation_id.clone(),
        })
    );
    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_PENDING, subjects::PAYMENT_SUCCEEDED]
    );
    assert!(
        p.records
            .outbox()
            .iter()
            .all(|e| e.correlation_id == request.correlation_id),
        "the webhook's events carry the request's correlation id"
    );
}

#[tokio::test]
async fn a_failed_then_a_succeeded_update_both_apply_so_the_late_success_reaches_the_saga() {
    let p = payments(vec![]);
    let id = OrderId::new();
    let correlation = CorrelationId::new();

    let failed = hinted_update("pi_1", provider_failed(), id, 1, &correlation);
    assert!(p.on_update(&failed).await.is_some());
    let late = hinted_update("pi_1", ProviderStatus::Succeeded, id, 1, &correlation);
    assert!(p.on_update(&late).await.is_some());

    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_FAILED, subjects::PAYMENT_SUCCEEDED]
    );
    assert_eq!(
        saga_events(&p),
        vec![
            Some(SagaEvent::PaymentFailed {
                reference: Some("pi_1".into()),
                code: "card_declined".into(),
                message: "Your card was declined.".into(),
            }),
            Some(succeeded("pi_1")),
        ]
    );
}

#[tokio::test]
async fn a_canceled_update_emits_payment_canceled_and_a_later_failure_is_ignored() {
    let p = payments(vec![charge_processing("pi_1")]);
    let id = OrderId::new();
    p.on_message(&payment_requested(id, 1)).await;

    let canceled = p.on_update(&update("pi_1", ProviderStatus::Canceled)).await;
    let failed = p.on_update(&update("pi_1", provider_failed())).await;

    assert!(canceled.is_some());
    assert_eq!(failed, None, "failed ranks with canceled: no progress");
    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_PENDING, subjects::PAYMENT_CANCELED]
    );
    assert_eq!(
        saga_events(&p)[1],
        Some(SagaEvent::PaymentCanceled {
            reference: "pi_1".into()
        })
    );
    assert_eq!(
        p.records.charge(id, 1).map(|c| c.status),
        Some(ChargeStatus::Canceled)
    );
}

#[tokio::test]
async fn a_records_outage_during_an_update_is_reported_for_redelivery() {
    let p = payments(vec![]);
    p.records.set_unavailable(true);

    let result = p
        .service
        .on_provider_update(&update("pi_1", ProviderStatus::Succeeded))
        .await;

    assert!(
        matches!(result, Err(PaymentError::Store(StoreError::Unavailable(_)))),
        "{result:?}"
    );
}
