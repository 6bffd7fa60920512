//! Rate limiting of order placement (governor's GCRA), per client: the `X-Client-Key` header when
//! a client sends one (e.g. one per shop front-end), else the peer IP address. Over the limit,
//! `POST /orders` answers 429 with `Retry-After` and nothing is stored.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::ApiError;

pub struct OrderRateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    /// Checks since the last pruning of idle keys (bounds the limiter's memory).
    checks: AtomicU64,
}

impl OrderRateLimit {
    /// `None` when `per_second` is 0 (limiting disabled).
    pub fn new(per_second: u32, burst: u32) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        Some(Arc::new(Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }))
    }

    /// `Err(wait)` when `key` is over its limit.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// The client a request counts against.
fn client_key(request: &Request) -> String {
    if let Some(key) = request
        .headers()
        .get("x-client-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 128)
    {
        return format!("key:{key}");
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        None => "unknown".to_owned(),
    }
}

pub async fn limit_orders(
    State(limit): State<Option<Arc<OrderRateLimit>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(limit) = limit else {
        return next.run(request).await;
    };
    if super::owner_forwarding::was_forwarded(request.extensions()) {
        // Limited where it first arrived.
        return next.run(request).await;
    }
    match limit.check(&client_key(&request)) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many orders from this client; retry in {seconds}s"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_client_waits_and_other_clients_are_unaffected() {
        let limit = OrderRateLimit::new(1, 3).expect("limit");
        for _ in 0..3 {
            assert!(limit.check("a").is_ok());
        }
        let wait = limit.check("a").err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check("b").is_ok(), "keys are limited separately");
        assert!(OrderRateLimit::new(0, 10).is_none(), "0 disables limiting");
    }
}
