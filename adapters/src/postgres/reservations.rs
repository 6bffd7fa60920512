//! Reservations decided in batches: many orders' reservations in one transaction, decided one
//! after the other in arrival order against the stock read (and locked) once.
//!
//! The result is exactly that of deciding them one transaction at a time, which is what a flash
//! sale needs: the hot SKU's row is locked once per batch instead of once per order, and the
//! cost of the transaction (round trips, a WAL flush) is shared by the whole batch. Rows are still
//! locked in SKU order, so batches of different shards (or processes) that share a SKU queue on
//! the lock instead of deadlocking, and the CHECK constraints on `products` remain the last line
//! of defence against an oversell.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use actors::domain::Sku;
use actors::events::Envelope;
use actors::inventory::{StockLevel, decide_reservations};
use actors::ports::{BatchMessages, ReservationOutcome, ReservationRequest, StoreError};

use super::{OutboxSignal, outbox, unavailable};

/// Decides `requests` in one transaction; outcomes in the same order.
pub async fn reserve_batch(
    pool: &PgPool,
    signal: &OutboxSignal,
    requests: &[ReservationRequest],
    messages: BatchMessages<'_>,
) -> Result<Vec<ReservationOutcome>, StoreError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await.map_err(unavailable)?;
    let (decided, writes) = decide(&mut tx, requests).await.map_err(unavailable)?;
    let envelopes: Vec<Envelope> = requests
        .iter()
        .zip(&decided)
        .flat_map(|(request, outcome)| messages(request, outcome))
        .collect();
    let rows = writes
        .apply(&mut tx, &envelopes)
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    signal.committed(rows);
    Ok(decided)
}

/// What a decided batch writes, all in one statement once every order is decided.
#[derive(Default)]
struct Writes {
    /// Units newly reserved per SKU (added to `products.reserved`).
    reserved_per_sku: BTreeMap<String, i64>,
    /// New rows of `stock_reservations`.
    rows: ReservationRows,
    /// Orders refused for lack of stock (their decision row says so).
    refused: Vec<Uuid>,
}

impl Writes {
    /// The batch's writes and its outbox rows as the parts of one `WITH`: one round trip where
    /// there were four (the products it updates are already locked by this transaction, so the
    /// order in which the parts run cannot matter). Returns the outbox rows, to hand to the
    /// relay once the transaction commits.
    async fn apply(
        self,
        tx: &mut Transaction<'_, Postgres>,
        envelopes: &[Envelope],
    ) -> Result<Vec<outbox::OutboxMessage>, sqlx::Error> {
        let messages: Vec<outbox::OutboxMessage> =
            envelopes.iter().map(outbox::OutboxMessage::of).collect();
        if self.reserved_per_sku.is_empty() && self.refused.is_empty() && messages.is_empty() {
            return Ok(messages);
        }
        let (skus, quantities): (Vec<String>, Vec<i64>) = self.reserved_per_sku.into_iter().unzip();
        let columns = outbox::Columns::of(&messages);
        let statement = sqlx::query(
            "WITH stock AS (
                 UPDATE products p SET reserved = p.reserved + w.qty, updated_at = now()
                 FROM unnest($1::text[], $2::bigint[]) AS w(sku, qty) WHERE p.sku = w.sku),
             held AS (
                 INSERT INTO stock_reservations (order_id, sku, quantity, status, expires_at, correlation_id)
                 SELECT o, s, q, 'RESERVED', e, c
                 FROM unnest($3::uuid[], $4::text[], $5::integer[], $6::timestamptz[], $7::text[]) AS w(o, s, q, e, c)),
             refused AS (
                 UPDATE inventory_decisions SET outcome = 'OUT_OF_STOCK' WHERE order_id = ANY($8))
             INSERT INTO outbox (message_id, subject, order_id, correlation_id, payload)
             SELECT m.message_id, m.subject, m.order_id, m.correlation_id, m.payload
             FROM unnest($9::uuid[], $10::text[], $11::uuid[], $12::text[], $13::bytea[])
                  WITH ORDINALITY AS m(message_id, subject, order_id, correlation_id, payload, n)
             ORDER BY m.n",
        )
        .bind(&skus)
        .bind(&quantities)
        .bind(&self.rows.orders)
        .bind(&self.rows.skus)
        .bind(&self.rows.quantities)
        .bind(&self.rows.expires)
        .bind(&self.rows.correlations)
        .bind(&self.refused);
        columns.bind_to(statement).execute(&mut **tx).await?;
        Ok(messages)
    }
}

