//! Actor inspection for operators, behind the `ADMIN_TOKEN` bearer token (401 without it; the
//! whole surface is closed when no token is configured):
//! - `GET /actors`: the supervisor (live order actors, armed timers, restarts), live sagas by
//!   status, and the inventory shards;
//! - `GET /actors/orders/{id}`: the live in-memory state of an order's actor, or its snapshot
//!   marked `passivated` when no actor is live;
//! - `GET /actors/inventory/{sku}`: the owning shard, stock and active reservations;
//! - `GET /actors/stuck`: live sagas whose current step is past its deadline;
//! - `POST /actors/orders/{id}/retry`, `/cancel`, `/pause` and `/resume` (`{"by","reason"}`):
//!   run the current step again now, compensate and cancel, hold the saga (its events are kept
//!   and its deadline stops), or release it; each recorded in the order's history with who and
//!   why. Each is one saga event, decided by the same pure state machine as everything else.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use actors::domain::{OrderId, Sku};
use adapters::postgres::inspection;
use adapters::postgres::snapshots::read_snapshot;

use super::error::ErrorBody;
use super::openapi;
use super::{ApiError, AppState};

/// Checks `Authorization: Bearer <ADMIN_TOKEN>` in constant time.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let allowed = match (&state.admin_token, presented) {
        (Some(expected), Some(given)) => {
            let expected = secrecy::ExposeSecret::expose_secret(expected);
            bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
        }
        _ => false,
    };
    if allowed {
        return next.run(request).await;
    }
    let message = if state.admin_token.is_none() {
        "the admin API is disabled: set ADMIN_TOKEN to enable it"
    } else {
        "a valid admin bearer token is required"
    };
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[utoipa::path(
    get,
    path = "/actors",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    responses(
        (status = 200, description = "This process's order supervisor, unfinished sagas by status, inventory shards.", body = openapi::ActorsOverview),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database or the order service is unavailable.", body = ErrorBody),
    )
)]
pub async fn overview(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let supervisor = match &state.orders {
        Some(orders) => Some(orders.overview().await?),
        None => None,
    };
    let live = inspection::live_sagas_by_status(&state.pool).await?;
    let live_by_status: serde_json::Map<String, Value> =
        live.into_iter().map(|(s, n)| (s, json!(n))).collect();
    let shards = state.shards.as_ref().map(|s| s.shard_count());
    Ok(Json(json!({
        "order_supervisor": supervisor,
        "live_sagas_by_status": live_by_status,
        "inventory": shards.map(|count| json!({"shards": count})),
    })))
}

#[utoipa::path(
    get,
    path = "/actors/orders/{id}",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    params(("id" = String, Path, description = "The order id (a UUID).")),
    responses(
        (status = 200, description = "The saga: live at its owner (in a cluster, the instance asked forwards the request to the order's owner), or its stored snapshot.", body = openapi::SagaInspection),
        (status = 400, description = "`invalid_path`: the id is not a UUID.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database or the order service is unavailable.", body = ErrorBody),
    )
)]
pub async fn order(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order_id = OrderId::parse(&raw).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()).with_field("order_id")
    })?;
    let live = match &state.orders {
        Some(orders) => orders.inspect(order_id).await?,
        None => None,
    };
    let (state_json, source, mailbox_depth) = match live {
        Some(live) => (live.state, "live", Some(live.mailbox_depth)),
        None => (
            read_snapshot(&state.pool, order_id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("order {order_id} does not exist")))?,
            "passivated",
            None,
        ),
    };
    let now = Utc::now();
    let pending_timer = state_json
        .deadline
        .map(|d| json!({"deadline": d, "overdue": d < now}));
    let step = match (
        state_json.status.as_str(),
        state_json.compensation.is_some(),
    ) {
        _ if state_json.paused.is_some() => "paused by an operator (resume to continue)",
        (_, true) if !state_json.is_terminal() => "compensation (waiting for the stock release)",
        ("PENDING", _) => "inventory (waiting for the reservation)",
        ("STOCK_RESERVED" | "PAYMENT_PROCESSING", _) => "payment (waiting for the outcome)",
        _ => "none (finished)",
    };
    let attempt = state_json.payment.as_ref().map(|p| p.attempt);
    let last_error = state_json.payment.as_ref().and_then(|p| p.failure.clone());
    Ok(Json(json!({
        "source": source,
        "order_id": order_id,
        "status": state_json.status.as_str(),
        "version": state_json.version,
        "current_step": step,
        "payment_attempt": attempt,
        "pending_timer": pending_timer,
        "last_error": last_error,
        "mailbox_depth": mailbox_depth,
        "paused": state_json.paused,
        "state": state_json,
    })))
}

