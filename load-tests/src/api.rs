//! The few ordersaga endpoints the load generator calls, with typed (mostly borrowed) bodies so a
//! hot path order costs no `serde_json::Value`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::{HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One reqwest client (one connection pool) shared by every request of a run, and the
/// instances it spreads them over.
#[derive(Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    /// The first instance: set-up, checks and metrics go there.
    base: String,
    targets: Arc<[Target]>,
    next: Arc<AtomicUsize>,
}

/// One instance of the cluster under load.
struct Target {
    base: String,
    orders_url: reqwest::Url,
}

/// How long a placement keeps moving from instance to instance while none takes it (an
/// instance that died: its partitions are taken over within the lease time, 5 s by default).
const PLACEMENT_RETRY_WINDOW: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct PlaceOrder<'a> {
    customer_id: &'a str,
    items: [Item<'a>; 1],
    currency: &'a str,
    payment_method: &'a str,
}

#[derive(Serialize)]
struct Item<'a> {
    sku: &'a str,
    quantity: i64,
}

/// One placement, the same whichever instance ends up taking it.
struct PlaceRequest<'a> {
    body: PlaceOrder<'a>,
    client_key: Option<&'a HeaderValue>,
    wait: Option<Duration>,
}

/// A 202 (`PlacedOrder`, or with `?wait=` the order as it stands) or a 200 (the finished
/// order): both carry these two fields.
#[derive(Deserialize)]
struct Placed<'a> {
    order_id: Uuid,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    cancel_reason: Option<Cow<'a, str>>,
}

/// The part of an order the client looks at.
#[derive(Deserialize)]
struct OrderStatusView<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    cancel_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(crate) struct ProductStock {
    pub on_hand: i64,
    pub reserved: i64,
}

pub(crate) enum Placement {
    Placed(Uuid),
    /// Placed with `?wait=` and finished within it (200): `Completed` or `Cancelled`.
    Finished(Status),
    /// 429: try again after this long.
    RateLimited(Duration),
    /// Any other answer than 202: nothing placed.
    Rejected(u16),
    /// No answer (connection refused, reset, timeout): the order may or may not exist.
    Failed,
}

/// An order's status as read.
pub(crate) enum Status {
    Completed,
    /// With the kind of reason, see [`classify`].
    Cancelled(String),
    /// Not terminal yet: the status as the server spelled it.
    Running(String),
}

impl Status {
    pub fn name(&self) -> &str {
        match self {
            Status::Completed => "COMPLETED",
            Status::Cancelled(_) => "CANCELLED",
            Status::Running(s) => s,
        }
    }
}

pub(crate) enum Read {
    Found(Status),
    NotFound,
}

