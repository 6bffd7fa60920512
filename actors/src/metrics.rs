//! Metric names, in one place, with their descriptions. Recorded through the `metrics` facade
//! (no exporter here: the binary installs Prometheus and serves `/metrics`).

pub const SAGA_STARTED: &str = "order_saga_started_total";
pub const SAGA_COMPLETED: &str = "order_saga_completed_total";
pub const SAGA_FAILED: &str = "order_saga_failed_total";
pub const SAGA_COMPENSATED: &str = "order_saga_compensated_total";
pub const SAGA_DURATION: &str = "order_saga_duration_seconds";
pub const SAGA_TIMEOUTS: &str = "order_saga_step_timeouts_total";

/// Registers descriptions (call once, after installing a recorder).
pub fn describe() {
    metrics::describe_counter!(SAGA_STARTED, "Order sagas started (orders placed)");
    metrics::describe_counter!(SAGA_COMPLETED, "Order sagas that ended COMPLETED");
    metrics::describe_counter!(
        SAGA_FAILED,
        "Order sagas that ended CANCELLED (out of stock, payment failed, timeout, expiry)"
    );
    metrics::describe_counter!(
        SAGA_COMPENSATED,
        "Order sagas that started compensation (stock release after a payment failure or timeout)"
    );
    metrics::describe_histogram!(
        SAGA_DURATION,
        metrics::Unit::Seconds,
        "Time from placement to a terminal status"
    );
    metrics::describe_counter!(SAGA_TIMEOUTS, "Saga steps that timed out, by step");
    metrics::describe_counter!(
        crate::payments::FAILURE_STREAK_ALERTS,
        "Payment failure streaks that raised an alert"
    );
}