#[utoipa::path(
    get,
    path = "/actors/inventory/{sku}",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    params(("sku" = String, Path, description = "1 to 64 letters (case matters), digits, `-`, `_` and `.`.")),
    responses(
        (status = 200, description = "The owning shard, the stock and the active reservations.", body = openapi::StockInspection),
        (status = 400, description = "`invalid_path`: not a valid SKU.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such product.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable.", body = ErrorBody),
    )
)]
pub async fn inventory(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sku = Sku::parse(&raw).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()).with_field("sku")
    })?;
    let product = state
        .catalog
        .get(&sku)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no product with SKU {sku}")))?;
    let reservations: Vec<Value> = inspection::active_reservations(&state.pool, &sku, 1000)
        .await?
        .into_iter()
        .map(|r| {
            json!({"order_id": r.order_id, "quantity": r.quantity, "expires_at": r.expires_at, "correlation_id": r.correlation_id})
        })
        .collect();
    Ok(Json(json!({
        "sku": sku,
        "owning_shard": state.shards.as_ref().map(|s| s.shard_of(&sku)),
        "on_hand": product.on_hand,
        "reserved": product.reserved,
        "available": product.available,
        "low_stock_threshold": product.low_stock_threshold,
        "active_reservations": reservations,
    })))
}

#[utoipa::path(
    get,
    path = "/actors/stuck",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    responses(
        (status = 200, description = "Unfinished sagas whose deadline has passed (or that have none), paused ones aside, most overdue first.", body = openapi::StuckSagas),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is unavailable.", body = ErrorBody),
    )
)]
pub async fn stuck(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = Utc::now();
    let stuck: Vec<Value> = inspection::overdue_sagas(&state.pool, 500)
        .await?
        .into_iter()
        .map(|saga| {
            let overdue = saga
                .deadline
                .map(|d| (now - d).num_milliseconds() as f64 / 1000.0);
            json!({"order_id": saga.order_id, "status": saga.status, "deadline": saga.deadline, "overdue_seconds": overdue, "in_status_since": saga.in_status_since})
        })
        .collect();
    Ok(Json(json!({"count": stuck.len(), "stuck": stuck})))
}

/// Who acts and why: recorded in the order's history.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"by": "alice", "reason": "payment provider incident INC-42"}))]
pub struct OperatorAction {
    /// Who acts: 1 to 200 printable characters.
    by: String,
    /// Why: 1 to 200 printable characters.
    reason: String,
}

fn checked(field: &'static str, value: &str) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 200 || trimmed.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            field,
            "must be 1 to 200 printable characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// The operator controls, each one saga event.
#[derive(Debug, Clone, Copy)]
enum Control {
    Retry,
    Cancel,
    Pause,
    Resume,
}

async fn act(
    state: &AppState,
    raw: &str,
    action: OperatorAction,
    control: Control,
) -> Result<Json<Value>, ApiError> {
    let order_id = OrderId::parse(raw).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()).with_field("order_id")
    })?;
    let by = checked("by", &action.by)?;
    let reason = checked("reason", &action.reason)?;
    let Some(orders) = &state.orders else {
        return Err(ApiError::unavailable(
            "this process does not run the order role",
        ));
    };
    use actors::saga::SagaEvent;
    let (by_, reason_) = (by.clone(), reason.clone());
    let event = match control {
        Control::Retry => SagaEvent::OperatorRetry { by, reason },
        Control::Cancel => SagaEvent::OperatorCancel { by, reason },
        Control::Pause => SagaEvent::OperatorPause { by, reason },
        Control::Resume => SagaEvent::OperatorResume { by, reason },
    };
    tracing::info!(%order_id, operator = %by_, reason = %reason_, action = event.name(), "operator action");
    match orders.deliver(order_id, event).await? {
        actors::orders::Delivery::Applied(status) => Ok(Json(
            json!({"order_id": order_id, "applied": true, "status": status.as_str()}),
        )),
        actors::orders::Delivery::Ignored(why) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_applicable", why))
        }
    }
}

