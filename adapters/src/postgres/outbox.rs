//! The transactional outbox: messages are inserted in the transaction that decided them, and the
//! relay (`nats::relay`) claims, publishes and deletes them. `FOR UPDATE SKIP LOCKED` lets several
//! processes relay at once without publishing the same row concurrently.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use actors::events::Envelope;

/// Appends `messages` to the outbox inside `tx` (one statement for all of them).
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    messages: &[Envelope],
) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(messages.len());
    let mut subjects = Vec::with_capacity(messages.len());
    let mut orders = Vec::with_capacity(messages.len());
    let mut correlations = Vec::with_capacity(messages.len());
    let mut payloads = Vec::with_capacity(messages.len());
    for m in messages {
        ids.push(m.message_id);
        subjects.push(m.subject().to_owned());
        orders.push(m.order_id.as_uuid());
        correlations.push(m.correlation_id.as_str().to_owned());
        payloads.push(m.to_json());
    }
    sqlx::query(
        "INSERT INTO outbox (message_id, subject, order_id, correlation_id, payload)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::bytea[])",
    )
    .bind(&ids)
    .bind(&subjects)
    .bind(&orders)
    .bind(&correlations)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends `messages` to the outbox, commits `tx`, and wakes the relay if there is anything to
/// publish: the one way every store ends a transaction that emits messages.
pub async fn commit_with(
    mut tx: Transaction<'_, Postgres>,
    messages: &[Envelope],
    signal: &super::OutboxSignal,
) -> Result<(), actors::ports::StoreError> {
    insert(&mut tx, messages)
        .await
        .map_err(super::unavailable)?;
    tx.commit().await.map_err(super::unavailable)?;
    if !messages.is_empty() {
        signal.notify_one();
    }
    Ok(())
}

/// One message waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingMessage {
    pub id: i64,
    pub message_id: Uuid,
    pub subject: String,
    pub order_id: Uuid,
    pub correlation_id: String,
    pub payload: Vec<u8>,
}

/// A claimed batch: the rows stay locked (invisible to other relays) until `finish` deletes them
/// or the batch is dropped, which rolls back and hands them to the next attempt.
pub struct ClaimedBatch {
    tx: Transaction<'static, Postgres>,
    pub messages: Vec<PendingMessage>,
}

impl ClaimedBatch {
    pub async fn finish(mut self) -> Result<(), sqlx::Error> {
        let ids: Vec<i64> = self.messages.iter().map(|m| m.id).collect();
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await
    }
}

pub async fn claim(pool: &PgPool, limit: i64) -> Result<ClaimedBatch, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let messages = sqlx::query_as::<_, PendingMessage>(
        "SELECT id, message_id, subject, order_id, correlation_id, payload
         FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(ClaimedBatch { tx, messages })
}

/// Messages not yet published (tests use it; outbox-lag metrics will).
pub async fn pending_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
}
