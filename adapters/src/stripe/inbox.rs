//! The webhook inbox: the HTTP endpoint records each verified event durably by its id (so a
//! duplicate is acknowledged and ignored) and answers 2xx at once; this worker then turns the
//! recorded events into payment updates, asynchronously and in arrival order.
//!
//! An event that reports a status this process has already committed for that PaymentIntent
//! (`RecordedCharges`: the create call's answer said `succeeded`, and the webhook says so too) is
//! acknowledged without being recorded: the worker would only find that it changes nothing, and
//! that finding cost an insert, a locked read and an update per order.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use actors::payments::{PaymentService, answer_of};
use actors::postman::Postman;

use super::webhook::{StripeEvent, parse_event, payment_update, type_label};
use crate::postgres::RecordedCharges;
use crate::postgres::stripe_events;

#[derive(Clone)]
pub struct WebhookInbox {
    pool: PgPool,
    signal: Arc<Notify>,
    recorded: RecordedCharges,
}

/// What recording an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    Duplicate,
    /// Not written: it reports what this process already committed for the charge.
    AlreadyApplied,
}

impl WebhookInbox {
    /// `recorded`: what the payment records of this process have committed
    /// (`PgPaymentRecords::recorded_charges`).
    pub fn new(pool: PgPool, recorded: RecordedCharges) -> Self {
        Self {
            pool,
            signal: Arc::new(Notify::new()),
            recorded,
        }
    }

    /// Records a verified event (already parsed from the raw body).
    pub async fn record(
        &self,
        event: &StripeEvent,
        raw: &serde_json::Value,
    ) -> Result<Recorded, sqlx::Error> {
        if let Some(update) = payment_update(event) {
            let covered = self
                .recorded
                .covers_once_answered(&update.reference, &update.status, update.order_hint)
                .await
                || self
                    .recorded
                    .covers_in_store(&self.pool, &event.id, &update.reference, &update.status)
                    .await?;
            if covered {
                return Ok(Recorded::AlreadyApplied);
            }
        }
        let new = stripe_events::record(&self.pool, &event.id, &event.kind, raw).await?;
        if new {
            self.signal.notify_one();
            Ok(Recorded::New)
        } else {
            Ok(Recorded::Duplicate)
        }
    }

    /// Processes recorded events until `shutdown`. An update that moves a charge forward is
    /// told to the order's actor through `postman` when the order role runs here (else its
    /// payment event reaches it through the broker).
    pub async fn run(self, service: PaymentService, postman: Postman, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.process_batch(&service, &postman).await {
                Ok(0) => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = self.signal.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    warn!(error = %e, "webhook worker failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Processes one batch; returns how many events were settled. Events are handled
    /// concurrently: each update is its own transaction under a row lock on its charge, and the
    /// forward-only status rule makes their order irrelevant.
    pub async fn process_batch(
        &self,
        service: &PaymentService,
        postman: &Postman,
    ) -> Result<usize, String> {
        let mut batch = stripe_events::claim(&self.pool, 200)
            .await
            .map_err(|e| e.to_string())?;
        let events = std::mem::take(&mut batch.events);
        let outcomes: Vec<(String, Option<String>)> = futures::stream::iter(events)
            .map(|(event_id, payload)| async move {
                let outcome = outcome_of(service, postman, &event_id, payload).await;
                (event_id, outcome)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut settled = 0;
        for (event_id, outcome) in outcomes {
            // `None`: not processed yet (a store failure); the next batch retries it.
            let Some(outcome) = outcome else { continue };
            batch
                .mark(&event_id, &outcome)
                .await
                .map_err(|e| e.to_string())?;
            settled += 1;
        }
        batch.commit().await.map_err(|e| e.to_string())?;
        Ok(settled)
    }
}

/// Webhook events processed at once (each holds a database connection while it runs, so this
/// stays well below the pool size).
const IN_FLIGHT: usize = 8;

async fn outcome_of(
    service: &PaymentService,
    postman: &Postman,
    event_id: &str,
    payload: serde_json::Value,
) -> Option<String> {
    let Some(event) = serde_json::to_vec(&payload)
        .ok()
        .and_then(|b| parse_event(&b).ok())
    else {
        actors::metrics::webhook_event("other", "unreadable");
        return Some("unreadable".to_owned());
    };
    let kind = type_label(&event.kind);
    let Some(update) = payment_update(&event) else {
        actors::metrics::webhook_event(kind, "ignored");
        return Some(format!("ignored type {}", event.kind));
    };
    match service.on_provider_update(&update).await {
        Ok(Some(applied)) => {
            actors::metrics::webhook_event(kind, "routed");
            if let Some(answer) = answer_of(Some(update.reference.clone()), &update.status) {
                postman.answer_order(applied.order_id, answer);
            }
            debug!(%event_id, event_type = %event.kind, order_id = %applied.order_id, correlation_id = %applied.correlation_id, "webhook event routed to its order");
            Some(format!("applied to order {}", applied.order_id))
        }
        Ok(None) => {
            actors::metrics::webhook_event(kind, "no_change");
            // Our intents carry the order's ids in their metadata: keep the hop traceable.
            let metadata = &payload["data"]["object"]["metadata"];
            debug!(
                %event_id,
                event_type = %event.kind,
                order_id = metadata["order_id"].as_str().unwrap_or(""),
                correlation_id = metadata["correlation_id"].as_str().unwrap_or(""),
                "webhook event changed nothing (already known, duplicate or out of date)"
            );
            Some("no change (unknown charge, duplicate or regression)".to_owned())
        }
        Err(e) => {
            actors::metrics::webhook_event(kind, "failed");
            warn!(%event_id, error = %e, "webhook event not processed yet");
            None
        }
    }
}
