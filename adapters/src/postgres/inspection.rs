//! What operators read about sagas and stock across every process (the admin API and
//! `GET /orders/metrics`): queries over the snapshots and the reservations, kept here so that
//! the HTTP layer holds no SQL. Each is bounded, and none takes a lock.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use actors::domain::Sku;

/// Unfinished sagas by status.
pub async fn live_sagas_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, count(*) FROM order_snapshots
         WHERE status NOT IN ('COMPLETED', 'CANCELLED') GROUP BY status",
    )
    .fetch_all(pool)
    .await
}

/// A reservation still holding units.
#[derive(sqlx::FromRow)]
pub struct ActiveReservation {
    pub order_id: Uuid,
    pub quantity: i32,
    pub expires_at: DateTime<Utc>,
    pub correlation_id: String,
}

/// The reservations holding units of `sku`, soonest to expire first, at most `limit`.
pub async fn active_reservations(
    pool: &PgPool,
    sku: &Sku,
    limit: i64,
) -> Result<Vec<ActiveReservation>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, quantity, expires_at, correlation_id FROM stock_reservations
         WHERE sku = $1 AND status = 'RESERVED' ORDER BY expires_at LIMIT $2",
    )
    .bind(sku.as_str())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// An unfinished saga past its deadline (or without one).
#[derive(sqlx::FromRow)]
pub struct OverdueSaga {
    pub order_id: Uuid,
    pub status: String,
    pub deadline: Option<DateTime<Utc>>,
    pub in_status_since: DateTime<Utc>,
}

/// Unfinished sagas whose deadline has passed (or that have none), paused ones aside, most
/// overdue first, at most `limit`.
pub async fn overdue_sagas(pool: &PgPool, limit: i64) -> Result<Vec<OverdueSaga>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, status, deadline, updated_at AS in_status_since FROM order_snapshots
         WHERE status NOT IN ('COMPLETED', 'CANCELLED') AND (deadline IS NULL OR deadline < now())
           AND NOT (state ? 'paused')
         ORDER BY deadline NULLS FIRST LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The saga figures over every order of every process.
pub struct SagaFigures {
    /// Orders by status.
    pub by_status: Vec<(String, i64)>,
    /// Cancelled orders that went through compensation.
    pub compensated: i64,
    /// p50, p95 and p99 of seconds from placement to a finished order's last change.
    pub percentiles: (Option<f64>, Option<f64>, Option<f64>),
}

pub async fn saga_figures(pool: &PgPool) -> Result<SagaFigures, sqlx::Error> {
    let by_status = sqlx::query_as("SELECT status, count(*) FROM order_snapshots GROUP BY status")
        .fetch_all(pool)
        .await?;
    let compensated = sqlx::query_scalar(
        "SELECT count(*) FROM order_snapshots
         WHERE status = 'CANCELLED' AND jsonb_typeof(state->'compensation') = 'object'",
    )
    .fetch_one(pool)
    .await?;
    let percentiles = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.95) WITHIN GROUP (ORDER BY d),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
         FROM (SELECT extract(epoch FROM updated_at - created_at)::float8 AS d FROM order_snapshots
               WHERE status IN ('COMPLETED', 'CANCELLED')) AS finished",
    )
    .fetch_one(pool)
    .await?;
    Ok(SagaFigures {
        by_status,
        compensated,
        percentiles,
    })
}
