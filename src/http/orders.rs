//! `POST /orders` and `GET /orders/{id}`.
//!
//! Placing an order prices it from the catalog (never from the client), claims the
//! `Idempotency-Key` if one is given, and hands the order to its saga actor, which commits the
//! PENDING snapshot and `order.created.v1` together. The answer is 202: the saga runs on. With
//! `?wait=` the same request also waits for the outcome, the way `GET /orders/{id}?wait=` does:
//! a checkout that wants the result makes one request instead of two.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use actors::domain::{
    CorrelationId, Currency, CustomerId, Money, OrderId, PaymentMethod, PricedLine, Quantity, Sku,
};
use actors::orders::Change;
use actors::saga::{HistoryEntry, NewOrder, OrderState, PaymentInfo};
use adapters::postgres::IdempotencyClaim;
use adapters::postgres::snapshots::read_snapshot;

use super::error::ErrorBody;
use super::json::JsonBody;
use super::{ApiError, AppState};

/// Lines per order: enough for any real basket, small enough to bound a snapshot.
pub const MAX_LINES: usize = 100;
/// While waiting, how often the snapshot is re-read anyway. This process's changes arrive at once
/// through the status channel, other processes' terminal transitions through their order events
/// on NATS (`bus::forward_order_events`); the poll only bounds the wait when such an event is
/// lost (NATS unreachable), so it is slow: polling every waiter often was most of the database's
/// work under a backlog.
const FALLBACK_POLL: Duration = Duration::from_secs(5);
/// Longest `?wait=` a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_id": "c-1", "items": [{"sku": "MUG-LOGO", "quantity": 2}], "currency": "EUR", "payment_method": "pm_card_visa"}))]
pub struct PlaceOrderBody {
    /// 1 to 64 characters, no control characters.
    customer_id: String,
    /// 1 to 100 lines, each SKU at most once; prices come from the catalog, never from the client.
    #[schema(min_items = 1, max_items = 100)]
    items: Vec<ItemBody>,
    /// Three letters (ISO 4217, either case); every SKU must be sold in it.
    currency: String,
    /// The payment method to charge, 1 to 100 letters, digits and `_` (e.g. `pm_card_visa`).
    payment_method: String,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    /// 1 to 64 letters (case matters), digits, `-`, `_` and `.`; must be in the catalog.
    sku: String,
    #[schema(minimum = 1, maximum = 1000)]
    quantity: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlacedOrder {
    #[schema(value_type = String, format = "uuid")]
    order_id: OrderId,
    /// `PENDING` for a new order; the current status when an `Idempotency-Key` replays one.
    #[schema(value_type = super::openapi::OrderStatus)]
    status: &'static str,
    correlation_id: String,
}

/// `POST /orders`: place an order. It is priced from the catalog and handed to its saga; the
/// answer comes once the PENDING order is stored, before stock or payment are settled, or with
/// `?wait=` once the order is terminal (or the wait has run out).
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    request_body = PlaceOrderBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters. The same key with the same body answers with the same order (header `Idempotent-Replayed: true`); with another body, 422 `idempotency_key_reused`."),
        ("X-Correlation-Id" = Option<String>, Header, description = "1 to 128 letters, digits, `-`, `_`, `.` or `:`; generated when absent; echoed and carried by every message of the saga."),
        ("X-Client-Key" = Option<String>, Header, description = "What the rate limit counts against (1 to 128 bytes); the peer IP address when absent."),
        PlaceOrderQuery,
    ),
    responses(
        (status = 200, description = "With `wait`: the order reached `COMPLETED` or `CANCELLED` within it; the whole order, with the same headers as 202.", body = OrderView),
        (status = 202, description = "Accepted: the saga runs on; follow it with `GET /orders/{id}`. With `wait`, when it ran out before the order was terminal, the body is the whole order as it stands (`OrderView`).", body = PlacedOrder,
            headers(
                ("Location" = String, description = "`/orders/{order_id}`"),
                ("X-Correlation-Id" = String, description = "The correlation id of the order."),
                ("Idempotent-Replayed" = String, description = "`true` when an earlier request with this `Idempotency-Key` placed the order; absent otherwise."),
            )),
        (status = 400, description = "Malformed JSON or a field of the wrong type (`malformed_json`, `invalid_field` with the field path, `unreadable_body`), a bad `Idempotency-Key` / `X-Correlation-Id` (`invalid_header`), or a bad `wait` (`invalid_query`).", body = ErrorBody),
        (status = 413, description = "`body_too_large`: the body exceeds 64 KiB.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`.", body = ErrorBody),
        (status = 422, description = "Parsed but not acceptable: `validation_failed` (bad customer id, currency, payment method, quantity outside 1..1000, 0 or over 100 lines, a repeated SKU, a currency the SKU is not sold in), `unknown_sku`, `idempotency_key_reused`.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: this client places orders too fast; nothing was stored.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait."))),
        (status = 503, description = "`unavailable`: the database or the order service is unavailable, or this process does not run the order role; `overloaded`: too many orders are in progress (stock or payments are behind); `not_owner`: this instance owns no order partition at the moment (joining or leaving the cluster); nothing was stored.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait."))),
    )
)]
pub async fn place_order(
    State(state): State<AppState>,
    Query(query): Query<PlaceOrderQuery>,
    extensions: axum::http::Extensions,
    uri: axum::http::Uri,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PlaceOrderBody>,
) -> Result<Response, ApiError> {
    let orders = admit(&state)?;
    let wait = wait_query(query.wait.as_deref())?;
    let correlation_id = correlation_id(&headers)?;
    let idempotency_key = idempotency_key(&headers)?;

    let customer_id = CustomerId::parse(&body.customer_id)
        .map_err(|e| ApiError::invalid("customer_id", e.to_string()))?;
    let currency = Currency::parse(&body.currency)
        .map_err(|e| ApiError::invalid("currency", e.to_string()))?;
    let payment_method = PaymentMethod::parse(&body.payment_method)
        .map_err(|e| ApiError::invalid("payment_method", e.to_string()))?;
    let requested = parse_items(&body.items)?;

    let (lines, amount) = price_lines(&state, requested, currency).await?;

    let proposed = new_order_id(&state)?;
    let (order_id, replayed) = match &idempotency_key {
        None => (proposed, false),
        Some(key) => {
            let forward = Forward {
                extensions: &extensions,
                uri: &uri,
                headers: &headers,
            };
            match claim_key(&state, key, &body, proposed, forward).await? {
                Claimed::Here { order_id, replayed } => (order_id, replayed),
                Claimed::AnsweredByOwner(response) => return Ok(response),
            }
        }
    };

    // Registered before the order exists, so not even its first transition can be missed.
    let watch = (!wait.is_zero()).then(|| state.status_watchers.watch(order_id));
    let placed = orders
        .place(NewOrder {
            order_id,
            correlation_id: correlation_id.clone(),
            customer_id,
            lines,
            amount,
            payment_method,
        })
        .await?;

    // Debug: one line per order at info would cost more than the order itself under load.
    tracing::debug!(
        order_id = %placed.order_id,
        correlation_id = %placed.correlation_id,
        amount_cents = placed.amount.amount_cents(),
        replayed,
        "order placed"
    );
    placement_response(&state, &placed, watch, wait, replayed).await
}

