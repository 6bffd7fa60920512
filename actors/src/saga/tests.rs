//! Table tests of the transition function, including duplicates, late and out-of-order events.

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::domain::{
    CorrelationId, Currency, CustomerId, Money, OrderId, PaymentMethod, PricedLine, Quantity, Sku,
};
use crate::events::{EventBody, Shortage};

fn t(sec: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + sec, 0)
        .single()
        .unwrap_or_default()
}

fn placed() -> OrderState {
    let eur = Currency::parse("EUR").unwrap();
    let order = NewOrder {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        customer_id: CustomerId::parse("c-1").unwrap(),
        lines: vec![PricedLine {
            sku: Sku::parse("SKU-1").unwrap(),
            quantity: Quantity::try_from(2).unwrap(),
            unit_price: Money::new(500, eur).unwrap(),
        }],
        amount: Money::new(1000, eur).unwrap(),
        payment_method: PaymentMethod::parse("pm_card_visa").unwrap(),
    };
    start(order, t(0)).next
}

fn reserved() -> SagaEvent {
    SagaEvent::StockReserved
}
fn out_of_stock() -> SagaEvent {
    SagaEvent::OutOfStock {
        shortages: vec![Shortage {
            sku: Sku::parse("SKU-1").unwrap(),
            requested: 2,
            available: 1,
        }],
    }
}
fn pending() -> SagaEvent {
    SagaEvent::PaymentPending {
        reference: "pi_1".into(),
    }
}
fn succeeded() -> SagaEvent {
    SagaEvent::PaymentSucceeded {
        reference: "pi_1".into(),
    }
}
fn failed() -> SagaEvent {
    SagaEvent::PaymentFailed {
        reference: Some("pi_1".into()),
        code: "card_declined".into(),
        message: "Your card was declined.".into(),
    }
}
fn released() -> SagaEvent {
    SagaEvent::StockReleased
}
fn canceled() -> SagaEvent {
    SagaEvent::PaymentCanceled {
        reference: "pi_1".into(),
    }
}
fn refunded(reference: &str, refund_id: &str) -> SagaEvent {
    SagaEvent::PaymentRefunded {
        reference: reference.into(),
        refund_id: refund_id.into(),
    }
}

/// Feeds events in order; returns every decision with the state it was taken on.
fn decisions(events: &[SagaEvent]) -> Vec<(OrderState, Decision)> {
    let mut state = placed();
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let decision = decide(&state, event, t(i as i64 + 1));
        let before = state.clone();
        if let Decision::Apply(tr) = &decision {
            state = tr.next.clone();
        }
        out.push((before, decision));
    }
    out
}

/// Feeds events in order from placement; returns the final state and every subject published.
fn run(events: &[SagaEvent]) -> (OrderState, Vec<&'static str>) {
    run_from(placed(), 1, events)
}

fn statuses(state: &OrderState) -> Vec<OrderStatus> {
    let mut out: Vec<OrderStatus> = Vec::new();
    for h in &state.history {
        if out.last() != Some(&h.status) {
            out.push(h.status);
        }
    }
    out
}

#[test]
fn placing_an_order_starts_pending_and_asks_for_stock() {
    let order = placed();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.version, 1);
    assert_eq!(order.history.len(), 1);
}

