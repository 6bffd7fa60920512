//! Runs one durable pull consumer: each message is decoded, handed to a handler, and acked only
//! after the handler's work is committed; a failed handler naks with a growing delay so the
//! message comes back later without blocking the others. Messages are handled concurrently
//! (bounded), which is safe because every handler is idempotent. Handlers are *called* in
//! delivery order; the saga's handler enqueues into the order's actor at that moment, so one
//! order's events reach its actor in stream order. Inventory and payment handlers may finish in
//! any order, which their idempotent records make harmless.
//!
//! A message that cannot succeed (undecodable, a permanent error, or its step's retry policy
//! exhausted) is parked in `dead_letters` and acknowledged; if parking itself fails (database
//! down) it is nak'ed instead, so nothing is ever dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use actors::events::Envelope;
use actors::metrics as m;

use sqlx::PgPool;

use super::{NatsError, RetryPolicy};
use crate::postgres::dead_letters::{self, DeadLetter};

#[derive(Debug, Clone, Copy)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    pub durable: &'static str,
    pub filter: &'static str,
    /// The saga step whose messages this consumer carries (`step` label of the retry metric).
    pub step: &'static str,
}

impl ConsumerSpec {
    /// A durable consumer of `stream`, named `durable`, for the `step`'s messages on `filter`.
    pub const fn new(
        stream: &'static str,
        durable: &'static str,
        step: &'static str,
        filter: &'static str,
    ) -> Self {
        Self {
            stream,
            durable,
            filter,
            step,
        }
    }
}

/// Why a handler could not finish a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Worth another delivery later (a server was unavailable...).
    Retry(String),
    /// Will never succeed: park it now.
    Permanent(String),
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::Retry(message)
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerError::Retry(m) | HandlerError::Permanent(m) => f.write_str(m),
        }
    }
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;
/// What a consumer does with one decoded message.
pub type MessageHandler = Arc<dyn Fn(Envelope, DeliveryCount) -> HandlerFuture + Send + Sync>;

/// What JetStream says about a delivery, for handlers that can skip work on a first delivery
/// (a message delivered before may have been handled already; one delivered for the first time
/// by this consumer cannot have been, short of a duplicate publication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryCount {
    /// 1 for the first delivery to this consumer, 2 for the first redelivery, …
    pub count: u32,
}

impl DeliveryCount {
    pub fn is_first(&self) -> bool {
        self.count <= 1
    }
}

/// Everything a consumer needs besides the handler.
#[derive(Clone)]
pub struct ConsumerContext {
    pub js: jetstream::Context,
    pub policy: RetryPolicy,
    /// Where dead letters are parked.
    pub pool: PgPool,
}

/// Messages handled at once per consumer.
const IN_FLIGHT: usize = 256;

fn config(spec: &ConsumerSpec, _policy: &RetryPolicy) -> pull::Config {
    pull::Config {
        durable_name: Some(spec.durable.to_owned()),
        filter_subject: spec.filter.to_owned(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        // A message not acked in time (a handler hung, a process died) comes back after this.
        // No server-side `backoff` list: nats-server 2.9 lets it override the delays of our naks,
        // and the step's retry policy is what should decide them.
        ack_wait: Duration::from_secs(30),
        // Unlimited: this code decides when to give up (the step's retry policy) and parks the
        // message; if parking fails (database down) it naks and tries again later. A server-side
        // limit would silently drop a message in that case.
        max_deliver: -1,
        max_ack_pending: 4096,
        ..Default::default()
    }
}

/// Creates the durable consumer, or updates it to this configuration.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    policy: &RetryPolicy,
) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
    let setup = |e: String| NatsError::Setup {
        what: format!("consumer {}", spec.durable),
        reason: e,
    };
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|e| setup(e.to_string()))?;
    match stream.create_consumer(config(spec, policy)).await {
        Ok(consumer) => Ok(consumer),
        Err(_) => stream
            .update_consumer(config(spec, policy))
            .await
            .map_err(|e| setup(e.to_string())),
    }
}

/// Consumes until `shutdown` is cancelled, resubscribing after connection trouble (the client
/// reconnects by itself; a broken subscription is re-created here).
pub async fn run_consumer(
    context: ConsumerContext,
    spec: ConsumerSpec,
    handler: MessageHandler,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let mut messages = match subscribe(&context, &spec).await {
            Ok(m) => m,
            Err(e) => {
                warn!(consumer = spec.durable, error = %e, "consumer not ready; retrying");
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
            dispatch(&context, spec, &handler, message, permit);
        }
        if sleep_or_shutdown(backoff, &shutdown).await {
            return;
        }
    }
}

