//! `ReservationLedger` on Postgres. Each batch is one transaction that touches rows in a fixed
//! order (decisions, reservations, products sorted by SKU), so concurrent transactions from any
//! number of processes queue on row locks instead of deadlocking, and the CHECK constraints on
//! `products` make an oversell impossible even if this code were wrong. Reservations are decided
//! in `reservations`; commits and releases here.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use sqlx::{PgPool, Postgres, Transaction};

use actors::domain::{CorrelationId, OrderId, Sku};
use actors::ports::{
    BatchMessages, ExpiredReservation, PriorReservation, ReleaseMessages, ReservationLedger,
    ReservationOutcome, ReservationRequest, SettleOutcome, StoreError,
};
use actors::saga::OrderStatus;
use chrono::{DateTime, Utc};

use super::{OutboxSignal, outbox, reservations, unavailable};

/// How long after its order finished a reservation still held is taken for a lost settlement.
const SETTLEMENT_GRACE_MS: f64 = 5_000.0;

#[derive(Clone)]
pub struct PgReservationLedger {
    pool: PgPool,
    signal: OutboxSignal,
}

impl PgReservationLedger {
    pub fn new(pool: PgPool, signal: OutboxSignal) -> Self {
        Self { pool, signal }
    }
}

/// Locks the products rows in SKU order and returns what is available of each.
async fn lock_available(
    tx: &mut Transaction<'_, Postgres>,
    skus: &[String],
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sku, on_hand - reserved FROM products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(skus)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Units per SKU and rows per order of the reservation rows a statement moved.
type Tally = (BTreeMap<String, i64>, HashMap<uuid::Uuid, u64>);

fn tally(moved: Vec<(uuid::Uuid, String, i32)>) -> Tally {
    let mut per_sku: BTreeMap<String, i64> = BTreeMap::new();
    let mut per_order: HashMap<uuid::Uuid, u64> = HashMap::new();
    for (order, sku, quantity) in moved {
        *per_sku.entry(sku).or_default() += i64::from(quantity);
        *per_order.entry(order).or_default() += 1;
    }
    (per_sku, per_order)
}

/// What units leave when they are settled: sold units leave `on_hand` and `reserved`, released
/// ones `reserved`, retaken ones (their reservation expired first) `on_hand`.
#[derive(Clone, Copy)]
enum Leaving {
    Sold,
    Released,
    Retaken,
}

/// Takes `units` (per SKU, in SKU order, their rows already locked) out of `products`: the one
/// statement by which settled units leave stock.
async fn take_from_products(
    tx: &mut Transaction<'_, Postgres>,
    units: Vec<(String, i64)>,
    how: Leaving,
) -> Result<(), sqlx::Error> {
    if units.is_empty() {
        return Ok(());
    }
    let (from_on_hand, from_reserved) = match how {
        Leaving::Sold => (1, 1),
        Leaving::Released => (0, 1),
        Leaving::Retaken => (1, 0),
    };
    let (skus, quantities): (Vec<String>, Vec<i64>) = units.into_iter().unzip();
    sqlx::query(
        "UPDATE products p
         SET on_hand = p.on_hand - $3 * w.qty, reserved = p.reserved - $4 * w.qty, updated_at = now()
         FROM unnest($1::text[], $2::bigint[]) AS w(sku, qty) WHERE p.sku = w.sku",
    )
    .bind(&skus)
    .bind(&quantities)
    .bind(from_on_hand)
    .bind(from_reserved)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A confirmation that finds nothing reserved: the order completed but its reservation expired
/// first (the sweeper released it). The order is sold, so take its units again if they are still
/// available, all or nothing; if they are not, they were sold to someone else meanwhile: that is
/// logged as an error for an operator (the customer paid for units that are gone).
async fn retake_expired(
    tx: &mut Transaction<'_, Postgres>,
    order_id: OrderId,
) -> Result<SettleOutcome, sqlx::Error> {
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT sku, quantity FROM stock_reservations WHERE order_id = $1 AND status = 'RELEASED' ORDER BY sku FOR UPDATE",
    )
    .bind(order_id.as_uuid())
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(SettleOutcome { rows_changed: 0 });
    }
    let (skus, quantities): (Vec<String>, Vec<i64>) =
        rows.into_iter().map(|(s, q)| (s, i64::from(q))).unzip();
    let available = lock_available(tx, &skus).await?;
    let short = skus
        .iter()
        .zip(&quantities)
        .any(|(sku, q)| available.get(sku).copied().unwrap_or(0) < *q);
    if short {
        tracing::error!(%order_id, "order completed after its reservation expired and the units were sold meanwhile: stock shortfall");
        metrics::counter!(actors::metrics::COMMIT_SHORTFALL).increment(1);
        return Ok(SettleOutcome { rows_changed: 0 });
    }
    let units = skus.iter().cloned().zip(quantities).collect();
    take_from_products(tx, units, Leaving::Retaken).await?;
    sqlx::query("UPDATE stock_reservations SET status = 'COMMITTED', updated_at = now() WHERE order_id = $1 AND status = 'RELEASED'")
        .bind(order_id.as_uuid())
        .execute(&mut **tx)
        .await?;
    tracing::warn!(%order_id, "order confirmed after its reservation expired; its units were taken again");
    Ok(SettleOutcome {
        rows_changed: skus.len() as u64,
    })
}

