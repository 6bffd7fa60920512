//! The webhook inbox: verified Stripe events recorded by id (a redelivered event is a no-op),
//! then claimed and processed asynchronously by the payment role.

use sqlx::PgPool;

/// Records a verified event; `false` if this event id was recorded before.
pub async fn record(
    pool: &PgPool,
    event_id: &str,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query("INSERT INTO stripe_events (event_id, type, payload) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(event_id)
        .bind(kind)
        .bind(payload)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(inserted == 1)
}

/// Unprocessed events, oldest first, claimed until the transaction ends.
pub struct ClaimedEvents {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub events: Vec<(String, serde_json::Value)>,
}

impl ClaimedEvents {
    /// Marks one claimed event processed with a short outcome note.
    pub async fn mark(&mut self, event_id: &str, outcome: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE stripe_events SET processed_at = now(), outcome = $2 WHERE event_id = $1",
        )
        .bind(event_id)
        .bind(outcome)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

pub async fn claim(pool: &PgPool, limit: i64) -> Result<ClaimedEvents, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let events = sqlx::query_as(
        "SELECT event_id, payload FROM stripe_events WHERE processed_at IS NULL
         ORDER BY received_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(ClaimedEvents { tx, events })
}
