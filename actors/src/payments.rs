//! The payment role's logic, independent of the provider:
//! - `payment.requested.v1` → exactly one charge (the provider idempotency key is derived from
//!   order and attempt), recorded with the messages it implies (transactional outbox);
//! - provider updates (Stripe webhooks) → payment events, applied only when they move a charge
//!   forward, so a `processing` that arrives after `succeeded` changes nothing;
//! - `payment.refund_requested.v1` → exactly one refund;
//! - a streak of consecutive failures raises an alert (error log, metric, event).
//!
//! Not an actor: requests for different orders are independent, and idempotency keys plus the
//! records' uniqueness make concurrent duplicates harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Utc};
use tracing::{debug, error, info, warn};

use crate::domain::{CorrelationId, OrderId};
use crate::events::{
    Envelope, EventBody, PaymentCancelRequested, PaymentCanceled, PaymentFailed,
    PaymentFailureStreak, PaymentPending, PaymentRefundRequested, PaymentRefunded,
    PaymentRequested, PaymentSucceeded,
};
use crate::ports::{
    AppliedUpdate, ChargeMessages, ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway,
    PaymentRecords, PaymentUpdate, ProviderStatus, RefundRequest, SharedClock, StoreError,
};
use crate::saga::SagaEvent;

/// How old a payment request may be and still be charged without reading the records first on
/// its first delivery (see `PaymentService::on_delivery`).
const FRESH_REQUEST: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Metric counting failure-streak alerts.
pub const FAILURE_STREAK_ALERTS: &str = "payment_failure_streak_alerts_total";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Gateway(GatewayError),
}

/// The idempotency key for one payment attempt of one order.
pub fn idempotency_key(order_id: OrderId, attempt: u32) -> String {
    format!("ordersaga-{order_id}-payment-{attempt}")
}

/// The idempotency key for refunding one charge of one order.
pub fn refund_key(order_id: OrderId, reference: &str) -> String {
    format!("ordersaga-{order_id}-refund-{reference}")
}

/// The idempotency key for canceling one charge of one order.
pub fn cancel_key(order_id: OrderId, reference: &str) -> String {
    format!("ordersaga-{order_id}-cancel-{reference}")
}

/// Counts consecutive payment failures across orders; fires at the threshold and at every
/// further multiple of it while the streak lasts, so a long outage keeps alerting.
#[derive(Debug)]
pub struct FailureStreak {
    threshold: u32,
    consecutive: AtomicU32,
}

impl FailureStreak {
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            consecutive: AtomicU32::new(0),
        }
    }

    pub fn success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// Records a failure; returns the streak length when it should alert.
    pub fn failure(&self) -> Option<u32> {
        let n = self
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        n.is_multiple_of(self.threshold).then_some(n)
    }

    pub fn current(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Counts a failure; at the threshold, logs an error, bumps the metric and returns the event.
    fn alert(
        &self,
        order_id: OrderId,
        correlation_id: &CorrelationId,
        code: &str,
        now: DateTime<Utc>,
    ) -> Option<Envelope> {
        let n = self.failure()?;
        error!(%order_id, consecutive_failures = n, threshold = self.threshold, last_code = code, "payment failure streak");
        metrics::counter!(FAILURE_STREAK_ALERTS).increment(1);
        let body = EventBody::PaymentFailureStreak(PaymentFailureStreak {
            consecutive_failures: n,
            threshold: self.threshold,
            last_code: code.to_owned(),
        });
        Some(Envelope::new(order_id, correlation_id.clone(), now, body))
    }
}

#[derive(Clone)]
pub struct PaymentService {
    gateway: Arc<dyn PaymentGateway>,
    records: Arc<dyn PaymentRecords>,
    clock: SharedClock,
    streak: Arc<FailureStreak>,
}

impl PaymentService {
    pub fn new(
        gateway: Arc<dyn PaymentGateway>,
        records: Arc<dyn PaymentRecords>,
        clock: SharedClock,
    ) -> Self {
        Self::with_streak(gateway, records, clock, Arc::new(FailureStreak::new(5)))
    }

