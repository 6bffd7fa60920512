//! How the coalescing writers and readers (snapshots, charges, idempotency claims, price reads)
//! take their next batch from their queue: whatever is queued at once, then, when requests come
//! in company and that is less than a full batch, whatever else arrives within the linger.
//!
//! Without a linger a batch carries what queued behind the previous statement: plenty when one
//! process takes all the load, little when several instances share it, and every statement is a
//! transaction PostgreSQL pays for on the same cores. The linger (`BATCH_LINGER_MS`, set once at
//! start) trades that much latency per step for fuller batches; 0 turns it off. A lone request
//! after a lone request does not wait: at low load there is nobody to wait for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

static LINGER_MICROS: AtomicU64 = AtomicU64::new(0);

/// Sets the linger of every batch taken in this process from now on.
pub fn set_batch_linger(linger: Duration) {
    LINGER_MICROS.store(
        u64::try_from(linger.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

fn linger() -> Duration {
    Duration::from_micros(LINGER_MICROS.load(Ordering::Relaxed))
}

/// A writer's queue, taken from a batch at a time.
pub struct BatchQueue<T> {
    /// The `writer` label of its batch sizes in `database_batch_size`.
    name: &'static str,
    queue: mpsc::Receiver<T>,
    /// The size of the last batch taken: a lone request after a lone request means nobody else
    /// is about, and waiting for company would only add latency.
    last: usize,
}

impl<T> BatchQueue<T> {
    pub fn new(name: &'static str, queue: mpsc::Receiver<T>) -> Self {
        Self {
            name,
            queue,
            last: 0,
        }
    }

    /// Waits for at least one item, then fills `batch` up to `max` with what is queued and,
    /// when requests come in company (this batch or the last held more than one), with what
    /// arrives within the linger. Returns how many items `batch` holds; 0 once the queue is
    /// closed and empty.
    pub async fn next(&mut self, batch: &mut Vec<T>, max: usize) -> usize {
        if self.queue.recv_many(batch, max).await == 0 {
            return 0;
        }
        let linger = linger();
        let busy = batch.len() > 1 || self.last > 1;
        if busy && !linger.is_zero() {
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < max {
                let room = max - batch.len();
                match tokio::time::timeout_at(deadline, self.queue.recv_many(batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        self.last = batch.len();
        metrics::histogram!(actors::metrics::DATABASE_BATCH, "writer" => self.name)
            .record(batch.len() as f64);
        batch.len()
    }

    /// An item already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        self.queue.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_in_company_wait_the_linger_for_more_and_a_lone_one_does_not() {
        set_batch_linger(Duration::from_millis(2));
        let (tx, rx) = mpsc::channel(16);
        let mut queue = BatchQueue::new("test", rx);
        let mut batch = Vec::new();
        // Alone: it goes at once, and one that comes a millisecond later is the next batch.
        tx.send(0).await.unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            late.send(1).await.unwrap();
        });
        assert_eq!(queue.next(&mut batch, 8).await, 1);
        assert_eq!(batch, [0]);
        batch.clear();
        assert_eq!(queue.next(&mut batch, 8).await, 1);
        assert_eq!(batch, [1]);
        // Two at once: the batch waits the linger and takes what comes within it, not after.
        batch.clear();
        tx.send(2).await.unwrap();
        tx.send(3).await.unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            late.send(4).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            late.send(5).await.unwrap();
        });
        assert_eq!(queue.next(&mut batch, 8).await, 3);
        assert_eq!(batch, [2, 3, 4]);
        // After a batch in company, even a lone request waits; it gets nobody here.
        batch.clear();
        assert_eq!(queue.next(&mut batch, 8).await, 1);
        assert_eq!(batch, [5]);
        // A full batch goes at once.
        for i in 0..4 {
            tx.send(i).await.unwrap();
        }
        batch.clear();
        assert_eq!(queue.next(&mut batch, 4).await, 4);
        drop(tx);
        batch.clear();
        assert_eq!(queue.next(&mut batch, 4).await, 0);
        set_batch_linger(Duration::ZERO);
    }
}
