//! `PaymentRecords` on Postgres: one row per (order, attempt) whose status only moves forward,
//! plus one row per refund; every change is written with the messages it implies. A charge's
//! first record goes through the group-committing `ChargeWriter`; webhook updates and refunds,
//! far rarer, take a transaction each.
//!
//! `RecordedCharges` remembers, in memory and for the most recent charges only, the status this
//! process has committed for each PaymentIntent, so the webhook endpoint can acknowledge an event
//! that reports what is already recorded (the `payment_intent.succeeded` that follows every card
//! paid at once) without writing it to the inbox and reading the charge back to find that it
//! changes nothing. Because that webhook usually arrives while the create call's answer is
//! still on its way, a charge call registers itself (`charging`) and a webhook naming its order
//! and attempt waits, up to two seconds, for the answer to be recorded before deciding.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use actors::domain::{CorrelationId, OrderId};
use actors::events::Envelope;
use actors::ports::{
    AppliedUpdate, ChargeInFlight, ChargeMessages, ChargeOutcome, OutcomeMessages, PaymentRecords,
    PaymentUpdate, ProviderStatus, StoreError,
};

use super::charge_writer::{ChargeRecord, ChargeWriter};
use super::{OutboxSignal, outbox, unavailable};

#[derive(Clone)]
pub struct PgPaymentRecords {
    pool: PgPool,
    signal: OutboxSignal,
    recorded: RecordedCharges,
    writer: ChargeWriter,
}

impl PgPaymentRecords {
    /// Starts `writers` charge writers (at least one) on the current Tokio runtime (see
    /// `charge_writer`).
    pub fn new(pool: PgPool, signal: OutboxSignal, writers: usize) -> Self {
        let recorded = RecordedCharges::default();
        let writer = ChargeWriter::start(pool.clone(), signal.clone(), recorded.clone(), writers);
        Self {
            pool,
            signal,
            recorded,
            writer,
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
    /// Charge calls under way, by (order, attempt): how many, and a channel whose closing tells
    /// waiting webhooks that the last of them has been recorded (or given up).
    in_flight: HashMap<(Uuid, u32), (usize, watch::Sender<()>)>,
}

/// How long a webhook that overtook its charge's answer waits for that answer's record before
/// it is written down on its own (the answer normally follows within milliseconds).
const OVERTAKEN_PATIENCE: Duration = Duration::from_secs(2);

/// Registration of one charge call (see `ChargeInFlight`); dropping it ends it.
struct InFlightGuard {
    charges: RecordedCharges,
    key: (Uuid, u32),
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut r = self.charges.lock();
        if let Some((count, _)) = r.in_flight.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Dropping the sender wakes every waiter.
                r.in_flight.remove(&self.key);
            }
        }
    }
}

impl RecordedCharges {
    fn lock(&self) -> MutexGuard<'_, Remembered> {
        // A poisoned lock only means a panic elsewhere; the maps stay consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a charge call under way for `order_id` and `attempt`.
    pub fn charging(&self, order_id: OrderId, attempt: u32) -> ChargeInFlight {
        let key = (order_id.as_uuid(), attempt);
        self.lock()
            .in_flight
            .entry(key)
            .or_insert_with(|| (0, watch::channel(()).0))
            .0 += 1;
        ChargeInFlight::tracked(InFlightGuard {
            charges: self.clone(),
            key,
        })
    }

    /// Like `covers`, but when the update names a charge whose call is still under way in this
    /// process (`hint`: the order and attempt of its metadata), first waits, a little, for that
    /// call's answer to be recorded: the webhook that follows a card paid at once usually
    /// arrives before the answer does, and reports exactly what the answer will record.
    pub async fn covers_once_answered(
        &self,
        reference: &str,
        status: &ProviderStatus,
        hint: Option<(OrderId, u32)>,
    ) -> bool {
        if self.covers(reference, status) {
            return true;
        }
        let Some((order_id, attempt)) = hint else {
            return false;
        };
        let waiting = self
            .lock()
            .in_flight
            .get(&(order_id.as_uuid(), attempt))
            .map(|(_, sender)| sender.subscribe());
        let Some(mut answered) = waiting else {
            return false;
        };
        // `changed` fails once the sender is gone, i.e. when the call is over.
        let _ = tokio::time::timeout(OVERTAKEN_PATIENCE, answered.changed()).await;
        self.covers(reference, status)
    }

