//! `PaymentRecords` on Postgres: one row per (order, attempt) whose status only moves forward,
//! plus one row per refund; every change is written with the messages it implies.
//!
//! `RecordedCharges` remembers, in memory and for the most recent charges only, the status this
//! process has committed for each PaymentIntent, so the webhook endpoint can acknowledge an event
//! that reports what is already recorded (the `payment_intent.succeeded` that follows every card
//! paid at once) without writing it to the inbox and reading the charge back to find that it
//! changes nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sqlx::PgPool;

use actors::domain::{CorrelationId, OrderId};
use actors::events::Envelope;
use actors::ports::{
    AppliedUpdate, ChargeOutcome, OutcomeMessages, PaymentRecords, PaymentUpdate, ProviderStatus,
    StoreError,
};

use super::{OutboxSignal, outbox, unavailable};

#[derive(Clone)]
pub struct PgPaymentRecords {
    pool: PgPool,
    signal: OutboxSignal,
    recorded: RecordedCharges,
}

impl PgPaymentRecords {
    pub fn new(pool: PgPool, signal: OutboxSignal) -> Self {
        Self {
            pool,
            signal,
            recorded: RecordedCharges::default(),
        }
    }

    /// What this process has committed about recent charges (shared with the webhook inbox).
    pub fn recorded_charges(&self) -> RecordedCharges {
        self.recorded.clone()
    }
}

/// PaymentIntents remembered; the oldest are forgotten first. A webhook usually follows the
/// create call within milliseconds, so this covers many seconds of charges at any rate this
/// machine reaches, in a few MiB.
const REMEMBERED_CHARGES: usize = 50_000;

/// The statuses committed by this process for its most recent charges, by PaymentIntent id, as
/// the create call's answer reported them (an update applied from a webhook is not remembered, so
/// Stripe's retry of that webhook is still recognised as a duplicate by its event id). Only ever
/// a subset of the `payments` table (written after the commit), so "already recorded"
/// is always true when it says so; when it does not know, the caller takes the durable path.
#[derive(Clone, Default)]
pub struct RecordedCharges {
    inner: Arc<Mutex<Remembered>>,
}

#[derive(Default)]
struct Remembered {
    rank: HashMap<String, u8>,
    order: VecDeque<String>,
}

impl RecordedCharges {
    fn remember(&self, reference: &str, status: &str) {
        let Ok(mut r) = self.inner.lock() else { return };
        let rank = rank(status);
        if let Some(known) = r.rank.get_mut(reference) {
            *known = (*known).max(rank);
            return;
        }
        if r.order.len() >= REMEMBERED_CHARGES
            && let Some(oldest) = r.order.pop_front()
        {
            r.rank.remove(&oldest);
        }
        r.rank.insert(reference.to_owned(), rank);
        r.order.push_back(reference.to_owned());
    }

    /// `true` when the charge is known to be recorded at `status` or beyond, so an update
    /// reporting `status` would change nothing (statuses only move forward).
    pub fn covers(&self, reference: &str, status: &ProviderStatus) -> bool {
        let Ok(r) = self.inner.lock() else {
            return false;
        };
        r.rank
            .get(reference)
            .is_some_and(|known| *known >= rank(column(status)))
    }
}

fn rank(status: &str) -> u8 {
    match status {
        "PROCESSING" => 1,
        "FAILED" | "CANCELED" => 2,
        "SUCCEEDED" => 3,
        _ => 0,
    }
}

fn column(status: &ProviderStatus) -> &'static str {
    match status {
        ProviderStatus::Processing => "PROCESSING",
        ProviderStatus::Failed { .. } => "FAILED",
        ProviderStatus::Canceled => "CANCELED",
        ProviderStatus::Succeeded => "SUCCEEDED",
    }
}

