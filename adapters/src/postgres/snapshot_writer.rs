//! Group commit of order snapshots: the transitions of many saga actors written in one
//! transaction, with one multi-row statement per kind of write.
//!
//! Every saga actor still waits until its own transition is durable before it answers or lets
//! its messages go (the outbox rows are in the same transaction), so nothing about correctness
//! changes; what changes is the price. On a small machine the cost of a commit is mostly round
//! trips and context switches, not bytes: one transaction per transition spends most of a core
//! in the kernel, one per batch spends it once for tens of actors.
//!
//! Batches are taken by the shared machinery (`batching`). Several writers may run at once, each
//! owning the orders that hash to it, so one slow commit does not stall every saga and an
//! order's writes stay in order. Their number is configured (half the cores by default): every
//! writer more splits the same transitions into smaller batches, and past the cores that can
//! run their transactions that only adds statements.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use actors::cluster::{Epoch, Ownership, PartitionId};
use actors::events::Envelope;
use actors::ports::StoreError;
use actors::saga::OrderState;

use super::batching::{BatchJob, Batcher};
use super::outbox::{self, OutboxMessage};
use super::{OutboxSignal, unavailable};

/// What the snapshot write must find in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The order must not exist yet (its first snapshot).
    Absent,
    /// The stored version must be this one.
    Version(i64),
}

struct Request {
    expect: Expect,
    order_id: Uuid,
    version: i64,
    status: &'static str,
    /// The snapshot as JSON text (PostgreSQL parses it into `jsonb`).
    state: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    messages: Vec<Envelope>,
    /// The order's partition and the epoch this process holds it at; `None`: not fenced.
    fence: Option<(PartitionId, Epoch)>,
}

/// `true` when written, `false` when the expectation did not hold (nothing written).
type Answer = Result<bool, StoreError>;

/// The writers' front door; cheap to clone.
#[derive(Clone)]
pub struct SnapshotWriter {
    batcher: Batcher<SnapshotBatch>,
    /// The order partitions this process owns, when its writes are fenced.
    ownership: Option<Ownership>,
}

impl SnapshotWriter {
    /// `writers` writers (at least one; each a connection at most); they stop when every clone
    /// is dropped.
    pub fn start(
        pool: PgPool,
        signal: OutboxSignal,
        writers: usize,
        ownership: Option<Ownership>,
    ) -> Self {
        let batcher = Batcher::new(SnapshotBatch { pool, signal }, writers);
        Self { batcher, ownership }
    }

