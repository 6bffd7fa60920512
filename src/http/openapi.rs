//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`, with Swagger UI at
//! `GET /docs` (its files are compiled in: utoipa-swagger-ui's `vendored` feature, nothing is
//! fetched at build or run time).
//!
//! Why it is shaped so:
//! - Each operation is described by a `#[utoipa::path]` attribute on its handler, next to the code
//!   it documents; `ApiDoc` below only lists them. `tests/api/openapi.rs` fails when a route of
//!   the router is missing here, and compares the documented response schemas with what the
//!   running routes really answer.
//! - Request and response types of `src/http` derive `ToSchema` themselves. The domain crates
//!   (`actors`, `adapters`) stay free of utoipa, so where a route serialises one of their types,
//!   or builds its answer with `json!`, a documentation-only type here mirrors that JSON field for
//!   field. These types are never serialised: keep them in step with the handlers (the test
//!   above checks them against real answers of every GET route and of the main POST/PUT ones).
//! - Errors use the one `ErrorBody` type that `ApiError` really serialises.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{admin, cluster, health, inventory, orders, saga_metrics, webhooks};

/// Where the document and the UI are served.
pub const SPEC_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

/// Name of the security scheme of the operators' API (`/actors...`); the admin handlers' attributes
/// spell it out as `security(("ADMIN_TOKEN" = []))` (the macro takes a literal only).
pub const ADMIN_SCHEME: &str = "ADMIN_TOKEN";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ordersaga",
        description = "Order-processing engine: each order is a saga (reserve stock, take the payment, complete; or compensate and cancel).\n\nErrors answer `{\"error\":{\"code\",\"message\",\"field\"}}` (`ErrorBody`) unless a response says otherwise; `503 unavailable` answers carry `Retry-After: 1` (retry shortly). The operators' routes under `/actors` need `Authorization: Bearer <ADMIN_TOKEN>` and answer 401 while `ADMIN_TOKEN` is unset."
    ),
    paths(
        orders::place_order,
        orders::get_order,
        saga_metrics::saga_metrics,
        inventory::list_products,
        inventory::get_product,
        inventory::put_product,
        webhooks::receive,
        health::metrics,
        health::live,
        health::ready,
        admin::overview,
        admin::stuck,
        admin::order,
        admin::inventory,
        admin::retry,
        admin::cancel,
        admin::pause,
        admin::resume,
        cluster::cluster_overview,
    ),
    components(schemas(super::error::ErrorBody, super::error::ErrorDetail)),
    modifiers(&AdminSecurity),
    tags(
        (name = "orders", description = "Place orders and follow them."),
        (name = "inventory", description = "The catalog and its stock."),
        (name = "payments", description = "Stripe's webhooks."),
        (name = "operations", description = "Health, readiness and metrics."),
        (name = "admin", description = "Operators' inspection and controls; bearer `ADMIN_TOKEN`."),
    )
)]
pub struct ApiDoc;

/// Declares the operators' bearer token; the admin operations refer to it by name.
struct AdminSecurity;