    pub(super) fn remember(&self, reference: &str, status: &str) {
        let mut r = self.lock();
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
    /// Like `covers`, asking PostgreSQL when this process has not seen the charge: another
    /// instance made it and recorded its answer (with several instances, a webhook reaches any
    /// of them). One read instead of recording the event and processing it for nothing. An
    /// event already recorded (`event_id`) is not covered here: it is a redelivery, which the
    /// event log answers as a duplicate.
    pub async fn covers_in_store(
        &self,
        pool: &sqlx::PgPool,
        event_id: &str,
        reference: &str,
        status: &ProviderStatus,
    ) -> Result<bool, sqlx::Error> {
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT status FROM payments WHERE reference = $1
               AND NOT EXISTS (SELECT 1 FROM stripe_events WHERE event_id = $2)",
        )
        .bind(reference)
        .bind(event_id)
        .fetch_optional(pool)
        .await?;
        let Some(stored) = stored else {
            return Ok(false);
        };
        self.remember(reference, &stored);
        Ok(rank(&stored) >= rank(column(status)))
    }

    pub fn covers(&self, reference: &str, status: &ProviderStatus) -> bool {
        self.lock()
            .rank
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
    fn charging(&self, order_id: OrderId, attempt: u32) -> ChargeInFlight {
        self.recorded.charging(order_id, attempt)
    }

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

    async fn recorded_charge(
        &self,
        order_id: OrderId,
        attempt: u32,
    ) -> Result<Option<actors::ports::RecordedCharge>, StoreError> {
        type Row = (String, Option<String>, Option<String>, Option<String>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT status, reference, failure_code, failure_message FROM payments
             WHERE order_id = $1 AND attempt = $2",
        )
        .bind(order_id.as_uuid())
        .bind(attempt_column(attempt))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.and_then(|(status, reference, code, message)| {
            let status = match status.as_str() {
                "PROCESSING" => ProviderStatus::Processing,
                "SUCCEEDED" => ProviderStatus::Succeeded,
                "CANCELED" => ProviderStatus::Canceled,
                "FAILED" => ProviderStatus::Failed {
                    code: code.unwrap_or_else(|| "payment_failed".into()),
                    message: message.unwrap_or_default(),
                },
                _ => return None,
            };
            Some(actors::ports::RecordedCharge { reference, status })
        }))
    }

    async fn record(
        &self,
        order_id: OrderId,
        attempt: u32,
        correlation_id: &CorrelationId,
        outcome: &ChargeOutcome,
        messages: ChargeMessages,
    ) -> Result<bool, StoreError> {
        let (status, reference, code, message) = match outcome {
            ChargeOutcome::Succeeded { reference } => ("SUCCEEDED", Some(reference), None, None),
            ChargeOutcome::Processing { reference } => ("PROCESSING", Some(reference), None, None),
            ChargeOutcome::Declined {
                reference,
                code,
                message,
            } => ("FAILED", reference.as_ref(), Some(code), Some(message)),
        };
        // A webhook may have recorded this charge first (it can beat the API's answer): then the
        // webhook's status stands and this answer adds nothing.
        self.writer
            .write(ChargeRecord {
                order_id: order_id.as_uuid(),
                attempt: attempt_column(attempt),
                status,
                reference: reference.cloned(),
                correlation_id: correlation_id.as_str().to_owned(),
                failure_code: code.cloned(),
                failure_message: message.cloned(),
                outcome: outcome.clone(),
                messages,
            })
            .await
    }