    pub fn with_streak(
        gateway: Arc<dyn PaymentGateway>,
        records: Arc<dyn PaymentRecords>,
        clock: SharedClock,
        streak: Arc<FailureStreak>,
    ) -> Self {
        Self {
            gateway,
            records,
            clock,
            streak,
        }
    }

    pub fn streak(&self) -> &FailureStreak {
        &self.streak
    }

    /// Handles one message from the bus; only payment commands concern the payment role.
    /// Without delivery information every request is checked against the records first.
    pub async fn on_message(&self, envelope: &Envelope) -> Result<(), PaymentError> {
        self.on_delivery(envelope, false).await
    }

    /// Handles one delivery (see `answer`), dropping the answer: it also travels as a payment
    /// event in the outbox.
    pub async fn on_delivery(
        &self,
        envelope: &Envelope,
        first_delivery: bool,
    ) -> Result<(), PaymentError> {
        self.answer(envelope, first_delivery).await.map(|_| ())
    }

    /// Handles one delivery; `first_delivery` is the bus's word that this message was not
    /// delivered before. A fresh request on its first delivery is charged without reading the
    /// records: the read would find nothing (a redelivery is never a first delivery), and the
    /// rare duplicate publication is made harmless by the idempotency key, under which the
    /// provider answers the charge it already made (it keeps keys for 24 hours; "fresh" is well
    /// inside that), and by the record, which stays the one written first.
    ///
    /// Returns the saga's answer: the charge's outcome as recorded (for a repeated request, the
    /// charge as it stands now, so a saga whose answer was lost gets it again), or the refund.
    pub async fn answer(
        &self,
        envelope: &Envelope,
        first_delivery: bool,
    ) -> Result<Option<SagaEvent>, PaymentError> {
        match &envelope.body {
            EventBody::PaymentRequested(request) => {
                let fresh = self.clock.now() - envelope.occurred_at < FRESH_REQUEST;
                self.charge(envelope, request, !(first_delivery && fresh))
                    .await
            }
            EventBody::PaymentRefundRequested(request) => self.refund(envelope, request).await,
            EventBody::PaymentCancelRequested(request) => {
                self.cancel(envelope, request).await.map(|()| None)
            }
            _ => Ok(None),
        }
    }

    async fn charge(
        &self,
        envelope: &Envelope,
        request: &PaymentRequested,
        check_records: bool,
    ) -> Result<Option<SagaEvent>, PaymentError> {
        let order_id = envelope.order_id;
        if check_records && self.records.is_recorded(order_id, request.attempt).await? {
            let recorded = self
                .records
                .recorded_charge(order_id, request.attempt)
                .await?;
            return Ok(recorded.and_then(|c| answer_of(c.reference, &c.status)));
        }
        // Until the outcome is recorded (this function returns), an overtaking webhook waits.
        let _in_flight = self.records.charging(order_id, request.attempt);
        let charge = ChargeRequest {
            order_id,
            correlation_id: envelope.correlation_id.clone(),
            amount: request.amount,
            payment_method: request.payment_method.clone(),
            attempt: request.attempt,
            idempotency_key: idempotency_key(order_id, request.attempt),
        };
        let outcome = self.ask_provider(&charge).await?;
        let messages = self.outcome_messages(order_id, envelope.correlation_id.clone());
        let recorded = self
            .records
            .record(
                order_id,
                request.attempt,
                &envelope.correlation_id,
                &outcome,
                messages,
            )
            .await?;
        if recorded {
            debug!(%order_id, correlation_id = %envelope.correlation_id, outcome = ?outcome, "payment recorded");
        }
        Ok(Some(saga_event_of(outcome)))
    }

    /// The provider's answer to a charge: a transient failure is an error (the request is
    /// redelivered), a permanent one a declined charge.
    async fn ask_provider(&self, charge: &ChargeRequest) -> Result<ChargeOutcome, PaymentError> {
        match self.gateway.charge(charge).await {
            Ok(outcome) => Ok(outcome),
            Err(GatewayError::Transient(e)) => {
                warn!(order_id = %charge.order_id, error = %e, "payment provider unavailable; the request will be redelivered");
                Err(PaymentError::Gateway(GatewayError::Transient(e)))
            }
            // Retrying cannot help, and an order must never wait forever: fail the payment so the
            // saga compensates.
            Err(GatewayError::Permanent(message)) => Ok(ChargeOutcome::Declined {
                reference: None,
                code: "payment_provider_error".into(),
                message,
            }),
        }
    }

