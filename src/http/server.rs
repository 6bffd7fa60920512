//! The HTTP server under the router: accepts connections, bounds how many are open, and closes
//! the ones that hold a slot without using it.
//!
//! axum's own `serve` has no timeouts, so a client that opens a connection and sends half a
//! request, or nothing, keeps its file descriptor forever; a few thousand such clients shut
//! everyone else out. This loop serves each connection with hyper directly and adds what servers
//! facing the internet do (nginx's `client_header_timeout` and `keepalive_timeout`):
//!
//! - a **header deadline**: from the connection's start, or from the first byte of a later
//!   request, the headers must be in within `HTTP_HEADER_TIMEOUT_MS`;
//! - an **idle deadline**: a keep-alive connection with no request for `HTTP_IDLE_TIMEOUT_MS` is
//!   closed;
//! - a **connection bound**: past `HTTP_MAX_CONNECTIONS`, a new connection is answered 503 with
//!   `Retry-After` at once and closed, instead of waiting in the kernel's queue.
//!
//! Both deadlines close only connections with no request in flight, so no answer is ever cut
//! off; body and request deadlines, which concern a request, are middleware (`edge.rs`).
//! hyper's own header timeout is not used because it also runs while a keep-alive connection
//! waits for its next request, which would make the idle deadline the header deadline.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::edge::overloaded_body;

pub const CONNECTIONS_ACCEPTED: &str = "http_connections_accepted_total";
pub const CONNECTIONS_CLOSED: &str = "http_connections_closed_total";
pub const CONNECTIONS_REJECTED: &str = "http_connections_rejected_total";

/// Connections answered 503 at once while over the bound; past this many refusals still being
/// written, new connections are closed without a word (a refusal must not become the flood).
const REFUSALS_AT_ONCE: usize = 256;
/// How long a refusal may take to be written and its request read and dropped.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// What the server needs to know of the limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// File descriptors left for everything but client connections: the database pool, NATS, the
/// Stripe client's connections, the Stripe fake, logs.
const DESCRIPTORS_KEPT: usize = 256;

/// The configured connection bound, lowered to what the process's open-file limit leaves room
/// for: past that limit `accept` itself fails, and nobody gets an answer at all.
pub fn connection_bound(configured: usize) -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| open_file_limit(&limits));
    match limit {
        Some(limit) if limit < configured + DESCRIPTORS_KEPT => {
            let bound = limit.saturating_sub(DESCRIPTORS_KEPT).max(1);
            tracing::warn!(
                configured,
                bound,
                open_file_limit = limit,
                "HTTP_MAX_CONNECTIONS lowered to what the open-file limit leaves room for; raise \
                 `ulimit -n` to allow more"
            );
            bound
        }
        _ => configured,
    }
}

/// The soft `Max open files` of `/proc/self/limits`; `None` when unlimited or unreadable.
fn open_file_limit(limits: &str) -> Option<usize> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `router` on `listener` until `shutdown`, then lets open connections finish their
/// requests (idle ones are closed at once) and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                pause_after_accept_error(e, &shutdown).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                metrics::counter!(CONNECTIONS_ACCEPTED).increment(1);
                connections.spawn(serve_connection(
                    stream,
                    remote,
                    router.clone(),
                    limits,
                    shutdown.clone(),
                    slot,
                ));
            }
            Err(_) => {
                metrics::counter!(CONNECTIONS_REJECTED).increment(1);
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    connections.spawn(refuse(stream, permit));
                }
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// A failed accept: a connection that died in the queue is nothing; anything else (out of file
/// descriptors, most often) is logged, and accepting pauses briefly so that the error does not
/// spin while connections close.
async fn pause_after_accept_error(e: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept HTTP connections");
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}

/// Why a connection ended, as the `reason` label of `http_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The client closed it, or hyper did after an answer with `Connection: close`.
    ByClient,
    HeaderTimeout,
    IdleTimeout,
    /// A protocol error (malformed request, reset).
    Error,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::ByClient => "client",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::Error => "error",
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let clock = Arc::new(ConnectionClock::new(limits));
    let io = TokioIo::new(ClockedStream {
        inner: stream,
        clock: clock.clone(),
    });
    let service_clock = clock.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        // What `into_make_service_with_connect_info` would add: the rate limiter keys on it.
        request.extensions_mut().insert(ConnectInfo(remote));
        let busy = service_clock.request_started();
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(Body::new)).await;
            drop(busy);
            response
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut draining = false;
    let closed = loop {
        tokio::select! {
            served = connection.as_mut() => {
                break if served.is_ok() { Closed::ByClient } else { Closed::Error };
            }
            expired = clock.expired() => break expired,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => closed.label()).increment(1);
}

/// Answers a connection over the bound with 503 and closes it. The request is read (and dropped)
/// after the answer, briefly: closing a socket with unread data makes the kernel reset the
/// connection, and the client would see the reset instead of the answer.
async fn refuse(mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let body = overloaded_body("too many open connections; retry shortly");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Where a connection is in its life, for its two deadlines.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's headers, since the connection opened or since the first byte of
    /// the request arrived: the header deadline runs.
    AwaitingHeaders { since: Instant },
    /// At least one request is being answered: no connection deadline runs.
    Busy { requests: usize },
    /// Every request answered, no byte of the next one yet: the idle deadline runs.
    Idle { since: Instant },
}

