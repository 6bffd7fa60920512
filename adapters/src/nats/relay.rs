//! The outbox relay: claims committed-but-unpublished messages, publishes them to JetStream with
//! their message id as `Nats-Msg-Id`, waits for every ack, then deletes them. A crash between
//! publish and delete re-publishes on restart, and JetStream's dedup window drops the copy.
//! Publishes of one batch are pipelined (all sent, then all acks awaited).

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use actors::metrics as names;

use crate::postgres::{OutboxSignal, outbox};

/// Subject prefix → stream, for the `stream` label (a fixed set, no allocation per message).
const STREAM_LABELS: [(&str, &str); 3] = [
    ("order.", "orders"),
    ("payment.", "payments"),
    ("inventory.", "inventory"),
];

pub struct OutboxRelay {
    pool: PgPool,
    js: jetstream::Context,
    signal: OutboxSignal,
    batch_size: i64,
    /// Fallback poll for rows written by other processes (whose signal we cannot hear).
    poll_interval: Duration,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, js: jetstream::Context, signal: OutboxSignal) -> Self {
        Self {
            pool,
            js,
            signal,
            batch_size: 512,
            poll_interval: Duration::from_millis(200),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            match self.relay_once().await {
                Ok(0) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = self.signal.notified() => {}
                        _ = tokio::time::sleep(self.poll_interval) => {}
                    }
                    backoff = Duration::from_millis(50);
                }
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox relay failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Publishes one batch; returns how many messages went out.
    pub async fn relay_once(&self) -> Result<usize, String> {
        let batch = outbox::claim(&self.pool, self.batch_size)
            .await
            .map_err(|e| e.to_string())?;
        if batch.messages.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(batch.messages.len());
        let mut per_stream = [0u64; 3];
        for m in &batch.messages {
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
                .payload(m.payload.clone().into());
            let ack = self
                .js
                .send_publish(m.subject.clone(), publish)
                .await
                .map_err(|e| {
                    metrics::counter!(names::JETSTREAM_PUBLISH_FAILURES).increment(1);
                    format!("publish {}: {e}", m.subject)
                })?;
            acks.push(ack);
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            ack.map_err(|e| {
                metrics::counter!(names::JETSTREAM_PUBLISH_FAILURES).increment(1);
                format!("publish not acknowledged: {e}")
            })?;
        }
        for ((_, stream), n) in STREAM_LABELS.iter().zip(per_stream) {
            if n > 0 {
                metrics::counter!(names::JETSTREAM_PUBLISHED, "stream" => *stream).increment(n);
            }
        }
        let count = batch.messages.len();
        batch.finish().await.map_err(|e| e.to_string())?;
        Ok(count)
    }
}
