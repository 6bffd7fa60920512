//! The payment role's ports in memory: a scripted provider and the charge/refund records, plus
//! the `Payments` harness and builders for payment messages and provider updates.

use actors::ports::ManualClock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use actors::domain::{CorrelationId, OrderId};
use actors::events::{
    Envelope, EventBody, PaymentFailureStreak, PaymentRefundRequested, PaymentRequested,
};
use actors::payments::{FailureStreak, PaymentService};
use actors::ports::{
    AppliedUpdate, ChargeMessages, ChargeOutcome, ChargeRequest, GatewayError, OutcomeMessages,
    PaymentGateway, PaymentRecords, PaymentUpdate, ProviderStatus, RefundRequest, StoreError,
};
use async_trait::async_trait;

use super::{card, envelope, eur, lock, t0, unavailable};

// ------------------------------------------------------------------------------------------------
// Provider
// ------------------------------------------------------------------------------------------------

/// A payment provider that answers from scripts: one outcome per charge, one per refund. An
/// unscripted call fails the test.
#[derive(Default)]
pub struct FakeGateway {
    script: Mutex<VecDeque<Result<ChargeOutcome, GatewayError>>>,
    refund_script: Mutex<VecDeque<Result<String, GatewayError>>>,
    charges: Mutex<Vec<ChargeRequest>>,
    refunds: Mutex<Vec<RefundRequest>>,
    /// (reference, idempotency key) of every cancel call.
    cancels: Mutex<Vec<(String, String)>>,
}

impl FakeGateway {
    pub fn scripted(outcomes: Vec<Result<ChargeOutcome, GatewayError>>) -> Self {
        Self {
            script: Mutex::new(outcomes.into()),
            ..Self::default()
        }
    }

    /// The answers to the next refunds: a refund id, or an error.
    pub fn with_refunds(self, results: Vec<Result<String, GatewayError>>) -> Self {
        *lock(&self.refund_script) = results.into();
        self
    }

    pub fn calls(&self) -> usize {
        lock(&self.charges).len()
    }

    pub fn distinct_idempotency_keys(&self) -> usize {
        lock(&self.charges)
            .iter()
            .map(|c| c.idempotency_key.clone())
            .collect::<HashSet<_>>()
            .len()
    }

    pub fn charges(&self) -> Vec<ChargeRequest> {
        lock(&self.charges).clone()
    }

    pub fn refund_calls(&self) -> usize {
        lock(&self.refunds).len()
    }

    pub fn refunds(&self) -> Vec<RefundRequest> {
        lock(&self.refunds).clone()
    }

    pub fn cancel_calls(&self) -> usize {
        lock(&self.cancels).len()
    }
}

#[async_trait]
impl PaymentGateway for FakeGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        lock(&self.charges).push(request.clone());
        lock(&self.script)
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected charge {request:?}: the script is exhausted"))
    }

    async fn refund(&self, request: &RefundRequest) -> Result<String, GatewayError> {
        lock(&self.refunds).push(request.clone());
        lock(&self.refund_script)
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected refund {request:?}: the script is exhausted"))
    }

    async fn cancel(&self, reference: &str, idempotency_key: &str) -> Result<(), GatewayError> {
        lock(&self.cancels).push((reference.to_owned(), idempotency_key.to_owned()));
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Records
// ------------------------------------------------------------------------------------------------

/// Where a charge stands in the records. `Claimed` is a row created by a provider update that
/// beat the charge's own answer, before that update's status is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeStatus {
    Claimed,
    Processing,
    Failed,
    Canceled,
    Succeeded,
}

impl ChargeStatus {
    /// The progress rule of `PaymentRecords::apply_update`, written out independently of
    /// `ProviderStatus::rank` so the tests pin it: processing < failed = canceled < succeeded.
    fn rank(self) -> u8 {
        match self {
            ChargeStatus::Claimed => 0,
            ChargeStatus::Processing => 1,
            ChargeStatus::Failed | ChargeStatus::Canceled => 2,
            ChargeStatus::Succeeded => 3,
        }
    }

