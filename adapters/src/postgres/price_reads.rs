//! Coalesced price reads: the placements that arrive while one read of `products` runs are
//! answered together by the next one.
//!
//! Every placement needs its prices, and one read per placement would be one round trip and
//! one execution per order. A cache would save more but could price an order at a price already
//! changed by another process; a coalesced read cannot: each caller's answer comes from a read
//! that started after it asked, exactly as its own read would have. As with the group commits,
//! a lone placement is read at once; under load a read carries whatever queued behind the last,
//! and what arrives within the linger (`batching`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use actors::domain::{Currency, Money, Sku};

/// Most placements answered by one read.
const MAX_BATCH: usize = 256;
/// Placements waiting for a read before callers wait to enqueue (back-pressure).
const QUEUE: usize = 4096;

/// What one read found: price and currency by SKU (unknown SKUs absent).
type Found = Arc<HashMap<String, (i64, String)>>;

struct Request {
    skus: Vec<Sku>,
    reply: oneshot::Sender<Result<Found, String>>,
}

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
    pool: PgPool,
    queue: Arc<std::sync::OnceLock<mpsc::Sender<Request>>>,
}

impl PriceReads {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            queue: Arc::default(),
        }
    }

    /// Current unit prices of `skus`; unknown SKUs are simply absent.
    pub async fn prices(&self, skus: &[Sku]) -> Result<HashMap<Sku, Money>, PriceReadError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(read_batches(self.pool.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send(Request {
                skus: skus.to_vec(),
                reply,
            })
            .await
            .map_err(|_| PriceReadError::Stopped)?;
        let found = answer
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

async fn read_batches(pool: PgPool, queue: mpsc::Receiver<Request>) {
    let mut queue = super::batching::BatchQueue::new("price_reads", queue);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.next(&mut batch, MAX_BATCH).await > 0 {
        let names: Vec<&str> = batch
            .iter()
            .flat_map(|r| r.skus.iter().map(Sku::as_str))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let read: Result<Vec<(String, i64, String)>, sqlx::Error> = sqlx::query_as(
            "SELECT sku, unit_price_cents, currency::text FROM products WHERE sku = ANY($1)",
        )
        .bind(&names)
        .fetch_all(&pool)
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
        for request in batch.drain(..) {
            let _ = request.reply.send(answer.clone());
        }
    }
}
