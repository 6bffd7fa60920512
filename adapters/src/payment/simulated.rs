//! An in-process payment gateway that answers like Stripe's test mode does for its test payment
//! methods: `pm_card_visa` (and any other `pm_card_*`) succeeds, `pm_card_chargeDeclined` is
//! declined with `card_declined`, `pm_card_chargeDeclinedInsufficientFunds` with
//! `insufficient_funds`. It stands in until the Stripe client and its fake server exist (issue 3);
//! the `PaymentGateway` port is already shaped for them (idempotency key, processing outcome).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use actors::ports::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway};

#[derive(Default)]
pub struct SimulatedGateway {
    /// Replays the first answer for a repeated idempotency key, as Stripe does.
    /// A std mutex: held for a map lookup only, never across an await.
    answers: Mutex<HashMap<String, ChargeOutcome>>,
}

impl SimulatedGateway {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct charges made (tests use it to prove no double charge).
    pub fn charges(&self) -> usize {
        self.answers.lock().map(|a| a.len()).unwrap_or(0)
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let mut answers = self
            .answers
            .lock()
            .map_err(|_| GatewayError::Transient("simulated gateway poisoned".into()))?;
        if let Some(previous) = answers.get(&request.idempotency_key) {
            return Ok(previous.clone());
        }
        let reference = format!("pi_sim_{}", request.order_id.as_uuid().simple());
        let method = request.payment_method.as_str();
        let outcome = match method {
            "pm_card_chargeDeclined" => ChargeOutcome::Declined {
                reference: Some(reference),
                code: "card_declined".into(),
                message: "Your card was declined.".into(),
            },
            "pm_card_chargeDeclinedInsufficientFunds" => ChargeOutcome::Declined {
                reference: Some(reference),
                code: "insufficient_funds".into(),
                message: "Your card has insufficient funds.".into(),
            },
            m if m.starts_with("pm_card_") => ChargeOutcome::Succeeded { reference },
            _ => ChargeOutcome::Declined {
                reference: None,
                code: "resource_missing".into(),
                message: format!("No such PaymentMethod: '{method}'"),
            },
        };
        answers.insert(request.idempotency_key.clone(), outcome.clone());
        Ok(outcome)
    }
}