    /// The messages a charge's outcome sends, built by the records only when the outcome is new,
    /// so a redelivered request or an outcome a webhook reported first never counts twice
    /// towards the failure streak.
    fn outcome_messages(&self, order_id: OrderId, correlation_id: CorrelationId) -> ChargeMessages {
        let now = self.clock.now();
        let streak = self.streak.clone();
        Box::new(move |outcome: &ChargeOutcome| {
            let event = |body| Envelope::new(order_id, correlation_id.clone(), now, body);
            match outcome {
                ChargeOutcome::Succeeded { reference } => {
                    streak.success();
                    // One message: the saga records the processing step and the success in
                    // one transition (a `payment.pending.v1` first would cost a round trip of
                    // its own and tell the saga nothing the success does not).
                    vec![event(EventBody::PaymentSucceeded(PaymentSucceeded {
                        payment_reference: reference.clone(),
                    }))]
                }
                ChargeOutcome::Processing { reference } => vec![event(pending(reference))],
                ChargeOutcome::Declined {
                    reference,
                    code,
                    message,
                } => {
                    let mut out = vec![event(EventBody::PaymentFailed(PaymentFailed {
                        payment_reference: reference.clone(),
                        code: code.clone(),
                        message: message.clone(),
                    }))];
                    out.extend(streak.alert(order_id, &correlation_id, code, now));
                    out
                }
            }
        })
    }

    /// Applies what the provider reports about a charge (a verified webhook).
    pub async fn on_provider_update(
        &self,
        update: &PaymentUpdate,
    ) -> Result<Option<AppliedUpdate>, PaymentError> {
        let now = self.clock.now();
        let messages = |applied: &AppliedUpdate| {
            let event =
                |body| Envelope::new(applied.order_id, applied.correlation_id.clone(), now, body);
            let reference = update.reference.clone();
            let mut out = vec![event(match &update.status {
                ProviderStatus::Processing => pending(&reference),
                ProviderStatus::Succeeded => EventBody::PaymentSucceeded(PaymentSucceeded {
                    payment_reference: reference,
                }),
                ProviderStatus::Failed { code, message } => {
                    EventBody::PaymentFailed(PaymentFailed {
                        payment_reference: Some(reference),
                        code: code.clone(),
                        message: message.clone(),
                    })
                }
                ProviderStatus::Canceled => EventBody::PaymentCanceled(PaymentCanceled {
                    payment_reference: reference,
                }),
            })];
            match &update.status {
                ProviderStatus::Succeeded => self.streak.success(),
                ProviderStatus::Failed { code, .. } => {
                    out.extend(self.streak.alert(
                        applied.order_id,
                        &applied.correlation_id,
                        code,
                        now,
                    ));
                }
                _ => {}
            }
            out
        };
        let applied = self.records.apply_update(update, &messages).await?;
        match &applied {
            Some(a) => {
                debug!(order_id = %a.order_id, correlation_id = %a.correlation_id, reference = %update.reference, status = ?update.status, "payment update applied")
            }
            None => {
                debug!(reference = %update.reference, status = ?update.status, "payment update ignored (unknown charge, duplicate or regression)")
            }
        }
        Ok(applied)
    }

