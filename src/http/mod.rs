//! The HTTP API (axum). Handlers parse raw input into domain types at the edge, call the actors or
//! stores, and map every failure through the single `ApiError` type, so each error has the same
//! JSON shape: `{"error":{"code","message","field"}}`. Every route is documented by a
//! `#[utoipa::path]` on its handler; `openapi.rs` serves the document at `/openapi.json` and
//! Swagger UI at `/docs`.

mod admin;
mod cluster;
mod edge;
mod error;
pub(crate) mod health;
mod inventory;
mod json;
mod openapi;
mod orders;
pub mod owner_forwarding;
pub mod rate_limit;
mod request_metrics;
mod saga_metrics;
pub mod server;
mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use sqlx::PgPool;

pub use edge::{REQUEST_TIMEOUTS, REQUESTS_SHED, RequestLimits};
pub use error::ApiError;

use actors::orders::{OrderSupervisorHandle, StatusWatchers};
use adapters::postgres::{Catalog, IdempotencyKeys};
use adapters::stripe::{StripeClient, WebhookInbox, WebhookVerifier};

/// Request bodies above this size are refused with 413 before they are read in full.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares. Cloned per request by axum's `State` extractor, so it is one `Arc`
/// rather than a dozen pools, handles and channels cloned one by one on every request.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(std::sync::Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    pub pool: PgPool,
    pub catalog: Catalog,
    pub idempotency: IdempotencyKeys,
    /// `None` when this process does not run the order role.
    pub orders: Option<OrderSupervisorHandle>,
    pub status_watchers: StatusWatchers,
    pub nats: async_nats::Client,
    /// Carries commands between the roles of this process; says when too many are in flight.
    pub postman: actors::postman::Postman,
    /// `None` when this process does not run the payment role.
    pub payments: Option<PaymentHttp>,
    /// `None` when this process does not run the inventory role.
    pub shards: Option<actors::inventory::InventoryShards>,
    /// The operators' bearer token; `None` closes the admin API.
    pub admin_token: Option<secrecy::SecretString>,
    /// This instance's partitions, and the cluster's leases.
    pub cluster: ClusterParts,
    /// `None` when order placement is not rate limited.
    pub order_rate_limit: Option<std::sync::Arc<rate_limit::OrderRateLimit>>,
}

/// What the HTTP layer knows of the cluster.
#[derive(Clone)]
pub struct ClusterParts {
    pub leases: adapters::postgres::PgPartitionLeases,
    pub count: actors::cluster::PartitionCount,
    /// The order partitions this instance owns; `None` when it does not run the order role.
    pub orders: Option<actors::cluster::Ownership>,
    /// The SKU partitions this instance owns; `None` when it does not run the inventory role.
    pub skus: Option<actors::cluster::Ownership>,
    /// Asks the owner of an order's partition (`owner_forwarding`).
    pub owners: adapters::nats::OwnerRequests,
}

/// What the payment role exposes over HTTP: the webhook endpoint and a readiness probe.
#[derive(Clone)]
pub struct PaymentHttp {
    pub inbox: WebhookInbox,
    pub verifier: WebhookVerifier,
    pub stripe: StripeClient,
}

/// Stripe events can be larger than order requests (they embed whole objects).
pub const MAX_WEBHOOK_BYTES: usize = 512 * 1024;

/// The API's routes behind the per-request limits of the edge (`edge.rs`), outermost so that a
/// shed request costs nothing more.
pub fn router(state: AppState, limits: RequestLimits) -> Router {
    let admin = Router::new()
        .route("/actors", get(admin::overview))
        .route("/cluster", get(cluster::cluster_overview))
        .route("/actors/stuck", get(admin::stuck))
        .route("/actors/inventory/{sku}", get(admin::inventory))
        .merge(
            // One order's live actor is at its owner: these are answered there.
            Router::new()
                .route("/actors/orders/{id}", get(admin::order))
                .route("/actors/orders/{id}/retry", post(admin::retry))
                .route("/actors/orders/{id}/cancel", post(admin::cancel))
                .route("/actors/orders/{id}/pause", post(admin::pause))
                .route("/actors/orders/{id}/resume", post(admin::resume))
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    owner_forwarding::order_routes,
                )),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    Router::new()
        .merge(admin)
        // `GET /openapi.json` (generated from the handlers' annotations) and Swagger UI at `/docs`.
        .merge(openapi::routes())
        .route(
            "/orders",
            post(orders::place_order).layer(axum::middleware::from_fn_with_state(
                state.order_rate_limit.clone(),
                rate_limit::limit_orders,
            )),
        )
        .route("/orders/metrics", get(saga_metrics::saga_metrics))
        .route("/orders/{id}", get(orders::get_order))
        .route("/inventory/products", get(inventory::list_products))
        .route(
            "/inventory/products/{sku}",
            put(inventory::put_product).get(inventory::get_product),
        )
        .route(
            "/payments/webhook",
            post(webhooks::receive).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES)),
        )
        .route("/metrics", get(health::metrics))
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(axum::middleware::from_fn(request_metrics::record))
        .layer(axum::middleware::from_fn_with_state(limits, edge::guard))
        .with_state(state)
}
