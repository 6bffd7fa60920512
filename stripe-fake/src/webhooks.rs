//! Webhook delivery: events signed with `Stripe-Signature` (a fresh timestamp per attempt), POSTed
//! to the configured URL; anything but 2xx is retried with exponential backoff, as Stripe does.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::state::{DeliveryRecord, FakeState};

/// Builds a Stripe event around a snapshot of an object.
pub fn event(kind: &str, object: &Value, idempotency_key: Option<&str>) -> Value {
    json!({
        "id": format!("evt_fake_{}", uuid::Uuid::new_v4().simple()),
        "object": "event",
        "api_version": "2024-06-20",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "type": kind,
        "data": {"object": object},
        "request": {"id": null, "idempotency_key": idempotency_key},
    })
}

/// Delivers `event` in the background, `copies` times (each a full delivery with retries).
pub fn deliver(state: &Arc<FakeState>, event: Value, copies: u32) {
    for _ in 0..copies.max(1) {
        let state = state.clone();
        let event = event.clone();
        tokio::spawn(async move { deliver_one(&state, &event).await });
    }
}

async fn deliver_one(state: &Arc<FakeState>, event: &Value) {
    let body = event.to_string();
    let index = state.with(|inner| {
        inner.deliveries.push(DeliveryRecord {
            event_id: event["id"].as_str().unwrap_or_default().to_owned(),
            event_type: event["type"].as_str().unwrap_or_default().to_owned(),
            payment_intent: event["data"]["object"]["id"].as_str().map(str::to_owned),
            attempts: 0,
            delivered: false,
        });
        inner.deliveries.len() - 1
    });
    let mut backoff = state.config().webhook_initial_backoff;
    let mut attempt = 0;
    loop {
        let config = state.config();
        if attempt >= config.webhook_max_attempts {
            tracing::warn!(event = %event["id"], "webhook abandoned after {attempt} attempts");
            return;
        }
        let Some(url) = config.webhook_url.clone() else {
            // No endpoint yet: wait for one without spending attempts.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        attempt += 1;
        let header = stripe_signature::signature_header(
            &config.webhook_secret,
            chrono::Utc::now().timestamp(),
            body.as_bytes(),
        );
        let result = state
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Stripe-Signature", header)
            .body(body.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let delivered = matches!(&result, Ok(r) if r.status().is_success());
        state.with(|inner| {
            if let Some(record) = inner.deliveries.get_mut(index) {
                record.attempts = attempt;
                record.delivered = delivered;
            }
        });
        if delivered {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