#[test]
fn table_of_event_sequences() {
    use OrderStatus::*;
    struct Case {
        name: &'static str,
        events: Vec<SagaEvent>,
        status: OrderStatus,
        published: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "happy path",
            events: vec![reserved(), pending(), succeeded()],
            status: Completed,
            published: vec!["payment.requested.v1", "order.confirmed.v1"],
        },
        Case {
            name: "success without a pending first",
            events: vec![reserved(), succeeded()],
            status: Completed,
            published: vec!["payment.requested.v1", "order.confirmed.v1"],
        },
        Case {
            name: "out of stock cancels without asking for payment",
            events: vec![out_of_stock()],
            status: Cancelled,
            published: vec!["order.cancelled.v1"],
        },
        Case {
            name: "decline compensates, then cancels once stock is released",
            events: vec![reserved(), pending(), failed(), released()],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "inventory.release_requested.v1",
                "order.cancelled.v1",
            ],
        },
        Case {
            name: "decline straight after reservation",
            events: vec![reserved(), failed(), released()],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "inventory.release_requested.v1",
                "order.cancelled.v1",
            ],
        },
        Case {
            name: "a decline is not cancelled until the stock is back",
            events: vec![reserved(), failed()],
            status: StockReserved,
            published: vec!["payment.requested.v1", "inventory.release_requested.v1"],
        },
        Case {
            name: "duplicate reservation is a no-op",
            events: vec![
                reserved(),
                reserved(),
                pending(),
                pending(),
                succeeded(),
                succeeded(),
            ],
            status: Completed,
            published: vec!["payment.requested.v1", "order.confirmed.v1"],
        },
        Case {
            name: "pending after success does not regress",
            events: vec![reserved(), succeeded(), pending()],
            status: Completed,
            published: vec!["payment.requested.v1", "order.confirmed.v1"],
        },
        Case {
            name: "failure after success changes nothing",
            events: vec![reserved(), succeeded(), failed(), released()],
            status: Completed,
            published: vec!["payment.requested.v1", "order.confirmed.v1"],
        },
        Case {
            name: "payment events before the reservation are ignored",
            events: vec![succeeded(), failed(), pending(), reserved()],
            status: StockReserved,
            published: vec!["payment.requested.v1"],
        },
        Case {
            name: "a late reservation after out-of-stock does not resurrect",
            events: vec![out_of_stock(), reserved(), pending()],
            status: Cancelled,
            published: vec!["order.cancelled.v1"],
        },
        Case {
            name: "an unrequested release (expired reservation) stops the payment and cancels",
            events: vec![reserved(), pending(), released(), succeeded()],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "payment.cancel_requested.v1",
                "order.cancelled.v1",
                "payment.refund_requested.v1",
            ],
        },
        Case {
            name: "an expired reservation after completion changes nothing",
            events: vec![reserved(), succeeded(), released()],
            status: Completed,
            published: vec!["payment.requested.v1", "order.confirmed.v1"],
        },
        Case {
            name: "a canceled payment compensates, then cancels once stock is released",
            events: vec![reserved(), pending(), canceled(), released()],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "inventory.release_requested.v1",
                "order.cancelled.v1",
            ],
        },
        Case {
            name: "a canceled payment is not cancelled until the stock is back",
            events: vec![reserved(), pending(), canceled()],
            status: PaymentProcessing,
            published: vec!["payment.requested.v1", "inventory.release_requested.v1"],
        },
        Case {
            name: "a cancellation after a decline releases once",
            events: vec![reserved(), failed(), canceled(), released()],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "inventory.release_requested.v1",
                "order.cancelled.v1",
            ],
        },
        Case {
            name: "a cancellation after success changes nothing",
            events: vec![reserved(), succeeded(), canceled(), released()],
            status: Completed,
            published: vec!["payment.requested.v1", "order.confirmed.v1"],
        },
        Case {
            name: "a success after cancellation asks for a refund once",
            events: vec![reserved(), failed(), released(), succeeded(), succeeded()],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "inventory.release_requested.v1",
                "order.cancelled.v1",
                "payment.refund_requested.v1",
            ],
        },
        Case {
            name: "a success during compensation asks for a refund once, then cancels",
            events: vec![reserved(), canceled(), succeeded(), succeeded(), released()],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "inventory.release_requested.v1",
                "payment.refund_requested.v1",
                "order.cancelled.v1",
            ],
        },
        Case {
            name: "a refund publishes nothing, and its duplicate neither",
            events: vec![
                reserved(),
                failed(),
                released(),
                succeeded(),
                refunded("pi_1", "re_1"),
                refunded("pi_1", "re_1"),
            ],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "inventory.release_requested.v1",
                "order.cancelled.v1",
                "payment.refund_requested.v1",
            ],
        },
        Case {
            name: "a refund of a completed order's payment is ignored",
            events: vec![reserved(), succeeded(), refunded("pi_1", "re_1")],
            status: Completed,
            published: vec!["payment.requested.v1", "order.confirmed.v1"],
        },
        Case {
            name: "duplicate decline releases once",
            events: vec![reserved(), failed(), failed(), released(), released()],
            status: Cancelled,
            published: vec![
                "payment.requested.v1",
                "inventory.release_requested.v1",
                "order.cancelled.v1",
            ],
        },
    ];
    for case in cases {
        let (state, published) = run(&case.events);
        assert_eq!(state.status, case.status, "{}", case.name);
        assert_eq!(published, case.published, "{}", case.name);
    }
}