/// The order role of this process, if it runs it and is not saturated: when stock and payments
/// are behind, holding more orders in memory would only make every order slower, so nothing is
/// stored and the client retries.
fn admit(state: &AppState) -> Result<actors::orders::OrderSupervisorHandle, ApiError> {
    let Some(orders) = state.orders.clone() else {
        return Err(ApiError::unavailable(
            "this process does not run the order role",
        ));
    };
    if state.postman.saturated() {
        metrics::counter!(crate::metrics::PLACEMENTS_REFUSED_BUSY).increment(1);
        return Err(
            ApiError::unavailable("too many orders are in progress; retry shortly")
                .coded("overloaded"),
        );
    }
    Ok(orders)
}

/// An id in a partition owned here: the saga runs where the order arrived.
fn new_order_id(state: &AppState) -> Result<OrderId, ApiError> {
    state
        .cluster
        .orders
        .as_ref()
        .and_then(|o| o.new_order_id())
        .ok_or_else(|| {
            ApiError::unavailable(
                "this instance owns no order partition yet (it is joining or leaving the cluster); retry, here or at another instance",
            )
            .coded("not_owner")
        })
}

/// Prices each requested line from the catalog, in the order's currency; the lines and the total.
async fn price_lines(
    state: &AppState,
    requested: Vec<(Sku, Quantity)>,
    currency: Currency,
) -> Result<(Vec<PricedLine>, Money), ApiError> {
    let skus: Vec<Sku> = requested.iter().map(|(s, _)| s.clone()).collect();
    let prices = state.catalog.prices(&skus).await?;
    let mut lines = Vec::with_capacity(requested.len());
    let mut amount = Money::zero(currency);
    for (i, (sku, quantity)) in requested.into_iter().enumerate() {
        let field = format!("items[{i}].sku");
        let Some(unit_price) = prices.get(&sku).copied() else {
            return Err(ApiError::invalid(field, format!("unknown SKU {sku}")).coded("unknown_sku"));
        };
        if unit_price.currency() != currency {
            return Err(ApiError::invalid(
                "currency",
                format!("{sku} is sold in {}, not {currency}", unit_price.currency()),
            ));
        }
        amount = unit_price
            .checked_mul(quantity.get())
            .and_then(|t| amount.checked_add(t))
            .map_err(|_| ApiError::invalid("items", "the order total is too large"))?;
        lines.push(PricedLine {
            sku,
            quantity,
            unit_price,
        });
    }
    Ok((lines, amount))
}

