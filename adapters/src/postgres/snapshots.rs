//! `OrderSnapshotStore` on Postgres: one JSONB row per order, guarded by its version. Writes go
//! through the group-commit writers (`snapshot_writer.rs`): many actors' transitions per
//! transaction, each actor answered once its own is durable.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use actors::domain::OrderId;
use actors::events::Envelope;
use actors::ports::{OrderSnapshotStore, StoreError};
use actors::saga::OrderState;

use super::snapshot_writer::{Expect, SnapshotWriter};
use super::{OutboxSignal, unavailable};

#[derive(Clone)]
pub struct PgOrderSnapshotStore {
    pool: PgPool,
    writer: SnapshotWriter,
}

impl PgOrderSnapshotStore {
    /// Starts `writers` group-commit writers (at least one) on the current runtime; every write
    /// is taken as this process's, whatever the order's partition.
    pub fn new(pool: PgPool, signal: OutboxSignal, writers: usize) -> Self {
        let writer = SnapshotWriter::start(pool.clone(), signal, writers, None);
        Self { pool, writer }
    }

    /// Like `new`, and every write is fenced: it applies only if `ownership` holds the order's
    /// partition and PostgreSQL's lease row still has the epoch it was acquired at, checked in
    /// the statement that writes it. A write of a stale owner is refused with
    /// `StoreError::NotOwner`.
    pub fn fenced(
        pool: PgPool,
        signal: OutboxSignal,
        writers: usize,
        ownership: actors::cluster::Ownership,
    ) -> Self {
        let writer = SnapshotWriter::start(pool.clone(), signal, writers, Some(ownership));
        Self { pool, writer }
    }
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
        self.writer.write(Expect::Absent, first, messages).await
    }

    async fn commit(
        &self,
        expected: i64,
        next: &OrderState,
        messages: &[Envelope],
    ) -> Result<(), StoreError> {
        if self
            .writer
            .write(Expect::Version(expected), next, messages)
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::VersionConflict { expected })
        }
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
