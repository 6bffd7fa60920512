//! The catalog over HTTP: `PUT/GET /inventory/products/{sku}` and `GET /inventory/products`.
//! Setting `on_hand` is how stock is received or counted; it can never go below the units that
//! are currently reserved for live orders.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use actors::domain::{Currency, Money, Sku};
use adapters::postgres::{Product, ProductUpsert};

use super::json::JsonBody;
use super::{ApiError, AppState};

/// Upper bound for stock counts: far above any shelf, far below overflow.
const MAX_ON_HAND: i64 = 1_000_000_000;
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    name: String,
    unit_price_cents: i64,
    currency: String,
    on_hand: i64,
    #[serde(default)]
    low_stock_threshold: i64,
}

fn parse_sku(raw: &str) -> Result<Sku, ApiError> {
    Sku::parse(raw).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()).with_field("sku")
    })
}

pub async fn put_product(
    State(state): State<AppState>,
    Path(raw_sku): Path<String>,
    JsonBody(body): JsonBody<ProductBody>,
) -> Result<Json<Product>, ApiError> {
    let sku = parse_sku(&raw_sku)?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must be 1 to 200 printable characters",
        ));
    }
    let currency = Currency::parse(&body.currency)
        .map_err(|e| ApiError::invalid("currency", e.to_string()))?;
    let unit_price = Money::new(body.unit_price_cents, currency)
        .map_err(|e| ApiError::invalid("unit_price_cents", e.to_string()))?;
    if !(0..=MAX_ON_HAND).contains(&body.on_hand) {
        return Err(ApiError::invalid(
            "on_hand",
            format!("must be an integer from 0 to {MAX_ON_HAND}"),
        ));
    }
    if !(0..=MAX_ON_HAND).contains(&body.low_stock_threshold) {
        return Err(ApiError::invalid(
            "low_stock_threshold",
            format!("must be an integer from 0 to {MAX_ON_HAND}"),
        ));
    }
    let product = ProductUpsert {
        name: name.to_owned(),
        unit_price,
        on_hand: body.on_hand,
        low_stock_threshold: body.low_stock_threshold,
    };
    Ok(Json(state.catalog.upsert(&sku, &product).await?))
}

pub async fn get_product(
    State(state): State<AppState>,
    Path(raw_sku): Path<String>,
) -> Result<Json<Product>, ApiError> {
    let sku = parse_sku(&raw_sku)?;
    state
        .catalog
        .get(&sku)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no product with SKU {sku}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct ProductPage {
    products: Vec<Product>,
    /// Pass as `after` to get the next page; absent on the last page.
    next_after: Option<String>,
}

pub async fn list_products(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ProductPage>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be from 1 to {MAX_PAGE}"),
        )
        .with_field("limit"));
    }
    let after = query
        .after
        .as_deref()
        .map(|raw| {
            Sku::parse(raw).map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.to_string())
                    .with_field("after")
            })
        })
        .transpose()?;
    let products = state.catalog.list(after.as_ref(), limit).await?;
    let next_after = (products.len() as i64 == limit)
        .then(|| products.last().map(|p| p.sku.clone()))
        .flatten();
    Ok(Json(ProductPage {
        products,
        next_after,
    }))
}
