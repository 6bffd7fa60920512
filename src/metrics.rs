//! Prometheus metrics: one process-wide recorder (the `metrics` facade records everywhere, this
//! renders), served as text at `GET /metrics`. Installed once per process; later calls (several
//! applications in one test binary) share it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