impl Api {
    /// `base_urls`: one instance's base URL, or several separated by commas. With several,
    /// placements and reads go round-robin, each placement carries an `Idempotency-Key`, and one
    /// that an instance does not answer, or answers 503, moves to the next instance (the key
    /// makes that safe: a retry finds the order the first attempt made).
    pub fn new(base_urls: &str, pool: usize) -> anyhow::Result<Self> {
        let targets = base_urls
            .split(',')
            .map(|url| {
                let base = url.trim().trim_end_matches('/').to_owned();
                let orders_url = reqwest::Url::parse(&format!("{base}/orders"))
                    .with_context(|| format!("{url} is not a URL"))?;
                Ok(Target { base, orders_url })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let Some(base) = targets.first().map(|t| t.base.clone()) else {
            bail!("no URL given");
        };
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            // Above the longest long poll the client asks for (5 s).
            .timeout(Duration::from_secs(35))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            base,
            targets: targets.into(),
            next: Arc::default(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The next instance in turn.
    fn target(&self) -> &Target {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[n % self.targets.len()]
    }

    /// Creates (or resets) a product with `on_hand` units at 1.00 EUR.
    pub async fn put_product(&self, sku: &str, on_hand: i64) -> anyhow::Result<()> {
        let response = self
            .client
            .put(format!("{}/inventory/products/{sku}", self.base))
            .json(&serde_json::json!({"name": "load test item", "unit_price_cents": 100, "currency": "EUR", "on_hand": on_hand}))
            .send()
            .await
            .with_context(|| format!("creating {sku}: is ordersaga running at {}?", self.base))?;
        if !response.status().is_success() {
            bail!(
                "creating {sku} failed: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    pub async fn product(&self, sku: &str) -> anyhow::Result<ProductStock> {
        let response = self
            .client
            .get(format!("{}/inventory/products/{sku}", self.base))
            .send()
            .await
            .with_context(|| format!("reading {sku}"))?;
        if !response.status().is_success() {
            bail!("reading {sku}: {}", response.status());
        }
        response
            .json()
            .await
            .with_context(|| format!("reading {sku}"))
    }

    /// Places an order, trying the next instance (same `Idempotency-Key`) while none takes it.
    pub async fn place(
        &self,
        sku: &str,
        quantity: i64,
        payment_method: &str,
        client_key: Option<&HeaderValue>,
        wait: Option<Duration>,
    ) -> Placement {
        let request = PlaceRequest {
            body: PlaceOrder {
                customer_id: "load-test",
                items: [Item { sku, quantity }],
                currency: "EUR",
                payment_method,
            },
            client_key,
            wait,
        };
        if self.targets.len() == 1 {
            return self.place_at(&self.targets[0], None, &request).await;
        }
        let key = HeaderValue::from_str(&Uuid::new_v4().to_string()).ok();
        let deadline = tokio::time::Instant::now() + PLACEMENT_RETRY_WINDOW;
        loop {
            match self.place_at(self.target(), key.as_ref(), &request).await {
                Placement::Failed | Placement::Rejected(503)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answer => return answer,
            }
        }
    }

    /// One attempt of `request` at one instance.
    async fn place_at(
        &self,
        target: &Target,
        idempotency_key: Option<&HeaderValue>,
        request: &PlaceRequest<'_>,
    ) -> Placement {
        let url = match request.wait {
            None => target.orders_url.clone(),
            Some(wait) => {
                let mut url = target.orders_url.clone();
                url.set_query(Some(&wait_query(wait)));
                url
            }
        };
        let mut post = self.client.post(url).json(&request.body);
        if let Some(key) = request.client_key {
            post = post.header("x-client-key", key.clone());
        }
        if let Some(key) = idempotency_key {
            post = post.header("idempotency-key", key.clone());
        }
        let Ok(response) = post.send().await else {
            return Placement::Failed;
        };
        match response.status() {
            status @ (StatusCode::ACCEPTED | StatusCode::OK) => match response.bytes().await {
                Ok(bytes) => placement_of(status, &bytes),
                Err(_) => Placement::Failed,
            },
            StatusCode::TOO_MANY_REQUESTS => Placement::RateLimited(retry_after(&response)),
            status => Placement::Rejected(status.as_u16()),
        }
    }

    /// `GET /orders/{id}`, held by the server up to `wait` until the order is terminal.
    pub async fn order(&self, id: Uuid, wait: Option<Duration>) -> anyhow::Result<Read> {
        // Any instance answers for any order; one that does not answer is skipped.
        let mut tries = self.targets.len();
        loop {
            tries -= 1;
            match self.order_at(self.target(), id, wait).await {
                Err(_) if tries > 0 => continue,
                answer => return answer,
            }
        }
    }

    async fn order_at(
        &self,
        target: &Target,
        id: Uuid,
        wait: Option<Duration>,
    ) -> anyhow::Result<Read> {
        let url = match wait {
            Some(wait) => format!("{}/orders/{id}?{}", target.base, wait_query(wait)),
            None => format!("{}/orders/{id}", target.base),
        };
        let response = self.client.get(url).send().await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(Read::NotFound),
            status => bail!("GET /orders/{id}: {status}"),
        }
        let bytes = response.bytes().await?;
        let view: OrderStatusView<'_> = serde_json::from_slice(&bytes)?;
        Ok(Read::Found(status_of(
            &view.status,
            view.cancel_reason.as_deref(),
        )))
    }

    /// `order_actors_live` from `GET /metrics`; `None` when absent or unreadable.
    pub async fn order_actors_live(&self) -> Option<f64> {
        parse_gauge(&self.metrics_text().await?, "order_actors_live")
    }

    /// The JetStream message counters of the process at the base URL, from `GET /metrics`;
    /// `None` when its metrics cannot be read.
    pub async fn message_counts(&self) -> Option<MessageCounts> {
        Some(MessageCounts::of_metrics(&self.metrics_text().await?))
    }

    /// `GET /metrics` of the process at the base URL, with a short timeout (it is sampled while
    /// the load runs).
    async fn metrics_text(&self) -> Option<String> {
        let response = self
            .client
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    /// Whether `GET /health/ready` answers 200 within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        matches!(
            self.client
                .get(format!("{}/health/ready", self.base))
                .timeout(timeout)
                .send()
                .await,
            Ok(r) if r.status() == StatusCode::OK
        )
    }

    /// `order_supervisor.armed_timers` of `GET /actors` (admin bearer token).
    pub async fn armed_timers(&self, token: &str) -> anyhow::Result<u64> {
        #[derive(Deserialize)]
        struct Overview {
            order_supervisor: Option<Supervisor>,
        }
        #[derive(Deserialize)]
        struct Supervisor {
            armed_timers: u64,
        }
        let response = self
            .client
            .get(format!("{}/actors", self.base))
            .bearer_auth(token)
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /actors: {}", response.status());
        }
        let overview: Overview = response.json().await?;
        overview
            .order_supervisor
            .map(|s| s.armed_timers)
            .context("GET /actors: this process does not run the order role")
    }
}

/// The kind of a free-text `cancel_reason`, so reasons can be counted: `out_of_stock`,
/// `payment_failed` (declined...), `payment_timeout`, `inventory_timeout`,
/// `reservation_expired`, `operator_cancel`, else `other: <text up to its first ':'>`.
pub(crate) fn classify(reason: Option<&str>) -> String {
    let Some(reason) = reason else {
        return "unknown".into();
    };
    let kind = if reason.starts_with("out of stock") {
        "out_of_stock"
    } else if reason.starts_with("payment failed: payment_timeout") {
        "payment_timeout"
    } else if reason.starts_with("payment failed") {
        "payment_failed"
    } else if reason.starts_with("inventory step timed out") {
        "inventory_timeout"
    } else if reason.starts_with("stock reservation expired") {
        "reservation_expired"
    } else if reason.starts_with("cancelled by operator") {
        "operator_cancel"
    } else {
        let head: String = reason
            .split(':')
            .next()
            .unwrap_or(reason)
            .chars()
            .take(60)
            .collect();
        return format!("other: {head}");
    };
    kind.into()
}

/// What one process sent through JetStream and received from it, summed over streams,
/// consumers and outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct MessageCounts {
    /// Outbox rows written (each becomes one published message).
    pub outbox_rows: f64,
    pub published: f64,
    pub delivered: f64,
    pub redelivered: f64,
    /// Commands and answers handed from actor to actor in the process, without the broker.
    pub handed_over: f64,
}

impl MessageCounts {
    fn of_metrics(text: &str) -> Self {
        Self {
            outbox_rows: sum_of(text, "outbox_rows_written_total"),
            published: sum_of(text, "jetstream_messages_published_total"),
            delivered: sum_of(text, "jetstream_messages_consumed_total"),
            redelivered: sum_of(text, "jetstream_redeliveries_total"),
            handed_over: sum_of(text, "postman_delivered_total"),
        }
    }

    /// The counts divided by `orders`.
    pub fn per(&self, orders: f64) -> Self {
        Self {
            outbox_rows: self.outbox_rows / orders,
            published: self.published / orders,
            delivered: self.delivered / orders,
            redelivered: self.redelivered / orders,
            handed_over: self.handed_over / orders,
        }
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            outbox_rows: self.outbox_rows - before.outbox_rows,
            published: self.published - before.published,
            delivered: self.delivered - before.delivered,
            redelivered: self.redelivered - before.redelivered,
            handed_over: self.handed_over - before.handed_over,
        }
    }
}

/// The sum of every series of one metric in Prometheus text (`name 3` and `name{...} 4`).
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.rsplit_once('}')?.1,
                None => rest,
            };
            value
                .strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// The value of an unlabelled sample `name value` in Prometheus text.
