//! The HTTP API (axum). Handlers parse raw input into domain types at the edge, call the actors or
//! stores, and map every failure through the single `ApiError` type, so each error has the same
//! JSON shape: `{"error":{"code","message","field"}}`.

mod error;
mod health;
mod inventory;
mod json;
mod orders;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use sqlx::PgPool;
use tokio::sync::broadcast;

pub use error::ApiError;

use actors::orders::{OrderSupervisorHandle, StatusChange};
use adapters::postgres::{Catalog, IdempotencyKeys};

/// Request bodies above this size are refused with 413 before they are read in full.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub catalog: Catalog,
    pub idempotency: IdempotencyKeys,
    /// `None` when this process does not run the order role.
    pub orders: Option<OrderSupervisorHandle>,
    pub status_changes: broadcast::Sender<StatusChange>,
    pub nats: async_nats::Client,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(orders::place_order))
        .route("/orders/{id}", get(orders::get_order))
        .route("/inventory/products", get(inventory::list_products))
        .route(
            "/inventory/products/{sku}",
            put(inventory::put_product).get(inventory::get_product),
        )
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .fallback(|| async { ApiError::not_found("route", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