    /// Writes `state` (and its messages) if `expect` holds; `Ok(false)` if it does not.
    pub async fn write(
        &self,
        expect: Expect,
        state: &OrderState,
        messages: &[Envelope],
    ) -> Result<bool, StoreError> {
        let encoded = serde_json::to_string(state)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode snapshot: {e}")))?;
        let fence = match &self.ownership {
            None => None,
            Some(ownership) => {
                let partition = ownership.count().of_order(state.order_id);
                match ownership.epoch_of(partition) {
                    Some(epoch) => Some((partition, epoch)),
                    None => return Err(not_owner(state.order_id.as_uuid(), partition)),
                }
            }
        };
        let order_id = state.order_id.as_uuid();
        let request = Request {
            expect,
            order_id,
            version: state.version,
            status: state.status.as_str(),
            state: encoded,
            created_at: state.created_at,
            updated_at: state.updated_at,
            deadline: state.deadline,
            messages: messages.to_vec(),
            fence,
        };
        self.batcher
            .submit(order_id.as_u128(), request)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

/// The snapshot writers' work: a batch in one statement (`write_batch`), in rounds of one
/// request per order.
struct SnapshotBatch {
    pool: PgPool,
    signal: OutboxSignal,
}

impl BatchJob for SnapshotBatch {
    type Request = Request;
    type Answer = Answer;
    const NAME: &'static str = "snapshots";

    /// One round per write of the same order in the batch: the statement's parts all see the
    /// table as it was before it, so a second write of the same order in it would be checked
    /// against the old version too, and both would seem to apply. An actor never sends two at
    /// once, so there is one round; if anything ever does, its second write meets the new
    /// version in the next round.
    async fn run(&self, requests: Vec<Request>) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = requests.iter().map(|_| None).collect();
        let mut rounds: Vec<Vec<(usize, Request)>> = Vec::new();
        let mut writes_of: std::collections::HashMap<Uuid, usize> = Default::default();
        for (index, request) in requests.into_iter().enumerate() {
            let round = writes_of.entry(request.order_id).or_default();
            if rounds.len() <= *round {
                rounds.push(Vec::new());
            }
            rounds[*round].push((index, request));
            *round += 1;
        }
        for round in rounds {
            let (indices, mut round): (Vec<usize>, Vec<Request>) = round.into_iter().unzip();
            for (index, answer) in indices.into_iter().zip(self.write_round(&mut round).await) {
                answers[index] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(Self::unanswered))
            .collect()
    }

    fn unanswered() -> Answer {
        Err(StoreError::Unavailable(
            "the snapshot writer lost this write's answer".into(),
        ))
    }
}

impl SnapshotBatch {
    /// Writes requests of distinct orders and answers each: written, not (expectation), or
    /// refused at the fence.
    async fn write_round(&self, round: &mut [Request]) -> Vec<Answer> {
        match write_batch(&self.pool, round).await {
            Ok((written, committed, fenced_in)) => {
                self.signal.committed(committed);
                round
                    .iter()
                    .map(|request| match request.fence {
                        Some((partition, epoch))
                            if !fenced_in.contains(&(partition.as_i32(), epoch.get())) =>
                        {
                            Err(not_owner(request.order_id, partition))
                        }
                        _ => Ok(written.contains(&request.order_id)),
                    })
                    .collect()
            }
            Err(e) => {
                // Nothing of the batch was committed (or it is unknown): every caller reloads.
                let error = unavailable(e);
                round.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}

/// A write refused because this process no longer holds the order's partition (counted).
fn not_owner(order_id: Uuid, partition: PartitionId) -> StoreError {
    metrics::counter!(actors::metrics::CLUSTER_FENCED_WRITES, "store" => "snapshots").increment(1);
    StoreError::NotOwner(format!(
        "order {order_id}: partition {partition} is no longer owned by this instance"
    ))
}

/// The whole batch in one statement, so one implicit transaction: its snapshot inserts, its
/// version-checked updates and the outbox rows of exactly the transitions that applied. Returns
/// the orders whose write applied, the outbox rows committed with them, and the (partition,
/// epoch) pairs that passed the fence.
///
/// The fence reads the lease rows in the same statement: a fenced write applies only where its
/// partition's row still has the epoch this process acquired, with an owner. A takeover that
/// committed before the statement began refuses it; one that commits while it runs cannot see
/// the new owner's recovery miss it either way, since the new owner's writes are checked
/// against the snapshot's version. The requests' states are moved out (bound as they are, never
/// copied).
///
/// One statement instead of `BEGIN`, three statements and `COMMIT`: on a machine where every
/// round trip is a context switch on both sides, that is most of what a small batch costs. The
/// statements of the `WITH` all see the snapshot taken before it, which is why a batch holds at
/// most one request per order (`SnapshotBatch::run`).
async fn write_batch(
    pool: &PgPool,
    batch: &mut [Request],
) -> Result<(HashSet<Uuid>, Vec<OutboxMessage>, HashSet<(i32, i64)>), sqlx::Error> {
    let (owners, messages) = outbox_rows(batch);
    let columns = outbox::Columns::of(&messages);
    let mut creates: Vec<&mut Request> = Vec::new();
    let mut updates: Vec<&mut Request> = Vec::new();
    for request in batch.iter_mut() {
        match request.expect {
            Expect::Absent => creates.push(request),
            Expect::Version(_) => updates.push(request),
        }
    }
    // -1: not fenced (a process that owns every order).
    let fence = |r: &&mut Request| r.fence.map_or((-1, 0), |(p, e)| (p.as_i32(), e.get()));
    let (create_partitions, create_epochs): (Vec<i32>, Vec<i64>) =
        creates.iter().map(fence).unzip();
    let (update_partitions, update_epochs): (Vec<i32>, Vec<i64>) =
        updates.iter().map(fence).unzip();
    let expected = |r: &&mut Request| match r.expect {
        Expect::Version(expected) => expected,
        Expect::Absent => 0,
    };
    let rows: Vec<(Option<Uuid>, Option<i32>, Option<i64>)> = sqlx::query_as(WRITE_BATCH)
        .bind(creates.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(creates.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(creates.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(
            creates
                .iter_mut()
                .map(|r| std::mem::take(&mut r.state))
                .collect::<Vec<_>>(),
        )
        .bind(creates.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(creates.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(creates.iter().map(|r| r.deadline).collect::<Vec<_>>())
        .bind(updates.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(updates.iter().map(expected).collect::<Vec<_>>())
        .bind(updates.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(updates.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(
            updates
                .iter_mut()
                .map(|r| std::mem::take(&mut r.state))
                .collect::<Vec<_>>(),
        )
        .bind(updates.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(updates.iter().map(|r| r.deadline).collect::<Vec<_>>())
        .bind(&owners)
        .bind(columns.message_ids)
        .bind(columns.subjects)
        .bind(columns.order_ids)
        .bind(columns.correlation_ids)
        .bind(columns.payloads)
        .bind(create_partitions)
        .bind(create_epochs)
        .bind(update_partitions)
        .bind(update_epochs)
        .fetch_all(pool)
        .await?;
    let (written, fenced_in) = split_rows(rows);
    let committed = owners
        .iter()
        .zip(messages)
        .filter(|(owner, _)| written.contains(owner))
        .map(|(_, message)| message)
        .collect();
    Ok((written, committed, fenced_in))
}

/// The statement's rows: the orders whose write applied, and the (partition, epoch) pairs that
/// passed the fence.
fn split_rows(
    rows: Vec<(Option<Uuid>, Option<i32>, Option<i64>)>,
) -> (HashSet<Uuid>, HashSet<(i32, i64)>) {
    let mut written = HashSet::with_capacity(rows.len());
    let mut fenced_in = HashSet::new();
    for row in rows {
        match row {
            (Some(order_id), _, _) => {
                written.insert(order_id);
            }
            (None, Some(partition), Some(epoch)) => {
                fenced_in.insert((partition, epoch));
            }
            _ => {}
        }
    }
    (written, fenced_in)
}

/// Every message of the batch, encoded before the statement, with the order it belongs to (the
/// ones of a transition that does not apply are dropped by the statement's `WHERE`, and by
/// `write_batch` afterwards).
fn outbox_rows(batch: &[Request]) -> (Vec<Uuid>, Vec<OutboxMessage>) {
    batch
        .iter()
        .flat_map(|request| {
            request
                .messages
                .iter()
                .map(|envelope| (request.order_id, OutboxMessage::of(envelope)))
        })
        .unzip()
}

/// `write_batch`'s statement. Parameters: the creates ($1-$7), the updates ($8-$14), the outbox
/// rows with the order each belongs to ($15-$20), the fences of the creates ($21, $22) and of
/// the updates ($23, $24).
const WRITE_BATCH: &str = "WITH fence AS (
         SELECT l.partition, l.epoch FROM partition_leases l
         WHERE l.key_space = 'orders' AND l.owner IS NOT NULL
           AND (l.partition, l.epoch) IN (
               SELECT * FROM unnest($21::int[] || $23::int[], $22::bigint[] || $24::bigint[]))),
     created AS (
         INSERT INTO order_snapshots (order_id, version, status, state, created_at, updated_at, deadline)
         SELECT o, v, st, j::jsonb, c, u, d
         FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $21::int[], $22::bigint[])
              AS x(o, v, st, j, c, u, d, fp, fe)
         WHERE x.fp < 0 OR (x.fp, x.fe) IN (SELECT partition, epoch FROM fence)
         ON CONFLICT (order_id) DO NOTHING RETURNING order_id),
     updated AS (
         UPDATE order_snapshots s
         SET version = u.version, status = u.status, state = u.state::jsonb, updated_at = u.updated_at, deadline = u.deadline
         FROM unnest($8::uuid[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::timestamptz[], $14::timestamptz[], $23::int[], $24::bigint[])
              AS u(order_id, expected, version, status, state, updated_at, deadline, fp, fe)
         WHERE s.order_id = u.order_id AND s.version = u.expected
           AND (u.fp < 0 OR (u.fp, u.fe) IN (SELECT partition, epoch FROM fence))
         RETURNING s.order_id),
     written AS (SELECT order_id FROM created UNION ALL SELECT order_id FROM updated),
     sent AS (
         INSERT INTO outbox (message_id, subject, order_id, correlation_id, payload)
         SELECT m.message_id, m.subject, m.order_id, m.correlation_id, m.payload
         FROM unnest($15::uuid[], $16::uuid[], $17::text[], $18::uuid[], $19::text[], $20::bytea[])
              WITH ORDINALITY AS m(owner, message_id, subject, order_id, correlation_id, payload, n)
         WHERE m.owner IN (SELECT order_id FROM written)
         ORDER BY m.n)
     SELECT order_id, NULL::int, NULL::bigint FROM written
     UNION ALL SELECT NULL::uuid, partition, epoch FROM fence";