/// What a placement needs to be sent on to the owner of its order.
struct Forward<'a> {
    extensions: &'a axum::http::Extensions,
    uri: &'a axum::http::Uri,
    headers: &'a HeaderMap,
}

/// What an `Idempotency-Key` means for this placement.
enum Claimed {
    /// Place `order_id` here: new, or `replayed` (the key's earlier order, run here).
    Here { order_id: OrderId, replayed: bool },
    /// The key's order runs at another instance, which answered.
    AnsweredByOwner(Response),
}

/// Claims `key` for `proposed`, or finds the order it already means: a retry of a placement
/// that another instance made is answered by that instance, where its saga runs.
async fn claim_key(
    state: &AppState,
    key: &str,
    body: &PlaceOrderBody,
    proposed: OrderId,
    forward: Forward<'_>,
) -> Result<Claimed, ApiError> {
    let hash = request_hash(body);
    match state.idempotency.claim(key, &hash, proposed).await? {
        IdempotencyClaim::New(order_id) => Ok(Claimed::Here {
            order_id,
            replayed: false,
        }),
        IdempotencyClaim::Existing {
            order_id,
            same_request: true,
        } => {
            if let Some(partition) =
                super::owner_forwarding::elsewhere(state, forward.extensions, order_id)
            {
                let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
                let answered = super::owner_forwarding::ask_owner(
                    state,
                    partition,
                    &axum::http::Method::POST,
                    forward.uri,
                    forward.headers,
                    body,
                )
                .await;
                if let Some(answer) = answered {
                    return Ok(Claimed::AnsweredByOwner(answer));
                }
            }
            Ok(Claimed::Here {
                order_id,
                replayed: true,
            })
        }
        IdempotencyClaim::Existing {
            same_request: false,
            ..
        } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )
        .with_field("Idempotency-Key")),
    }
}

/// The answer to a placement: 202 with the placed order at once, or, with `?wait=`, the order
/// once terminal (200) or when the wait ran out (202); with its location and correlation id.
async fn placement_response(
    state: &AppState,
    placed: &actors::saga::OrderState,
    watch: Option<actors::orders::StatusWatch>,
    wait: Duration,
    replayed: bool,
) -> Result<Response, ApiError> {
    let mut response = match watch {
        None => {
            let body = PlacedOrder {
                order_id: placed.order_id,
                status: placed.status.as_str(),
                correlation_id: placed.correlation_id.to_string(),
            };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Some(watch) => {
            // A replayed placement found the order placed earlier, maybe by another process.
            let start = if replayed {
                Start::Lookup
            } else {
                Start::PlacedHere
            };
            let (order, terminal) =
                wait_for_outcome(state, placed.order_id, wait, watch, start).await?;
            let status = if terminal {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (status, Json(OrderView::from(order))).into_response()
        }
    };
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{}", placed.order_id)) {
        headers.insert(header::LOCATION, location);
    }
    if let Ok(value) = HeaderValue::from_str(placed.correlation_id.as_str()) {
        headers.insert("x-correlation-id", value);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn parse_items(items: &[ItemBody]) -> Result<Vec<(Sku, Quantity)>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::invalid(
            "items",
            "an order needs at least one item",
        ));
    }
    if items.len() > MAX_LINES {
        return Err(ApiError::invalid(
            "items",
            format!("an order has at most {MAX_LINES} items"),
        ));
    }
    let mut seen = HashSet::new();
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let sku = Sku::parse(&item.sku)
                .map_err(|e| ApiError::invalid(format!("items[{i}].sku"), e.to_string()))?;
            let quantity = Quantity::try_from(item.quantity)
                .map_err(|e| ApiError::invalid(format!("items[{i}].quantity"), e.to_string()))?;
            if !seen.insert(sku.clone()) {
                return Err(ApiError::invalid(
                    format!("items[{i}].sku"),
                    format!("{sku} appears twice; put its whole quantity on one line"),
                ));
            }
            Ok((sku, quantity))
        })
        .collect()
}

