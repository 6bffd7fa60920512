//! Reading verified Stripe webhook events: which ones matter and what they say about a charge.
//! `payment_intent.{succeeded,payment_failed,processing,canceled}` become `PaymentUpdate`s routed
//! by the PaymentIntent id, with `metadata.order_id` (and `metadata.attempt`) as fallback; every
//! other type is acknowledged and ignored.

use serde::Deserialize;

use actors::domain::{CorrelationId, OrderId};
use actors::ports::{PaymentUpdate, ProviderStatus};

#[derive(Debug, Clone, Deserialize)]
pub struct StripeEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

/// The event type as a metric label: the types we handle by name, anything else as `other`,
/// so a sender cannot grow the label set.
pub fn type_label(kind: &str) -> &'static str {
    match kind {
        "payment_intent.succeeded" => "payment_intent.succeeded",
        "payment_intent.processing" => "payment_intent.processing",
        "payment_intent.canceled" => "payment_intent.canceled",
        "payment_intent.payment_failed" => "payment_intent.payment_failed",
        _ => "other",
    }
}

/// Parses a (verified) event body. Only the fields routing needs are required.
pub fn parse_event(body: &[u8]) -> Result<StripeEvent, serde_json::Error> {
    serde_json::from_slice(body)
}

/// What this event says about a PaymentIntent, if it is one of the types ordersaga handles.
pub fn payment_update(event: &StripeEvent) -> Option<PaymentUpdate> {
    let object = &event.data.object;
    let status = match event.kind.as_str() {
        "payment_intent.succeeded" => ProviderStatus::Succeeded,
        "payment_intent.processing" => ProviderStatus::Processing,
        "payment_intent.canceled" => ProviderStatus::Canceled,
        "payment_intent.payment_failed" => {
            let error = &object["last_payment_error"];
            let code = error["code"]
                .as_str()
                .or_else(|| error["decline_code"].as_str())
                .unwrap_or("payment_failed");
            let message = error["message"].as_str().unwrap_or("The payment failed.");
            ProviderStatus::Failed {
                code: code.to_owned(),
                message: message.to_owned(),
            }
        }
        _ => return None,
    };
    let reference = object["id"].as_str()?.to_owned();
    let metadata = &object["metadata"];
    let order_hint = metadata["order_id"]
        .as_str()
        .and_then(|id| OrderId::parse(id).ok())
        .map(|id| {
            let attempt = metadata["attempt"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or(1);
            (id, attempt)
        });
    let correlation_hint = metadata["correlation_id"]
        .as_str()
        .and_then(|c| CorrelationId::parse(c).ok());
    Some(PaymentUpdate {
        reference,
        status,
        order_hint,
        correlation_hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, object: serde_json::Value) -> StripeEvent {
        StripeEvent {
            id: "evt_1".into(),
            kind: kind.into(),
            data: EventData { object },
        }
    }

    #[test]
    fn the_four_payment_intent_types_map_to_updates() {
        let order = OrderId::new();
        let object = serde_json::json!({"id": "pi_1", "metadata": {"order_id": order.to_string(), "attempt": "2"}});
        let cases = [
            ("payment_intent.succeeded", ProviderStatus::Succeeded),
            ("payment_intent.processing", ProviderStatus::Processing),
            ("payment_intent.canceled", ProviderStatus::Canceled),
        ];
        for (kind, status) in cases {
            let update =
                payment_update(&event(kind, object.clone())).unwrap_or_else(|| panic!("{kind}"));
            assert_eq!(update.status, status);
            assert_eq!(update.reference, "pi_1");
            assert_eq!(update.order_hint, Some((order, 2)));
        }
    }

    #[test]
    fn a_failure_keeps_stripes_code_and_message() {
        let object = serde_json::json!({"id": "pi_1", "last_payment_error": {"code": "card_declined", "message": "Your card was declined."}});
        let update =
            payment_update(&event("payment_intent.payment_failed", object)).expect("update");
        assert_eq!(
            update.status,
            ProviderStatus::Failed {
                code: "card_declined".into(),
                message: "Your card was declined.".into()
            }
        );
        assert_eq!(update.order_hint, None);
    }

    #[test]
    fn other_types_and_objects_without_an_id_are_ignored() {
        assert!(
            payment_update(&event("charge.refunded", serde_json::json!({"id": "ch_1"}))).is_none()
        );
        assert!(
            payment_update(&event("payment_intent.succeeded", serde_json::json!({}))).is_none()
        );
    }
}
