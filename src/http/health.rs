//! `GET /health` (the process is up) and `GET /health/ready` (PostgreSQL, NATS and, in a
//! process with the payment role, Stripe or its fake answer; 503 when any does not).

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

/// Longest a readiness probe waits for one dependency.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    let started = Instant::now();
    let postgres = tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await
    .map_err(|_| ())
    .and_then(|r| r.map_err(|_| ()));
    let postgres_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    // Bounded: during an outage the flush would otherwise wait for the reconnect.
    let nats = tokio::time::timeout(PROBE_TIMEOUT, state.nats.flush())
        .await
        .map_err(|_| ())
        .and_then(|r| r.map_err(|_| ()));
    let nats_ms = started.elapsed().as_secs_f64() * 1000.0;
    let check =
        |ok: bool, ms: f64| json!({"status": if ok { "up" } else { "down" }, "latency_ms": ms});
    let mut ready = postgres.is_ok() && nats.is_ok();
    let mut checks = json!({
        "postgres": check(postgres.is_ok(), postgres_ms),
        "nats": check(nats.is_ok(), nats_ms),
    });
    if let Some(payments) = &state.payments {
        let started = Instant::now();
        let stripe = tokio::time::timeout(PROBE_TIMEOUT, payments.stripe.ping())
            .await
            .map_err(|_| ())
            .and_then(|r| r.map_err(|_| ()));
        checks["stripe"] = check(stripe.is_ok(), started.elapsed().as_secs_f64() * 1000.0);
        checks["stripe"]["api_base"] = json!(payments.stripe.api_base());
        ready &= stripe.is_ok();
    }
    let body = json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition of every metric this process recorded.
pub async fn metrics() -> Response {
    match crate::metrics::handle() {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "another metrics recorder is installed\n",
        )
            .into_response(),
    }
}
