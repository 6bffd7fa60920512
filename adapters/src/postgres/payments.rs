//! `PaymentRecords` on Postgres: one row per (order, attempt), written with the outcome's messages.

use async_trait::async_trait;
use sqlx::PgPool;

use actors::domain::OrderId;
use actors::events::Envelope;
use actors::ports::{ChargeOutcome, PaymentRecords, StoreError};

use super::{OutboxSignal, outbox, unavailable};

#[derive(Clone)]
pub struct PgPaymentRecords {
    pool: PgPool,
    signal: OutboxSignal,
}

impl PgPaymentRecords {
    pub fn new(pool: PgPool, signal: OutboxSignal) -> Self {
        Self { pool, signal }
    }
}

#[async_trait]
impl PaymentRecords for PgPaymentRecords {
    async fn is_recorded(&self, order_id: OrderId, attempt: u32) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM payments WHERE order_id = $1 AND attempt = $2)",
        )
        .bind(order_id.as_uuid())
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn record(
        &self,
        order_id: OrderId,
        attempt: u32,
        outcome: &ChargeOutcome,
        messages: &[Envelope],
    ) -> Result<bool, StoreError> {
        let (status, reference, code, message) = match outcome {
            ChargeOutcome::Succeeded { reference } => {
                ("SUCCEEDED", Some(reference.as_str()), None, None)
            }
            ChargeOutcome::Processing { reference } => {
                ("PROCESSING", Some(reference.as_str()), None, None)
            }
            ChargeOutcome::Declined {
                reference,
                code,
                message,
            } => (
                "FAILED",
                reference.as_deref(),
                Some(code.as_str()),
                Some(message.as_str()),
            ),
        };
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let inserted = sqlx::query(
            "INSERT INTO payments (order_id, attempt, status, reference, failure_code, failure_message)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(order_id.as_uuid())
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .bind(status)
        .bind(reference)
        .bind(code)
        .bind(message)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        outbox::insert(&mut tx, messages)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        self.signal.notify_one();
        Ok(true)
    }
}