/// The durable consumer's message stream, the consumer created or updated first.
async fn subscribe(
    context: &ConsumerContext,
    spec: &ConsumerSpec,
) -> Result<jetstream::consumer::pull::Stream, String> {
    let consumer = ensure_consumer(&context.js, spec, &context.policy)
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// Hands one message to the handler and finishes it (ack, nak or park) in a task of its own,
/// which holds one of the consumer's in-flight permits until then.
///
/// The handler is *called* here, in delivery order, and only awaited in the task: a handler
/// that enqueues synchronously (the saga's) thereby keeps per-order order.
fn dispatch(
    context: &ConsumerContext,
    spec: ConsumerSpec,
    handler: &MessageHandler,
    message: jetstream::Message,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let context = context.clone();
    // Read once: it parses the reply subject.
    let delivered = delivered(&message);
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
            let delivery = DeliveryCount { count: delivered };
            let ids = Ids::of(&envelope);
            let work: HandlerFuture = Box::pin(
                span.in_scope(|| handler(envelope, delivery))
                    .instrument(span),
            );
            tokio::spawn(async move {
                let result = work.await;
                finish_one(&context, spec, message, delivered, Some(ids), result).await;
                drop(permit);
            });
        }
        Err(e) => {
            // Redelivering an undecodable message can never succeed: park it.
            let error = HandlerError::Permanent(format!("undecodable message: {e}"));
            tokio::spawn(async move {
                finish_one(&context, spec, message, delivered, None, Err(error)).await;
                drop(permit);
            });
        }
    }
}

/// Acks a handled message, naks a failed one for later, parks one that cannot succeed.
async fn finish_one(
    context: &ConsumerContext,
    spec: ConsumerSpec,
    message: jetstream::Message,
    delivered: u32,
    envelope: Option<Ids>,
    result: Result<(), HandlerError>,
) {
    // Formatted only when a line is written (most messages are acked with no line at info).
    let order_id = LazyIds(envelope.as_ref(), false);
    let correlation_id = LazyIds(envelope.as_ref(), true);
    if delivered > 1 {
        metrics::counter!(m::JETSTREAM_REDELIVERIES, "consumer" => spec.durable).increment(1);
    }
    let counted = |outcome: &'static str| {
        metrics::counter!(m::JETSTREAM_CONSUMED, "consumer" => spec.durable, "outcome" => outcome)
            .increment(1);
    };
    let error = match result {
        Ok(()) => {
            counted("ack");
            debug!(consumer = spec.durable, subject = %message.subject, %order_id, %correlation_id, delivered, "message handled");
            if let Err(e) = message.ack().await {
                warn!(consumer = spec.durable, %order_id, error = %e, "ack failed; the message will be redelivered and deduplicated");
            }
            return;
        }
        Err(HandlerError::Retry(e)) if !context.policy.exhausted(delivered) => {
            let delay = context.policy.delay(delivered);
            counted("retry");
            metrics::counter!(m::STEP_RETRIES, "step" => spec.step).increment(1);
            warn!(consumer = spec.durable, %order_id, %correlation_id, delivered, retry_in_ms = delay.as_millis() as u64, error = %e, "handler failed; redelivering later");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            return;
        }
        Err(e) => e,
    };
    let letter = DeadLetter {
        consumer: spec.durable,
        subject: message.subject.as_str(),
        message_id: envelope.as_ref().map(|e| e.message_id),
        order_id: envelope.as_ref().map(|e| e.order_id.as_uuid()),
        correlation_id: envelope.as_ref().map(|e| e.correlation_id.as_str()),
        payload: &message.payload,
        error: &error.to_string(),
        deliveries: i64::from(delivered),
    };
    match dead_letters::park(&context.pool, &letter).await {
        Ok(()) => {
            counted("dead_letter");
            error!(consumer = spec.durable, %order_id, %correlation_id, delivered, error = %error, "message parked as a dead letter");
            let _ = message.ack().await;
        }
        Err(e) => {
            // Cannot park (database down): keep it in JetStream rather than lose it.
            warn!(consumer = spec.durable, %order_id, error = %e, "cannot park a dead letter; redelivering later");
            let _ = message
                .ack_with(AckKind::Nak(Some(context.policy.max_interval)))
                .await;
        }
    }
}

fn delivered(message: &jetstream::Message) -> u32 {
    message
        .info()
        .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// What a message's outcome needs of its envelope once the handler owns it.
struct Ids {
    message_id: uuid::Uuid,
    order_id: actors::domain::OrderId,
    correlation_id: actors::domain::CorrelationId,
}

impl Ids {
    fn of(envelope: &Envelope) -> Self {
        Self {
            message_id: envelope.message_id,
            order_id: envelope.order_id,
            correlation_id: envelope.correlation_id.clone(),
        }
    }
}

/// The order id (or, with `true`, the correlation id) for a log line, empty when the message
/// could not be decoded; formatted only if the line is written.
struct LazyIds<'a>(Option<&'a Ids>, bool);

impl std::fmt::Display for LazyIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LazyIds(Some(ids), false) => ids.order_id.fmt(f),
            LazyIds(Some(ids), true) => ids.correlation_id.fmt(f),
            LazyIds(None, _) => Ok(()),
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
