//! Another process's finished orders wake this process's long polls: the forwarder turns
//! `order.confirmed.v1` / `order.cancelled.v1` (their `Order-Id` header) into a nudge for the
//! waiters of that order, against a real JetStream server.

use std::time::{Duration, Instant};

use actors::domain::OrderId;
use actors::events::subjects;
use actors::orders::{Change, StatusWatchers};
use adapters::nats as bus;
use tokio_util::sync::CancellationToken;

use crate::helpers::TestNats;

async fn publish(client: &async_nats::Client, subject: &'static str, order: Option<OrderId>) {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(order) = order {
        headers.insert("Order-Id", order.to_string().as_str());
    }
    client
        .publish_with_headers(subject, headers, "{}".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
}

/// Publishes until the watch reports a change made elsewhere (the forwarder subscribes in the
/// background, so the first messages may come before its subscription).
async fn nudged_by(
    client: &async_nats::Client,
    subject: &'static str,
    order: OrderId,
    watch: &mut actors::orders::StatusWatch,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        publish(client, subject, Some(order)).await;
        match tokio::time::timeout(Duration::from_millis(100), watch.changed()).await {
            Ok(Some(Change::Elsewhere)) => return,
            Ok(other) => panic!("unexpected change: {other:?}"),
            Err(_) if Instant::now() < deadline => {}
            Err(_) => panic!("{subject} for {order} never woke its waiter"),
        }
    }
}

#[tokio::test]
async fn finished_order_events_wake_the_waiters_of_that_order_only() {
    let nats = TestNats::start().await;
    let (client, _) = bus::connect(&nats.url).await.unwrap();
    let watchers = StatusWatchers::default();
    let shutdown = CancellationToken::new();
    let forwarder = tokio::spawn(bus::forward_order_events(
        client.clone(),
        watchers.clone(),
        shutdown.clone(),
    ));

    // One order per subject, so a late copy of one message cannot pass for the other.
    let (cancelled, confirmed, other) = (OrderId::new(), OrderId::new(), OrderId::new());
    let mut cancelled_watch = watchers.watch(cancelled);
    let mut confirmed_watch = watchers.watch(confirmed);
    let mut other_watch = watchers.watch(other);
    nudged_by(
        &client,
        subjects::ORDER_CANCELLED,
        cancelled,
        &mut cancelled_watch,
    )
    .await;
    nudged_by(
        &client,
        subjects::ORDER_CONFIRMED,
        confirmed,
        &mut confirmed_watch,
    )
    .await;

    // Neither a message without an id nor one with a garbled id stops the forwarder, and the
    // other order's waiter heard of none of the above.
    publish(&client, subjects::ORDER_CANCELLED, None).await;
    let mut garbled = async_nats::HeaderMap::new();
    garbled.insert("Order-Id", "not-a-uuid");
    client
        .publish_with_headers(subjects::ORDER_CANCELLED, garbled, "{}".into())
        .await
        .expect("publish");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), other_watch.changed())
            .await
            .is_err(),
        "the other order's waiter was woken"
    );
    nudged_by(&client, subjects::ORDER_CONFIRMED, other, &mut other_watch).await;

    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), forwarder)
        .await
        .unwrap_or_else(|_| panic!("the forwarder did not stop on shutdown"));
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
}