/// Commits many orders' reservations in one transaction: two statements for the whole batch
/// (move the rows and lock their products in SKU order; adjust the products). An order with
/// nothing reserved is handled as `commit` would (its expired units are taken again if still
/// there).
async fn commit_many(
    tx: &mut Transaction<'_, Postgres>,
    order_ids: &[OrderId],
) -> Result<Vec<SettleOutcome>, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = order_ids.iter().map(|o| o.as_uuid()).collect();
    // `locked` is read whole (its count joins every row) before the statement returns, and its
    // `ORDER BY ... FOR UPDATE` locks in SKU order, as `lock_available` does: batches sharing a
    // SKU queue on it instead of deadlocking, and the update below meets rows already locked.
    let moved: Vec<(uuid::Uuid, String, i32)> = sqlx::query_as(
        "WITH moved AS (
             UPDATE stock_reservations SET status = 'COMMITTED', updated_at = now()
             WHERE order_id = ANY($1) AND status = 'RESERVED' RETURNING order_id, sku, quantity),
         locked AS (
             SELECT sku FROM products WHERE sku IN (SELECT sku FROM moved) ORDER BY sku FOR UPDATE)
         SELECT m.order_id, m.sku, m.quantity FROM moved m, (SELECT count(*) FROM locked) AS l",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let (per_sku, mut per_order) = tally(moved);
    take_from_products(tx, per_sku.into_iter().collect(), Leaving::Sold).await?;
    let mut outcomes = Vec::with_capacity(order_ids.len());
    for order_id in order_ids {
        let rows_changed = per_order.remove(&order_id.as_uuid()).unwrap_or(0);
        outcomes.push(if rows_changed > 0 {
            SettleOutcome { rows_changed }
        } else {
            retake_expired(tx, *order_id).await?
        });
    }
    Ok(outcomes)
}

