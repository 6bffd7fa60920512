//! Runs one durable pull consumer: each message is decoded, handed to a handler, and acked only
//! after the handler's work is committed; a failed handler naks with a growing delay so the
//! message comes back later without blocking the others. Messages are handled concurrently
//! (bounded), which is safe because every handler is idempotent. Handlers are *called* in
//! delivery order; the saga's handler enqueues into the order's actor at that moment, so one
//! order's events reach its actor in stream order. Inventory and payment handlers may finish in
//! any order, which their idempotent records make harmless.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use actors::events::Envelope;

use super::NatsError;

#[derive(Debug, Clone, Copy)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    pub durable: &'static str,
    pub filter: &'static str,
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// What a consumer does with one decoded message. `Err` means "try again later".
pub type MessageHandler = Arc<dyn Fn(Envelope) -> HandlerFuture + Send + Sync>;

/// Messages handled at once per consumer.
const IN_FLIGHT: usize = 256;
/// After this many deliveries a message is considered poison and terminated (logged as an error).
const MAX_DELIVER: i64 = 20;

fn config(spec: &ConsumerSpec) -> pull::Config {
    pull::Config {
        durable_name: Some(spec.durable.to_owned()),
        filter_subject: spec.filter.to_owned(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        // A message not acked in time (a handler hung, a process died) comes back after 30 s,
        // then later and later; the server uses the first step as the ack wait.
        ack_wait: Duration::from_secs(30),
        backoff: vec![
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(120),
            Duration::from_secs(300),
        ],
        max_deliver: MAX_DELIVER,
        max_ack_pending: 4096,
        ..Default::default()
    }
}

/// Creates the durable consumer, or updates it to this configuration.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
    let setup = |e: String| NatsError::Setup {
        what: format!("consumer {}", spec.durable),
        reason: e,
    };
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|e| setup(e.to_string()))?;
    match stream.create_consumer(config(spec)).await {
        Ok(consumer) => Ok(consumer),
        Err(_) => stream
            .update_consumer(config(spec))
            .await
            .map_err(|e| setup(e.to_string())),
    }
}

/// Consumes until `shutdown` is cancelled, resubscribing after connection trouble.
pub async fn run_consumer(
    js: jetstream::Context,
    spec: ConsumerSpec,
    handler: MessageHandler,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let messages = match ensure_consumer(&js, &spec).await {
            Ok(consumer) => consumer.messages().await,
            Err(e) => {
                warn!(consumer = spec.durable, error = %e, "consumer not ready; retrying");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                warn!(consumer = spec.durable, error = %e, "cannot subscribe; retrying");
                if sleep_or_shutdown(backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        info!(consumer = spec.durable, "consuming");
        backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    warn!(consumer = spec.durable, error = %e, "consumer stream error; resubscribing");
                    break;
                }
                None => break,
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            // The handler is *called* here, in delivery order, and only awaited in the task: a
            // handler that enqueues synchronously (the saga's) thereby keeps per-order order.
            let Some((envelope, work)) = start_one(&spec, &message, &handler).await else {
                continue;
            };
            tokio::spawn(async move {
                finish_one(spec, message, envelope, work).await;
                drop(permit);
            });
        }
        if sleep_or_shutdown(backoff, &shutdown).await {
            return;
        }
    }
}

/// Decodes a message and starts its handler; `None` if the message was undecodable (terminated).
async fn start_one(
    spec: &ConsumerSpec,
    message: &jetstream::Message,
    handler: &MessageHandler,
) -> Option<(Envelope, HandlerFuture)> {
    match Envelope::from_json(&message.payload) {
        Ok(envelope) => {
            // Every log line of this message's handling carries the order and correlation ids.
            let span = info_span!(
                "message",
                consumer = spec.durable,
                subject = %message.subject,
                order_id = %envelope.order_id,
                correlation_id = %envelope.correlation_id,
            );
            let work = span.in_scope(|| handler(envelope.clone()));
            Some((envelope, Box::pin(work.instrument(span))))
        }
        Err(e) => {
            // Redelivering an undecodable message can never succeed.
            error!(consumer = spec.durable, subject = %message.subject, error = %e, "undecodable message terminated");
            let _ = message.ack_with(AckKind::Term).await;
            None
        }
    }
}

async fn finish_one(
    spec: ConsumerSpec,
    message: jetstream::Message,
    envelope: Envelope,
    work: HandlerFuture,
) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let order_id = envelope.order_id;
    let correlation_id = envelope.correlation_id;
    match work.await {
        Ok(()) => {
            if let Err(e) = message.ack().await {
                warn!(consumer = spec.durable, %order_id, error = %e, "ack failed; the message will be redelivered and deduplicated");
            }
        }
        Err(e) if delivered >= MAX_DELIVER => {
            error!(consumer = spec.durable, %order_id, %correlation_id, delivered, error = %e, "message keeps failing; giving up on it");
            let _ = message.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            let delay = Duration::from_millis(100u64.saturating_mul(1 << delivered.clamp(0, 6)));
            warn!(consumer = spec.durable, %order_id, %correlation_id, delivered, error = %e, "handler failed; redelivering later");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

/// Sleeps; returns `true` if shutdown was requested meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