#[test]
fn the_happy_path_walks_every_status_in_order() {
    let (state, _) = run(&[reserved(), pending(), succeeded()]);
    use OrderStatus::*;
    assert_eq!(
        statuses(&state),
        vec![Pending, StockReserved, PaymentProcessing, Completed]
    );
    let payment = state.payment.expect("payment info");
    assert_eq!(payment.status, PaymentStatus::Succeeded);
    assert_eq!(payment.reference.as_deref(), Some("pi_1"));
}

#[test]
fn a_decline_keeps_the_providers_code_and_message_as_the_cancel_reason() {
    let (state, _) = run(&[reserved(), pending(), failed(), released()]);
    assert_eq!(
        state.cancel_reason.as_deref(),
        Some("payment failed: card_declined: Your card was declined.")
    );
    let failure = state.payment.and_then(|p| p.failure).expect("failure");
    assert_eq!(failure.code, "card_declined");
}

#[test]
fn out_of_stock_names_the_short_sku() {
    let (state, _) = run(&[out_of_stock()]);
    let reason = state.cancel_reason.unwrap_or_default();
    assert!(
        reason.contains("SKU-1 (requested 2, available 1)"),
        "{reason}"
    );
}

#[test]
fn payment_success_after_cancellation_is_recorded_for_refund_once() {
    let (state, published) = run(&[out_of_stock(), succeeded(), succeeded()]);
    assert_eq!(state.status, OrderStatus::Cancelled);
    assert_eq!(
        state.late_payment.map(|l| l.reference),
        Some("pi_1".to_owned())
    );
    assert_eq!(
        published,
        vec!["order.cancelled.v1", "payment.refund_requested.v1"]
    );
}

#[test]
fn payment_success_during_compensation_is_recorded_for_refund() {
    let (state, published) = run(&[reserved(), failed(), succeeded(), released()]);
    assert_eq!(state.status, OrderStatus::Cancelled);
    assert!(state.late_payment.is_some());
    assert_eq!(
        published,
        vec![
            "payment.requested.v1",
            "inventory.release_requested.v1",
            "payment.refund_requested.v1",
            "order.cancelled.v1",
        ]
    );
}

#[test]
fn a_canceled_payment_compensates_with_the_payment_canceled_code() {
    let (compensating, _) = run(&[reserved(), pending(), canceled()]);
    assert_eq!(compensating.status, OrderStatus::PaymentProcessing);
    let payment = compensating.payment.clone().expect("payment info");
    assert_eq!(payment.status, PaymentStatus::Failed);
    assert_eq!(payment.reference.as_deref(), Some("pi_1"));
    assert_eq!(
        payment.failure.map(|f| f.code),
        Some("payment_canceled".to_owned())
    );
    assert!(compensating.compensation.is_some());

    let (cancelled, _) = run(&[reserved(), pending(), canceled(), released()]);
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(
        cancelled.cancel_reason.as_deref(),
        Some("payment failed: payment_canceled: the payment was canceled by the provider")
    );
}

#[test]
fn a_late_success_asks_to_refund_the_order_amount_and_ignores_its_duplicates() {
    let steps = decisions(&[reserved(), failed(), released(), succeeded(), succeeded()]);
    let (cancelled, late) = &steps[3];
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    let Decision::Apply(tr) = late else {
        panic!("the late success was ignored: {late:?}");
    };
    assert_eq!(
        tr.effects,
        vec![Effect::Publish(EventBody::PaymentRefundRequested(
            crate::events::PaymentRefundRequested {
                payment_reference: "pi_1".into(),
                amount: cancelled.amount,
            }
        ))]
    );
    assert_eq!(tr.next.status, OrderStatus::Cancelled);
    assert_eq!(
        tr.next.late_payment,
        Some(LatePayment {
            reference: "pi_1".into(),
            at: t(4),
            refund_id: None,
            refunded_at: None,
        })
    );
    assert_eq!(
        steps[4].1,
        Decision::Ignore("late payment already recorded")
    );
}

