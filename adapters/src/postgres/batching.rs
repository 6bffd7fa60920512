//! The one machinery behind every coalescing writer and reader (snapshots, charges,
//! idempotency claims, price reads): a queue per worker, each request sent to the worker its key
//! hashes to, a batch taken from the queue at a time, and each caller answered after the batch's
//! statement ran (for writers: after its own row is durable).
//!
//! One statement per batch instead of one per request is what makes PostgreSQL affordable on a
//! small machine: the cost of a statement is mostly round trips and context switches, not
//! bytes. What differs between the writers, the statement and what each caller learns, is a
//! `BatchJob`; everything else is here, once.
//!
//! A batch is whatever is queued when a worker becomes free, plus, when requests come in
//! company and that is less than a full batch, whatever else arrives within the linger.
//! Without a linger a batch carries what queued behind the previous statement: plenty when one
//! process takes all the load, little when several instances share it. The linger
//! (`BATCH_LINGER_MS`, set once at start) trades that much latency per step for fuller batches;
//! 0 turns it off. A lone request after a lone request does not wait: at low load there is
//! nobody to wait for.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;

use tokio::sync::{mpsc, oneshot};

/// Most requests in one batch (one statement).
const MAX_BATCH: usize = 256;
/// Requests waiting per worker before callers wait to enqueue (back-pressure).
const QUEUE: usize = 4096;

/// What a batching writer or reader does with one batch.
pub(super) trait BatchJob: Send + Sync + 'static {
    type Request: Send + 'static;
    type Answer: Send + 'static;
    /// The `writer` label of its batch sizes in `database_batch_size`.
    const NAME: &'static str;
    /// Runs the batch and answers every request, in the batch's order.
    fn run(&self, requests: Vec<Self::Request>) -> impl Future<Output = Vec<Self::Answer>> + Send;
    /// The answer to a request the job left unanswered (it panicked or answered short): an
    /// error the caller treats as the database being unavailable.
    fn unanswered() -> Self::Answer;
}

/// The batcher stopped (its workers ended): the process is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the {0} batcher stopped")]
pub(super) struct BatcherStopped(pub &'static str);

type Pending<J> = (
    <J as BatchJob>::Request,
    oneshot::Sender<<J as BatchJob>::Answer>,
);

/// A job's front door; cheap to clone. Its workers start on the first request (so it can be
/// built outside a runtime) and stop when every clone is dropped.
pub(super) struct Batcher<J: BatchJob> {
    job: Arc<J>,
    workers: usize,
    queues: Arc<OnceLock<Vec<mpsc::Sender<Pending<J>>>>>,
}

impl<J: BatchJob> Clone for Batcher<J> {
    fn clone(&self) -> Self {
        Self {
            job: self.job.clone(),
            workers: self.workers,
            queues: self.queues.clone(),
        }
    }
}

impl<J: BatchJob> Batcher<J> {
    /// `workers` (at least one) run batches at once, each holding a connection while it does.
    pub fn new(job: J, workers: usize) -> Self {
        Self {
            job: Arc::new(job),
            workers: workers.max(1),
            queues: Arc::default(),
        }
    }

    /// Queues `request` on the worker that `key` hashes to (requests with the same key are run
    /// in the order they were sent) and waits for its answer.
    pub async fn submit(
        &self,
        key: u128,
        request: J::Request,
    ) -> Result<J::Answer, BatcherStopped> {
        let queues = self.queues.get_or_init(|| {
            (0..self.workers)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(work(self.job.clone(), rx));
                    tx
                })
                .collect()
        });
        let (reply, answer) = oneshot::channel();
        let worker = (key % queues.len() as u128) as usize;
        queues[worker]
            .send((request, reply))
            .await
            .map_err(|_| BatcherStopped(J::NAME))?;
        answer.await.map_err(|_| BatcherStopped(J::NAME))
    }
}

