//! `POST /payments/webhook`: Stripe's webhook endpoint. The signature is checked over the raw
//! body (never a re-serialised one); a bad or missing signature is a 400 and changes nothing. A
//! verified event is recorded durably by id and acknowledged at once; the payment role's worker
//! does the rest asynchronously. An event reporting a status this process already committed for
//! the charge is acknowledged without being recorded (`already_applied`: it changes nothing).
//! Duplicates and event types we do not handle get 2xx too, as Stripe expects (only a 2xx stops
//! its retries).
//!
//! In a cluster, a verified event for an order another instance owns is handed to that owner
//! (`owner_forwarding`), whose answer is the answer: the owner knows in memory what its charges
//! committed, so most events cost it no write at all. Only when no owner answers is the event
//! recorded here, so a 2xx always means the event is durable or already applied.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use adapters::stripe::Recorded;
use adapters::stripe::webhook::{StripeEvent, parse_event, payment_update, type_label};

use super::{ApiError, AppState};

#[utoipa::path(
    post,
    path = "/payments/webhook",
    tag = "payments",
    params(("Stripe-Signature" = String, Header, description = "Stripe's signature over the raw body (`t=...,v1=...`), checked against `STRIPE_WEBHOOK_SECRET` (or the fake's secret).")),
    request_body(content = Object, content_type = "application/json", description = "A Stripe event (`id`, `type`, `data.object`...), read as raw bytes up to 512 KiB; the `Content-Type` is not checked."),
    responses(
        (status = 200, description = "Recorded (or already recorded: `duplicate`; or not recorded because it reports what is already known of the charge: `already_applied`); event types that are not handled are acknowledged too. In a cluster, an event for an order another instance owns is answered by that owner (forwarded over NATS), or recorded here when no owner answers.", body = super::openapi::WebhookAck),
        (status = 400, description = "`invalid_signature` (field `Stripe-Signature`) or `malformed_event`; nothing changed.", body = super::error::ErrorBody),
        (status = 413, description = "The body exceeds 512 KiB (axum's plain-text answer, not the JSON error shape).", body = String, content_type = "text/plain"),
        (status = 503, description = "`unavailable`: this process does not run the payment role, or the database is unavailable.", body = super::error::ErrorBody),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    extensions: Extensions,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(payments) = &state.payments else {
        return Err(ApiError::unavailable(
            "this process does not run the payment role",
        ));
    };
    let event = verified_event(&payments.verifier, &headers, &body)?;
    let owner = payment_update(&event)
        .and_then(|update| update.order_hint)
        .and_then(|(order_id, _)| {
            super::owner_forwarding::elsewhere(&state, &extensions, order_id)
        });
    if let Some(partition) = owner {
        let answered = super::owner_forwarding::ask_owner(
            &state,
            partition,
            &Method::POST,
            &uri,
            &headers,
            body.clone(),
        )
        .await;
        if let Some(answer) = answered {
            return Ok(answer);
        }
    }
    let raw: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_event", e.to_string()))?;
    let recorded = payments.inbox.record(&event, &raw).await?;
    let result = match recorded {
        Recorded::New => "accepted",
        Recorded::Duplicate => "duplicate",
        // The worker counts an event that changes nothing the same way.
        Recorded::AlreadyApplied => "no_change",
    };
    actors::metrics::webhook_event(type_label(&event.kind), result);
    // Our PaymentIntents carry the order's ids in their metadata: log them with the event.
    let metadata = &raw["data"]["object"]["metadata"];
    tracing::debug!(
        event_id = %event.id,
        event_type = %event.kind,
        result,
        order_id = metadata["order_id"].as_str().unwrap_or(""),
        correlation_id = metadata["correlation_id"].as_str().unwrap_or(""),
        "webhook received"
    );
    Ok(Json(json!({
        "received": true,
        "duplicate": recorded == Recorded::Duplicate,
        "already_applied": recorded == Recorded::AlreadyApplied,
    }))
    .into_response())
}

/// The event, if the body is signed by Stripe (within the tolerance) and is a Stripe event.
/// Refusals are counted by their own label: no event type can be trusted from such a body.
fn verified_event(
    verifier: &adapters::stripe::WebhookVerifier,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<StripeEvent, ApiError> {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = verifier.verify(signature, body, now) {
        actors::metrics::webhook_event("unknown", "rejected");
        tracing::warn!(error = %e, "webhook refused: bad signature");
        return Err(
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_signature", e.to_string())
                .with_field("Stripe-Signature"),
        );
    }
    parse_event(body).map_err(|e| {
        actors::metrics::webhook_event("unknown", "rejected");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_event",
            format!("not a Stripe event: {e}"),
        )
    })
}