#[test]
fn a_refund_is_recorded_once_on_the_late_payment() {
    let steps = decisions(&[
        reserved(),
        failed(),
        released(),
        succeeded(),
        refunded("pi_1", "re_1"),
        refunded("pi_1", "re_2"),
    ]);
    let Decision::Apply(tr) = &steps[4].1 else {
        panic!("the refund was ignored: {:?}", steps[4].1);
    };
    assert!(tr.effects.is_empty(), "{:?}", tr.effects);
    assert_eq!(tr.next.status, OrderStatus::Cancelled);
    let late = tr.next.late_payment.clone().expect("late payment");
    assert_eq!(late.reference, "pi_1");
    assert_eq!(late.refund_id.as_deref(), Some("re_1"));
    assert_eq!(late.refunded_at, Some(t(5)));
    assert_eq!(steps[5].1, Decision::Ignore("refund already recorded"));

    let (state, _) = run(&[
        reserved(),
        failed(),
        released(),
        succeeded(),
        refunded("pi_1", "re_1"),
        refunded("pi_1", "re_2"),
    ]);
    assert_eq!(
        state.late_payment.and_then(|l| l.refund_id).as_deref(),
        Some("re_1"),
        "the first refund id stays"
    );
}

#[test]
fn a_refund_of_another_payment_is_ignored() {
    let steps = decisions(&[
        reserved(),
        failed(),
        released(),
        succeeded(),
        refunded("pi_other", "re_1"),
    ]);
    assert_eq!(
        steps[4].1,
        Decision::Ignore("refund of a payment this order did not ask to refund")
    );
    let (state, _) = run(&[
        reserved(),
        failed(),
        released(),
        succeeded(),
        refunded("pi_other", "re_1"),
    ]);
    let late = state.late_payment.expect("late payment");
    assert_eq!((late.refund_id, late.refunded_at), (None, None));
}

#[test]
fn a_refund_arriving_while_compensating_is_recorded_and_the_order_still_cancels() {
    let (compensating, published) =
        run(&[reserved(), failed(), succeeded(), refunded("pi_1", "re_1")]);
    assert_eq!(compensating.status, OrderStatus::StockReserved);
    assert!(compensating.compensation.is_some());
    let late = compensating.late_payment.clone().expect("late payment");
    assert_eq!(late.refund_id.as_deref(), Some("re_1"));
    assert_eq!(late.refunded_at, Some(t(4)));
    assert_eq!(
        published,
        vec![
            "payment.requested.v1",
            "inventory.release_requested.v1",
            "payment.refund_requested.v1",
        ]
    );

    let Decision::Apply(tr) = decide(&compensating, &released(), t(5)) else {
        panic!("the release was ignored");
    };
    assert_eq!(tr.next.status, OrderStatus::Cancelled);
    assert_eq!(tr.next.late_payment, Some(late), "the refund is kept");
}

#[test]
fn ignored_events_change_nothing() {
    let (done, _) = run(&[reserved(), succeeded()]);
    for event in [
        reserved(),
        out_of_stock(),
        pending(),
        succeeded(),
        failed(),
        released(),
        canceled(),
        refunded("pi_1", "re_1"),
    ] {
        assert!(matches!(decide(&done, &event, t(99)), Decision::Ignore(_)));
    }
}

#[test]
fn every_event_body_the_saga_consumes_maps_to_a_saga_event() {
    let body = EventBody::PaymentSucceeded(crate::events::PaymentSucceeded {
        payment_reference: "pi_9".into(),
    });
    assert_eq!(
        SagaEvent::from_body(&body),
        Some(SagaEvent::PaymentSucceeded {
            reference: "pi_9".into()
        })
    );
    let canceled = EventBody::PaymentCanceled(crate::events::PaymentCanceled {
        payment_reference: "pi_9".into(),
    });
    assert_eq!(
        SagaEvent::from_body(&canceled),
        Some(SagaEvent::PaymentCanceled {
            reference: "pi_9".into()
        })
    );
    let refunded = EventBody::PaymentRefunded(crate::events::PaymentRefunded {
        payment_reference: "pi_9".into(),
        refund_id: "re_9".into(),
    });
    assert_eq!(
        SagaEvent::from_body(&refunded),
        Some(SagaEvent::PaymentRefunded {
            reference: "pi_9".into(),
            refund_id: "re_9".into(),
        })
    );
    let created = EventBody::OrderCancelled(crate::events::OrderCancelled {
        reason: "x".into(),
        skus: vec![],
    });
    assert_eq!(SagaEvent::from_body(&created), None);
}