pub(crate) fn parse_gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The `wait=` query that asks the server to hold its answer (bounded as the server bounds it).
fn wait_query(wait: Duration) -> String {
    format!("wait={}ms", wait.as_millis().clamp(1, 30_000))
}

/// A 202 or 200 body as a placement: a 200 only comes with `?wait=`, for a terminal order.
fn placement_of(status: StatusCode, body: &[u8]) -> Placement {
    let Ok(placed) = serde_json::from_slice::<Placed>(body) else {
        return Placement::Failed;
    };
    match status_of(&placed.status, placed.cancel_reason.as_deref()) {
        done @ (Status::Completed | Status::Cancelled(_)) if status == StatusCode::OK => {
            Placement::Finished(done)
        }
        _ => Placement::Placed(placed.order_id),
    }
}

/// The `Retry-After` of a 429 in whole seconds, kept within 1..=60 (1 when absent or unreadable).
fn retry_after(response: &reqwest::Response) -> Duration {
    let seconds = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds.clamp(1, 60))
}

/// An order's status as the client classifies it.
fn status_of(status: &str, cancel_reason: Option<&str>) -> Status {
    match status {
        "COMPLETED" => Status::Completed,
        "CANCELLED" => Status::Cancelled(classify(cancel_reason)),
        other => Status::Running(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_counts_sum_every_series_of_their_metric_only() {
        let text = "# TYPE jetstream_messages_published_total counter\n\
            jetstream_messages_published_total{stream=\"orders\"} 10\n\
            jetstream_messages_published_total{stream=\"inventory\"} 5\n\
            jetstream_messages_published_totally_else 100\n\
            jetstream_messages_consumed_total{consumer=\"a\",outcome=\"ack\"} 7\n\
            jetstream_messages_consumed_total{consumer=\"b\",outcome=\"retry\"} 1\n\
            outbox_rows_written_total 16\n\
            postman_delivered_total{receiver=\"inventory\"} 3\n\
            postman_delivered_total{receiver=\"orders\"} 4\n";
        let counts = MessageCounts::of_metrics(text);
        assert_eq!(
            counts,
            MessageCounts {
                outbox_rows: 16.0,
                published: 15.0,
                delivered: 8.0,
                redelivered: 0.0,
                handed_over: 7.0,
            }
        );
        let later = MessageCounts {
            outbox_rows: 26.0,
            published: 25.0,
            delivered: 20.0,
            redelivered: 2.0,
            handed_over: 17.0,
        };
        assert_eq!(
            later.since(&counts),
            MessageCounts {
                outbox_rows: 10.0,
                published: 10.0,
                delivered: 12.0,
                redelivered: 2.0,
                handed_over: 10.0,
            }
        );
    }

    #[test]
    fn cancel_reasons_are_counted_by_kind() {
        for (text, kind) in [
            (
                "out of stock: MUG (requested 2, available 0)",
                "out_of_stock",
            ),
            (
                "payment failed: card_declined: Your card was declined.",
                "payment_failed",
            ),
            (
                "payment failed: payment_timeout: payment step timed out after 60s",
                "payment_timeout",
            ),
            ("inventory step timed out after 30s", "inventory_timeout"),
            (
                "stock reservation expired before the payment completed",
                "reservation_expired",
            ),
            ("cancelled by operator ann: duplicate", "operator_cancel"),
            ("something new: details", "other: something new"),
        ] {
            assert_eq!(classify(Some(text)), kind);
        }
        assert_eq!(classify(None), "unknown");
    }

    #[test]
    fn gauges_are_read_from_prometheus_text() {
        let text = "# HELP order_actors_live Order saga actors alive\n# TYPE order_actors_live gauge\norder_actors_live_total 9\norder_actors_live 42\nother 1\n";
        assert_eq!(parse_gauge(text, "order_actors_live"), Some(42.0));
        assert_eq!(
            parse_gauge("order_actors_live NaNx\n", "order_actors_live"),
            None
        );
        assert_eq!(parse_gauge("", "order_actors_live"), None);
    }
}
