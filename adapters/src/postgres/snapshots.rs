//! `OrderSnapshotStore` on Postgres: one JSONB row per order, guarded by its version.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use actors::domain::OrderId;
use actors::events::Envelope;
use actors::ports::{OrderSnapshotStore, StoreError};
use actors::saga::OrderState;

use super::{OutboxSignal, outbox, unavailable};

#[derive(Clone)]
pub struct PgOrderSnapshotStore {
    pool: PgPool,
    signal: OutboxSignal,
}

impl PgOrderSnapshotStore {
    pub fn new(pool: PgPool, signal: OutboxSignal) -> Self {
        Self { pool, signal }
    }
}

fn encode(state: &OrderState) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(state)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode snapshot: {e}")))
}

/// Reads one snapshot outside the actor (HTTP reads never go through the mailbox).
pub async fn read_snapshot(
    pool: &PgPool,
    order_id: OrderId,
) -> Result<Option<OrderState>, StoreError> {
    let row: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT state FROM order_snapshots WHERE order_id = $1")
            .bind(order_id.as_uuid())
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?;
    row.map(|v| {
        serde_json::from_value(v)
            .map_err(|e| StoreError::Unavailable(format!("corrupt snapshot for {order_id}: {e}")))
    })
    .transpose()
}

#[async_trait]
impl OrderSnapshotStore for PgOrderSnapshotStore {
    async fn load(&self, order_id: OrderId) -> Result<Option<OrderState>, StoreError> {
        read_snapshot(&self.pool, order_id).await
    }

    async fn create(&self, first: &OrderState, messages: &[Envelope]) -> Result<bool, StoreError> {
        let state = encode(first)?;
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let inserted = sqlx::query(
            "INSERT INTO order_snapshots (order_id, version, status, state, created_at, updated_at, deadline)
             VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(first.order_id.as_uuid())
        .bind(first.version)
        .bind(first.status.as_str())
        .bind(&state)
        .bind(first.updated_at)
        .bind(first.deadline)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        outbox::commit_with(tx, messages, &self.signal).await?;
        Ok(true)
    }

    async fn commit(
        &self,
        expected: i64,
        next: &OrderState,
        messages: &[Envelope],
    ) -> Result<(), StoreError> {
        let state = encode(next)?;
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let updated = sqlx::query(
            "UPDATE order_snapshots SET version = $2, status = $3, state = $4, updated_at = $5, deadline = $7
             WHERE order_id = $1 AND version = $6",
        )
        .bind(next.order_id.as_uuid())
        .bind(next.version)
        .bind(next.status.as_str())
        .bind(&state)
        .bind(next.updated_at)
        .bind(expected)
        .bind(next.deadline)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::VersionConflict { expected });
        }
        outbox::commit_with(tx, messages, &self.signal).await?;
        Ok(())
    }

    async fn live_deadlines(&self) -> Result<Vec<(OrderId, Option<DateTime<Utc>>)>, StoreError> {
        let rows: Vec<(uuid::Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT order_id, deadline FROM order_snapshots WHERE status NOT IN ('COMPLETED', 'CANCELLED')",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(id, d)| (OrderId::from_uuid(id), d))
            .collect())
    }
}