/// Fires the timer armed in `state` at its deadline (or at `at`).
fn fire(state: &OrderState, at: Option<DateTime<Utc>>) -> Decision {
    let deadline = state.deadline.expect("no deadline armed");
    decide(
        state,
        &SagaEvent::DeadlinePassed { deadline },
        at.unwrap_or(deadline),
    )
}

fn applied(decision: Decision) -> (OrderState, Vec<&'static str>) {
    match decision {
        Decision::Apply(tr) => (
            tr.next.clone(),
            tr.effects
                .iter()
                .map(|Effect::Publish(b)| b.subject())
                .collect(),
        ),
        Decision::Ignore(why) => panic!("expected a transition, got ignore: {why}"),
    }
}

#[test]
fn every_live_status_has_a_deadline_and_finished_orders_have_none() {
    let order = placed();
    assert_eq!(
        order.deadline,
        Some(t(0) + chrono::Duration::seconds(30)),
        "inventory step: 30 s"
    );
    let (reserved_state, _) = run(&[reserved()]);
    assert_eq!(
        reserved_state.deadline,
        Some(t(1) + chrono::Duration::seconds(60)),
        "payment step: 60 s"
    );
    let (processing, _) = run(&[reserved(), pending()]);
    assert_eq!(
        processing.deadline, reserved_state.deadline,
        "processing is the same payment step"
    );
    let (done, _) = run(&[reserved(), pending(), succeeded()]);
    assert_eq!(done.deadline, None);
}

#[test]
fn an_inventory_timeout_cancels_a_pending_order() {
    let (next, published) = applied(fire(&placed(), None));
    assert_eq!(next.status, OrderStatus::Cancelled);
    assert_eq!(
        next.cancel_reason.as_deref(),
        Some("inventory step timed out after 30s")
    );
    assert_eq!(published, ["order.cancelled.v1"]);
    assert_eq!(next.deadline, None);
}

#[test]
fn a_payment_timeout_cancels_the_charge_releases_stock_and_then_cancels() {
    let (processing, _) = run(&[reserved(), pending()]);
    let (compensating, published) = applied(fire(&processing, None));
    assert_eq!(
        published,
        [
            "payment.cancel_requested.v1",
            "inventory.release_requested.v1"
        ]
    );
    assert_eq!(
        compensating.status,
        OrderStatus::PaymentProcessing,
        "not cancelled until the stock is back"
    );
    let payment = compensating.payment.clone().expect("payment");
    assert_eq!(
        payment.failure.map(|f| f.code),
        Some("payment_timeout".to_owned())
    );
    let Decision::Apply(done) = decide(&compensating, &released(), t(200)) else {
        panic!("release applies")
    };
    assert_eq!(done.next.status, OrderStatus::Cancelled);
    assert_eq!(
        done.next.cancel_reason.as_deref(),
        Some("payment failed: payment_timeout: payment step timed out after 60s")
    );
}

#[test]
fn an_unconfirmed_release_is_asked_again_at_its_deadline() {
    let (compensating, _) = run(&[reserved(), failed()]);
    let (again, published) = applied(fire(&compensating, None));
    assert_eq!(published, ["inventory.release_requested.v1"]);
    assert!(
        again.deadline > compensating.deadline,
        "a new deadline is armed"
    );
}

#[test]
fn stale_and_early_timers_are_ignored() {
    let order = placed();
    let stale = order
        .deadline
        .map(|d| d - chrono::Duration::seconds(1))
        .unwrap_or_default();
    assert!(matches!(
        decide(
            &order,
            &SagaEvent::DeadlinePassed { deadline: stale },
            t(100)
        ),
        Decision::Ignore(_)
    ));
    let early = order.deadline.map(|d| d - chrono::Duration::seconds(5));
    assert!(matches!(fire(&order, early), Decision::Ignore(_)));
    // A timer armed for PENDING that fires after the reservation changes nothing.
    let (reserved_state, _) = run(&[reserved()]);
    let old = order.deadline.unwrap_or_default();
    assert!(matches!(
        decide(
            &reserved_state,
            &SagaEvent::DeadlinePassed { deadline: old },
            t(100)
        ),
        Decision::Ignore(_)
    ));
}

fn retry() -> SagaEvent {
    SagaEvent::OperatorRetry {
        by: "alice".into(),
        reason: "broker hiccup".into(),
    }
}

fn operator_cancel() -> SagaEvent {
    SagaEvent::OperatorCancel {
        by: "bob".into(),
        reason: "customer called".into(),
    }
}

