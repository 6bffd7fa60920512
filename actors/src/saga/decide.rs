//! The transition function. Read it as a table: (status, event) → (next status, effects).
//!
//! Rules that hold for every row:
//! - an event that does not fit the current status is ignored with a reason, never an error, so a
//!   duplicate or late message is acknowledged and forgotten instead of redelivered forever;
//! - status never moves backwards, and a terminal order never becomes live again;
//! - money taken for a cancelled order is never silently dropped (`late_payment`).

use chrono::{DateTime, Utc};

use super::state::{
    Compensation, HistoryEntry, LatePayment, NewOrder, OrderState, OrderStatus, Pause,
    PaymentFailure, PaymentInfo, PaymentStatus, StepTimeouts,
};
use crate::events::{
    EventBody, InventoryReleaseRequested, OrderCancelled, OrderConfirmed, OrderCreated,
    PaymentCancelRequested, PaymentRefundRequested, PaymentRequested, Shortage, routing_skus,
};

/// What the saga reacts to, already stripped of transport details. Serialisable because a
/// paused saga keeps the events it receives in its snapshot until it is resumed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SagaEvent {
    StockReserved,
    OutOfStock {
        shortages: Vec<Shortage>,
    },
    StockReleased,
    PaymentPending {
        reference: String,
    },
    PaymentSucceeded {
        reference: String,
    },
    PaymentFailed {
        reference: Option<String>,
        code: String,
        message: String,
    },
    PaymentCanceled {
        reference: String,
    },
    PaymentRefunded {
        reference: String,
        refund_id: String,
    },
    /// The timer armed for `deadline` fired. Stale timers (the saga moved on) are ignored.
    DeadlinePassed {
        deadline: DateTime<Utc>,
    },
    /// An operator asks to run the current step again now (its messages are re-sent; every
    /// consumer is idempotent, so a step that did happen is not repeated).
    OperatorRetry {
        by: String,
        reason: String,
    },
    /// An operator gives up on the order: compensate (release stock, cancel the payment) and
    /// cancel.
    OperatorCancel {
        by: String,
        reason: String,
    },
    /// An operator holds the saga: no step is taken and its deadline stops; events are kept.
    OperatorPause {
        by: String,
        reason: String,
    },
    /// An operator releases a paused saga: its step gets back the time it had left, and the
    /// events kept while paused are decided in arrival order.
    OperatorResume {
        by: String,
        reason: String,
    },
}