/// `POST /actors/orders/{id}/retry`: run the current step again now.
#[utoipa::path(
    post,
    path = "/actors/orders/{id}/retry",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    params(("id" = String, Path, description = "The order id (a UUID).")),
    request_body = OperatorAction,
    responses(
        (status = 200, description = "The current step's message was sent again with a fresh deadline; recorded in the order's history.", body = openapi::OperatorActionResult),
        (status = 400, description = "`invalid_path`, `malformed_json`, `invalid_field`, `unreadable_body`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody),
        (status = 409, description = "`not_applicable`: the order is finished, or paused (resume it first).", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 64 KiB.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `by` or `reason` is not 1 to 200 printable characters.", body = ErrorBody),
        (status = 503, description = "`unavailable`: this process does not run the order role, or the database or the order service is unavailable; `not_owner`: another instance owns the order and did not answer (in a cluster the owner answers, whichever instance is asked).", body = ErrorBody),
    )
)]
pub async fn retry(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    super::json::JsonBody(action): super::json::JsonBody<OperatorAction>,
) -> Result<Json<Value>, ApiError> {
    act(&state, &raw, action, Control::Retry).await
}

/// `POST /actors/orders/{id}/cancel`: compensate and cancel.
#[utoipa::path(
    post,
    path = "/actors/orders/{id}/cancel",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    params(("id" = String, Path, description = "The order id (a UUID).")),
    request_body = OperatorAction,
    responses(
        (status = 200, description = "Cancelled at once (`PENDING`) or compensation started (payment cancelled if in flight, stock released, then `CANCELLED`); recorded in the order's history.", body = openapi::OperatorActionResult),
        (status = 400, description = "`invalid_path`, `malformed_json`, `invalid_field`, `unreadable_body`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody),
        (status = 409, description = "`not_applicable`: the order is finished, already being cancelled, or paused (resume it first).", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 64 KiB.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `by` or `reason` is not 1 to 200 printable characters.", body = ErrorBody),
        (status = 503, description = "`unavailable`: this process does not run the order role, or the database or the order service is unavailable; `not_owner`: another instance owns the order and did not answer (in a cluster the owner answers, whichever instance is asked).", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    super::json::JsonBody(action): super::json::JsonBody<OperatorAction>,
) -> Result<Json<Value>, ApiError> {
    act(&state, &raw, action, Control::Cancel).await
}

/// `POST /actors/orders/{id}/pause`: hold the saga (no step taken, deadline stopped, events kept).
#[utoipa::path(
    post,
    path = "/actors/orders/{id}/pause",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    params(("id" = String, Path, description = "The order id (a UUID).")),
    request_body = OperatorAction,
    responses(
        (status = 200, description = "Paused: the saga takes no step and its deadline is held; events that arrive are kept in its snapshot until it is resumed. Recorded in the order's history.", body = openapi::OperatorActionResult),
        (status = 400, description = "`invalid_path`, `malformed_json`, `invalid_field`, `unreadable_body`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody),
        (status = 409, description = "`not_applicable`: the order is finished or already paused.", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 64 KiB.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `by` or `reason` is not 1 to 200 printable characters.", body = ErrorBody),
        (status = 503, description = "`unavailable`: this process does not run the order role, or the database or the order service is unavailable; `not_owner`: another instance owns the order and did not answer (in a cluster the owner answers, whichever instance is asked).", body = ErrorBody),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    super::json::JsonBody(action): super::json::JsonBody<OperatorAction>,
) -> Result<Json<Value>, ApiError> {
    act(&state, &raw, action, Control::Pause).await
}

/// `POST /actors/orders/{id}/resume`: release a paused saga.
#[utoipa::path(
    post,
    path = "/actors/orders/{id}/resume",
    tag = "admin",
    security(("ADMIN_TOKEN" = [])),
    params(("id" = String, Path, description = "The order id (a UUID).")),
    request_body = OperatorAction,
    responses(
        (status = 200, description = "Resumed: the step gets back the time it had left and the events kept while paused are decided in arrival order. Recorded in the order's history.", body = openapi::OperatorActionResult),
        (status = 400, description = "`invalid_path`, `malformed_json`, `invalid_field`, `unreadable_body`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid admin bearer token, or `ADMIN_TOKEN` is unset (with `WWW-Authenticate: Bearer`).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody),
        (status = 409, description = "`not_applicable`: the order is not paused.", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 64 KiB.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`.", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `by` or `reason` is not 1 to 200 printable characters.", body = ErrorBody),
        (status = 503, description = "`unavailable`: this process does not run the order role, or the database or the order service is unavailable; `not_owner`: another instance owns the order and did not answer (in a cluster the owner answers, whichever instance is asked).", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    super::json::JsonBody(action): super::json::JsonBody<OperatorAction>,
) -> Result<Json<Value>, ApiError> {
    act(&state, &raw, action, Control::Resume).await
}
