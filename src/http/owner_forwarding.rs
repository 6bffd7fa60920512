//! Requests that the owner of an order answers best, whichever instance they arrive at: an
//! operator's inspection or action on an order (its live actor runs at the owner) and a Stripe
//! webhook (the owner knows in memory whether the event changes anything).
//!
//! A request for an order this instance does not own is sent to the owner over NATS
//! (`adapters::nats::OwnerRequests`) and the owner's answer is the answer. The owner handles it
//! with its own router, marked as forwarded so that it is never sent on again. When no owner
//! answers in time (a hand-off in progress, a dead owner) or the owner answers 503, this instance
//! answers itself, as it would without a cluster: a webhook is recorded here, an action is
//! refused as `not_owner`.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use actors::cluster::{KeySpace, PartitionId};
use actors::domain::OrderId;
use adapters::nats::{FORWARDED_HEADERS, Forwarded, OwnerRequest};

use super::AppState;

/// Marks a request that another instance forwarded to this one as the owner: it is answered
/// here, never sent on, and not rate limited again (the instance it reached first did that). A
/// request extension, not a header, so that no client can claim it.
#[derive(Debug, Clone)]
pub struct ForwardedByPeer;

/// Most bytes of an owner's answer that are read back into a response.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Whether a request with these extensions was forwarded by another instance.
pub fn was_forwarded(extensions: &Extensions) -> bool {
    extensions.get::<ForwardedByPeer>().is_some()
}

/// The order partition whose owner should answer a request for `order_id`; `None` when this
/// instance owns it, or does not run the order role (then there is no cluster of identical
/// instances to forward within), or the request was already forwarded.
pub fn elsewhere(
    state: &AppState,
    extensions: &Extensions,
    order_id: OrderId,
) -> Option<PartitionId> {
    let ownership = state.cluster.orders.as_ref()?;
    if was_forwarded(extensions) || ownership.owns_order(order_id) {
        return None;
    }
    Some(state.cluster.count.of_order(order_id))
}

/// The operator routes of one order (`/actors/orders/{id}...`): answered by the order's owner.
pub async fn order_routes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let order_id = request
        .uri()
        .path()
        .strip_prefix("/actors/orders/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|id| OrderId::parse(id).ok());
    let Some(partition) = order_id.and_then(|id| elsewhere(&state, request.extensions(), id))
    else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, super::MAX_BODY_BYTES).await {
        Ok(body) => body,
        // Let the handler answer a body it cannot read, as it would without forwarding.
        Err(_) => return next.run(Request::from_parts(parts, Body::empty())).await,
    };
    match ask_owner(
        &state,
        partition,
        &parts.method,
        &parts.uri,
        &parts.headers,
        body.clone(),
    )
    .await
    {
        Some(answer) => answer,
        None => next.run(Request::from_parts(parts, Body::from(body))).await,
    }
}

/// Sends a request to the owner of `partition` and turns its answer into this request's
/// response; `None` when no owner answered, or it answered 503 (then this instance answers).
pub async fn ask_owner(
    state: &AppState,
    partition: PartitionId,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Option<Response> {
    let request = OwnerRequest {
        method: method.as_str().to_owned(),
        uri: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        content: Forwarded {
            headers: named_headers(headers, &FORWARDED_HEADERS),
            body,
        },
    };
    let answer = match state
        .cluster
        .owners
        .ask(KeySpace::Orders, partition, request)
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            metrics::counter!(crate::metrics::OWNER_REQUESTS, "outcome" => "unanswered")
                .increment(1);
            tracing::debug!(%partition, error = %e, "no owner answered; answering here");
            return None;
        }
    };
    let status = StatusCode::from_u16(answer.status).ok()?;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        metrics::counter!(crate::metrics::OWNER_REQUESTS, "outcome" => "unavailable").increment(1);
        return None;
    }
    metrics::counter!(crate::metrics::OWNER_REQUESTS, "outcome" => "answered").increment(1);
    let mut response = (status, Body::from(answer.content.body)).into_response();
    for (name, value) in answer.content.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Some(response)
}

/// Answers a request forwarded by another instance with this instance's router.
pub async fn answer_forwarded(
    router: axum::Router,
    request: OwnerRequest,
) -> adapters::nats::OwnerAnswer {
    use tower::ServiceExt;

    let mut builder = axum::http::Request::builder()
        .method(request.method.as_str())
        .uri(request.uri.as_str())
        .extension(ForwardedByPeer);
    for (name, value) in &request.content.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let response = match builder.body(Body::from(request.content.body)) {
        Ok(request) => match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        Err(e) => super::ApiError::new(StatusCode::BAD_REQUEST, "malformed_forward", e.to_string())
            .into_response(),
    };
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .unwrap_or_default();
    adapters::nats::OwnerAnswer {
        status: parts.status.as_u16(),
        content: Forwarded {
            headers: named_headers(&parts.headers, &adapters::nats::ANSWER_HEADERS),
            body,
        },
    }
}

/// `(name, value)` of the headers among `names` that `headers` carries (as text).
fn named_headers(headers: &HeaderMap, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect()
}