impl SagaEvent {
    /// The saga-relevant reading of a message body; `None` for messages the saga does not consume.
    pub fn from_body(body: &EventBody) -> Option<SagaEvent> {
        Some(match body {
            EventBody::InventoryReserved(_) => SagaEvent::StockReserved,
            EventBody::InventoryOutOfStock(e) => SagaEvent::OutOfStock {
                shortages: e.shortages.clone(),
            },
            EventBody::InventoryReleased(_) => SagaEvent::StockReleased,
            EventBody::PaymentPending(e) => SagaEvent::PaymentPending {
                reference: e.payment_reference.clone(),
            },
            EventBody::PaymentSucceeded(e) => SagaEvent::PaymentSucceeded {
                reference: e.payment_reference.clone(),
            },
            EventBody::PaymentFailed(e) => SagaEvent::PaymentFailed {
                reference: e.payment_reference.clone(),
                code: e.code.clone(),
                message: e.message.clone(),
            },
            EventBody::PaymentCanceled(e) => SagaEvent::PaymentCanceled {
                reference: e.payment_reference.clone(),
            },
            EventBody::PaymentRefunded(e) => SagaEvent::PaymentRefunded {
                reference: e.payment_reference.clone(),
                refund_id: e.refund_id.clone(),
            },
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            SagaEvent::StockReserved => "stock_reserved",
            SagaEvent::OutOfStock { .. } => "out_of_stock",
            SagaEvent::StockReleased => "stock_released",
            SagaEvent::PaymentPending { .. } => "payment_pending",
            SagaEvent::PaymentSucceeded { .. } => "payment_succeeded",
            SagaEvent::PaymentFailed { .. } => "payment_failed",
            SagaEvent::PaymentCanceled { .. } => "payment_canceled",
            SagaEvent::PaymentRefunded { .. } => "payment_refunded",
            SagaEvent::DeadlinePassed { .. } => "deadline_passed",
            SagaEvent::OperatorRetry { .. } => "operator_retry",
            SagaEvent::OperatorCancel { .. } => "operator_cancel",
            SagaEvent::OperatorPause { .. } => "operator_pause",
            SagaEvent::OperatorResume { .. } => "operator_resume",
        }
    }
}

/// Something the saga wants to happen once its new state is durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Publish(EventBody),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub next: OrderState,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Apply(Box<Transition>),
    Ignore(&'static str),
}

/// The first transition: the order exists, PENDING, and asks inventory for stock.
pub fn start(order: NewOrder, now: DateTime<Utc>) -> Transition {
    start_with_timeouts(order, StepTimeouts::default(), now)
}

/// The first transition, with the step timeouts this order will keep.
pub fn start_with_timeouts(
    order: NewOrder,
    timeouts: StepTimeouts,
    now: DateTime<Utc>,
) -> Transition {
    let created = OrderCreated {
        customer_id: order.customer_id.clone(),
        lines: order.lines.clone(),
        amount: order.amount,
    };
    let next = OrderState {
        order_id: order.order_id,
        correlation_id: order.correlation_id,
        customer_id: order.customer_id,
        lines: order.lines,
        amount: order.amount,
        payment_method: order.payment_method,
        status: OrderStatus::Pending,
        version: 1,
        created_at: now,
        updated_at: now,
        payment: None,
        compensation: None,
        cancel_reason: None,
        late_payment: None,
        history: vec![HistoryEntry {
            status: OrderStatus::Pending,
            at: now,
            reason: Some("order placed".into()),
        }],
        timeouts,
        deadline: Some(deadline_after(now, timeouts.inventory())),
        paused: None,
    };
    Transition {
        next,
        effects: vec![Effect::Publish(EventBody::OrderCreated(created))],
    }
}

pub fn decide(state: &OrderState, event: &SagaEvent, now: DateTime<Utc>) -> Decision {
    use OrderStatus as S;
    use SagaEvent as E;

    if let Some(pause) = &state.paused {
        return decide_paused(state, pause, event, now);
    }
    let compensating = state.compensation.is_some();
    match (state.status, event) {
        // A refund can land in any status (it follows a late payment, during or after cancel).
        (
            _,
            E::PaymentRefunded {
                reference,
                refund_id,
            },
        ) => record_refund(state, reference, refund_id, now),
        (_, E::DeadlinePassed { deadline }) => on_deadline(state, *deadline, now),
        (_, E::OperatorRetry { by, reason }) => operator_retry(state, by, reason, now),
        (_, E::OperatorCancel { by, reason }) => operator_cancel(state, by, reason, now),
        (_, E::OperatorPause { by, reason }) => operator_pause(state, by, reason, now),
        (_, E::OperatorResume { .. }) => Decision::Ignore("the order is not paused"),
        (S::Pending, E::StockReserved) => {
            let mut next = advance(state, now, S::StockReserved, Some("stock reserved"));
            next.payment = Some(PaymentInfo {
                status: PaymentStatus::Requested,
                attempt: 1,
                reference: None,
                failure: None,
            });
            let request = PaymentRequested {
                amount: state.amount,
                payment_method: state.payment_method.clone(),
                attempt: 1,
            };
            apply(next, vec![EventBody::PaymentRequested(request)])
        }
        (S::Pending, E::OutOfStock { shortages }) => {
            let reason = out_of_stock_reason(shortages);
            cancel_now(state, now, reason, Vec::new())
        }
        (S::Pending, E::StockReleased) => {
            // Only an expiry releases stock before the saga asked for anything: the reservation
            // came and went before its news reached us. The units are gone; cancel.
            let reason = "stock reservation expired before the payment completed".to_owned();
            cancel_now(state, now, reason, Vec::new())
        }
        (S::Pending, _) => {
            Decision::Ignore("nothing but a reservation outcome is expected while PENDING")
        }

        (S::StockReserved, E::PaymentPending { reference }) if !compensating => {
            let mut next = advance(state, now, S::PaymentProcessing, Some("payment processing"));
            set_payment(&mut next, PaymentStatus::Pending, Some(reference), None);
            apply(next, vec![])
        }
        (S::StockReserved | S::PaymentProcessing, E::PaymentSucceeded { reference })
            if !compensating && state.deadline.is_some_and(|d| now >= d) =>
        {
            // The payment step is over even if its timer has not fired yet, and the held stock
            // may already be gone (an expired reservation): never complete on it. Compensate and
            // give the money back.
            late_success(state, reference, now)
        }
        (S::StockReserved | S::PaymentProcessing, E::PaymentSucceeded { reference })
            if !compensating =>
        {
            // A payment that succeeded without being reported pending first (the provider
            // answered the charge at once) still walks through PAYMENT_PROCESSING, so every
            // completed order shows the same statuses; both are one commit.
            let processing = if state.status == S::StockReserved {
                advance(state, now, S::PaymentProcessing, Some("payment processing"))
            } else {
                state.clone()
            };
            let mut next = advance(&processing, now, S::Completed, Some("payment succeeded"));
            set_payment(&mut next, PaymentStatus::Succeeded, Some(reference), None);
            let confirmed = OrderConfirmed {
                amount: state.amount,
                payment_reference: Some(reference.clone()),
                skus: routing_skus(&state.lines),
            };
            apply(next, vec![EventBody::OrderConfirmed(confirmed)])
        }
        (
            S::StockReserved | S::PaymentProcessing,
            E::PaymentFailed {
                reference,
                code,
                message,
            },
        ) if !compensating => compensate_payment(state, now, reference.as_ref(), code, message),
        (S::StockReserved | S::PaymentProcessing, E::PaymentCanceled { reference })
            if !compensating =>
        {
            let message = "the payment was canceled by the provider";
            compensate_payment(state, now, Some(reference), "payment_canceled", message)
        }
        (S::StockReserved | S::PaymentProcessing, E::StockReleased) if compensating => {
            let reason = state
                .compensation
                .as_ref()
                .map(|c| c.reason.clone())
                .unwrap_or_default();
            cancel_now(state, now, reason, Vec::new())
        }
        (S::StockReserved | S::PaymentProcessing, E::StockReleased) => {
            // Not asked for: the reservation expired. The units are gone, so the order cannot
            // complete; stop the payment (a success after this is refunded) and cancel.
            let reason = "stock reservation expired before the payment completed".to_owned();
            let stop_payment = cancel_payment(state, &reason);
            cancel_now(state, now, reason, stop_payment)
        }
        (S::StockReserved | S::PaymentProcessing, E::PaymentSucceeded { reference }) => {
            // Compensation already started (the payment was reported failed, then succeeded):
            // the order will be cancelled, so the money must be given back.
            record_late_payment(state, reference, now)
        }
        (S::StockReserved | S::PaymentProcessing, _) => {
            Decision::Ignore("duplicate or out-of-date event for an order in payment")
        }

        (S::Cancelled, E::PaymentSucceeded { reference }) => {
            record_late_payment(state, reference, now)
        }
        (S::Completed | S::Cancelled, _) => Decision::Ignore("the order is finished"),
    }
}

/// `now + step`, at the microsecond precision Postgres stores, so the deadline in the snapshot's
/// JSON and in the `deadline` column (read back by crash recovery) are the same instant.
fn deadline_after(now: DateTime<Utc>, step: chrono::Duration) -> DateTime<Utc> {
    use chrono::SubsecRound;
    (now + step).trunc_subsecs(6)
}

/// `order.cancelled.v1` for this order.
fn cancelled(state: &OrderState, reason: String) -> EventBody {
    EventBody::OrderCancelled(OrderCancelled {
        reason,
        skus: routing_skus(&state.lines),
    })
}

/// `inventory.release_requested.v1` for this order.
fn release_requested(state: &OrderState, reason: String) -> EventBody {
    EventBody::InventoryReleaseRequested(InventoryReleaseRequested {
        reason,
        skus: routing_skus(&state.lines),
    })
}

/// Ends the order `CANCELLED` for `reason` and announces it (`order.cancelled.v1`, after
/// `first`).
fn cancel_now(
    state: &OrderState,
    now: DateTime<Utc>,
    reason: String,
    mut first: Vec<EventBody>,
) -> Decision {
    let mut next = advance(state, now, OrderStatus::Cancelled, Some(&reason));
    next.cancel_reason = Some(reason.clone());
    first.push(cancelled(state, reason));
    apply(next, first)
}

fn apply(next: OrderState, bodies: Vec<EventBody>) -> Decision {
    Decision::Apply(Box::new(Transition {
        next,
        effects: bodies.into_iter().map(Effect::Publish).collect(),
    }))
}

fn bump(next: &mut OrderState, now: DateTime<Utc>) {
    next.version += 1;
    next.updated_at = now;
}

fn advance(
    state: &OrderState,
    now: DateTime<Utc>,
    to: OrderStatus,
    reason: Option<&str>,
) -> OrderState {
    let mut next = state.clone();
    bump(&mut next, now);
    next.status = to;
    next.deadline = match to {
        OrderStatus::Pending => Some(deadline_after(now, state.timeouts.inventory())),
        // Entering the payment step starts its clock; PAYMENT_PROCESSING is the same step.
        OrderStatus::StockReserved => Some(deadline_after(now, state.timeouts.payment())),
        OrderStatus::PaymentProcessing => state.deadline,
        OrderStatus::Completed | OrderStatus::Cancelled => None,
    };
    next.history.push(HistoryEntry {
        status: to,
        at: now,
        reason: reason.map(str::to_owned),
    });
    next
}

fn set_payment(
    next: &mut OrderState,
    status: PaymentStatus,
    reference: Option<&String>,
    failure: Option<PaymentFailure>,
) {
    let info = next.payment.get_or_insert(PaymentInfo {
        status,
        attempt: 1,
        reference: None,
        failure: None,
    });
    info.status = status;
    if let Some(r) = reference {
        info.reference = Some(r.clone());
    }
    if failure.is_some() {
        info.failure = failure;
    }
}

/// Payment failed or was canceled: record it and ask inventory for the stock back. The order
/// becomes CANCELLED when inventory confirms the release.
fn compensate_payment(
    state: &OrderState,
    now: DateTime<Utc>,
    reference: Option<&String>,
    code: &str,
    message: &str,
) -> Decision {
    let reason = format!("payment failed: {code}: {message}");
    let mut next = state.clone();
    bump(&mut next, now);
    let failure = PaymentFailure {
        code: code.to_owned(),
        message: message.to_owned(),
    };
    set_payment(&mut next, PaymentStatus::Failed, reference, Some(failure));
    next.compensation = Some(Compensation {
        reason: reason.clone(),
        started_at: now,
    });
    next.deadline = Some(deadline_after(now, state.timeouts.inventory()));
    next.history.push(HistoryEntry {
        status: state.status,
        at: now,
        reason: Some(format!("{reason}; releasing stock")),
    });
    apply(next, vec![release_requested(state, reason)])
}

/// Asks the payment role to cancel the charge, if one may exist.
fn cancel_payment(state: &OrderState, reason: &str) -> Vec<EventBody> {
    match &state.payment {
        Some(p) if p.status != PaymentStatus::Succeeded && p.status != PaymentStatus::Failed => {
            vec![EventBody::PaymentCancelRequested(PaymentCancelRequested {
                payment_reference: p.reference.clone(),
                attempt: p.attempt,
                reason: reason.to_owned(),
            })]
        }
        _ => Vec::new(),
    }
}

/// The command the saga's current step waits on, with the step's name and timeout: what a
/// re-send repeats and an operator's retry sends again. `None` when nothing is awaited (the order
/// is finished, or paused: a paused saga takes no step).
pub fn pending_command(state: &OrderState) -> Option<(EventBody, &'static str, chrono::Duration)> {
    if state.paused.is_some() {
        return None;
    }
    Some(match (state.status, &state.compensation) {
        (OrderStatus::Completed | OrderStatus::Cancelled, _) => return None,
        (_, Some(compensation)) => (
            release_requested(state, compensation.reason.clone()),
            "stock release",
            state.timeouts.inventory(),
        ),
        (OrderStatus::Pending, None) => (
            EventBody::OrderCreated(OrderCreated {
                customer_id: state.customer_id.clone(),
                lines: state.lines.clone(),
                amount: state.amount,
            }),
            "inventory",
            state.timeouts.inventory(),
        ),
        (OrderStatus::StockReserved | OrderStatus::PaymentProcessing, None) => (
            EventBody::PaymentRequested(PaymentRequested {
                amount: state.amount,
                payment_method: state.payment_method.clone(),
                attempt: state.payment.as_ref().map(|p| p.attempt).unwrap_or(1),
            }),
            "payment",
            state.timeouts.payment(),
        ),
    })
}

/// Re-sends the current step's messages, with a fresh deadline, recording who asked and why.
fn operator_retry(state: &OrderState, by: &str, reason: &str, now: DateTime<Utc>) -> Decision {
    // Paused sagas never get here (`decide_paused`), so `None` means finished.
    let Some((body, step, timeout)) = pending_command(state) else {
        return Decision::Ignore("the order is finished");
    };
    let mut next = state.clone();
    bump(&mut next, now);
    next.deadline = Some(deadline_after(now, timeout));
    next.history.push(HistoryEntry {
        status: state.status,
        at: now,
        reason: Some(format!("{step} step retried by operator {by}: {reason}")),
    });
    apply(next, vec![body])
}

/// Cancels on an operator's word: directly while nothing is reserved, else by compensation.
fn operator_cancel(state: &OrderState, by: &str, reason: &str, now: DateTime<Utc>) -> Decision {
    let why = format!("cancelled by operator {by}: {reason}");
    match (state.status, &state.compensation) {
        (OrderStatus::Completed | OrderStatus::Cancelled, _) => {
            Decision::Ignore("the order is finished")
        }
        (_, Some(_)) => Decision::Ignore("the order is already being cancelled"),
        (OrderStatus::Pending, None) => {
            // Inventory releases a reservation that arrives after this (order.cancelled.v1).
            cancel_now(state, now, why, Vec::new())
        }
        (OrderStatus::StockReserved | OrderStatus::PaymentProcessing, None) => {
            let Decision::Apply(mut transition) =
                compensate_payment(state, now, None, "operator_cancelled", &why)
            else {
                return Decision::Ignore("cannot compensate");
            };
            let cancel: Vec<Effect> = cancel_payment(state, &why)
                .into_iter()
                .map(Effect::Publish)
                .collect();
            transition.effects.splice(0..0, cancel);
            Decision::Apply(transition)
        }
    }
}

/// Holds the saga: no effects, the deadline stops (its remaining time is kept).
fn operator_pause(state: &OrderState, by: &str, reason: &str, now: DateTime<Utc>) -> Decision {
    if state.is_terminal() {
        return Decision::Ignore("the order is finished");
    }
    let mut next = state.clone();
    bump(&mut next, now);
    next.paused = Some(Pause {
        by: by.to_owned(),
        reason: reason.to_owned(),
        at: now,
        remaining_ms: state.deadline.map(|d| (d - now).num_milliseconds().max(0)),
        held: Vec::new(),
    });
    next.deadline = None;
    next.history.push(HistoryEntry {
        status: state.status,
        at: now,
        reason: Some(format!("paused by operator {by}: {reason}")),
    });
    apply(next, vec![])
}

/// A paused saga keeps what arrives and acts only on resume. Timers are moot (the deadline is
/// held) and other operator actions wait for the resume, so nothing happens behind the back of
/// the operator who paused it.
fn decide_paused(
    state: &OrderState,
    pause: &Pause,
    event: &SagaEvent,
    now: DateTime<Utc>,
) -> Decision {
    match event {
        SagaEvent::OperatorResume { by, reason } => resume(state, pause, by, reason, now),
        SagaEvent::OperatorPause { .. } => Decision::Ignore("the order is already paused"),
        SagaEvent::OperatorRetry { .. } | SagaEvent::OperatorCancel { .. } => {
            Decision::Ignore("the order is paused: resume it first")
        }
        SagaEvent::DeadlinePassed { .. } => {
            Decision::Ignore("the order is paused: its deadline is held")
        }
        held => {
            let mut next = state.clone();
            bump(&mut next, now);
            if let Some(p) = next.paused.as_mut() {
                p.held.push(held.clone());
            }
            next.history.push(HistoryEntry {
                status: state.status,
                at: now,
                reason: Some(format!("{} held while paused", held.name())),
            });
            apply(next, vec![])
        }
    }
}

/// Un-pauses: the step's clock restarts with the time it had left, then the held events are
/// decided in arrival order; one transition carries all their effects.
fn resume(
    state: &OrderState,
    pause: &Pause,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Decision {
    let mut current = state.clone();
    bump(&mut current, now);
    current.paused = None;
    current.deadline = pause
        .remaining_ms
        .map(|ms| deadline_after(now, chrono::Duration::milliseconds(ms)));
    current.history.push(HistoryEntry {
        status: state.status,
        at: now,
        reason: Some(format!(
            "resumed by operator {by}: {reason} ({} held event(s) to decide)",
            pause.held.len()
        )),
    });
    let mut effects = Vec::new();
    for event in &pause.held {
        if let Decision::Apply(transition) = decide(&current, event, now) {
            current = transition.next;
            effects.extend(transition.effects);
        }
    }
    Decision::Apply(Box::new(Transition {
        next: current,
        effects,
    }))
}

/// A step's deadline passed: give up on it.
fn on_deadline(state: &OrderState, deadline: DateTime<Utc>, now: DateTime<Utc>) -> Decision {
    if state.deadline != Some(deadline) {
        return Decision::Ignore("stale timer: the saga moved on");
    }
    if now < deadline {
        return Decision::Ignore("timer fired early");
    }
    let secs = |d: chrono::Duration| d.num_milliseconds() as f64 / 1000.0;
    match (state.status, &state.compensation) {
        (OrderStatus::Pending, _) => {
            let reason = format!(
                "inventory step timed out after {}s",
                secs(state.timeouts.inventory())
            );
            // Inventory releases a reservation that arrives after this (order.cancelled.v1).
            cancel_now(state, now, reason, Vec::new())
        }
        (OrderStatus::StockReserved | OrderStatus::PaymentProcessing, None) => {
            let reason = format!(
                "payment step timed out after {}s",
                secs(state.timeouts.payment())
            );
            let Decision::Apply(mut transition) =
                compensate_payment(state, now, None, "payment_timeout", &reason)
            else {
                return Decision::Ignore("cannot compensate");
            };
            let cancel: Vec<Effect> = cancel_payment(state, &reason)
                .into_iter()
                .map(Effect::Publish)
                .collect();
            transition.effects.splice(0..0, cancel);
            Decision::Apply(transition)
        }
        (OrderStatus::StockReserved | OrderStatus::PaymentProcessing, Some(compensation)) => {
            // Inventory has not confirmed the release: ask again, and keep waiting.
            let mut next = state.clone();
            bump(&mut next, now);
            next.deadline = Some(deadline_after(now, state.timeouts.inventory()));
            next.history.push(HistoryEntry {
                status: state.status,
                at: now,
                reason: Some("stock release not confirmed in time; asking again".into()),
            });
            apply(
                next,
                vec![release_requested(state, compensation.reason.clone())],
            )
        }
        (OrderStatus::Completed | OrderStatus::Cancelled, _) => {
            Decision::Ignore("the order is finished")
        }
    }
}

/// A success that arrived after the payment step's deadline: the step timed out, so compensate
/// (release the stock) and refund the charge.
fn late_success(state: &OrderState, reference: &str, now: DateTime<Utc>) -> Decision {
    let secs = state.timeouts.payment().num_milliseconds() as f64 / 1000.0;
    let reason = format!("payment step timed out after {secs}s (the payment succeeded too late)");
    let reference_owned = reference.to_owned();
    let Decision::Apply(mut transition) = compensate_payment(
        state,
        now,
        Some(&reference_owned),
        "payment_timeout",
        &reason,
    ) else {
        return Decision::Ignore("cannot compensate");
    };
    transition.next.late_payment = Some(LatePayment {
        reference: reference_owned.clone(),
        at: now,
        refund_id: None,
        refunded_at: None,
    });
    let refund = PaymentRefundRequested {
        payment_reference: reference_owned,
        amount: state.amount,
    };
    transition
        .effects
        .push(Effect::Publish(EventBody::PaymentRefundRequested(refund)));
    Decision::Apply(transition)
}

/// Money was taken for an order that will not be fulfilled: record it and ask for a refund.
fn record_late_payment(state: &OrderState, reference: &str, now: DateTime<Utc>) -> Decision {
    if state.late_payment.is_some() {
        return Decision::Ignore("late payment already recorded");
    }
    let mut next = state.clone();
    bump(&mut next, now);
    next.late_payment = Some(LatePayment {
        reference: reference.to_owned(),
        at: now,
        refund_id: None,
        refunded_at: None,
    });
    next.history.push(HistoryEntry {
        status: next.status,
        at: now,
        reason: Some(format!(
            "payment {reference} succeeded after cancellation; refund requested"
        )),
    });
    let refund = PaymentRefundRequested {
        payment_reference: reference.to_owned(),
        amount: state.amount,
    };
    apply(next, vec![EventBody::PaymentRefundRequested(refund)])
}

fn record_refund(
    state: &OrderState,
    reference: &str,
    refund_id: &str,
    now: DateTime<Utc>,
) -> Decision {
    let Some(late) = state
        .late_payment
        .as_ref()
        .filter(|l| l.reference == reference)
    else {
        return Decision::Ignore("refund of a payment this order did not ask to refund");
    };
    if late.refund_id.is_some() {
        return Decision::Ignore("refund already recorded");
    }
    let mut next = state.clone();
    bump(&mut next, now);
    if let Some(late) = next.late_payment.as_mut() {
        late.refund_id = Some(refund_id.to_owned());
        late.refunded_at = Some(now);
    }
    next.history.push(HistoryEntry {
        status: next.status,
        at: now,
        reason: Some(format!("payment {reference} refunded ({refund_id})")),
    });
    apply(next, vec![])
}

fn out_of_stock_reason(shortages: &[Shortage]) -> String {
    let detail: Vec<String> = shortages
        .iter()
        .map(|s| {
            format!(
                "{} (requested {}, available {})",
                s.sku, s.requested, s.available
            )
        })
        .collect();
    format!("out of stock: {}", detail.join(", "))
}