    #[tracing::instrument(skip_all, fields(order_id = %envelope.order_id, correlation_id = %envelope.correlation_id))]
    async fn refund(
        &self,
        envelope: &Envelope,
        request: &PaymentRefundRequested,
    ) -> Result<Option<SagaEvent>, PaymentError> {
        let order_id = envelope.order_id;
        let reference = &request.payment_reference;
        if self.records.is_refunded(reference).await? {
            return Ok(None);
        }
        let refund = RefundRequest {
            order_id,
            payment_reference: reference.clone(),
            idempotency_key: refund_key(order_id, reference),
        };
        let refund_id = match self.gateway.refund(&refund).await {
            Ok(id) => id,
            Err(GatewayError::Transient(e)) => {
                return Err(PaymentError::Gateway(GatewayError::Transient(e)));
            }
            Err(GatewayError::Permanent(e)) => {
                // Nothing automatic can fix this; an operator must look. Do not redeliver forever.
                error!(%order_id, %reference, error = %e, "refund refused by the provider; manual action needed");
                return Ok(None);
            }
        };
        let body = EventBody::PaymentRefunded(PaymentRefunded {
            payment_reference: reference.clone(),
            refund_id: refund_id.clone(),
        });
        let outbox = vec![Envelope::new(
            order_id,
            envelope.correlation_id.clone(),
            self.clock.now(),
            body,
        )];
        if self
            .records
            .record_refund(order_id, reference, &refund_id, &outbox)
            .await?
        {
            info!(%order_id, %reference, %refund_id, "payment refunded");
        }
        Ok(Some(SagaEvent::PaymentRefunded {
            reference: reference.clone(),
            refund_id,
        }))
    }

    /// Cancels a charge the saga gave up on. A charge that already succeeded cannot be canceled;
    /// its success reaches the saga as a late payment and is refunded.
    #[tracing::instrument(skip_all, fields(order_id = %envelope.order_id, correlation_id = %envelope.correlation_id))]
    async fn cancel(
        &self,
        envelope: &Envelope,
        request: &PaymentCancelRequested,
    ) -> Result<(), PaymentError> {
        let order_id = envelope.order_id;
        let Some(reference) = &request.payment_reference else {
            info!(%order_id, "no charge to cancel yet; a later success will be refunded");
            return Ok(());
        };
        match self
            .gateway
            .cancel(reference, &cancel_key(order_id, reference))
            .await
        {
            Ok(()) => {
                info!(%order_id, %reference, reason = %request.reason, "payment canceled");
                Ok(())
            }
            Err(GatewayError::Transient(e)) => {
                Err(PaymentError::Gateway(GatewayError::Transient(e)))
            }
            Err(GatewayError::Permanent(e)) => {
                info!(%order_id, %reference, error = %e, "payment could not be canceled (already final)");
                Ok(())
            }
        }
    }
}

/// What the saga hears of a charge in this status; `None` for a charge still in processing
/// whose id is unknown (there is nothing to tell yet).
pub fn answer_of(reference: Option<String>, status: &ProviderStatus) -> Option<SagaEvent> {
    Some(match (status, reference) {
        (ProviderStatus::Processing, Some(reference)) => SagaEvent::PaymentPending { reference },
        (ProviderStatus::Processing, None) => return None,
        (ProviderStatus::Succeeded, Some(reference)) => SagaEvent::PaymentSucceeded { reference },
        (ProviderStatus::Canceled, Some(reference)) => SagaEvent::PaymentCanceled { reference },
        (ProviderStatus::Failed { code, message }, reference) => SagaEvent::PaymentFailed {
            reference,
            code: code.clone(),
            message: message.clone(),
        },
        (ProviderStatus::Succeeded | ProviderStatus::Canceled, None) => return None,
    })
}

fn pending(reference: &str) -> EventBody {
    EventBody::PaymentPending(PaymentPending {
        payment_reference: reference.to_owned(),
    })
}

/// What the saga learns from a charge's outcome.
fn saga_event_of(outcome: ChargeOutcome) -> SagaEvent {
    match outcome {
        ChargeOutcome::Succeeded { reference } => SagaEvent::PaymentSucceeded { reference },
        ChargeOutcome::Processing { reference } => SagaEvent::PaymentPending { reference },
        ChargeOutcome::Declined {
            reference,
            code,
            message,
        } => SagaEvent::PaymentFailed {
            reference,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streak_alerts_at_the_threshold_and_every_multiple_and_resets_on_success() {
        let streak = FailureStreak::new(3);
        assert_eq!(
            [streak.failure(), streak.failure(), streak.failure()],
            [None, None, Some(3)]
        );
        assert_eq!(
            [streak.failure(), streak.failure(), streak.failure()],
            [None, None, Some(6)]
        );
        streak.success();
        assert_eq!(streak.current(), 0);
        assert_eq!([streak.failure(), streak.failure()], [None, None]);
    }
}
