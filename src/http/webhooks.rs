//! `POST /payments/webhook`: Stripe's webhook endpoint. The signature is checked over the raw
//! body (never a re-serialised one); a bad or missing signature is a 400 and changes nothing. A
//! verified event is recorded durably by id and acknowledged at once; the payment role's worker
//! does the rest asynchronously. Duplicates and event types we do not handle get 2xx too, as
//! Stripe expects (only a 2xx stops its retries).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use adapters::stripe::Recorded;
use adapters::stripe::webhook::parse_event;

use super::{ApiError, AppState};

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(payments) = &state.payments else {
        return Err(ApiError::unavailable(
            "this process does not run the payment role",
        ));
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = payments.verifier.verify(signature, &body, now) {
        tracing::warn!(error = %e, "webhook refused: bad signature");
        return Err(
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_signature", e.to_string())
                .with_field("Stripe-Signature"),
        );
    }
    let event = parse_event(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_event",
            format!("not a Stripe event: {e}"),
        )
    })?;
    let raw: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_event", e.to_string()))?;
    let recorded = payments.inbox.record(&event, &raw).await?;
    tracing::info!(event_id = %event.id, event_type = %event.kind, duplicate = (recorded == Recorded::Duplicate), "webhook received");
    Ok(Json(
        json!({"received": true, "duplicate": recorded == Recorded::Duplicate}),
    ))
}
