//! What each payment method does. Stripe's own test methods behave as in Stripe's test mode;
//! the `pm_fake_*` methods script what test mode cannot (documented in docs/stripe-fake.md).

use std::time::Duration;

/// A webhook the fake will send for an intent, `after` its creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    Succeeded,
    Processing,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// Status in the create response.
    pub status: &'static str,
    /// `Some((code, decline_code, message))`: the create answers 402 with this card error.
    pub decline: Option<(&'static str, &'static str, &'static str)>,
    /// Answer 500 to the first create with a given idempotency key (nothing is stored).
    pub fail_first_create: bool,
    /// Webhooks to send, each after a delay (in units of the configured processing delay).
    pub webhooks: Vec<(Scheduled, u32)>,
    /// Deliver every webhook event twice, with the same event id.
    pub deliver_twice: bool,
}

pub const DECLINED: (&str, &str, &str) = (
    "card_declined",
    "generic_decline",
    "Your card was declined.",
);
pub const INSUFFICIENT: (&str, &str, &str) = (
    "card_declined",
    "insufficient_funds",
    "Your card has insufficient funds.",
);

/// The behaviour of `method`, or `None` for a method Stripe would not know.
pub fn behaviour(method: &str) -> Option<Behaviour> {
    let ok = |webhooks: Vec<(Scheduled, u32)>| Behaviour {
        status: "succeeded",
        decline: None,
        fail_first_create: false,
        webhooks,
        deliver_twice: false,
    };
    let processing = |webhooks: Vec<(Scheduled, u32)>| Behaviour {
        status: "processing",
        decline: None,
        fail_first_create: false,
        webhooks,
        deliver_twice: false,
    };
    let declined = |error| Behaviour {
        status: "requires_payment_method",
        decline: Some(error),
        fail_first_create: false,
        webhooks: vec![(Scheduled::Failed, 0)],
        deliver_twice: false,
    };
    Some(match method {
        "pm_card_chargeDeclined" => declined(DECLINED),
        "pm_card_chargeDeclinedInsufficientFunds" => declined(INSUFFICIENT),
        "pm_fake_processing_then_succeeds" => {
            processing(vec![(Scheduled::Processing, 0), (Scheduled::Succeeded, 1)])
        }
        "pm_fake_no_webhook" => processing(vec![]),
        "pm_fake_duplicate_webhooks" => Behaviour {
            deliver_twice: true,
            ..ok(vec![(Scheduled::Succeeded, 0)])
        },
        "pm_fake_processing_after_succeeded" => {
            ok(vec![(Scheduled::Succeeded, 0), (Scheduled::Processing, 1)])
        }
        "pm_fake_fail_first_create" => Behaviour {
            fail_first_create: true,
            ..ok(vec![(Scheduled::Succeeded, 0)])
        },
        "pm_fake_fails_then_succeeds" => {
            processing(vec![(Scheduled::Failed, 0), (Scheduled::Succeeded, 2)])
        }
        m if m.starts_with("pm_card_") => ok(vec![(Scheduled::Succeeded, 0)]),
        _ => return None,
    })
}

pub fn delay(step: u32, unit: Duration) -> Duration {
    unit.saturating_mul(step)
}