/// A row of the claim-and-lock statement: a claimed order id, or a locked product's SKU,
/// available units and low-stock threshold.
type ClaimOrStock = (Option<Uuid>, Option<String>, Option<i64>, Option<i64>);

/// Decides every request against the stock it locks (the rule itself is
/// `actors::inventory::decide_reservations`); returns the outcomes and what they write.
async fn decide(
    tx: &mut Transaction<'_, Postgres>,
    requests: &[ReservationRequest],
) -> Result<(Vec<ReservationOutcome>, Writes), sqlx::Error> {
    // Each order is decided once, ever: the decision row is the inbox. Within the batch, a
    // repeated order (a redelivery) is decided by its first occurrence only. The claim and the
    // lock of the batch's products are one statement (one round trip): `UNION ALL` runs its
    // parts in order, so the claim is complete before the first lock is taken, and the rows are
    // locked in SKU order. `FOR UPDATE` returns each product as it stands once locked (the
    // latest committed version), not as the statement's snapshot saw it. The SKUs of every
    // order are locked, also those of an order already decided (a redelivery, rare), which only
    // holds a lock the batch does not need.
    let ids: Vec<Uuid> = requests.iter().map(|r| r.order_id.as_uuid()).collect();
    let skus: Vec<&str> = requests
        .iter()
        .flat_map(|r| r.lines.iter().map(|line| line.sku.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows: Vec<ClaimOrStock> = sqlx::query_as(
        "WITH claimed AS (
             INSERT INTO inventory_decisions (order_id, outcome)
             SELECT id, 'RESERVED' FROM unnest($1::uuid[]) AS id
             ON CONFLICT DO NOTHING RETURNING order_id),
         locked AS (
             SELECT sku, on_hand - reserved AS available, low_stock_threshold FROM products
             WHERE sku = ANY($2) ORDER BY sku FOR UPDATE)
         SELECT order_id, NULL::text, NULL::bigint, NULL::bigint FROM claimed
         UNION ALL
         SELECT NULL::uuid, sku, available, low_stock_threshold FROM locked",
    )
    .bind(&ids)
    .bind(&skus)
    .fetch_all(&mut **tx)
    .await?;
    let (claimed, mut stock) = claimed_and_stock(rows);
    let decided = decide_reservations(
        requests,
        |order_id| !claimed.contains(&order_id.as_uuid()),
        &mut stock,
    );
    let mut writes = Writes::default();
    let mut outcomes = Vec::with_capacity(requests.len());
    for (request, decision) in requests.iter().zip(decided) {
        if let ReservationOutcome::OutOfStock(_) = decision.outcome {
            writes.refused.push(request.order_id.as_uuid());
        }
        for (sku, quantity) in decision.units {
            *writes
                .reserved_per_sku
                .entry(sku.as_str().to_owned())
                .or_default() += quantity;
            writes.rows.push(request, sku.as_str(), quantity);
        }
        outcomes.push(decision.outcome);
    }
    Ok((outcomes, writes))
}

/// The claim-and-lock statement's rows: the orders claimed now (decided for the first time),
/// and the stock of each locked product.
fn claimed_and_stock(rows: Vec<ClaimOrStock>) -> (HashSet<Uuid>, BTreeMap<Sku, StockLevel>) {
    let mut claimed: HashSet<Uuid> = HashSet::new();
    let mut stock: BTreeMap<Sku, StockLevel> = BTreeMap::new();
    for row in rows {
        match row {
            (Some(order_id), ..) => {
                claimed.insert(order_id);
            }
            (None, Some(sku), Some(available), Some(low_stock_threshold)) => {
                // A stored SKU that no longer parses cannot be asked for: leave it out.
                if let Ok(sku) = Sku::parse(&sku) {
                    let level = StockLevel {
                        available,
                        low_stock_threshold,
                    };
                    stock.insert(sku, level);
                }
            }
            _ => {}
        }
    }
    (claimed, stock)
}

#[derive(Default)]
struct ReservationRows {
    orders: Vec<Uuid>,
    skus: Vec<String>,
    quantities: Vec<i32>,
    expires: Vec<chrono::DateTime<chrono::Utc>>,
    correlations: Vec<String>,
}

impl ReservationRows {
    fn push(&mut self, request: &ReservationRequest, sku: &str, quantity: i64) {
        self.orders.push(request.order_id.as_uuid());
        self.skus.push(sku.to_owned());
        self.quantities
            .push(i32::try_from(quantity).unwrap_or(i32::MAX));
        self.expires.push(request.expires_at);
        self.correlations
            .push(request.correlation_id.as_str().to_owned());
    }
}