fn attempt_column(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

#[async_trait]
impl PaymentRecords for PgPaymentRecords {
    async fn is_recorded(&self, order_id: OrderId, attempt: u32) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM payments WHERE order_id = $1 AND attempt = $2)",
        )
        .bind(order_id.as_uuid())
        .bind(attempt_column(attempt))
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn record(
        &self,
        order_id: OrderId,
        attempt: u32,
        correlation_id: &CorrelationId,
        outcome: &ChargeOutcome,
        messages: OutcomeMessages<'_, ChargeOutcome>,
    ) -> Result<bool, StoreError> {
        let (status, reference, code, message) = match outcome {
            ChargeOutcome::Succeeded { reference } => {
                ("SUCCEEDED", Some(reference.as_str()), None, None)
            }
            ChargeOutcome::Processing { reference } => {
                ("PROCESSING", Some(reference.as_str()), None, None)
            }
            ChargeOutcome::Declined {
                reference,
                code,
                message,
            } => (
                "FAILED",
                reference.as_deref(),
                Some(code.as_str()),
                Some(message.as_str()),
            ),
        };
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // A webhook may have recorded this charge first (it can beat the API's answer): then the
        // webhook's status stands and this answer adds nothing.
        let inserted = sqlx::query(
            "INSERT INTO payments (order_id, attempt, status, reference, correlation_id, failure_code, failure_message)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(order_id.as_uuid())
        .bind(attempt_column(attempt))
        .bind(status)
        .bind(reference)
        .bind(correlation_id.as_str())
        .bind(code)
        .bind(message)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        outbox::commit_with(tx, &messages(outcome), &self.signal).await?;
        if let Some(reference) = reference {
            self.recorded.remember(reference, status);
        }
        Ok(true)
    }

    async fn apply_update(
        &self,
        update: &PaymentUpdate,
        messages: OutcomeMessages<'_, AppliedUpdate>,
    ) -> Result<Option<AppliedUpdate>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let mut row: Option<(uuid::Uuid, i32, String, String)> = sqlx::query_as(
            "SELECT order_id, attempt, status, correlation_id FROM payments WHERE reference = $1 FOR UPDATE",
        )
        .bind(&update.reference)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if row.is_none() {
            let Some((order_id, attempt)) = update.order_hint else {
                return Ok(None);
            };
            // Unknown reference: the webhook beat our own record of the charge. Claim the row
            // (with no status yet worth keeping) so both paths agree on one status.
            let correlation = update.correlation_hint.clone().unwrap_or_default();
            let claimed = sqlx::query(
                "INSERT INTO payments (order_id, attempt, status, reference, correlation_id)
                 VALUES ($1, $2, 'PROCESSING', $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(order_id.as_uuid())
            .bind(attempt_column(attempt))
            .bind(&update.reference)
            .bind(correlation.as_str())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected()
                == 1;
            row = sqlx::query_as(
                "SELECT order_id, attempt, status, correlation_id FROM payments
                 WHERE order_id = $1 AND attempt = $2 FOR UPDATE",
            )
            .bind(order_id.as_uuid())
            .bind(attempt_column(attempt))
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            // A row we just claimed starts below PROCESSING so a first `processing` update still
            // applies; a row the charge's own record wrote keeps its status.
            if let Some(r) = row.as_mut().filter(|_| claimed) {
                r.2 = String::new();
            }
        }
        let Some((order_id, attempt, current, correlation)) = row else {
            return Ok(None);
        };
        let next = column(&update.status);
        if rank(next) <= rank(&current) {
            return Ok(None);
        }
        let (code, message) = match &update.status {
            ProviderStatus::Failed { code, message } => {
                (Some(code.as_str()), Some(message.as_str()))
            }
            _ => (None, None),
        };
        sqlx::query(
            "UPDATE payments SET status = $3, reference = coalesce(reference, $4),
                 failure_code = coalesce($5, failure_code), failure_message = coalesce($6, failure_message),
                 updated_at = now()
             WHERE order_id = $1 AND attempt = $2",
        )
        .bind(order_id)
        .bind(attempt)
        .bind(next)
        .bind(&update.reference)
        .bind(code)
        .bind(message)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let applied = AppliedUpdate {
            order_id: OrderId::from_uuid(order_id),
            attempt: u32::try_from(attempt).unwrap_or(1),
            correlation_id: CorrelationId::parse(&correlation).unwrap_or_default(),
        };
        outbox::commit_with(tx, &messages(&applied), &self.signal).await?;
        Ok(Some(applied))
    }

    async fn is_refunded(&self, reference: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refunds WHERE payment_reference = $1)")
            .bind(reference)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn record_refund(
        &self,
        order_id: OrderId,
        reference: &str,
        refund_id: &str,
        messages: &[Envelope],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let inserted = sqlx::query(
            "INSERT INTO refunds (payment_reference, order_id, refund_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(reference)
        .bind(order_id.as_uuid())
        .bind(refund_id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        outbox::commit_with(tx, messages, &self.signal).await?;
        Ok(true)
    }
}
