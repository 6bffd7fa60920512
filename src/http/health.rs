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

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "The process is up.", body = super::openapi::Liveness))
)]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: PostgreSQL, NATS and (payment role) Stripe or the fake answer.", body = super::openapi::Readiness),
        (status = 503, description = "Not ready: at least one dependency is down (same body, `status: not_ready`).", body = super::openapi::Readiness),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let (ready, checks) = probe(&state).await;
    let body = json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Probes every dependency (each bounded by `PROBE_TIMEOUT`), records the verdict in the
/// readiness gauges and returns it with the per-dependency details.
pub async fn probe(state: &AppState) -> (bool, serde_json::Value) {
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
    let mut dependencies = vec![("postgres", postgres.is_ok()), ("nats", nats.is_ok())];
    if let Some(payments) = &state.payments {
        let started = Instant::now();
        let stripe = match tokio::time::timeout(PROBE_TIMEOUT, payments.stripe.ping()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within the probe timeout".to_owned()),
        };
        checks["stripe"] = check(stripe.is_ok(), started.elapsed().as_secs_f64() * 1000.0);
        checks["stripe"]["api_base"] = json!(payments.stripe.api_base());
        if let Err(reason) = &stripe {
            // Never the key itself: only what went wrong.
            checks["stripe"]["error"] = json!(reason);
        }
        ready &= stripe.is_ok();
        dependencies.push(("stripe", stripe.is_ok()));
    }
    crate::metrics::record_readiness(ready, &dependencies);
    (ready, checks)
}

/// Prometheus text exposition of every metric this process recorded.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition of this process's metrics.", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 503, description = "Another metrics recorder was installed first (plain text).", body = String, content_type = "text/plain"),
    )
)]
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
