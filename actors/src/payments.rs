//! The payment role's logic: turn `payment.requested.v1` into exactly one charge and report the
//! outcome as payment events, committed with the payment record (transactional outbox).
//!
//! Not an actor: requests for different orders are independent, and the provider's idempotency
//! key (derived from order id and attempt) makes concurrent duplicates harmless.

use std::sync::Arc;

use tracing::{info, warn};

use crate::events::{
    Envelope, EventBody, PaymentFailed, PaymentPending, PaymentRequested, PaymentSucceeded,
};
use crate::ports::{
    ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway, PaymentRecords, SharedClock,
    StoreError,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Gateway(GatewayError),
}

#[derive(Clone)]
pub struct PaymentService {
    gateway: Arc<dyn PaymentGateway>,
    records: Arc<dyn PaymentRecords>,
    clock: SharedClock,
}

/// The idempotency key for one payment attempt of one order.
pub fn idempotency_key(envelope: &Envelope, attempt: u32) -> String {
    format!("ordersaga-{}-payment-{attempt}", envelope.order_id)
}

impl PaymentService {
    pub fn new(
        gateway: Arc<dyn PaymentGateway>,
        records: Arc<dyn PaymentRecords>,
        clock: SharedClock,
    ) -> Self {
        Self {
            gateway,
            records,
            clock,
        }
    }

    /// Handles one message; only `payment.requested.v1` concerns the payment role.
    pub async fn on_message(&self, envelope: &Envelope) -> Result<(), PaymentError> {
        if let EventBody::PaymentRequested(request) = &envelope.body {
            self.charge(envelope, request).await?;
        }
        Ok(())
    }

    async fn charge(
        &self,
        envelope: &Envelope,
        request: &PaymentRequested,
    ) -> Result<(), PaymentError> {
        let order_id = envelope.order_id;
        if self.records.is_recorded(order_id, request.attempt).await? {
            return Ok(());
        }
        let charge = ChargeRequest {
            order_id,
            correlation_id: envelope.correlation_id.clone(),
            amount: request.amount,
            payment_method: request.payment_method.clone(),
            idempotency_key: idempotency_key(envelope, request.attempt),
        };
        let outcome = match self.gateway.charge(&charge).await {
            Ok(outcome) => outcome,
            Err(GatewayError::Transient(e)) => {
                warn!(%order_id, error = %e, "payment provider unavailable; the request will be redelivered");
                return Err(PaymentError::Gateway(GatewayError::Transient(e)));
            }
            // Retrying cannot help, and an order must never wait forever: fail the payment so the
            // saga compensates.
            Err(GatewayError::Permanent(message)) => ChargeOutcome::Declined {
                reference: None,
                code: "payment_provider_error".into(),
                message,
            },
        };
        let now = self.clock.now();
        let event = |body| Envelope::new(order_id, envelope.correlation_id.clone(), now, body);
        let outbox: Vec<Envelope> = match &outcome {
            ChargeOutcome::Succeeded { reference } => vec![
                event(EventBody::PaymentPending(PaymentPending {
                    payment_reference: reference.clone(),
                })),
                event(EventBody::PaymentSucceeded(PaymentSucceeded {
                    payment_reference: reference.clone(),
                })),
            ],
            ChargeOutcome::Processing { reference } => {
                vec![event(EventBody::PaymentPending(PaymentPending {
                    payment_reference: reference.clone(),
                }))]
            }
            ChargeOutcome::Declined {
                reference,
                code,
                message,
            } => vec![event(EventBody::PaymentFailed(PaymentFailed {
                payment_reference: reference.clone(),
                code: code.clone(),
                message: message.clone(),
            }))],
        };
        if self
            .records
            .record(order_id, request.attempt, &outcome, &outbox)
            .await?
        {
            info!(%order_id, correlation_id = %envelope.correlation_id, outcome = ?outcome, "payment recorded");
        }
        Ok(())
    }
}