#[test]
fn an_operator_retry_resends_the_current_step_and_records_who_and_why() {
    let cases: Vec<(Vec<SagaEvent>, &str)> = vec![
        (vec![], "order.created.v1"),
        (vec![reserved()], "payment.requested.v1"),
        (vec![reserved(), pending()], "payment.requested.v1"),
        (vec![reserved(), failed()], "inventory.release_requested.v1"),
    ];
    for (before, resent) in cases {
        let (state, _) = run(&before);
        let (next, published) = applied(decide(&state, &retry(), t(50)));
        assert_eq!(published, [resent], "after {before:?}");
        assert_eq!(
            next.status, state.status,
            "a retry does not change the status"
        );
        assert!(next.deadline > state.deadline, "a fresh deadline is armed");
        let last = next
            .history
            .last()
            .and_then(|h| h.reason.clone())
            .unwrap_or_default();
        assert!(
            last.contains("operator alice") && last.contains("broker hiccup"),
            "{last}"
        );
    }
    let (done, _) = run(&[reserved(), succeeded()]);
    assert!(matches!(
        decide(&done, &retry(), t(50)),
        Decision::Ignore(_)
    ));
}

#[test]
fn an_operator_cancel_compensates_when_stock_is_held_and_cancels_directly_otherwise() {
    let (pending_cancel, published) = applied(decide(&placed(), &operator_cancel(), t(5)));
    assert_eq!(pending_cancel.status, OrderStatus::Cancelled);
    assert_eq!(published, ["order.cancelled.v1"]);
    assert_eq!(
        pending_cancel.cancel_reason.as_deref(),
        Some("cancelled by operator bob: customer called")
    );

    let (processing, _) = run(&[reserved(), pending()]);
    let (compensating, published) = applied(decide(&processing, &operator_cancel(), t(5)));
    assert_eq!(
        published,
        [
            "payment.cancel_requested.v1",
            "inventory.release_requested.v1"
        ]
    );
    let Decision::Apply(done) = decide(&compensating, &released(), t(6)) else {
        panic!("release applies")
    };
    assert_eq!(done.next.status, OrderStatus::Cancelled);
    assert!(
        done.next
            .cancel_reason
            .unwrap_or_default()
            .contains("cancelled by operator bob")
    );
    assert!(
        matches!(
            decide(&compensating, &operator_cancel(), t(7)),
            Decision::Ignore(_)
        ),
        "already cancelling"
    );
}

#[test]
fn a_success_after_the_payment_deadline_compensates_and_refunds_instead_of_completing() {
    let (processing, _) = run(&[reserved(), pending()]);
    let too_late = processing.deadline.unwrap_or_default() + chrono::Duration::milliseconds(1);
    let (compensating, published) = applied(decide(&processing, &succeeded(), too_late));
    assert_eq!(
        published,
        [
            "inventory.release_requested.v1",
            "payment.refund_requested.v1"
        ]
    );
    assert_eq!(
        compensating.status,
        OrderStatus::PaymentProcessing,
        "cancelled once the stock is back"
    );
    assert_eq!(
        compensating
            .late_payment
            .as_ref()
            .map(|l| l.reference.as_str()),
        Some("pi_1")
    );
    let Decision::Apply(done) = decide(&compensating, &released(), too_late) else {
        panic!("release applies")
    };
    assert_eq!(done.next.status, OrderStatus::Cancelled);
    // Just before the deadline the same success completes the order.
    let in_time = processing.deadline.unwrap_or_default() - chrono::Duration::milliseconds(1);
    let (completed, _) = applied(decide(&processing, &succeeded(), in_time));
    assert_eq!(completed.status, OrderStatus::Completed);
}

#[test]
fn a_release_that_overtakes_its_reservation_cancels_the_pending_order() {
    // The reservation expired before its inventory.reserved.v1 reached the saga.
    let (state, published) = run(&[released(), reserved()]);
    assert_eq!(state.status, OrderStatus::Cancelled);
    assert_eq!(
        state.cancel_reason.as_deref(),
        Some("stock reservation expired before the payment completed")
    );
    assert_eq!(
        published,
        ["order.cancelled.v1"],
        "no payment is requested afterwards"
    );
}

fn pause() -> SagaEvent {
    SagaEvent::OperatorPause {
        by: "carol".into(),
        reason: "suspected fraud".into(),
    }
}

