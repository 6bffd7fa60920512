//! Group commit of charge records: the outcomes of many orders' charges written in one
//! transaction, with one multi-row insert for the records and one for their outbox rows.
//!
//! A caller learns whether its record is new only after the transaction that holds it (and its
//! messages) committed, so the payment role's promises are those of a transaction per charge;
//! batches (taken by `batching`) grow with the load, where a transaction per paid order (begin,
//! insert, outbox insert, commit) would be one of the largest per-order costs in PostgreSQL.

use std::collections::HashSet;

use sqlx::PgPool;
use uuid::Uuid;

use actors::events::Envelope;
use actors::ports::{ChargeMessages, ChargeOutcome, StoreError};

use super::batching::{BatchJob, Batcher};
use super::outbox::{self, OutboxMessage};
use super::payments::RecordedCharges;
use super::{OutboxSignal, unavailable};

/// One charge outcome to record, in the columns of `payments`.
pub(super) struct ChargeRecord {
    pub order_id: Uuid,
    pub attempt: i32,
    pub status: &'static str,
    pub reference: Option<String>,
    pub correlation_id: String,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub outcome: ChargeOutcome,
    pub messages: ChargeMessages,
}

/// `true` when the record is new (written with its messages), `false` when one existed.
type Answer = Result<bool, StoreError>;

/// The writers' front door; cheap to clone.
#[derive(Clone)]
pub(super) struct ChargeWriter {
    batcher: Batcher<ChargeBatch>,
}

impl ChargeWriter {
    /// `writers` writers (at least one; each holds one connection while it writes); they stop
    /// when every clone is dropped.
    pub fn start(
        pool: PgPool,
        signal: OutboxSignal,
        recorded: RecordedCharges,
        writers: usize,
    ) -> Self {
        let job = ChargeBatch {
            pool,
            signal,
            recorded,
        };
        Self {
            batcher: Batcher::new(job, writers),
        }
    }

    pub async fn write(&self, record: ChargeRecord) -> Answer {
        self.batcher
            .submit(record.order_id.as_u128(), record)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

/// The charge writers' work: a batch of records in one transaction (`write_batch`), then what
/// this process remembers of the new ones.
struct ChargeBatch {
    pool: PgPool,
    signal: OutboxSignal,
    recorded: RecordedCharges,
}

impl BatchJob for ChargeBatch {
    type Request = ChargeRecord;
    type Answer = Answer;
    const NAME: &'static str = "charges";

    async fn run(&self, records: Vec<ChargeRecord>) -> Vec<Answer> {
        let count = records.len();
        match write_batch(&self.pool, records).await {
            Ok((new, committed)) => {
                self.signal.committed(committed);
                new.into_iter()
                    .map(|(status, reference)| {
                        let is_new = status.is_some();
                        if let (Some(status), Some(reference)) = (status, reference) {
                            self.recorded.remember(&reference, status);
                        }
                        Ok(is_new)
                    })
                    .collect()
            }
            Err(e) => {
                // Nothing of the batch was committed (or it is unknown): every caller retries
                // through redelivery, and the idempotency key makes the retry harmless.
                let error = unavailable(e);
                vec![Err(error); count]
            }
        }
    }

    fn unanswered() -> Answer {
        Err(StoreError::Unavailable(
            "the charge writer lost this record's answer".into(),
        ))
    }
}

/// Per record, in the batch's order: its status if it is new (else `None`) and its reference.
type Written = Vec<(Option<&'static str>, Option<String>)>;

/// One transaction for the whole batch: the records that are new, then the messages of exactly
/// those (their builders run here, before the commit, as the single-record path did).
async fn write_batch(
    pool: &PgPool,
    mut records: Vec<ChargeRecord>,
) -> Result<(Written, Vec<OutboxMessage>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted: Vec<(Uuid, i32)> = sqlx::query_as(
        "INSERT INTO payments (order_id, attempt, status, reference, correlation_id, failure_code, failure_message)
         SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
         ON CONFLICT DO NOTHING RETURNING order_id, attempt",
    )
    .bind(records.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.attempt).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.status).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.reference.clone()).collect::<Vec<_>>())
    .bind(records.iter_mut().map(|r| std::mem::take(&mut r.correlation_id)).collect::<Vec<_>>())
    .bind(records.iter_mut().map(|r| r.failure_code.take()).collect::<Vec<_>>())
    .bind(records.iter_mut().map(|r| r.failure_message.take()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    // A key inserted once answers `true` to one request only (a duplicate in the same batch, like
    // one in a later batch, finds the record written).
    let mut new: HashSet<(Uuid, i32)> = inserted.into_iter().collect();
    let mut messages: Vec<Envelope> = Vec::new();
    let mut written = Vec::with_capacity(records.len());
    for record in records {
        if new.remove(&(record.order_id, record.attempt)) {
            messages.extend((record.messages)(&record.outcome));
            written.push((Some(record.status), record.reference));
        } else {
            written.push((None, record.reference));
        }
    }
    let committed = outbox::insert(&mut tx, &messages).await?;
    tx.commit().await?;
    Ok((written, committed))
}
