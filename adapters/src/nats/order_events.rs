//! Wakes this process's long polls (`GET /orders/{id}?wait=`) when *another* process finishes an
//! order.
//!
//! Every finished order sends `order.confirmed.v1` or `order.cancelled.v1` through the outbox,
//! with its id in the `Order-Id` header. A plain (core NATS, non-durable) subscription to those two
//! subjects sees them as JetStream stores them; each one costs a header lookup and a hash lookup
//! here, and a store read only when a request of this process waits for that order. A missed
//! event (NATS unreachable for a while) is covered by the long poll's slow fallback read.

use async_nats::Client;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use actors::domain::OrderId;
use actors::events::subjects;
use actors::orders::StatusWatchers;

/// Forwards finished-order events to `watchers` until `shutdown`; fails if it cannot subscribe.
pub async fn forward_order_events(
    client: Client,
    watchers: StatusWatchers,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut events = futures::stream::select(
        subscribe(&client, subjects::ORDER_CONFIRMED).await?,
        subscribe(&client, subjects::ORDER_CANCELLED).await?,
    );
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = events.next() => match next {
                Some(message) => message,
                None => return Err("the order event subscription ended".into()),
            },
        };
        // Anything without a valid id is not ours to judge (the consumers park bad messages).
        if let Some(order_id) = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Order-Id"))
            .and_then(|v| OrderId::parse(v.as_str()).ok())
        {
            watchers.changed_elsewhere(order_id);
        }
    }
}

async fn subscribe(
    client: &Client,
    subject: &'static str,
) -> Result<async_nats::Subscriber, String> {
    client.subscribe(subject).await.map_err(|e| {
        warn!(subject, error = %e, "cannot subscribe to order events");
        format!("subscribe {subject}: {e}")
    })
}