    fn of_outcome(outcome: &ChargeOutcome) -> Self {
        match outcome {
            ChargeOutcome::Succeeded { .. } => ChargeStatus::Succeeded,
            ChargeOutcome::Processing { .. } => ChargeStatus::Processing,
            ChargeOutcome::Declined { .. } => ChargeStatus::Failed,
        }
    }

    fn of_update(status: &ProviderStatus) -> Self {
        match status {
            ProviderStatus::Processing => ChargeStatus::Processing,
            ProviderStatus::Failed { .. } => ChargeStatus::Failed,
            ProviderStatus::Canceled => ChargeStatus::Canceled,
            ProviderStatus::Succeeded => ChargeStatus::Succeeded,
        }
    }
}

/// One charge (order and attempt) as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub status: ChargeStatus,
    pub reference: Option<String>,
    pub correlation_id: CorrelationId,
    /// The provider's answer to the charge call, once recorded.
    pub outcome: Option<ChargeOutcome>,
}

#[derive(Default)]
struct RecordsInner {
    charges: HashMap<(OrderId, u32), Charge>,
    /// Refunds by charge reference: (order, refund id).
    refunds: HashMap<String, (OrderId, String)>,
    /// Every envelope committed with a record, in commit order.
    outbox: Vec<Envelope>,
    unavailable: bool,
    /// The next `record` fails without writing (the store went down after the charge).
    fail_next_record: bool,
    /// The next `is_recorded` answers `false` although the charge is recorded (a provider update
    /// recorded it between the payment role's check and its write).
    hide_next_is_recorded: bool,
    /// How many times `is_recorded` was asked.
    reads: usize,
}

/// Charges and refunds in maps, with Postgres's contract: one row per (order, attempt), whose
/// status only moves forward, and one refund per charge.
#[derive(Default)]
pub struct InMemoryPaymentRecords {
    inner: Mutex<RecordsInner>,
}

impl InMemoryPaymentRecords {
    pub fn set_unavailable(&self, unavailable: bool) {
        lock(&self.inner).unavailable = unavailable;
    }

    pub fn fail_next_record(&self) {
        lock(&self.inner).fail_next_record = true;
    }

    pub fn hide_next_is_recorded(&self) {
        lock(&self.inner).hide_next_is_recorded = true;
    }

    /// How many times the payment role asked whether a charge was recorded.
    pub fn reads(&self) -> usize {
        lock(&self.inner).reads
    }

    /// What the provider answered to the charge call, if that answer was recorded.
    pub fn record_of(&self, order_id: OrderId, attempt: u32) -> Option<ChargeOutcome> {
        self.charge(order_id, attempt).and_then(|c| c.outcome)
    }

    pub fn charge(&self, order_id: OrderId, attempt: u32) -> Option<Charge> {
        lock(&self.inner).charges.get(&(order_id, attempt)).cloned()
    }

    pub fn count(&self) -> usize {
        lock(&self.inner).charges.len()
    }

    pub fn refund_of(&self, reference: &str) -> Option<(OrderId, String)> {
        lock(&self.inner).refunds.get(reference).cloned()
    }

    pub fn outbox(&self) -> Vec<Envelope> {
        lock(&self.inner).outbox.clone()
    }

    pub fn subjects(&self) -> Vec<&'static str> {
        lock(&self.inner)
            .outbox
            .iter()
            .map(Envelope::subject)
            .collect()
    }

    /// The failure-streak alerts in the outbox, with the order each was raised on.
    pub fn streak_alerts(&self) -> Vec<(OrderId, PaymentFailureStreak)> {
        lock(&self.inner)
            .outbox
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::PaymentFailureStreak(alert) => Some((e.order_id, alert.clone())),
                _ => None,
            })
            .collect()
    }
}