fn resume_event() -> SagaEvent {
    SagaEvent::OperatorResume {
        by: "carol".into(),
        reason: "checked with the bank".into(),
    }
}

/// Feeds events starting at `state`, event i at t(start + i); returns the last state and the
/// subjects published.
fn run_from(
    mut state: OrderState,
    start: i64,
    events: &[SagaEvent],
) -> (OrderState, Vec<&'static str>) {
    let mut published = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if let Decision::Apply(tr) = decide(&state, event, t(start + i as i64)) {
            assert!(
                tr.next.version > state.version,
                "every transition bumps the version"
            );
            assert_eq!(
                tr.next.version as usize,
                tr.next.history.len(),
                "one history entry per version"
            );
            published.extend(tr.effects.iter().map(|Effect::Publish(b)| b.subject()));
            state = tr.next;
        }
    }
    (state, published)
}

#[test]
fn a_paused_saga_holds_events_and_decides_them_in_order_on_resume() {
    // (events while paused, status after resume, subjects published on resume)
    let cases: Vec<(Vec<SagaEvent>, OrderStatus, Vec<&str>)> = vec![
        (vec![], OrderStatus::StockReserved, vec![]),
        (
            vec![succeeded()],
            OrderStatus::Completed,
            vec!["order.confirmed.v1"],
        ),
        (
            vec![pending(), succeeded(), succeeded()],
            OrderStatus::Completed,
            vec!["order.confirmed.v1"],
        ),
        (
            vec![failed()],
            OrderStatus::StockReserved,
            vec!["inventory.release_requested.v1"],
        ),
        (
            vec![failed(), released()],
            OrderStatus::Cancelled,
            vec!["inventory.release_requested.v1", "order.cancelled.v1"],
        ),
    ];
    for (held, after, on_resume) in cases {
        let (reserved_state, _) = run(&[reserved()]);
        let (paused, published) = applied(decide(&reserved_state, &pause(), t(2)));
        assert!(published.is_empty(), "pausing sends nothing");
        assert_eq!(paused.deadline, None, "the deadline is held");
        let (still_paused, published) = run_from(paused, 3, &held);
        assert!(published.is_empty(), "nothing is acted on while paused");
        assert_eq!(still_paused.status, OrderStatus::StockReserved);
        assert_eq!(
            still_paused.paused.as_ref().map(|p| p.held.len()),
            Some(held.len()),
            "every event is kept"
        );
        let (resumed, published) = run_from(still_paused, 100, &[resume_event()]);
        assert_eq!(resumed.paused, None);
        assert_eq!(resumed.status, after, "held {held:?}");
        assert_eq!(published, on_resume, "held {held:?}");
    }
}

#[test]
fn a_pause_holds_the_step_clock_and_a_resume_gives_back_the_time_left() {
    let (reserved_state, _) = run(&[reserved()]);
    let deadline = reserved_state.deadline.expect("armed");
    let paused_at = t(10);
    let left = deadline - paused_at;
    let (paused, _) = applied(decide(&reserved_state, &pause(), paused_at));
    assert_eq!(
        paused.paused.as_ref().and_then(|p| p.remaining_ms),
        Some(left.num_milliseconds())
    );
    // The old timer fires while paused: ignored, nothing happens.
    assert!(matches!(
        decide(&paused, &SagaEvent::DeadlinePassed { deadline }, deadline),
        Decision::Ignore(_)
    ));
    // Resumed an hour later: the step has the same time left as when paused.
    let later = t(3600);
    let (resumed, _) = applied(decide(&paused, &resume_event(), later));
    assert_eq!(resumed.deadline, Some(later + left));
    let history = resumed
        .history
        .iter()
        .filter_map(|h| h.reason.clone())
        .collect::<Vec<_>>()
        .join(" | ");
    assert!(
        history.contains("paused by operator carol: suspected fraud")
            && history.contains("resumed by operator carol: checked with the bank"),
        "{history}"
    );
}

