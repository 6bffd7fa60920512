//! Coalesced price reads: the placements that arrive while one read of `products` runs are
//! answered together by the next one.
//!
//! Every placement needs its prices, and one read per placement would be one round trip and
//! one execution per order. A cache would save more but could price an order at a price already
//! changed by another process; a coalesced read cannot: each caller's answer comes from a read
//! that started after it asked, exactly as its own read would have. Batches are taken by the
//! shared machinery (`batching`), with one reader: a read is cheap, and one at a time keeps
//! them full.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::PgPool;

use actors::domain::{Currency, Money, Sku};

use super::batching::{BatchJob, Batcher};

/// What one read found: price and currency by SKU (unknown SKUs absent).
type Found = Arc<HashMap<String, (i64, String)>>;

/// Why a price could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PriceReadError {
    #[error("price read failed: {0}")]
    Failed(String),
    #[error("the price reader stopped")]
    Stopped,
}

/// The reader's front door; cheap to clone. Its task starts on the first read (so a catalog
/// can be built outside a runtime) and stops when every clone is dropped.
#[derive(Clone)]
pub struct PriceReads {
    batcher: Batcher<PriceBatch>,
}

impl PriceReads {
    pub fn new(pool: PgPool) -> Self {
        Self {
            batcher: Batcher::new(PriceBatch { pool }, 1),
        }
    }

    /// Current unit prices of `skus`; unknown SKUs are simply absent.
    pub async fn prices(&self, skus: &[Sku]) -> Result<HashMap<Sku, Money>, PriceReadError> {
        let found = self
            .batcher
            .submit(0, skus.to_vec())
            .await
            .map_err(|_| PriceReadError::Stopped)?
            .map_err(PriceReadError::Failed)?;
        Ok(skus
            .iter()
            .filter_map(|sku| {
                let (cents, currency) = found.get(sku.as_str())?;
                let money = Money::new(*cents, Currency::parse(currency).ok()?).ok()?;
                Some((sku.clone(), money))
            })
            .collect())
    }
}

/// The reader's work: one read of every SKU the batch's placements ask for, shared by all.
struct PriceBatch {
    pool: PgPool,
}

impl BatchJob for PriceBatch {
    type Request = Vec<Sku>;
    type Answer = Result<Found, String>;
    const NAME: &'static str = "price_reads";

    async fn run(&self, placements: Vec<Vec<Sku>>) -> Vec<Self::Answer> {
        let names: Vec<&str> = placements
            .iter()
            .flatten()
            .map(Sku::as_str)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let read: Result<Vec<(String, i64, String)>, sqlx::Error> = sqlx::query_as(
            "SELECT sku, unit_price_cents, currency::text FROM products WHERE sku = ANY($1)",
        )
        .bind(&names)
        .fetch_all(&self.pool)
        .await;
        let answer = read
            .map(|rows| {
                Arc::new(
                    rows.into_iter()
                        .map(|(sku, cents, currency)| (sku, (cents, currency)))
                        .collect(),
                )
            })
            .map_err(|e| e.to_string());
        vec![answer; placements.len()]
    }

    fn unanswered() -> Self::Answer {
        Err("the price reader lost this read's answer".into())
    }
}