#[async_trait]
impl PaymentRecords for InMemoryPaymentRecords {
    async fn recorded_charge(
        &self,
        order_id: OrderId,
        attempt: u32,
    ) -> Result<Option<actors::ports::RecordedCharge>, StoreError> {
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        Ok(inner.charges.get(&(order_id, attempt)).and_then(|c| {
            let status = match c.status {
                ChargeStatus::Claimed => return None,
                ChargeStatus::Processing => ProviderStatus::Processing,
                ChargeStatus::Succeeded => ProviderStatus::Succeeded,
                ChargeStatus::Canceled => ProviderStatus::Canceled,
                ChargeStatus::Failed => match &c.outcome {
                    Some(ChargeOutcome::Declined { code, message, .. }) => ProviderStatus::Failed {
                        code: code.clone(),
                        message: message.clone(),
                    },
                    _ => ProviderStatus::Failed {
                        code: "payment_failed".into(),
                        message: String::new(),
                    },
                },
            };
            Some(actors::ports::RecordedCharge {
                reference: c.reference.clone(),
                status,
            })
        }))
    }

    async fn is_recorded(&self, order_id: OrderId, attempt: u32) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        inner.reads += 1;
        if inner.unavailable {
            return Err(unavailable());
        }
        if std::mem::take(&mut inner.hide_next_is_recorded) {
            return Ok(false);
        }
        Ok(inner.charges.contains_key(&(order_id, attempt)))
    }

    async fn record(
        &self,
        order_id: OrderId,
        attempt: u32,
        correlation_id: &CorrelationId,
        outcome: &ChargeOutcome,
        messages: ChargeMessages,
    ) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable || std::mem::take(&mut inner.fail_next_record) {
            return Err(unavailable());
        }
        if inner.charges.contains_key(&(order_id, attempt)) {
            return Ok(false);
        }
        let reference = match outcome {
            ChargeOutcome::Succeeded { reference } | ChargeOutcome::Processing { reference } => {
                Some(reference.clone())
            }
            ChargeOutcome::Declined { reference, .. } => reference.clone(),
        };
        let charge = Charge {
            status: ChargeStatus::of_outcome(outcome),
            reference,
            correlation_id: correlation_id.clone(),
            outcome: Some(outcome.clone()),
        };
        inner.charges.insert((order_id, attempt), charge);
        let outbox = messages(outcome);
        inner.outbox.extend(outbox);
        Ok(true)
    }

    async fn apply_update(
        &self,
        update: &PaymentUpdate,
        messages: OutcomeMessages<'_, AppliedUpdate>,
    ) -> Result<Option<AppliedUpdate>, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        let by_reference = inner
            .charges
            .iter()
            .find(|(_, c)| c.reference.as_deref() == Some(update.reference.as_str()))
            .map(|(key, _)| *key);
        let key = match (by_reference, update.order_hint) {
            (Some(key), _) => key,
            (None, Some(hint)) => {
                // The update beat the charge's answer: claim the row for the hinted charge.
                inner.charges.entry(hint).or_insert_with(|| Charge {
                    status: ChargeStatus::Claimed,
                    reference: None,
                    correlation_id: update.correlation_hint.clone().unwrap_or_default(),
                    outcome: None,
                });
                hint
            }
            (None, None) => return Ok(None),
        };
        let next = ChargeStatus::of_update(&update.status);
        let Some(charge) = inner.charges.get_mut(&key) else {
            return Ok(None);
        };
        if next.rank() <= charge.status.rank() {
            return Ok(None);
        }
        charge.status = next;
        charge
            .reference
            .get_or_insert_with(|| update.reference.clone());
        let applied = AppliedUpdate {
            order_id: key.0,
            attempt: key.1,
            correlation_id: charge.correlation_id.clone(),
        };
        let envelopes = messages(&applied);
        inner.outbox.extend(envelopes);
        Ok(Some(applied))
    }

    async fn is_refunded(&self, reference: &str) -> Result<bool, StoreError> {
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        Ok(inner.refunds.contains_key(reference))
    }

    async fn record_refund(
        &self,
        order_id: OrderId,
        reference: &str,
        refund_id: &str,
        outbox: &[Envelope],
    ) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        if inner.refunds.contains_key(reference) {
            return Ok(false);
        }
        inner
            .refunds
            .insert(reference.to_owned(), (order_id, refund_id.to_owned()));
        inner.outbox.extend_from_slice(outbox);
        Ok(true)
    }
}

