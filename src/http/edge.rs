//! The per-request half of the HTTP edge (the per-connection half is `server.rs`): middleware
//! that bounds what one request may hold, so that slow or too many clients get a quick, clear
//! answer instead of queuing without bound.
//!
//! - **Load shedding.** At most `HTTP_MAX_REQUESTS_IN_FLIGHT` requests are answered at once; past
//!   it, 503 `overloaded` with `Retry-After`. Health and metrics are exempt: an orchestrator that
//!   cannot read them under load would restart a process that is merely busy.
//! - **Request deadline.** A request is answered within `HTTP_REQUEST_TIMEOUT_MS`, plus its
//!   `?wait=` for a long poll; past it, 503 `timed_out` with `Retry-After`. A placement cut off
//!   this way may still take effect, which the `Idempotency-Key` makes safe to retry.
//! - **Body deadline.** A body must arrive whole within `HTTP_BODY_TIMEOUT_MS` of its headers;
//!   past it, 408 `body_timeout` with `Connection: close`, since the rest of a body that never
//!   came cannot be told from the next request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use super::ApiError;
use super::error::{ErrorBody, ErrorDetail};

pub const REQUESTS_SHED: &str = "http_requests_shed_total";
pub const REQUEST_TIMEOUTS: &str = "http_request_timeouts_total";

/// What the request middleware shares: the in-flight bound and the two deadlines.
#[derive(Clone)]
pub struct RequestLimits {
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
    body_timeout: Duration,
}

impl RequestLimits {
    pub fn new(max_in_flight: usize, request_timeout: Duration, body_timeout: Duration) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            request_timeout,
            body_timeout,
        }
    }
}

/// The JSON of a 503 `overloaded` answer, for the connection bound too (written by hand there,
/// before any request is read).
pub fn overloaded_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code: "overloaded".into(),
            message: message.into(),
            field: None,
        },
    })
    .unwrap_or_default()
}

/// Routes answered whatever the load.
fn always_answered(path: &str) -> bool {
    matches!(path, "/health" | "/health/ready" | "/metrics")
}

/// The edge's limits on one request, as one layer (one boxed future per request instead of one
/// per limit): shed past the in-flight bound, then give the body and the answer their deadlines.
pub async fn guard(State(limits): State<RequestLimits>, request: Request, next: Next) -> Response {
    let _slot = if always_answered(request.uri().path()) {
        None
    } else {
        match limits.in_flight.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                metrics::counter!(REQUESTS_SHED).increment(1);
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests in flight; retry shortly",
                )
                .into_response();
            }
        }
    };
    let deadline = limits.request_timeout + long_poll_wait(request.uri().query());
    let (request, body_timed_out) = with_body_deadline(request, limits.body_timeout);
    let Ok(response) = tokio::time::timeout(deadline, next.run(request)).await else {
        metrics::counter!(REQUEST_TIMEOUTS, "phase" => "answer").increment(1);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timed_out",
            format!(
                "the request was not answered within {} ms; it may still take effect: retry \
                 (with the same Idempotency-Key for a placement)",
                deadline.as_millis()
            ),
        )
        .into_response();
    };
    match body_timed_out {
        Some(flag) if flag.load(Ordering::Acquire) => body_timeout_answer(limits.body_timeout),
        _ => response,
    }
}

/// The `wait` of a long poll (`?wait=5s`), zero for any other request or a `wait` that does not
/// parse (that request is refused at once by its handler).
fn long_poll_wait(query: Option<&str>) -> Duration {
    query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("wait="))
        .and_then(super::orders::parse_wait)
        .unwrap_or(Duration::ZERO)
}

/// Gives a request's body until `timeout` from now to arrive, and the flag its failure raises;
/// a request without a body is left as it is.
fn with_body_deadline(request: Request, timeout: Duration) -> (Request, Option<Arc<AtomicBool>>) {
    if !has_body(&request) {
        return (request, None);
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + timeout;
    let flag = timed_out.clone();
    let request = request.map(|body| Body::new(DeadlineBody::new(body, deadline, flag)));
    (request, Some(timed_out))
}

/// 408 `body_timeout`, whatever the handler made of the failed read, with `Connection: close`:
/// the rest of a body that never came cannot be told from the next request.
fn body_timeout_answer(timeout: Duration) -> Response {
    metrics::counter!(REQUEST_TIMEOUTS, "phase" => "body").increment(1);
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether a request announces a body (HTTP/1.1: a non-zero `Content-Length` or a
/// `Transfer-Encoding`; HTTP/2: a stream not yet ended).
fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() != b"0");
    declared || headers.contains_key(header::TRANSFER_ENCODING) || !request.body().is_end_stream()
}

/// A body that fails once its deadline passes. The timer is made only when the body is not
/// already there: most bodies arrive with their headers and never need one.
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant, timed_out: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            deadline,
            timer: None,
            timed_out,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out.store(true, Ordering::Release);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn a_long_poll_gets_its_wait_and_anything_else_none() {
        assert_eq!(long_poll_wait(Some("wait=5s")), Duration::from_secs(5));
        assert_eq!(
            long_poll_wait(Some("x=1&wait=500ms")),
            Duration::from_millis(500)
        );
        assert_eq!(long_poll_wait(Some("wait=forever")), Duration::ZERO);
        assert_eq!(long_poll_wait(Some("await=5s")), Duration::ZERO);
        assert_eq!(long_poll_wait(None), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_its_deadline_and_says_so() {
        let stream = http_body_util::StreamBody::new(half_a_body_then_nothing());
        let timed_out = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let body = DeadlineBody::new(
            Body::new(stream),
            started + Duration::from_secs(3),
            timed_out.clone(),
        );
        let collected = body.collect().await;
        assert!(collected.is_err());
        assert!(timed_out.load(Ordering::Acquire));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    /// A body stream that yields one frame and then waits forever (its sender is kept alive).
    fn half_a_body_then_nothing()
    -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
        let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
        let _ = sender.try_send(Ok(Frame::data(Bytes::from_static(b"{\"half\":"))));
        futures::stream::poll_fn(move |cx| {
            let _open = &sender;
            receiver.poll_recv(cx)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_is_answered_503_and_a_long_poll_gets_its_wait_on_top() {
        use axum::Router;
        use axum::routing::get;
        use tower::ServiceExt;

        let limits = RequestLimits::new(8, Duration::from_secs(1), Duration::from_secs(1));
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(limits, guard));
        let call = |uri: &'static str| {
            let app = app.clone();
            async move {
                app.oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap_or_else(|e| match e {})
            }
        };

        let cut = call("/slow").await;
        assert_eq!(cut.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(cut.headers().contains_key(header::RETRY_AFTER));
        let body = cut.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "timed_out");

        let long_poll = call("/slow?wait=20s").await;
        assert_eq!(long_poll.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_is_already_there_is_read_without_a_timer() {
        let timed_out = Arc::new(AtomicBool::new(false));
        let body = DeadlineBody::new(
            Body::from("{\"whole\":true}"),
            Instant::now(),
            timed_out.clone(),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"whole\":true}");
        assert!(!timed_out.load(Ordering::Acquire));
    }
}
