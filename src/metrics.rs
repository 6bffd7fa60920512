//! Prometheus metrics: one process-wide recorder (the `metrics` facade records everywhere, this
//! renders), served as text at `GET /metrics`. Installed once per process; later calls (several
//! applications in one test binary) share it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const OUTBOX_LAG: &str = "outbox_lag_seconds";
pub const OUTBOX_PENDING: &str = "outbox_pending_messages";

/// Samples the outbox every few seconds: how many messages wait and how old the oldest is.
pub async fn sample_outbox(pool: sqlx::PgPool, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let sample: Result<(i64, f64), sqlx::Error> = sqlx::query_as(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM outbox",
        )
        .fetch_one(&pool)
        .await;
        if let Ok((pending, lag)) = sample {
            metrics::gauge!(OUTBOX_PENDING).set(pending as f64);
            metrics::gauge!(OUTBOX_LAG).set(lag);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder handle, installing it on first use. `None` if another recorder was
/// installed first (metrics then go there, and `/metrics` says so).
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            let upkeep = handle.clone();
            // Histograms need periodic upkeep to bound their memory.
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            actors::metrics::describe();
            metrics::describe_counter!(
                "http_requests_total",
                "HTTP requests by method, route template and status"
            );
            metrics::describe_histogram!(
                "http_request_duration_seconds",
                metrics::Unit::Seconds,
                "HTTP request latency by method and route template"
            );
            metrics::describe_gauge!(
                OUTBOX_LAG,
                metrics::Unit::Seconds,
                "Age of the oldest message waiting in the outbox"
            );
            metrics::describe_gauge!(OUTBOX_PENDING, "Messages waiting in the outbox");
            Some(handle)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_streak_alert_counter_is_rendered_for_prometheus() {
        let handle = super::handle().unwrap_or_else(|| panic!("recorder"));
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
}
