//! Prometheus metrics: one process-wide recorder (the `metrics` facade records everywhere, this
//! renders), served as text at `GET /metrics`. Installed once per process; later calls (several
//! applications in one test binary) share it.
//!
//! Counters and histograms are recorded where things happen. Figures that only the database
//! knows (outbox backlog, active reservations, stuck sagas, the lowest stocks) are sampled here
//! every few seconds, so a scrape never runs queries and every process reports the same truth.
//! Gauges not refreshed for a minute are dropped: that is how a SKU that is no longer among the
//! lowest stocks leaves `/metrics`, which keeps the `sku` label bounded.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

pub const OUTBOX_LAG: &str = "outbox_lag_seconds";
pub const OUTBOX_PENDING: &str = "outbox_pending_messages";
pub const RESERVATIONS_ACTIVE: &str = "inventory_reservations_active";
pub const STOCK_AVAILABLE: &str = "inventory_stock_available";
pub const SAGAS_STUCK: &str = "order_sagas_stuck";
pub const READY: &str = "ordersaga_ready";
pub const DEPENDENCY_UP: &str = "ordersaga_dependency_up";
pub const PLACEMENTS_REFUSED_BUSY: &str = "order_placements_refused_busy_total";
pub const OWNER_REQUESTS: &str = "cluster_owner_requests_total";

/// How many of the lowest-stock SKUs are exported with a `sku` label.
pub const STOCK_SKUS_EXPORTED: i64 = 50;

/// How often the database-derived gauges are refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Buckets for every `*_seconds` histogram: from 1 ms to 2 minutes (saga durations reach the
/// payment step timeout).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for batch sizes (how many requests one transaction carried).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Samples the database every few seconds until `shutdown`.
pub async fn sample_store(pool: sqlx::PgPool, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        sample_once(&pool).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// One round of samples; a failed query leaves its gauges as they were (and, after a minute
/// without refresh, gone: an absent series is what an outage should look like).
pub async fn sample_once(pool: &sqlx::PgPool) {
    let outbox: Result<(i64, f64), sqlx::Error> = sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM outbox",
    )
    .fetch_one(pool)
    .await;
    if let Ok((pending, lag)) = outbox {
        metrics::gauge!(OUTBOX_PENDING).set(pending as f64);
        metrics::gauge!(OUTBOX_LAG).set(lag);
    }
    let active: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT count(*) FROM stock_reservations WHERE status = 'RESERVED'")
            .fetch_one(pool)
            .await;
    if let Ok(active) = active {
        metrics::gauge!(RESERVATIONS_ACTIVE).set(active as f64);
    }
    // Live sagas past their step's deadline. The status condition adds nothing to the answer
    // (terminal orders have no deadline) but lets PostgreSQL read the small index of live sagas
    // instead of every order ever placed, from every process every few seconds.
    let stuck: Result<i64, sqlx::Error> = sqlx::query_scalar(
        "SELECT count(*) FROM order_snapshots
         WHERE status NOT IN ('COMPLETED', 'CANCELLED') AND deadline < now()",
    )
    .fetch_one(pool)
    .await;
    if let Ok(stuck) = stuck {
        metrics::gauge!(SAGAS_STUCK).set(stuck as f64);
    }
    let lowest: Result<Vec<(String, i64)>, sqlx::Error> = sqlx::query_as(
        "SELECT sku, on_hand - reserved FROM products ORDER BY on_hand - reserved, sku LIMIT $1",
    )
    .bind(STOCK_SKUS_EXPORTED)
    .fetch_all(pool)
    .await;
    if let Ok(lowest) = lowest {
        for (sku, available) in lowest {
            metrics::gauge!(STOCK_AVAILABLE, "sku" => sku).set(available as f64);
        }
    }
}

/// Records a readiness verdict (from `GET /health/ready` and the periodic probe).
pub fn record_readiness(ready: bool, dependencies: &[(&'static str, bool)]) {
    metrics::gauge!(READY).set(if ready { 1.0 } else { 0.0 });
    for (dependency, up) in dependencies {
        metrics::gauge!(DEPENDENCY_UP, "dependency" => *dependency).set(if *up {
            1.0
        } else {
            0.0
        });
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder handle, installing it on first use. `None` if another recorder was
/// installed first (metrics then go there, and `/metrics` says so).
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(actors::metrics::RESERVATION_BATCH.into()),
                    BATCH_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(actors::metrics::DATABASE_BATCH.into()),
                    BATCH_BUCKETS,
                )
                .ok()?
                .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(60)))
                .install_recorder()
                .ok()?;
            let upkeep = handle.clone();
            // Histograms need periodic upkeep to bound their memory.
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            describe();
            register_alerting_counters();
            Some(handle)
        })
        .clone()
}

