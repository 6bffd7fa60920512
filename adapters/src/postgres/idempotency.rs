//! `Idempotency-Key` for `POST /orders`: the first request with a key fixes which order the key
//! means (and a hash of its body); later requests with the key get that order back, or a 422 if
//! their body differs. The claim is its own transaction: if the process dies before the order is
//! placed, the retry finds the key, and placing that order id again is itself idempotent.

use sqlx::PgPool;

use actors::domain::OrderId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new and now means `order_id`.
    New(OrderId),
    /// The key was used before for `order_id`; `same_request` tells whether the bodies match.
    Existing {
        order_id: OrderId,
        same_request: bool,
    },
}

#[derive(Clone)]
pub struct IdempotencyKeys {
    pool: PgPool,
}

impl IdempotencyKeys {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn claim(
        &self,
        key: &str,
        request_hash: &str,
        proposed: OrderId,
    ) -> Result<IdempotencyClaim, sqlx::Error> {
        let inserted: Option<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (key, request_hash, order_id) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO NOTHING RETURNING order_id",
        )
        .bind(key)
        .bind(request_hash)
        .bind(proposed.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        if inserted.is_some() {
            return Ok(IdempotencyClaim::New(proposed));
        }
        let (order_id, hash): (uuid::Uuid, String) =
            sqlx::query_as("SELECT order_id, request_hash FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
        Ok(IdempotencyClaim::Existing {
            order_id: OrderId::from_uuid(order_id),
            same_request: hash == request_hash,
        })
    }
}
