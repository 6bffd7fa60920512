//! The outbox relay: publishes committed outbox rows to JetStream with their message id as
//! `Nats-Msg-Id`, and deletes each row once JetStream acknowledged it.
//!
//! Most rows never need to be read back: the store that committed them hands them over
//! (`OutboxSignal`), and the hand-off loop publishes them at once, pipelined (a batch is sent in
//! one go and its acks are awaited in a task of their own while the next batch goes out), then a
//! deleter removes the acknowledged rows in few statements (it lets them gather for 25 ms). What the hand-off did not publish (a
//! crash after the commit, NATS down, a full queue, another process's leftovers) is found by the
//! sweep, which claims rows with `FOR UPDATE SKIP LOCKED`: all of them once at start, then every
//! second those older than `SWEEP_MIN_AGE`, the age a hand-off row never reaches unless its
//! publish failed. A row published twice carries the same message id, and JetStream's dedup
//! window drops the copy.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use actors::metrics as names;

use crate::postgres::OutboxSignal;
use crate::postgres::outbox::{self, OutboxMessage};

/// Subject prefix → stream, for the `stream` label (a fixed set, no allocation per message).
const STREAM_LABELS: [(&str, &str); 3] = [
    ("order.", "orders"),
    ("payment.", "payments"),
    ("inventory.", "inventory"),
];

/// Rows younger than this are left to the hand-off that committed them.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(5);
/// How long acknowledged rows wait for others before they are deleted together; far below
/// `SWEEP_MIN_AGE`, so the sweep never mistakes a row waiting here for an unpublished one.
const DELETE_LINGER: Duration = Duration::from_millis(25);
/// Hand-off batches whose acks are awaited at once.
const BATCHES_IN_FLIGHT: usize = 8;

