//! Dead letters: messages a consumer gave up on (undecodable, a permanent error, or retries
//! exhausted), parked with their error so operators can see them and nothing is silently lost.
//! Parking acknowledges the message, so it never blocks other orders or SKUs.

use sqlx::PgPool;

#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub consumer: &'a str,
    pub subject: &'a str,
    pub message_id: Option<uuid::Uuid>,
    pub order_id: Option<uuid::Uuid>,
    pub correlation_id: Option<&'a str>,
    pub payload: &'a [u8],
    pub error: &'a str,
    pub deliveries: i64,
}

/// Parks a message; a message parked twice (redelivered while parking) is kept once.
pub async fn park(pool: &PgPool, letter: &DeadLetter<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (consumer, subject, message_id, order_id, correlation_id, payload, error, deliveries)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (consumer, message_id) DO NOTHING",
    )
    .bind(letter.consumer)
    .bind(letter.subject)
    .bind(letter.message_id)
    .bind(letter.order_id)
    .bind(letter.correlation_id)
    .bind(letter.payload)
    .bind(letter.error)
    .bind(letter.deliveries)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(pool)
        .await
}
