//! The transactional outbox: messages are inserted in the transaction that decided them, and
//! published to JetStream only once that transaction has committed.
//!
//! Two ways out, so that the common case costs no extra round trip and a crash loses nothing:
//! - **Hand-off** (the fast path): after its commit, the store hands the very rows it wrote to
//!   the relay through `OutboxSignal`; the relay publishes them at once and deletes them by
//!   message id once JetStream acknowledged them. No polling, no claim query.
//! - **Sweep** (the safety net): rows that no hand-off published (the process died after its
//!   commit, NATS was down, the hand-off queue was full) are claimed with `FOR UPDATE SKIP
//!   LOCKED` once they are a little old, so several processes can sweep at once.
//!
//! A row published by both (a sweep racing a slow hand-off) carries the same `Nats-Msg-Id`, and
//! JetStream's dedup window drops the copy.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

use actors::events::Envelope;

/// One message on its way to JetStream, as stored in `outbox`.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub message_id: Uuid,
    pub subject: Cow<'static, str>,
    pub order_id: Uuid,
    pub correlation_id: String,
    pub payload: Bytes,
}

impl OutboxMessage {
    /// The row of one envelope, counted as written (every caller inserts it in its transaction).
    pub(super) fn of(envelope: &Envelope) -> Self {
        metrics::counter!(actors::metrics::OUTBOX_WRITTEN).increment(1);
        Self {
            message_id: envelope.message_id,
            subject: Cow::Borrowed(envelope.subject()),
            order_id: envelope.order_id.as_uuid(),
            correlation_id: envelope.correlation_id.as_str().to_owned(),
            payload: Bytes::from(envelope.to_json()),
        }
    }
}

/// The outbox columns of some messages, one array per column, for the statements that insert
/// them with `unnest` (`insert` here, and the batches that fold the insert into their own
/// statement).
pub(super) struct Columns<'a> {
    pub message_ids: Vec<Uuid>,
    pub subjects: Vec<&'a str>,
    pub order_ids: Vec<Uuid>,
    pub correlation_ids: Vec<&'a str>,
    pub payloads: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    pub(super) fn of(messages: &'a [OutboxMessage]) -> Self {
        Self {
            message_ids: messages.iter().map(|m| m.message_id).collect(),
            subjects: messages.iter().map(|m| m.subject.as_ref()).collect(),
            order_ids: messages.iter().map(|m| m.order_id).collect(),
            correlation_ids: messages.iter().map(|m| m.correlation_id.as_str()).collect(),
            payloads: messages.iter().map(|m| m.payload.as_ref()).collect(),
        }
    }

    /// Binds the five columns, in this order, as the statement's next parameters.
    pub(super) fn bind_to<'q>(
        self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.message_ids)
            .bind(self.subjects)
            .bind(self.order_ids)
            .bind(self.correlation_ids)
            .bind(self.payloads)
    }
}

/// Most messages waiting in the hand-off queue; beyond it, committed rows wait for the sweep
/// (memory stays bounded while NATS is down).
const HANDOFF_LIMIT: usize = 50_000;

/// Carries committed messages from the stores to the relay of this process; cheap to clone.
#[derive(Clone, Default)]
pub struct OutboxSignal {
    inner: Arc<Handoff>,
}

#[derive(Default)]
struct Handoff {
    queue: Mutex<Vec<OutboxMessage>>,
    notify: Notify,
}

impl OutboxSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands over messages whose rows are committed. When the queue is full they are left to the
    /// sweep, which finds them in the table.
    pub fn committed(&self, messages: Vec<OutboxMessage>) {
        if messages.is_empty() {
            return;
        }
        if let Ok(mut queue) = self.inner.queue.lock() {
            if queue.len() + messages.len() > HANDOFF_LIMIT {
                return;
            }
            queue.extend(messages);
        }
        self.inner.notify.notify_one();
    }

    /// Everything handed over so far.
    pub fn take(&self) -> Vec<OutboxMessage> {
        self.inner
            .queue
            .lock()
            .map(|mut queue| std::mem::take(&mut *queue))
            .unwrap_or_default()
    }

    /// Waits until something is handed over (or was since the last `take`).
    pub async fn notified(&self) {
        self.inner.notify.notified().await;
    }
}

/// Appends `messages` to the outbox inside `tx` (one statement for all of them); returns them
/// ready to publish, for `OutboxSignal::committed` once `tx` has committed.
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    messages: &[Envelope],
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<OutboxMessage> = messages.iter().map(OutboxMessage::of).collect();
    let columns = Columns::of(&rows);
    let statement = sqlx::query(
        "INSERT INTO outbox (message_id, subject, order_id, correlation_id, payload)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::bytea[])",
    );
    columns.bind_to(statement).execute(&mut **tx).await?;
    Ok(rows)
}

/// Appends `messages` to the outbox, commits `tx`, and hands them to the relay: the one way
/// every store ends a transaction that emits messages.
pub async fn commit_with(
    mut tx: Transaction<'_, Postgres>,
    messages: &[Envelope],
    signal: &OutboxSignal,
) -> Result<(), actors::ports::StoreError> {
    let rows = insert(&mut tx, messages)
        .await
        .map_err(super::unavailable)?;
    tx.commit().await.map_err(super::unavailable)?;
    signal.committed(rows);
    Ok(())
}

/// Deletes published rows (by message id: the hand-off does not know the rows' ids).
pub async fn delete_published(pool: &PgPool, message_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if message_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM outbox WHERE message_id = ANY($1)")
        .bind(message_ids)
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: i64,
    message_id: Uuid,
    subject: String,
    order_id: Uuid,
    correlation_id: String,
    payload: Vec<u8>,
}

/// A claimed batch: the rows stay locked (invisible to other sweeps) until `finish` deletes them
/// or the batch is dropped, which rolls back and hands them to the next attempt.
pub struct ClaimedBatch {
    tx: Transaction<'static, Postgres>,
    ids: Vec<i64>,
    pub messages: Vec<OutboxMessage>,
}

impl ClaimedBatch {
    pub async fn finish(mut self) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&self.ids)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await
    }
}

/// Claims up to `limit` rows committed at least `min_age` ago, oldest first.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    min_age: Duration,
) -> Result<ClaimedBatch, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as::<_, PendingRow>(
        "SELECT id, message_id, subject, order_id, correlation_id, payload
         FROM outbox WHERE created_at <= now() - make_interval(secs => $2)
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .bind(min_age.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let ids = rows.iter().map(|r| r.id).collect();
    let messages = rows
        .into_iter()
        .map(|r| OutboxMessage {
            message_id: r.message_id,
            subject: Cow::Owned(r.subject),
            order_id: r.order_id,
            correlation_id: r.correlation_id,
            payload: Bytes::from(r.payload),
        })
        .collect();
    Ok(ClaimedBatch { tx, ids, messages })
}

/// Messages not yet published (tests use it; outbox-lag metrics will).
pub async fn pending_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
}
