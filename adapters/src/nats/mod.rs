//! NATS JetStream: connection, the three streams, the durable consumers and the outbox relay.
//!
//! Streams keep events for a week (limits retention) so several consumers can read the same
//! subjects and an operator can replay; dedup by `Nats-Msg-Id` within a two-minute window makes a
//! re-published outbox row harmless. Consumers are durable pull consumers with explicit acks.

mod consumer;
pub use consumer::ensure_consumer;
mod cluster_mail;
mod order_events;
mod owner_requests;
mod relay;
mod retry;
pub use cluster_mail::{NatsClusterMail, PartitionMailbox, Receive, mail_subject, read_answer};
pub use order_events::forward_order_events;
pub use owner_requests::{
    ANSWER_HEADERS, FORWARDED_HEADERS, Forwarded, OwnerAnswer, OwnerRequest, OwnerRequests,
    Unanswered, read_request, reply, request_subject,
};
pub use retry::RetryPolicy;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

pub use consumer::{
    ConsumerContext, ConsumerSpec, DeliveryCount, HandlerError, HandlerFuture, MessageHandler,
    run_consumer,
};
pub use relay::OutboxRelay;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot reach NATS at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("JetStream setup failed for {what}: {reason}")]
    Setup { what: String, reason: String },
}

/// The streams ordersaga owns, with the subjects each one captures.
pub const STREAMS: [(&str, &str); 3] = [
    ("orders", "order.>"),
    ("payments", "payment.>"),
    ("inventory", "inventory.>"),
];

/// The saga's inbound events from inventory (it ignores the release requests it sent itself).
pub const ORDER_SAGA_INVENTORY: ConsumerSpec =
    ConsumerSpec::new("inventory", "order-saga-inventory", "saga", "inventory.>");
/// The saga's inbound payment outcomes (it ignores the payment requests it sent itself).
pub const ORDER_SAGA_PAYMENTS: ConsumerSpec =
    ConsumerSpec::new("payments", "order-saga-payments", "saga", "payment.>");
/// Inventory reserves on order.created, commits on order.confirmed, releases on order.cancelled.
pub const INVENTORY_ORDERS: ConsumerSpec =
    ConsumerSpec::new("orders", "inventory-orders", "inventory", "order.>");
/// Inventory's compensation commands from the saga.
pub const INVENTORY_COMMANDS: ConsumerSpec = ConsumerSpec::new(
    "inventory",
    "inventory-commands",
    "compensation",
    "inventory.release_requested.v1",
);
/// The payment role's refund requests (late payments of cancelled orders).
pub const PAYMENT_REFUNDS: ConsumerSpec = ConsumerSpec::new(
    "payments",
    "payment-refunds",
    "payment",
    "payment.refund_requested.v1",
);
/// The payment role's cancel requests (the saga gave up on a payment).
pub const PAYMENT_CANCELLATIONS: ConsumerSpec = ConsumerSpec::new(
    "payments",
    "payment-cancellations",
    "payment",
    "payment.cancel_requested.v1",
);
/// The payment role's charge requests.
pub const PAYMENT_REQUESTS: ConsumerSpec = ConsumerSpec::new(
    "payments",
    "payment-requests",
    "payment",
    "payment.requested.v1",
);

/// Every durable consumer ordersaga runs (metrics register their series from this list).
pub const ALL_CONSUMERS: [ConsumerSpec; 7] = [
    ORDER_SAGA_INVENTORY,
    ORDER_SAGA_PAYMENTS,
    INVENTORY_ORDERS,
    INVENTORY_COMMANDS,
    PAYMENT_REFUNDS,
    PAYMENT_CANCELLATIONS,
    PAYMENT_REQUESTS,
];

/// Connects, failing fast with the address in the message if the server is not there; once
/// connected, the client reconnects on its own forever.
pub async fn connect(url: &str) -> Result<(async_nats::Client, jetstream::Context), NatsError> {
    // A cluster's nodes, comma separated: the client connects to one and moves to another when
    // it goes.
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    let client = async_nats::ConnectOptions::new()
        .name("ordersaga")
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(servers)
        .await
        .map_err(|e| NatsError::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

/// Creates the streams, or updates them to this configuration, each kept in `replicas` copies
/// (1 on a single server; 3 on a 3-node JetStream cluster). Safe to run at every start and
/// from several processes at once.
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> Result<(), NatsError> {
    for (name, subjects) in STREAMS {
        let config = stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas.max(1),
            ..Default::default()
        };
        js.create_or_update_stream(config)
            .await
            .map_err(|e| NatsError::Setup {
                what: format!("stream {name}"),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}
