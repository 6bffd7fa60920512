//! The product catalog: prices and stock levels as the HTTP API manages them. Reservations change
//! `reserved` through the ledger, never through here. Prices for placements are read through
//! `price_reads`, which lets concurrent placements share one read.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use actors::domain::{Money, Sku};

use super::price_reads::{PriceReadError, PriceReads};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("on_hand ({on_hand}) cannot be below the units currently reserved ({reserved})")]
    OnHandBelowReserved { on_hand: i64, reserved: i64 },
    #[error("database unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error(transparent)]
    PriceRead(#[from] PriceReadError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub unit_price_cents: i64,
    pub currency: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub low_stock_threshold: i64,
    pub updated_at: DateTime<Utc>,
}

/// A product as `PUT /inventory/products/{sku}` describes it, already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductUpsert {
    pub name: String,
    pub unit_price: Money,
    pub on_hand: i64,
    pub low_stock_threshold: i64,
}

const PRODUCT_COLUMNS: &str =
    "sku, name, unit_price_cents, currency::text AS currency, on_hand, reserved,
     on_hand - reserved AS available, low_stock_threshold, updated_at";

#[derive(Clone)]
pub struct Catalog {
    pool: PgPool,
    price_reads: PriceReads,
}

impl Catalog {
    pub fn new(pool: PgPool) -> Self {
        Self {
            price_reads: PriceReads::new(pool.clone()),
            pool,
        }
    }

    pub async fn upsert(
        &self,
        sku: &Sku,
        product: &ProductUpsert,
    ) -> Result<Product, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let reserved: Option<i64> =
            sqlx::query_scalar("SELECT reserved FROM products WHERE sku = $1 FOR UPDATE")
                .bind(sku.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(reserved) = reserved.filter(|r| *r > product.on_hand) {
            return Err(CatalogError::OnHandBelowReserved {
                on_hand: product.on_hand,
                reserved,
            });
        }
        let row = sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO products (sku, name, unit_price_cents, currency, on_hand, low_stock_threshold)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, unit_price_cents = EXCLUDED.unit_price_cents,
                 currency = EXCLUDED.currency, on_hand = EXCLUDED.on_hand,
                 low_stock_threshold = EXCLUDED.low_stock_threshold, updated_at = now()
             RETURNING {PRODUCT_COLUMNS}"
        )))
        .bind(sku.as_str())
        .bind(&product.name)
        .bind(product.unit_price.amount_cents())
        .bind(product.unit_price.currency().as_str())
        .bind(product.on_hand)
        .bind(product.low_stock_threshold)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn get(&self, sku: &Sku) -> Result<Option<Product>, CatalogError> {
        Ok(sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = $1"
        )))
        .bind(sku.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Products in SKU order, `limit` at a time, starting after `after` (keyset pagination).
    pub async fn list(
        &self,
        after: Option<&Sku>,
        limit: i64,
    ) -> Result<Vec<Product>, CatalogError> {
        Ok(sqlx::query_as::<_, Product>(sqlx::AssertSqlSafe(format!(
            "SELECT {PRODUCT_COLUMNS} FROM products WHERE sku > $1 ORDER BY sku LIMIT $2"
        )))
        .bind(after.map(Sku::as_str).unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Current unit prices of the given SKUs; unknown SKUs are simply absent. Concurrent calls
    /// share one read (`price_reads`), each started after its callers asked.
    pub async fn prices(&self, skus: &[Sku]) -> Result<HashMap<Sku, Money>, CatalogError> {
        Ok(self.price_reads.prices(skus).await?)
    }

    /// Seeds a small demo catalog when there are no products at all, so a newcomer's first order
    /// has something to buy. Never touches a catalog that has products.
    pub async fn seed_demo_if_empty(&self) -> Result<bool, CatalogError> {
        let inserted = sqlx::query(
            "INSERT INTO products (sku, name, unit_price_cents, currency, on_hand, low_stock_threshold)
             SELECT * FROM (VALUES
                 ('TSHIRT-BLUE-M', 'Blue T-shirt, size M', 1999::bigint, 'EUR', 100::bigint, 10::bigint),
                 ('MUG-LOGO', 'Logo mug', 1250, 'EUR', 50, 5),
                 ('STICKER-PACK', 'Sticker pack', 499, 'EUR', 1000, 50),
                 ('HOODIE-LTD', 'Limited hoodie', 5900, 'EUR', 5, 1)
             ) AS demo WHERE NOT EXISTS (SELECT 1 FROM products)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted > 0)
    }
}