#[test]
fn while_paused_other_operator_actions_wait_and_pause_resume_are_not_repeated() {
    let (paused, _) = applied(decide(&placed(), &pause(), t(1)));
    for event in [retry(), operator_cancel(), pause()] {
        assert!(
            matches!(decide(&paused, &event, t(2)), Decision::Ignore(_)),
            "{event:?}"
        );
    }
    assert!(matches!(
        decide(&placed(), &resume_event(), t(2)),
        Decision::Ignore(_)
    ));
    let (done, _) = run(&[reserved(), succeeded()]);
    assert!(
        matches!(decide(&done, &pause(), t(5)), Decision::Ignore(_)),
        "a finished order cannot be paused"
    );
    // A paused PENDING order keeps its out-of-stock answer and cancels on resume.
    let (held, _) = run_from(paused, 2, &[out_of_stock()]);
    let (resumed, published) = run_from(held, 3, &[resume_event()]);
    assert_eq!(resumed.status, OrderStatus::Cancelled);
    assert_eq!(published, ["order.cancelled.v1"]);
}

#[test]
fn a_paused_snapshot_round_trips_through_json_with_its_held_events() {
    let (paused, _) = applied(decide(&placed(), &pause(), t(1)));
    let (held, _) = run_from(paused, 2, &[out_of_stock(), refunded("pi_9", "re_1")]);
    let json = serde_json::to_string(&held).unwrap();
    let back: OrderState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, held);
    // A snapshot written before pausing existed has no `paused` field.
    let mut old: serde_json::Value = serde_json::to_value(placed()).unwrap();
    assert!(old.get("paused").is_none());
    old.as_object_mut().map(|o| o.remove("paused"));
    let parsed: OrderState = serde_json::from_value(old).unwrap();
    assert_eq!(parsed.paused, None);
}

#[test]
fn a_success_reported_at_once_walks_through_payment_processing_in_one_transition() {
    let (reserved_state, _) = run(&[reserved()]);
    let (done, published) = applied(decide(&reserved_state, &succeeded(), t(5)));
    assert_eq!(done.status, OrderStatus::Completed);
    assert_eq!(done.version, reserved_state.version + 2);
    assert_eq!(
        statuses(&done),
        [
            OrderStatus::Pending,
            OrderStatus::StockReserved,
            OrderStatus::PaymentProcessing,
            OrderStatus::Completed
        ]
    );
    assert_eq!(published, ["order.confirmed.v1"]);
    // Reported pending first, the success is one more version as before.
    let (processing, _) = run(&[reserved(), pending()]);
    let (done, _) = applied(decide(&processing, &succeeded(), t(5)));
    assert_eq!(done.version, processing.version + 1);
}

/// The bodies of every message a run of events publishes, from placement.
fn bodies_of(mut state: OrderState, events: &[SagaEvent]) -> Vec<EventBody> {
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if let Decision::Apply(tr) = decide(&state, event, t(i as i64 + 1)) {
            out.extend(tr.effects.iter().map(|Effect::Publish(b)| b.clone()));
            state = tr.next;
        }
    }
    out
}

#[test]
fn every_commit_and_release_the_saga_sends_names_the_orders_skus_sorted() {
    let mut state = placed();
    let line = state.lines[0].clone();
    let sku = |raw: &str| Sku::parse(raw).unwrap();
    // Out of order and repeated on purpose: inventory routes by the smallest.
    state.lines = vec![
        PricedLine {
            sku: sku("SKU-C"),
            ..line.clone()
        },
        PricedLine {
            sku: sku("SKU-A"),
            ..line.clone()
        },
        PricedLine {
            sku: sku("SKU-C"),
            ..line
        },
    ];
    let expected = vec![sku("SKU-A"), sku("SKU-C")];
    let cases: Vec<Vec<SagaEvent>> = vec![
        vec![reserved(), succeeded()],
        vec![out_of_stock()],
        vec![reserved(), failed(), released()],
        vec![reserved(), released()],
    ];
    for events in cases {
        let bodies = bodies_of(state.clone(), &events);
        let settling: Vec<&EventBody> = bodies
            .iter()
            .filter(|b| {
                matches!(
                    b,
                    EventBody::OrderConfirmed(_)
                        | EventBody::OrderCancelled(_)
                        | EventBody::InventoryReleaseRequested(_)
                )
            })
            .collect();
        assert!(!settling.is_empty(), "{events:?} settles the stock");
        for body in settling {
            let skus = match body {
                EventBody::OrderConfirmed(e) => &e.skus,
                EventBody::OrderCancelled(e) => &e.skus,
                EventBody::InventoryReleaseRequested(e) => &e.skus,
                _ => unreachable!("filtered above"),
            };
            assert_eq!(skus, &expected, "{} after {events:?}", body.subject());
        }
    }
}
