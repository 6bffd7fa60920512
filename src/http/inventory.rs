//! The catalog over HTTP: `PUT/GET /inventory/products/{sku}` and `GET /inventory/products`.
//! Setting `on_hand` is how stock is received or counted; it can never go below the units that
//! are currently reserved for live orders.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use actors::domain::{Currency, Money, Sku};
use adapters::postgres::{Product, ProductUpsert};

use super::error::ErrorBody;
use super::json::JsonBody;
use super::{ApiError, AppState};

/// Upper bound for stock counts: far above any shelf, far below overflow.
const MAX_ON_HAND: i64 = 1_000_000_000;
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Logo mug", "unit_price_cents": 1200, "currency": "EUR", "on_hand": 50, "low_stock_threshold": 5}))]
pub struct ProductBody {
    /// 1 to 200 printable characters.
    name: String,
    /// 0 to 1000000000000.
    unit_price_cents: i64,
    /// Three letters (ISO 4217, either case).
    currency: String,
    /// Units in stock, 0 to 1000000000; never below the units reserved (409).
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    on_hand: i64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    low_stock_threshold: i64,
}

fn parse_sku(raw: &str) -> Result<Sku, ApiError> {
    Sku::parse(raw).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()).with_field("sku")
    })
}

#[utoipa::path(
    put,
    path = "/inventory/products/{sku}",
    tag = "inventory",
    params(("sku" = String, Path, description = "1 to 64 letters (case matters), digits, `-`, `_` and `.`.")),
    request_body = ProductBody,
    responses(
        (status = 200, description = "The product as stored (created or updated).", body = super::openapi::Product),
        (status = 400, description = "`invalid_path` (bad SKU), `malformed_json`, `invalid_field`, `unreadable_body`.", body = ErrorBody),
        (status = 409, description = "`on_hand_below_reserved`: `on_hand` is below the units reserved for live orders.", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 64 KiB.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: name, currency, price or a count out of range.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable.", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/inventory/products/{sku}",
    tag = "inventory",
    params(("sku" = String, Path, description = "1 to 64 letters (case matters), digits, `-`, `_` and `.`.")),
    responses(
        (status = 200, description = "The product with `reserved` and `available`.", body = super::openapi::Product),
        (status = 400, description = "`invalid_path`: not a valid SKU.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such product.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable.", body = ErrorBody),
    )
)]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Start after this SKU (the `next_after` of the previous page).
    after: Option<String>,
    /// Products per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    /// In SKU order.
    #[schema(value_type = Vec<super::openapi::Product>)]
    products: Vec<Product>,
    /// Pass as `after` to get the next page; `null` when this page is not full (nothing follows).
    #[schema(required = true)]
    next_after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/inventory/products",
    tag = "inventory",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of products in SKU order.", body = ProductPage),
        (status = 400, description = "`invalid_query`: a bad `limit` or `after`, or an unknown parameter.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable.", body = ErrorBody),
    )
)]
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