    async fn apply_update(
        &self,
        update: &PaymentUpdate,
        messages: OutcomeMessages<'_, AppliedUpdate>,
    ) -> Result<Option<AppliedUpdate>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let row = lock_charge_of(&mut tx, update).await.map_err(unavailable)?;
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

/// The charge row an update is about, locked: (order, attempt, status, correlation id).
type ChargeRow = (uuid::Uuid, i32, String, String);

/// Finds and locks the charge row an update is about: by its reference, or, when the webhook
/// beat our own record of the charge, by the order and attempt the update names, claiming the
/// row first (with no status yet worth keeping) so both paths agree on one status. `None`: the
/// update names no charge of ours.
async fn lock_charge_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    update: &PaymentUpdate,
) -> Result<Option<ChargeRow>, sqlx::Error> {
    let row: Option<ChargeRow> = sqlx::query_as(
        "SELECT order_id, attempt, status, correlation_id FROM payments WHERE reference = $1 FOR UPDATE",
    )
    .bind(&update.reference)
    .fetch_optional(&mut **tx)
    .await?;
    if row.is_some() {
        return Ok(row);
    }
    let Some((order_id, attempt)) = update.order_hint else {
        return Ok(None);
    };
    let correlation = update.correlation_hint.clone().unwrap_or_default();
    let claimed = sqlx::query(
        "INSERT INTO payments (order_id, attempt, status, reference, correlation_id)
         VALUES ($1, $2, 'PROCESSING', $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(order_id.as_uuid())
    .bind(attempt_column(attempt))
    .bind(&update.reference)
    .bind(correlation.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    let mut row: Option<ChargeRow> = sqlx::query_as(
        "SELECT order_id, attempt, status, correlation_id FROM payments
         WHERE order_id = $1 AND attempt = $2 FOR UPDATE",
    )
    .bind(order_id.as_uuid())
    .bind(attempt_column(attempt))
    .fetch_optional(&mut **tx)
    .await?;
    // A row we just claimed starts below PROCESSING so a first `processing` update still
    // applies; a row the charge's own record wrote keeps its status.
    if let Some(r) = row.as_mut().filter(|_| claimed) {
        r.2 = String::new();
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> (OrderId, u32) {
        (OrderId::new(), 1)
    }

    /// Lets other tasks run until a webhook waits on this charge (or fails after a while).
    async fn waiting(charges: &RecordedCharges, order_id: OrderId, attempt: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while charges
            .lock()
            .in_flight
            .get(&(order_id.as_uuid(), attempt))
            .is_none_or(|(_, sender)| sender.receiver_count() == 0)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no webhook is waiting"
            );
            tokio::task::yield_now().await;
        }
    }

    /// A `succeeded` webhook for the charge, asking whether the records cover it.
    fn succeeded_webhook(
        charges: &RecordedCharges,
        order_id: OrderId,
        attempt: u32,
    ) -> tokio::task::JoinHandle<bool> {
        let asking = charges.clone();
        tokio::spawn(async move {
            asking
                .covers_once_answered(
                    "pi_1",
                    &ProviderStatus::Succeeded,
                    Some((order_id, attempt)),
                )
                .await
        })
    }

    #[tokio::test]
    async fn a_webhook_that_overtakes_the_answer_waits_for_its_record() {
        let charges = RecordedCharges::default();
        let (order_id, attempt) = order();
        let in_flight = charges.charging(order_id, attempt);
        let webhook = succeeded_webhook(&charges, order_id, attempt);
        // Only once the webhook is waiting: the answer is recorded, then the call ends.
        waiting(&charges, order_id, attempt).await;
        charges.remember("pi_1", "SUCCEEDED");
        drop(in_flight);
        assert!(matches!(webhook.await, Ok(true)));
    }

    #[tokio::test]
    async fn a_call_that_ends_without_a_record_lets_the_webhook_be_written() {
        let charges = RecordedCharges::default();
        let (order_id, attempt) = order();
        let in_flight = charges.charging(order_id, attempt);
        let webhook = succeeded_webhook(&charges, order_id, attempt);
        waiting(&charges, order_id, attempt).await;
        drop(in_flight);
        assert!(matches!(webhook.await, Ok(false)));
        assert!(
            charges.lock().in_flight.is_empty(),
            "the registration is gone"
        );
    }

    #[tokio::test]
    async fn an_answer_below_the_webhooks_status_does_not_cover_it() {
        let charges = RecordedCharges::default();
        let (order_id, attempt) = order();
        let in_flight = charges.charging(order_id, attempt);
        charges.remember("pi_1", "PROCESSING");
        drop(in_flight);
        let hint = Some((order_id, attempt));
        assert!(
            !charges
                .covers_once_answered("pi_1", &ProviderStatus::Succeeded, hint)
                .await
        );
        assert!(
            charges
                .covers_once_answered("pi_1", &ProviderStatus::Processing, hint)
                .await
        );
    }

    #[tokio::test]
    async fn two_calls_for_one_charge_both_end_before_the_webhook_decides() {
        let charges = RecordedCharges::default();
        let (order_id, attempt) = order();
        let first = charges.charging(order_id, attempt);
        let second = charges.charging(order_id, attempt);
        drop(first);
        assert_eq!(
            charges.lock().in_flight.len(),
            1,
            "one call still under way"
        );
        drop(second);
        assert!(charges.lock().in_flight.is_empty());
    }
}
