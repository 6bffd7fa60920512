//! `Idempotency-Key` for `POST /orders`: the first request with a key fixes which order the key
//! means (and a hash of its body); later requests with the key get that order back, or a 422 if
//! their body differs. The claim is committed before the order is placed: if the process dies in
//! between, the retry finds the key, and placing that order id again is itself idempotent.
//!
//! Claims are coalesced (`batching`): the placements that arrive while one claim statement runs
//! are claimed together by the next one, so a client that sends a key with every order (as one
//! spreading its orders over several instances must) costs a share of a statement per order,
//! not a transaction of its own.

use std::collections::HashMap;

use sqlx::PgPool;

use actors::domain::OrderId;
use actors::ports::StoreError;

use super::batching::{BatchJob, Batcher};

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

struct Request {
    key: String,
    request_hash: String,
    proposed: OrderId,
}

/// The claims' front door; cheap to clone. Its task starts on the first claim (so it can be
/// built outside a runtime) and stops when every clone is dropped.
#[derive(Clone)]
pub struct IdempotencyKeys {
    batcher: Batcher<ClaimBatch>,
}

impl IdempotencyKeys {
    pub fn new(pool: PgPool) -> Self {
        Self {
            batcher: Batcher::new(ClaimBatch { pool }, 1),
        }
    }

    /// Claims `key` for `proposed`, or finds what it already means.
    pub async fn claim(
        &self,
        key: &str,
        request_hash: &str,
        proposed: OrderId,
    ) -> Result<IdempotencyClaim, StoreError> {
        let request = Request {
            key: key.to_owned(),
            request_hash: request_hash.to_owned(),
            proposed,
        };
        self.batcher
            .submit(0, request)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

/// What the key means after a statement: its order, its request's hash, and whether this
/// statement inserted it.
struct KeyRow {
    order_id: OrderId,
    request_hash: String,
    inserted: bool,
}

/// The claimer's work: the batch's keys claimed together (`claim_together`).
struct ClaimBatch {
    pool: PgPool,
}

impl BatchJob for ClaimBatch {
    type Request = Request;
    type Answer = Result<IdempotencyClaim, StoreError>;
    const NAME: &'static str = "idempotency_claims";

    async fn run(&self, batch: Vec<Request>) -> Vec<Self::Answer> {
        let found = claim_together(&self.pool, &batch).await;
        let mut answers = Vec::with_capacity(batch.len());
        for request in &batch {
            answers.push(match &found {
                Err(e) => Err(StoreError::Unavailable(e.clone())),
                Ok(rows) => match rows.get(&request.key) {
                    Some(row) => Ok(answer_for(request, row)),
                    // Not found although not inserted: a concurrent claim of the key that had
                    // not committed yet. Claimed again on its own.
                    None => claim_alone(&self.pool, request)
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string())),
                },
            });
        }
        answers
    }

    fn unanswered() -> Self::Answer {
        Err(StoreError::Unavailable(
            "the idempotency claimer lost this claim's answer".into(),
        ))
    }
}

fn answer_for(request: &Request, row: &KeyRow) -> IdempotencyClaim {
    if row.inserted && row.order_id == request.proposed {
        IdempotencyClaim::New(row.order_id)
    } else {
        // Claimed before, or by another request with the same key in this very batch.
        IdempotencyClaim::Existing {
            order_id: row.order_id,
            same_request: row.request_hash == request.request_hash,
        }
    }
}

/// Claims the batch's keys: one plain insert for all of them (the first request of a key in
/// the batch wins), then, only when some key was there already, one read of those. Two simple
/// statements rather than one that does both: PostgreSQL plans a data-modifying `WITH` afresh
/// at nearly every execution, which cost more than the statement itself.
async fn claim_together(
    pool: &PgPool,
    batch: &[Request],
) -> Result<HashMap<String, KeyRow>, String> {
    // In key order, like every writer of this table, so that two batches that share keys (a
    // client retrying at two instances at once) queue instead of deadlocking. The sort is
    // stable: the first request of a key in the batch still wins.
    let mut sorted: Vec<&Request> = batch.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = sorted.iter().map(|r| r.key.as_str()).collect();
    let hashes: Vec<&str> = sorted.iter().map(|r| r.request_hash.as_str()).collect();
    let proposed: Vec<uuid::Uuid> = sorted.iter().map(|r| r.proposed.as_uuid()).collect();
    let inserted: Vec<(String, String, uuid::Uuid)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (key, request_hash, order_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[])
         ON CONFLICT (key) DO NOTHING
         RETURNING key, request_hash, order_id",
    )
    .bind(&keys)
    .bind(&hashes)
    .bind(&proposed)
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    let mut rows: HashMap<String, KeyRow> = inserted
        .into_iter()
        .map(|(key, request_hash, order_id)| {
            let row = KeyRow {
                order_id: OrderId::from_uuid(order_id),
                request_hash,
                inserted: true,
            };
            (key, row)
        })
        .collect();
    let existing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|key| !rows.contains_key(*key))
        .collect();
    if existing.is_empty() {
        return Ok(rows);
    }
    let found: Vec<(String, String, uuid::Uuid)> = sqlx::query_as(
        "SELECT key, request_hash, order_id FROM idempotency_keys WHERE key = ANY($1)",
    )
    .bind(&existing)
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    for (key, request_hash, order_id) in found {
        let row = KeyRow {
            order_id: OrderId::from_uuid(order_id),
            request_hash,
            inserted: false,
        };
        rows.insert(key, row);
    }
    Ok(rows)
}

/// The claim of one key on its own (the rare key that a concurrent statement inserted).
async fn claim_alone(pool: &PgPool, request: &Request) -> Result<IdempotencyClaim, sqlx::Error> {
    let inserted: Option<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (key, request_hash, order_id) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO NOTHING RETURNING order_id",
    )
    .bind(&request.key)
    .bind(&request.request_hash)
    .bind(request.proposed.as_uuid())
    .fetch_optional(pool)
    .await?;
    if inserted.is_some() {
        return Ok(IdempotencyClaim::New(request.proposed));
    }
    let (order_id, hash): (uuid::Uuid, String) =
        sqlx::query_as("SELECT order_id, request_hash FROM idempotency_keys WHERE key = $1")
            .bind(&request.key)
            .fetch_one(pool)
            .await?;
    Ok(IdempotencyClaim::Existing {
        order_id: OrderId::from_uuid(order_id),
        same_request: hash == request.request_hash,
    })
}