impl Modify for AdminSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <ADMIN_TOKEN>`, the token configured with the \
                         `ADMIN_TOKEN` setting. Without a valid token: 401 `unauthorized` with \
                         `WWW-Authenticate: Bearer`; while `ADMIN_TOKEN` is unset the admin API \
                         always answers 401.",
                    ))
                    .build(),
            ),
        );
    }
}

/// `GET /openapi.json` and the Swagger UI under `/docs` (`/docs` redirects to `/docs/`).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    SwaggerUi::new(DOCS_PATH)
        .url(SPEC_PATH, ApiDoc::openapi())
        .into()
}

pub use schemas::*;

/// Documentation-only schemas: JSON built from domain types or with `json!`, described field for
/// field. Never constructed or serialised, hence `dead_code` allowed here and only here.
#[allow(dead_code)]
mod schemas {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use utoipa::ToSchema;

    /// The saga's status.
    #[derive(ToSchema)]
    #[schema(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum OrderStatus {
        Pending,
        StockReserved,
        PaymentProcessing,
        Completed,
        Cancelled,
    }

    #[derive(ToSchema)]
    #[schema(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum PaymentStatus {
        Requested,
        Pending,
        Succeeded,
        Failed,
    }

    /// The payment of an order (mirrors `actors::saga::PaymentInfo`).
    #[derive(ToSchema)]
    pub struct PaymentInfo {
        status: PaymentStatus,
        /// 1 for the first charge attempt.
        attempt: u32,
        /// The provider's id for the charge (a PaymentIntent id with Stripe).
        #[schema(required = true)]
        reference: Option<String>,
        #[schema(required = true)]
        failure: Option<PaymentFailure>,
    }

    /// Why a payment failed, as the provider said.
    #[derive(ToSchema)]
    pub struct PaymentFailure {
        #[schema(example = "card_declined")]
        code: String,
        message: String,
    }

    /// A payment that succeeded after the order was cancelled (mirrors `actors::saga::LatePayment`).
    #[derive(ToSchema)]
    pub struct LatePayment {
        /// The provider's id of the late charge.
        reference: String,
        at: DateTime<Utc>,
        /// Set once the refund was made.
        #[schema(required = true)]
        refund_id: Option<String>,
        #[schema(required = true)]
        refunded_at: Option<DateTime<Utc>>,
    }

    /// One transition of an order (mirrors `actors::saga::HistoryEntry`).
    #[derive(ToSchema)]
    pub struct HistoryEntry {
        status: OrderStatus,
        at: DateTime<Utc>,
        /// What caused it; for operator actions, who and why.
        #[schema(required = true)]
        reason: Option<String>,
    }

    /// A product of the catalog (mirrors `adapters::postgres::Product`).
    #[derive(ToSchema)]
    pub struct Product {
        #[schema(example = "MUG-LOGO")]
        sku: String,
        name: String,
        unit_price_cents: i64,
        currency: String,
        on_hand: i64,
        /// Units held for live orders.
        reserved: i64,
        /// `on_hand - reserved`.
        available: i64,
        low_stock_threshold: i64,
        updated_at: DateTime<Utc>,
    }

    /// `GET /orders/metrics`.
    #[derive(ToSchema)]
    pub struct SagaMetrics {
        orders: OrderCounts,
        /// Completed / finished orders; `null` while none finished.
        #[schema(required = true)]
        success_rate: Option<f64>,
        /// Cancelled orders that went through compensation / finished orders; `null` while none
        /// finished.
        #[schema(required = true)]
        compensation_rate: Option<f64>,
        /// From placement to the last change of finished orders.
        duration_seconds: Percentiles,
    }

    #[derive(ToSchema)]
    pub struct OrderCounts {
        total: i64,
        by_status: CountsByStatus,
    }

    /// Orders in each status (all five always present).
    #[derive(ToSchema)]
    #[schema(rename_all = "SCREAMING_SNAKE_CASE")]
    pub struct CountsByStatus {
        pending: i64,
        stock_reserved: i64,
        payment_processing: i64,
        completed: i64,
        cancelled: i64,
    }

    /// Each `null` while no order finished.
    #[derive(ToSchema)]
    pub struct Percentiles {
        #[schema(required = true)]
        p50: Option<f64>,
        #[schema(required = true)]
        p95: Option<f64>,
        #[schema(required = true)]
        p99: Option<f64>,
    }

    /// `POST /payments/webhook` acknowledgement.
    #[derive(ToSchema)]
    pub struct WebhookAck {
        /// Always `true`.
        received: bool,
        /// The event id was recorded before (Stripe retried); nothing new happens.
        duplicate: bool,
        /// The event reports a status this process had already recorded for the charge (for
        /// example the `payment_intent.succeeded` that follows a create call answered
        /// `succeeded`): acknowledged without being recorded, since it changes nothing.
        already_applied: bool,
    }

    /// `GET /health`.
    #[derive(ToSchema)]
    pub struct Liveness {
        #[schema(example = "ok")]
        status: String,
    }

    /// `GET /health/ready`.
    #[derive(ToSchema)]
    pub struct Readiness {
        status: ReadinessStatus,
        checks: ReadinessChecks,
    }

    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum ReadinessStatus {
        Ready,
        NotReady,
    }

    #[derive(ToSchema)]
    pub struct ReadinessChecks {
        postgres: DependencyCheck,
        nats: DependencyCheck,
        /// Only in a process with the payment role: Stripe or its fake.
        #[schema(nullable = false)]
        stripe: Option<StripeCheck>,
    }

    #[derive(ToSchema)]
    pub struct DependencyCheck {
        status: CheckStatus,
        /// Time the probe took (each probe is bounded at 2 s).
        latency_ms: f64,
    }

    #[derive(ToSchema)]
    pub struct StripeCheck {
        status: CheckStatus,
        latency_ms: f64,
        /// The Stripe API (or fake) this process talks to.
        api_base: String,
    }

    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum CheckStatus {
        Up,
        Down,
    }

    /// `GET /actors`.
    #[derive(ToSchema)]
    pub struct ActorsOverview {
        /// `null` when this process does not run the order role.
        #[schema(required = true)]
        order_supervisor: Option<SupervisorOverview>,
        /// Unfinished sagas by status (every process's, from the database); only statuses that have
        /// some.
        live_sagas_by_status: BTreeMap<String, i64>,
        /// `null` when this process does not run the inventory role.
        #[schema(required = true)]
        inventory: Option<InventoryOverview>,
    }

    /// This process's order supervisor (mirrors `actors::orders::SupervisorOverview`).
    #[derive(ToSchema)]
    pub struct SupervisorOverview {
        live_order_actors: u64,
        armed_timers: u64,
        #[schema(required = true)]
        next_timer: Option<DateTime<Utc>>,
        /// Order actors restarted after a crash since the process started.
        restarts: u64,
    }

    #[derive(ToSchema)]
    pub struct InventoryOverview {
        shards: u64,
    }

    /// `GET /actors/stuck`.
    #[derive(ToSchema)]
    pub struct StuckSagas {
        count: u64,
        /// Most overdue first, at most 500.
        stuck: Vec<StuckSaga>,
    }

    #[derive(ToSchema)]
    pub struct StuckSaga {
        #[schema(format = "uuid")]
        order_id: String,
        status: OrderStatus,
        /// `null` when the saga has no deadline.
        #[schema(required = true)]
        deadline: Option<DateTime<Utc>>,
        #[schema(required = true)]
        overdue_seconds: Option<f64>,
        in_status_since: DateTime<Utc>,
    }

    /// `GET /actors/orders/{id}`: one saga as its actor (or its snapshot) holds it.
    #[derive(ToSchema)]
    pub struct SagaInspection {
        source: SagaSource,
        #[schema(format = "uuid")]
        order_id: String,
        status: OrderStatus,
        version: i64,
        /// What the saga waits for, in words, e.g. `payment (waiting for the outcome)`.
        current_step: String,
        #[schema(required = true)]
        payment_attempt: Option<u32>,
        /// The armed deadline of the current step; `null` when none.
        #[schema(required = true)]
        pending_timer: Option<PendingTimer>,
        /// The payment failure, if any.
        #[schema(required = true)]
        last_error: Option<PaymentFailure>,
        /// Messages waiting in the live actor's mailbox; `null` when `passivated`.
        #[schema(required = true)]
        mailbox_depth: Option<u64>,
        /// Set while an operator holds the saga (`POST /actors/orders/{id}/pause`), else `null`.
        #[schema(required = true)]
        paused: Option<Pause>,
        /// The full saga state as stored (`order_id`, `correlation_id`, `customer_id`, `lines`,
        /// `amount`, `payment_method`, `status`, `version`, `created_at`, `updated_at`, `payment`,
        /// `compensation`, `cancel_reason`, `late_payment`, `history`, `timeouts`, `deadline`, and
        /// `paused` while paused). An internal shape for diagnosis, not a stable contract.
        #[schema(value_type = Object)]
        state: serde_json::Value,
    }

    /// An operator holds the saga (mirrors `actors::saga::Pause`).
    #[derive(ToSchema)]
    pub struct Pause {
        by: String,
        reason: String,
        at: DateTime<Utc>,
        /// What was left of the step's time when paused, in milliseconds; the step gets it back
        /// on resume. `null` when the step had no deadline.
        #[schema(required = true)]
        remaining_ms: Option<i64>,
        /// Events that arrived while paused, oldest first; decided in arrival order on resume
        /// (internal saga events, not a stable contract).
        #[schema(value_type = Vec<Object>)]
        held: Vec<serde_json::Value>,
    }

    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub enum SagaSource {
        /// The in-memory state of its actor in this process.
        Live,
        /// Its stored snapshot (no live actor here).
        Passivated,
    }

    #[derive(ToSchema)]
    pub struct PendingTimer {
        deadline: DateTime<Utc>,
        overdue: bool,
    }

    /// `GET /actors/inventory/{sku}`.
    #[derive(ToSchema)]
    pub struct StockInspection {
        sku: String,
        /// The inventory shard that owns the SKU; `null` when this process does not run the inventory
        /// role.
        #[schema(required = true)]
        owning_shard: Option<u64>,
        on_hand: i64,
        reserved: i64,
        available: i64,
        low_stock_threshold: i64,
        /// Soonest to expire first, at most 1000.
        active_reservations: Vec<ActiveReservation>,
    }

    #[derive(ToSchema)]
    pub struct ActiveReservation {
        #[schema(format = "uuid")]
        order_id: String,
        quantity: i32,
        expires_at: DateTime<Utc>,
        correlation_id: String,
    }

    /// `POST /actors/orders/{id}/retry` and `/cancel`: the action was applied.
    #[derive(ToSchema)]
    pub struct OperatorActionResult {
        #[schema(format = "uuid")]
        order_id: String,
        /// Always `true` (an action that does not apply is a 409).
        applied: bool,
        /// The status after the action.
        status: OrderStatus,
    }
}