/// A connection's phase, moved by its reads and by its requests' start and end, and the
/// deadline that follows from it. A plain mutex: only this connection's task and its requests
/// touch it, never at the same instant for long.
struct ConnectionClock {
    phase: Mutex<Phase>,
    /// Raised when a deadline starts (the connection fell idle, or the next request's first
    /// byte came), since the new one may fall before the one the watchdog sleeps towards.
    deadline_moved: Notify,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnectionClock {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            phase: Mutex::new(Phase::AwaitingHeaders {
                since: Instant::now(),
            }),
            deadline_moved: Notify::new(),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    fn with_phase<T>(&self, f: impl FnOnce(&mut Phase) -> T) -> T {
        let mut phase = self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut phase)
    }

    /// Bytes arrived: on an idle connection they start the next request's header deadline.
    fn bytes_read(&self) {
        let moved = self.with_phase(|phase| {
            let idle = matches!(phase, Phase::Idle { .. });
            if idle {
                *phase = Phase::AwaitingHeaders {
                    since: Instant::now(),
                };
            }
            idle
        });
        if moved {
            self.deadline_moved.notify_one();
        }
    }

    /// A request's headers are in; the connection is busy until the returned guard drops.
    fn request_started(self: &Arc<Self>) -> BusyGuard {
        self.with_phase(|phase| {
            *phase = match *phase {
                Phase::Busy { requests } => Phase::Busy {
                    requests: requests + 1,
                },
                _ => Phase::Busy { requests: 1 },
            };
        });
        BusyGuard(self.clone())
    }

    fn request_finished(&self) {
        let idle = self.with_phase(|phase| {
            *phase = match *phase {
                Phase::Busy { requests } if requests > 1 => Phase::Busy {
                    requests: requests - 1,
                },
                _ => Phase::Idle {
                    since: Instant::now(),
                },
            };
            matches!(phase, Phase::Idle { .. })
        });
        if idle {
            self.deadline_moved.notify_one();
        }
    }

    /// Resolves when the deadline of the current phase passes. A busy connection has none and
    /// waits, with no timer, for the phase to move.
    async fn expired(&self) -> Closed {
        loop {
            let running = match self.with_phase(|phase| *phase) {
                Phase::AwaitingHeaders { since } => {
                    Some((since + self.header_timeout, Closed::HeaderTimeout))
                }
                Phase::Idle { since } => Some((since + self.idle_timeout, Closed::IdleTimeout)),
                Phase::Busy { .. } => None,
            };
            match running {
                Some((deadline, reason)) if Instant::now() >= deadline => return reason,
                Some((deadline, _)) => tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = self.deadline_moved.notified() => {}
                },
                None => self.deadline_moved.notified().await,
            }
        }
    }
}

/// Marks a request as answered when dropped (also when its future is dropped unfinished).
struct BusyGuard(Arc<ConnectionClock>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The TCP stream, telling the clock when bytes arrive.
struct ClockedStream {
    inner: TcpStream,
    clock: Arc<ConnectionClock>,
}

impl AsyncRead for ClockedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for ClockedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Arc<ConnectionClock> {
        Arc::new(ConnectionClock::new(ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 1,
        }))
    }

    #[test]
    fn the_open_file_limit_is_the_soft_one_and_unlimited_is_none() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_file_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_file_limit(unlimited), None);
        assert_eq!(open_file_limit(""), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_headers_expires_at_the_header_deadline() {
        let clock = clock();
        let started = Instant::now();
        assert_eq!(clock.expired().await, Closed::HeaderTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_connection_expires_at_the_idle_deadline_and_a_new_byte_restarts_the_header_one()
     {
        let clock = clock();
        drop(clock.request_started());
        let idle_since = Instant::now();
        assert_eq!(clock.expired().await, Closed::IdleTimeout);
        assert_eq!(idle_since.elapsed(), Duration::from_secs(75));

        drop(clock.request_started());
        tokio::time::advance(Duration::from_secs(30)).await;
        clock.bytes_read();
        let first_byte = Instant::now();
        assert_eq!(clock.expired().await, Closed::HeaderTimeout);
        assert_eq!(first_byte.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_deadline_shorter_than_the_header_deadline_it_waited_on_still_closes_in_time() {
        let clock = Arc::new(ConnectionClock::new(ConnectionLimits {
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(1),
            max_connections: 1,
        }));
        let watchdog = tokio::spawn({
            let clock = clock.clone();
            async move { clock.expired().await }
        });
        // The watchdog now sleeps towards the 60 s header deadline.
        tokio::time::advance(Duration::from_millis(100)).await;
        drop(clock.request_started());
        let idle_since = Instant::now();
        let closed = watchdog.await.unwrap();
        assert_eq!(closed, Closed::IdleTimeout);
        assert_eq!(idle_since.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_runs_while_a_request_is_answered() {
        let clock = clock();
        let first = clock.request_started();
        let second = clock.request_started();
        let waiting = tokio::time::timeout(Duration::from_secs(600), clock.expired()).await;
        assert!(waiting.is_err(), "expired while busy: {waiting:?}");
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_secs(600), clock.expired())
                .await
                .is_err(),
            "one of two requests still runs"
        );
        drop(second);
        assert_eq!(clock.expired().await, Closed::IdleTimeout);
    }
}