fn correlation_id(headers: &HeaderMap) -> Result<CorrelationId, ApiError> {
    match headers.get("x-correlation-id") {
        None => Ok(CorrelationId::new()),
        Some(raw) => raw
            .to_str()
            .ok()
            .and_then(|s| CorrelationId::parse(s).ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    "X-Correlation-Id must be 1 to 128 characters of letters, digits, '-', '_', '.' or ':'",
                )
                .with_field("X-Correlation-Id")
            }),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(key)
            if !key.is_empty() && key.len() <= 255 && key.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
        .with_field("Idempotency-Key")),
    }
}

/// Hash of the request as parsed (not as sent), so whitespace or key order do not matter.
fn request_hash(body: &PlaceOrderBody) -> String {
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlaceOrderQuery {
    /// Place the order, then hold the answer until it is `COMPLETED` or `CANCELLED`, at most
    /// this long (`5s`, `500ms` or plain seconds, at most 30 s): one request instead of a
    /// placement and a `GET /orders/{id}?wait=`. The answer is then the whole order (200 when
    /// terminal, 202 when the wait ran out first). Without it, 202 with the placed order at once.
    #[param(example = "5s")]
    wait: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetOrderQuery {
    /// Hold the request until the order is `COMPLETED` or `CANCELLED`, at most this long:
    /// `5s`, `500ms` or plain seconds (`2`), at most 30 s. Without it the answer is immediate.
    #[param(example = "5s")]
    wait: Option<String>,
}

/// An order as clients see it. Every field is always present (`null` when it has no value).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    #[schema(value_type = String, format = "uuid")]
    order_id: OrderId,
    #[schema(value_type = super::openapi::OrderStatus)]
    status: &'static str,
    customer_id: String,
    lines: Vec<LineView>,
    amount_cents: i64,
    currency: String,
    payment_method: String,
    /// The provider's id for the charge (a PaymentIntent id with Stripe), once known.
    #[schema(required = true)]
    payment_reference: Option<String>,
    #[schema(value_type = Option<super::openapi::PaymentInfo>, required = true)]
    payment: Option<PaymentInfo>,
    /// Why the order was cancelled (`out_of_stock`, `payment_failed`, `payment_timeout`...).
    #[schema(required = true)]
    cancel_reason: Option<String>,
    /// The saga is undoing its work (releasing stock, cancelling the payment).
    compensating: bool,
    /// A payment that succeeded after the order was cancelled, and its refund.
    #[schema(value_type = Option<super::openapi::LatePayment>, required = true)]
    refund_due: Option<actors::saga::LatePayment>,
    correlation_id: String,
    /// Incremented by every transition.
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Every transition, oldest first.
    #[schema(value_type = Vec<super::openapi::HistoryEntry>)]
    history: Vec<HistoryEntry>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LineView {
    sku: String,
    quantity: u32,
    unit_price_cents: i64,
    line_total_cents: i64,
}

impl From<OrderState> for OrderView {
    fn from(s: OrderState) -> Self {
        OrderView {
            order_id: s.order_id,
            status: s.status.as_str(),
            customer_id: s.customer_id.to_string(),
            lines: s
                .lines
                .iter()
                .map(|l| LineView {
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                    unit_price_cents: l.unit_price.amount_cents(),
                    line_total_cents: l.unit_price.amount_cents() * i64::from(l.quantity.get()),
                })
                .collect(),
            amount_cents: s.amount.amount_cents(),
            currency: s.amount.currency().to_string(),
            payment_method: s.payment_method.as_str().to_owned(),
            payment_reference: s.payment.as_ref().and_then(|p| p.reference.clone()),
            payment: s.payment,
            cancel_reason: s.cancel_reason,
            compensating: s.compensation.is_some() && !s.status.is_terminal(),
            refund_due: s.late_payment,
            correlation_id: s.correlation_id.to_string(),
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
            history: s.history,
        }
    }
}

/// `GET /orders/{id}`: the order, read from PostgreSQL (any process answers).
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    params(("id" = String, Path, description = "The order id (a UUID)."), GetOrderQuery),
    responses(
        (status = 200, description = "The order (terminal, or as it stands when `wait` ran out).", body = OrderView),
        (status = 400, description = "`invalid_path`: the id is not a UUID; `invalid_query`: a bad `wait`.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable.", body = ErrorBody),
    )
)]
pub async fn get_order(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(query): Query<GetOrderQuery>,
) -> Result<Json<OrderView>, ApiError> {
    let order_id = OrderId::parse(&raw_id).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()).with_field("order_id")
    })?;
    let wait = wait_query(query.wait.as_deref())?;
    if wait.is_zero() {
        return Ok(Json(read_order(&state, order_id).await?.into()));
    }
    // Registered before the first read, so a change between the read and the wait is not missed.
    let watch = state.status_watchers.watch(order_id);
    let (order, _) = wait_for_outcome(&state, order_id, wait, watch, Start::Lookup).await?;
    Ok(Json(order.into()))
}