pub struct OutboxRelay {
    pool: PgPool,
    js: jetstream::Context,
    signal: OutboxSignal,
    batch_size: i64,
    /// How often the sweep looks for rows no hand-off published.
    poll_interval: Duration,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, js: jetstream::Context, signal: OutboxSignal) -> Self {
        Self {
            pool,
            js,
            signal,
            batch_size: 512,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Runs the hand-off loop and the sweep until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let sweep = tokio::spawn(this.clone().sweep_forever(shutdown.clone()));
        this.hand_off_forever(shutdown).await;
        let _ = sweep.await;
    }

    async fn hand_off_forever(&self, shutdown: CancellationToken) {
        let (deleted, to_delete) = mpsc::channel::<Vec<Uuid>>(1024);
        let deleter = tokio::spawn(delete_forever(self.pool.clone(), to_delete));
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.signal.notified() => {}
            }
            let batch = self.signal.take();
            if batch.is_empty() {
                continue;
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let acks = match self.publish_all(&batch).await {
                Ok(acks) => acks,
                Err(e) => {
                    // Left in the table: the sweep publishes them once they are old enough.
                    warn!(error = %e, messages = batch.len(), "hand-off publish failed; the sweep will publish these");
                    continue;
                }
            };
            let deleted = deleted.clone();
            tokio::spawn(async move {
                let acked = await_acks(acks).await;
                if !acked.is_empty() {
                    let _ = deleted.send(acked).await;
                }
                drop(permit);
            });
        }
        drop(deleted);
        let _ = deleter.await;
    }

    async fn sweep_forever(self: Arc<Self>, shutdown: CancellationToken) {
        // At start, every row is somebody's leftover: publish them all at once.
        let mut min_age = Duration::ZERO;
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            match self.sweep_once(min_age).await {
                Ok(n) if n as i64 >= self.batch_size => continue,
                Ok(_) => {
                    min_age = SWEEP_MIN_AGE;
                    backoff = Duration::from_millis(50);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(self.poll_interval) => {}
                    }
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox sweep failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Publishes every pending row, whatever its age; returns how many went out. What the sweep
    /// does at start, and what tests call to relay rows they wrote themselves.
    pub async fn relay_once(&self) -> Result<usize, String> {
        self.sweep_once(Duration::ZERO).await
    }

    /// Claims one batch of rows at least `min_age` old, publishes it, deletes it.
    async fn sweep_once(&self, min_age: Duration) -> Result<usize, String> {
        let batch = outbox::claim(&self.pool, self.batch_size, min_age)
            .await
            .map_err(|e| e.to_string())?;
        if batch.messages.is_empty() {
            return Ok(0);
        }
        let acks = self.publish_all(&batch.messages).await?;
        let count = acks.len();
        if await_acks(acks).await.len() < count {
            return Err("some messages were not acknowledged; they stay in the outbox".into());
        }
        batch.finish().await.map_err(|e| e.to_string())?;
        Ok(count)
    }

    /// Sends every message (without waiting for any ack); stops at the first that cannot be sent.
    async fn publish_all(
        &self,
        messages: &[OutboxMessage],
    ) -> Result<Vec<(Uuid, PublishAckFuture)>, String> {
        let mut acks = Vec::with_capacity(messages.len());
        let mut per_stream = [0u64; 3];
        for m in messages {
            if let Some(i) = STREAM_LABELS
                .iter()
                .position(|(prefix, _)| m.subject.starts_with(prefix))
            {
                per_stream[i] += 1;
            }
            let publish = PublishMessage::build()
                .message_id(m.message_id.to_string())
                .header("Correlation-Id", m.correlation_id.as_str())
                .header("Order-Id", m.order_id.to_string().as_str())
                .payload(m.payload.clone());
            let ack = self
                .js
                .send_publish(m.subject.to_string(), publish)
                .await
                .map_err(|e| {
                    metrics::counter!(names::JETSTREAM_PUBLISH_FAILURES).increment(1);
                    format!("publish {}: {e}", m.subject)
                })?;
            acks.push((m.message_id, ack));
        }
        for ((_, stream), n) in STREAM_LABELS.iter().zip(per_stream) {
            if n > 0 {
                metrics::counter!(names::JETSTREAM_PUBLISHED, "stream" => *stream).increment(n);
            }
        }
        Ok(acks)
    }
}

/// Waits for every ack; returns the ids JetStream acknowledged.
async fn await_acks(acks: Vec<(Uuid, PublishAckFuture)>) -> Vec<Uuid> {
    let (ids, futures): (Vec<Uuid>, Vec<PublishAckFuture>) = acks.into_iter().unzip();
    let results = futures::future::join_all(
        futures
            .into_iter()
            .map(std::future::IntoFuture::into_future),
    )
    .await;
    let mut acked = Vec::with_capacity(ids.len());
    for (id, result) in ids.into_iter().zip(results) {
        match result {
            Ok(_) => acked.push(id),
            Err(e) => {
                metrics::counter!(names::JETSTREAM_PUBLISH_FAILURES).increment(1);
                warn!(message_id = %id, error = %e, "publish not acknowledged; the sweep will publish it again");
            }
        }
    }
    acked
}

/// Deletes acknowledged rows, as many per statement as have queued meanwhile, after letting
/// more queue for `DELETE_LINGER`: nothing waits for a delete, so the pause costs no order any
/// time, and it cuts the deletes from one per few hand-off batches to a few dozen a second under
/// load (each one a round trip and a statement of its own). A failed delete only means the sweep
/// publishes those rows again later (and JetStream drops the copies).
async fn delete_forever(pool: PgPool, mut acked: mpsc::Receiver<Vec<Uuid>>) {
    let mut batches = Vec::new();
    while acked.recv_many(&mut batches, 1024).await > 0 {
        tokio::time::sleep(DELETE_LINGER).await;
        while batches.len() < 1024 {
            match acked.try_recv() {
                Ok(batch) => batches.push(batch),
                Err(_) => break,
            }
        }
        let ids: Vec<Uuid> = batches.drain(..).flatten().collect();
        if let Err(e) = outbox::delete_published(&pool, &ids).await {
            warn!(error = %e, rows = ids.len(), "cannot delete published outbox rows; the sweep will publish them again");
        }
    }
}