/// Releases several orders in one transaction, each statement covering the whole batch: the
/// decision rows first (in the same lock order as a reservation, so a reservation request that
/// arrives after this release finds the order decided and reserves nothing), then the rows, then
/// the products. A repeated order is released by its first occurrence.
async fn release_many(
    tx: &mut Transaction<'_, Postgres>,
    order_ids: &[OrderId],
) -> Result<Vec<SettleOutcome>, sqlx::Error> {
    // Sorted, so concurrent batches claim decision rows in one order and cannot deadlock.
    let mut ids: Vec<uuid::Uuid> = order_ids.iter().map(|o| o.as_uuid()).collect();
    ids.sort_unstable();
    ids.dedup();
    sqlx::query(
        "INSERT INTO inventory_decisions (order_id, outcome)
         SELECT id, 'CANCELLED' FROM unnest($1::uuid[]) AS id ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    let moved: Vec<(uuid::Uuid, String, i32)> = sqlx::query_as(
        "UPDATE stock_reservations SET status = 'RELEASED', updated_at = now()
         WHERE order_id = ANY($1) AND status = 'RESERVED' RETURNING order_id, sku, quantity",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let (per_sku, mut per_order) = tally(moved);
    let skus: Vec<String> = per_sku.keys().cloned().collect();
    if !skus.is_empty() {
        lock_available(tx, &skus).await?;
    }
    take_from_products(tx, per_sku.into_iter().collect(), Leaving::Released).await?;
    Ok(order_ids
        .iter()
        .map(|order_id| SettleOutcome {
            rows_changed: per_order.remove(&order_id.as_uuid()).unwrap_or(0),
        })
        .collect())
}

#[async_trait]
impl ReservationLedger for PgReservationLedger {
    async fn reserve_batch(
        &self,
        requests: &[ReservationRequest],
        messages: BatchMessages<'_>,
    ) -> Result<Vec<ReservationOutcome>, StoreError> {
        reservations::reserve_batch(&self.pool, &self.signal, requests, messages).await
    }

    async fn commit_batch(&self, order_ids: &[OrderId]) -> Result<Vec<SettleOutcome>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let outcomes = commit_many(&mut tx, order_ids).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(outcomes)
    }

    async fn prior_decision(
        &self,
        order_id: OrderId,
    ) -> Result<Option<PriorReservation>, StoreError> {
        let row: Option<(String, bool)> = sqlx::query_as(
            "SELECT d.outcome, EXISTS (SELECT 1 FROM stock_reservations r
                                       WHERE r.order_id = d.order_id AND r.status <> 'RELEASED')
             FROM inventory_decisions d WHERE d.order_id = $1",
        )
        .bind(order_id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.map(|(outcome, held)| match (outcome.as_str(), held) {
            ("RESERVED", true) => PriorReservation::Reserved,
            ("OUT_OF_STOCK", _) => PriorReservation::OutOfStock,
            _ => PriorReservation::Released,
        }))
    }

    async fn due_for_expiry(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ExpiredReservation>, StoreError> {
        // `COLLATE "C"`: the smallest SKU in byte order, as `Sku`'s `Ord` picks it for the
        // reservation's shard, whatever the database's collation.
        // Besides expiries: a finished order still holding units lost the commit or release
        // that follows (a crash between the saga's commit and the shard's). The grace keeps the
        // sweeper from racing the settlement on its normal way.
        let rows: Vec<(uuid::Uuid, String, String, Option<String>)> = sqlx::query_as(
            "SELECT r.order_id, min(r.correlation_id), min(r.sku COLLATE \"C\"), min(s.status)
             FROM stock_reservations r
             LEFT JOIN order_snapshots s
                    ON s.order_id = r.order_id AND s.status IN ('COMPLETED', 'CANCELLED')
             WHERE r.status = 'RESERVED'
               AND (r.expires_at <= $1 OR s.updated_at <= $1 - $3 * interval '1 millisecond')
             GROUP BY r.order_id ORDER BY min(r.expires_at) LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .bind(SETTLEMENT_GRACE_MS)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(id, corr, sku, finished)| ExpiredReservation {
                order_id: OrderId::from_uuid(id),
                correlation_id: CorrelationId::parse(&corr).unwrap_or_default(),
                routing_sku: Sku::parse(&sku).ok(),
                finished: match finished.as_deref() {
                    Some("COMPLETED") => Some(OrderStatus::Completed),
                    Some(_) => Some(OrderStatus::Cancelled),
                    None => None,
                },
            })
            .collect())
    }

    async fn release_batch(
        &self,
        order_ids: &[OrderId],
        messages: ReleaseMessages<'_>,
    ) -> Result<Vec<SettleOutcome>, StoreError> {
        if order_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let outcomes = release_many(&mut tx, order_ids)
            .await
            .map_err(unavailable)?;
        let envelopes: Vec<_> = outcomes
            .iter()
            .enumerate()
            .flat_map(|(i, outcome)| messages(i, outcome))
            .collect();
        outbox::commit_with(tx, &envelopes, &self.signal).await?;
        Ok(outcomes)
    }
}