async fn read_order(state: &AppState, order_id: OrderId) -> Result<OrderState, ApiError> {
    read_snapshot(&state.pool, order_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("order {order_id} does not exist")))
}

/// Where `wait_for_outcome` starts from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The order was placed by this request, after `watch` was registered: every transition
    /// this process commits reaches the watch, the first included, so nothing needs reading.
    PlacedHere,
    /// Anything else: the order's current state is looked up first.
    Lookup,
}

/// Waits until the order is terminal or `wait` has run out, and returns it as it then stands,
/// with whether it is terminal. `watch` must have been registered before the order could have
/// changed in a way the caller has not seen (before the first read, or before placing it).
async fn wait_for_outcome(
    state: &AppState,
    order_id: OrderId,
    wait: Duration,
    mut watch: actors::orders::StatusWatch,
    start: Start,
) -> Result<(OrderState, bool), ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    // The first state comes from the order's live actor when this process has one: two mailbox
    // hops instead of a database round trip, and the actor holds the state it last committed (a
    // transition made meanwhile by another process is caught by the tick below, as always). An
    // order placed by this request needs neither: its actor stops once it is finished, and
    // looking it up then (most orders, under load) cost a read.
    let mut order = match start {
        Start::PlacedHere => None,
        Start::Lookup => Some(match live_state(state, order_id).await {
            Some(live) => live,
            None => read_order(state, order_id).await?,
        }),
    };
    loop {
        if let Some(order) = order.take_if(|o| o.is_terminal()) {
            return Ok((order, true));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            // Another process may have moved the order through a step that sends no order
            // event (stock reserved, payment processing): answer with what the store holds.
            let order = read_order(state, order_id).await?;
            let terminal = order.is_terminal();
            return Ok((order, terminal));
        }
        let tick = FALLBACK_POLL.min(deadline - now);
        tokio::select! {
            changed = watch.changed() => match changed {
                Some(Change::Committed(next))
                    if order.as_ref().is_none_or(|o| next.version > o.version) =>
                {
                    order = Some((*next).clone());
                }
                Some(Change::Committed(_)) => {}
                Some(Change::Elsewhere) | None => order = Some(read_order(state, order_id).await?),
            },
            _ = tokio::time::sleep(tick) => order = Some(read_order(state, order_id).await?),
        }
    }
}

/// The committed state held by the order's actor in this process, if it is live.
async fn live_state(state: &AppState, order_id: OrderId) -> Option<OrderState> {
    let orders = state.orders.as_ref()?;
    orders.inspect(order_id).await.ok()?.map(|live| live.state)
}

/// The `wait` query parameter of both routes: absent is zero (answer at once).
fn wait_query(raw: Option<&str>) -> Result<Duration, ApiError> {
    match raw {
        None => Ok(Duration::ZERO),
        Some(raw) => parse_wait(raw).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "wait must be a duration such as 5s or 500ms, at most 30s",
            )
            .with_field("wait")
        }),
    }
}

/// `5s`, `500ms`, `2` (seconds) → a duration up to `MAX_WAIT`.
pub(super) fn parse_wait(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let duration = if let Some(ms) = raw.strip_suffix("ms") {
        Duration::from_millis(ms.parse::<u64>().ok().filter(|v| *v <= 30_000)?)
    } else if let Some(s) = raw.strip_suffix('s') {
        Duration::from_secs_f64(
            s.parse::<f64>()
                .ok()
                .filter(|v| (0.0..=MAX_WAIT.as_secs_f64()).contains(v))?,
        )
    } else {
        Duration::from_secs_f64(
            raw.parse::<f64>()
                .ok()
                .filter(|v| (0.0..=MAX_WAIT.as_secs_f64()).contains(v))?,
        )
    };
    (duration <= MAX_WAIT).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_in_seconds_or_milliseconds_and_are_capped() {
        assert_eq!(parse_wait("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_wait("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_wait("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_wait("31s"), None);
        assert_eq!(parse_wait("-1s"), None);
        assert_eq!(parse_wait("soon"), None);
        assert_eq!(parse_wait("NaN"), None);
    }
}