/// Creates at 0 the counters that alert rules watch with `increase()`: a series that first
/// appears at 1 shows no increase, so the first event after a start would go unnoticed.
fn register_alerting_counters() {
    use actors::metrics as m;
    for name in [
        actors::payments::FAILURE_STREAK_ALERTS,
        m::LOW_STOCK_ALERTS,
        m::COMMIT_SHORTFALL,
        m::RESERVATIONS_EXPIRED,
        m::JETSTREAM_PUBLISH_FAILURES,
        crate::http::server::CONNECTIONS_REJECTED,
        crate::http::REQUESTS_SHED,
    ] {
        metrics::counter!(name).increment(0);
    }
    for consumer in adapters::nats::ALL_CONSUMERS {
        metrics::counter!(m::JETSTREAM_CONSUMED, "consumer" => consumer.durable, "outcome" => "dead_letter")
            .increment(0);
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    actors::metrics::describe();
    describe_counter!(
        PLACEMENTS_REFUSED_BUSY,
        "Orders refused with 503 because too many commands were in flight in this process"
    );
    describe_counter!(
        OWNER_REQUESTS,
        "HTTP requests sent to the owner of their order's partition, by outcome: answered, unavailable (answered 503, so handled here), unanswered (handled here)"
    );
    describe_counter!(
        "http_requests_total",
        "HTTP requests by method, route template and status"
    );
    describe_counter!(
        crate::http::server::CONNECTIONS_ACCEPTED,
        "HTTP connections accepted"
    );
    describe_counter!(
        crate::http::server::CONNECTIONS_CLOSED,
        "HTTP connections closed, by reason: client, header_timeout, idle_timeout, error"
    );
    describe_counter!(
        crate::http::server::CONNECTIONS_REJECTED,
        "HTTP connections answered 503 past HTTP_MAX_CONNECTIONS"
    );
    describe_counter!(
        crate::http::REQUESTS_SHED,
        "HTTP requests answered 503 past HTTP_MAX_REQUESTS_IN_FLIGHT"
    );
    describe_counter!(
        crate::http::REQUEST_TIMEOUTS,
        "HTTP requests cut by a deadline, by phase: body (408) or answer (503)"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    describe_gauge!(
        OUTBOX_LAG,
        Unit::Seconds,
        "Age of the oldest message waiting in the outbox"
    );
    describe_gauge!(OUTBOX_PENDING, "Messages waiting in the outbox");
    describe_gauge!(
        RESERVATIONS_ACTIVE,
        "Stock reservations held (RESERVED), all SKUs"
    );
    describe_gauge!(
        STOCK_AVAILABLE,
        "Units available (on hand minus reserved) of the lowest-stock SKUs"
    );
    describe_gauge!(
        SAGAS_STUCK,
        "Live sagas whose current step is past its deadline"
    );
    describe_gauge!(READY, "1 when PostgreSQL, NATS (and Stripe) answer, else 0");
    describe_gauge!(
        DEPENDENCY_UP,
        "1 when the dependency answered its last probe"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_streak_alert_counter_is_rendered_for_prometheus() {
        let handle = super::handle().expect("recorder");
        metrics::counter!(actors::payments::FAILURE_STREAK_ALERTS).increment(1);
        let text = handle.render();
        assert!(
            text.contains("# TYPE payment_failure_streak_alerts_total counter"),
            "{text:?}"
        );
        assert!(
            text.contains("payment_failure_streak_alerts_total 1"),
            "{text:?}"
        );
    }

    #[test]
    fn seconds_metrics_are_histograms_with_buckets() {
        let handle = super::handle().expect("recorder");
        metrics::histogram!("test_probe_duration_seconds").record(0.003);
        let text = handle.render();
        assert!(
            text.contains("# TYPE test_probe_duration_seconds histogram"),
            "{text:?}"
        );
        assert!(
            text.contains("test_probe_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text:?}"
        );
    }
}
