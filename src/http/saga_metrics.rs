//! `GET /orders/metrics`: the saga figures as JSON, computed from the snapshots (so they cover
//! every process and survive restarts): counts by status, success and compensation rates, and
//! p50/p95/p99 of the time from placement to a finished order's last change.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};

#[utoipa::path(
    get,
    path = "/orders/metrics",
    tag = "orders",
    responses(
        (status = 200, description = "Figures over all orders of every process.", body = super::openapi::SagaMetrics),
        (status = 503, description = "`unavailable`: the database is unavailable.", body = super::error::ErrorBody),
    )
)]
pub async fn saga_metrics(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let adapters::postgres::inspection::SagaFigures {
        by_status,
        compensated,
        percentiles,
    } = adapters::postgres::inspection::saga_figures(&state.pool).await?;
    let count = |s: &str| {
        by_status
            .iter()
            .find(|(status, _)| status == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let (completed, cancelled) = (count("COMPLETED"), count("CANCELLED"));
    let finished = completed + cancelled;
    let rate = |n: i64| {
        if finished == 0 {
            Value::Null
        } else {
            json!(n as f64 / finished as f64)
        }
    };
    let statuses: serde_json::Map<String, Value> = [
        "PENDING",
        "STOCK_RESERVED",
        "PAYMENT_PROCESSING",
        "COMPLETED",
        "CANCELLED",
    ]
    .into_iter()
    .map(|s| (s.to_owned(), json!(count(s))))
    .collect();
    Ok(Json(json!({
        "orders": {"total": by_status.iter().map(|(_, n)| n).sum::<i64>(), "by_status": statuses},
        "success_rate": rate(completed),
        "compensation_rate": rate(compensated),
        "duration_seconds": {"p50": percentiles.0, "p95": percentiles.1, "p99": percentiles.2},
    })))
}