/// One worker: a batch at a time, each caller answered once its batch ran.
async fn work<J: BatchJob>(job: Arc<J>, queue: mpsc::Receiver<Pending<J>>) {
    let mut queue = BatchQueue::new(J::NAME, queue);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.next(&mut batch, MAX_BATCH).await > 0 {
        let (requests, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        // A job that panics or answers short is a bug; its callers get an error they can retry
        // (not "stopped", which means shutting down), and the worker goes on serving.
        let answers = match AssertUnwindSafe(job.run(requests)).catch_unwind().await {
            Ok(answers) => answers,
            Err(_) => {
                tracing::error!(
                    batcher = J::NAME,
                    "a batch job panicked; its callers get an error"
                );
                Vec::new()
            }
        };
        if answers.len() != replies.len() {
            tracing::error!(
                batcher = J::NAME,
                answers = answers.len(),
                requests = replies.len(),
                "a batch job did not answer every request; the rest get an error"
            );
        }
        let mut answers = answers.into_iter();
        for reply in replies {
            let _ = reply.send(answers.next().unwrap_or_else(J::unanswered));
        }
    }
}

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

/// A worker's queue, taken from a batch at a time.
struct BatchQueue<T> {
    /// The `writer` label of its batch sizes in `database_batch_size`.
    name: &'static str,
    queue: mpsc::Receiver<T>,
    /// The size of the last batch taken: a lone request after a lone request means nobody else
    /// is about, and waiting for company would only add latency.
    last: usize,
}

impl<T> BatchQueue<T> {
    fn new(name: &'static str, queue: mpsc::Receiver<T>) -> Self {
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
    async fn next(&mut self, batch: &mut Vec<T>, max: usize) -> usize {
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

    /// Answers each request with itself and the size of the batch it came in.
    struct Echo;

    impl BatchJob for Echo {
        type Request = u32;
        type Answer = (u32, usize);
        const NAME: &'static str = "echo";

        async fn run(&self, requests: Vec<u32>) -> Vec<(u32, usize)> {
            // Long enough for the others to queue behind this batch.
            tokio::task::yield_now().await;
            let size = requests.len();
            requests.into_iter().map(|r| (r, size)).collect()
        }

        fn unanswered() -> (u32, usize) {
            (u32::MAX, 0)
        }
    }

    /// Panics on request 0, answers all but the last of a batch with 1 otherwise.
    struct Faulty;

    impl BatchJob for Faulty {
        type Request = u32;
        type Answer = Option<u32>;
        const NAME: &'static str = "faulty";

        async fn run(&self, requests: Vec<u32>) -> Vec<Option<u32>> {
            assert!(!requests.contains(&0), "request 0 blows the job up");
            requests.iter().skip(1).map(|r| Some(*r)).collect()
        }

        fn unanswered() -> Option<u32> {
            None
        }
    }

    #[tokio::test]
    async fn a_job_that_panics_or_answers_short_leaves_errors_and_a_worker_that_goes_on() {
        let batcher = Batcher::new(Faulty, 1);
        assert_eq!(batcher.submit(0, 0).await.unwrap(), None, "panicked");
        assert_eq!(batcher.submit(0, 7).await.unwrap(), None, "left unanswered");
        let pair: Vec<_> = (1..=2u32)
            .map(|r| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(0, r).await.unwrap() })
            })
            .collect();
        let mut answered = Vec::new();
        for call in pair {
            answered.push(call.await.unwrap());
        }
        assert_eq!(
            answered,
            [Some(2), None],
            "answered in order, the last left out"
        );
    }

    #[tokio::test]
    async fn every_caller_gets_its_own_answer_and_requests_that_queue_share_a_batch() {
        let batcher = Batcher::new(Echo, 2);
        let calls: Vec<_> = (0..64u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(u128::from(i), i).await })
            })
            .collect();
        let mut largest = 0;
        for (i, call) in calls.into_iter().enumerate() {
            let (echoed, size) = call.await.unwrap().unwrap();
            assert_eq!(echoed as usize, i);
            largest = largest.max(size);
        }
        assert!(largest > 1, "64 requests sent at once were never batched");
    }
}