// ------------------------------------------------------------------------------------------------
// Harness and builders
// ------------------------------------------------------------------------------------------------

pub struct Payments {
    pub service: PaymentService,
    pub gateway: Arc<FakeGateway>,
    pub records: Arc<InMemoryPaymentRecords>,
}

/// The payment service as production builds it (default failure-streak threshold).
pub fn payments(script: Vec<Result<ChargeOutcome, GatewayError>>) -> Payments {
    let gateway = Arc::new(FakeGateway::scripted(script));
    let records = Arc::new(InMemoryPaymentRecords::default());
    let service = PaymentService::new(
        gateway.clone(),
        records.clone(),
        Arc::new(ManualClock::at(t0())),
    );
    Payments {
        service,
        gateway,
        records,
    }
}

/// The payment service over `gateway`, alerting after `threshold` failures in a row.
pub fn payments_with_streak(gateway: FakeGateway, threshold: u32) -> Payments {
    let gateway = Arc::new(gateway);
    let records = Arc::new(InMemoryPaymentRecords::default());
    let service = PaymentService::with_streak(
        gateway.clone(),
        records.clone(),
        Arc::new(ManualClock::at(t0())),
        Arc::new(FailureStreak::new(threshold)),
    );
    Payments {
        service,
        gateway,
        records,
    }
}

impl Payments {
    pub async fn on_message(&self, envelope: &Envelope) {
        self.service
            .on_message(envelope)
            .await
            .expect("payment failed");
    }

    /// One delivery from the bus, which says whether it is the message's first.
    pub async fn on_delivery(&self, envelope: &Envelope, first_delivery: bool) {
        self.service
            .on_delivery(envelope, first_delivery)
            .await
            .expect("payment failed");
    }

    pub async fn on_update(&self, update: &PaymentUpdate) -> Option<AppliedUpdate> {
        self.service
            .on_provider_update(update)
            .await
            .expect("provider update failed")
    }
}

pub fn payment_requested(order_id: OrderId, attempt: u32) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::PaymentRequested(PaymentRequested {
            amount: eur(1000),
            payment_method: card(),
            attempt,
        }),
    )
}

pub fn refund_requested(order_id: OrderId, reference: &str) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::PaymentRefundRequested(PaymentRefundRequested {
            payment_reference: reference.into(),
            amount: eur(1000),
        }),
    )
}

pub fn charge_succeeded(reference: &str) -> Result<ChargeOutcome, GatewayError> {
    Ok(ChargeOutcome::Succeeded {
        reference: reference.into(),
    })
}

pub fn charge_processing(reference: &str) -> Result<ChargeOutcome, GatewayError> {
    Ok(ChargeOutcome::Processing {
        reference: reference.into(),
    })
}

pub fn charge_declined() -> Result<ChargeOutcome, GatewayError> {
    Ok(ChargeOutcome::Declined {
        reference: Some("pi_declined".into()),
        code: "card_declined".into(),
        message: "Your card was declined.".into(),
    })
}

/// A provider update routed by reference only (no metadata).
pub fn update(reference: &str, status: ProviderStatus) -> PaymentUpdate {
    PaymentUpdate {
        reference: reference.into(),
        status,
        order_hint: None,
        correlation_hint: None,
    }
}

/// A provider update whose charge metadata names the order, attempt and correlation id.
pub fn hinted_update(
    reference: &str,
    status: ProviderStatus,
    order_id: OrderId,
    attempt: u32,
    correlation_id: &CorrelationId,
) -> PaymentUpdate {
    PaymentUpdate {
        reference: reference.into(),
        status,
        order_hint: Some((order_id, attempt)),
        correlation_hint: Some(correlation_id.clone()),
    }
}

pub fn provider_failed() -> ProviderStatus {
    ProviderStatus::Failed {
        code: "card_declined".into(),
        message: "Your card was declined.".into(),
    }
}
