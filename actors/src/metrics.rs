//! Metric names, in one place, with their descriptions. Recorded through the `metrics` facade
//! (no exporter here: the binary installs Prometheus and serves `/metrics`). Adapters record
//! their own transport figures under the names listed here too, so `describe()` documents the
//! whole `/metrics` surface and the runbook has one file to point at.

pub const SAGA_STARTED: &str = "order_saga_started_total";
pub const SAGA_COMPLETED: &str = "order_saga_completed_total";
pub const SAGA_FAILED: &str = "order_saga_failed_total";
pub const SAGA_COMPENSATED: &str = "order_saga_compensated_total";
pub const SNAPSHOT_CONFLICTS: &str = "order_snapshot_conflicts_total";
pub const SAGA_DURATION: &str = "order_saga_duration_seconds";
pub const SAGA_TIMEOUTS: &str = "order_saga_step_timeouts_total";
pub const STEP_DURATION: &str = "order_saga_step_duration_seconds";
pub const STEP_RETRIES: &str = "order_saga_step_retries_total";
pub const STEP_RESENDS: &str = "order_saga_step_resends_total";
pub const ORDER_ACTORS_LIVE: &str = "order_actors_live";
pub const ACTOR_RESTARTS: &str = "actor_restarts_total";
pub const MAILBOX_DEPTH: &str = "actor_mailbox_depth";
pub const RESERVATIONS_EXPIRED: &str = "inventory_reservations_expired_total";
pub const LOW_STOCK_ALERTS: &str = "inventory_low_stock_alerts_total";
pub const COMMIT_SHORTFALL: &str = "inventory_commit_shortfall_total";
pub const OUTBOX_WRITTEN: &str = "outbox_rows_written_total";
pub const JETSTREAM_PUBLISHED: &str = "jetstream_messages_published_total";
pub const JETSTREAM_PUBLISH_FAILURES: &str = "jetstream_publish_failures_total";
pub const JETSTREAM_CONSUMED: &str = "jetstream_messages_consumed_total";
pub const JETSTREAM_REDELIVERIES: &str = "jetstream_redeliveries_total";
pub const WEBHOOK_EVENTS: &str = "stripe_webhook_events_total";
pub const RESERVATION_BATCH: &str = "inventory_reservation_batch_size";
pub const DATABASE_BATCH: &str = "database_batch_size";
pub const CLUSTER_PARTITIONS_OWNED: &str = "cluster_partitions_owned";
pub const CLUSTER_PARTITION_CHANGES: &str = "cluster_partition_changes_total";
pub const CLUSTER_LEASE_RENEW: &str = "cluster_lease_renew_seconds";
pub const CLUSTER_FENCED_WRITES: &str = "cluster_fenced_writes_total";

/// Mailbox labels (`actor_mailbox_depth{actor=...}`): a fixed set, never an id.
pub const ORDER_SUPERVISOR: &str = "order_supervisor";
pub const ORDER_SAGA: &str = "order_saga";
pub const INVENTORY_SHARD: &str = "inventory_shard";

/// Counts one Stripe webhook event by its (bounded) type label and result.
pub fn webhook_event(kind: &'static str, result: &'static str) {
    metrics::counter!(WEBHOOK_EVENTS, "type" => kind, "result" => result).increment(1);
}

/// A message is on its way into `actor`'s mailbox.
pub fn mailbox_enqueued(actor: &'static str) {
    metrics::gauge!(MAILBOX_DEPTH, "actor" => actor).increment(1.0);
}

/// A message left `actor`'s mailbox (handled, or never delivered).
pub fn mailbox_dequeued(actor: &'static str) {
    metrics::gauge!(MAILBOX_DEPTH, "actor" => actor).decrement(1.0);
}

/// Registers descriptions (call once, after installing a recorder).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SAGA_STARTED, "Order sagas started (orders placed)");
    describe_counter!(SAGA_COMPLETED, "Order sagas that ended COMPLETED");
    describe_counter!(
        SAGA_FAILED,
        "Order sagas that ended CANCELLED (out of stock, payment failed, timeout, expiry)"
    );
    describe_counter!(
        SAGA_COMPENSATED,
        "Order sagas that started compensation (stock release after a payment failure or timeout)"
    );
    describe_counter!(
        SNAPSHOT_CONFLICTS,
        "Snapshot writes that found the order moved on (another actor of it wrote first): ~0 when each order has one live actor, some during a takeover"
    );
    describe_histogram!(
        SAGA_DURATION,
        Unit::Seconds,
        "Time from placement to a terminal status"
    );
    describe_counter!(SAGA_TIMEOUTS, "Saga steps that timed out, by step");
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Time a saga spent in a step (inventory, payment, compensation), recorded when it leaves it"
    );
    describe_counter!(
        STEP_RETRIES,
        "Step retries by step: redelivered messages, re-fired timers and operator retries"
    );
    describe_counter!(
        OUTBOX_WRITTEN,
        "Outbox rows written with the state changes they report (each is published once)"
    );
    describe_counter!(
        STEP_RESENDS,
        "Pending commands a saga sent again because their answer did not come (or at recovery), by step"
    );
    describe_gauge!(
        crate::postman::IN_FLIGHT,
        "Commands handed to a receiver in this process and not answered yet, by receiver"
    );
    describe_counter!(
        crate::postman::DELIVERED,
        "Commands and answers handed straight to an actor in this process (no broker), by receiver"
    );
    describe_gauge!(ORDER_ACTORS_LIVE, "Order saga actors alive in this process");
    describe_counter!(
        ACTOR_RESTARTS,
        "Actors that crashed and were replaced (order actors rehydrate from their snapshot)"
    );
    describe_gauge!(
        MAILBOX_DEPTH,
        "Messages waiting in actor mailboxes, summed per kind of actor"
    );
    describe_counter!(
        RESERVATIONS_EXPIRED,
        "Stock reservations released because their TTL passed"
    );
    describe_counter!(
        LOW_STOCK_ALERTS,
        "Products whose available stock fell to their low-stock threshold"
    );
    describe_counter!(
        COMMIT_SHORTFALL,
        "Confirmed orders whose expired reservation could not be taken again (needs an operator)"
    );
    describe_counter!(
        JETSTREAM_PUBLISHED,
        "Outbox messages published and acknowledged by JetStream, by stream"
    );
    describe_counter!(
        JETSTREAM_PUBLISH_FAILURES,
        "Outbox relay rounds that failed to publish (retried)"
    );
    describe_counter!(
        JETSTREAM_CONSUMED,
        "Messages handled by a durable consumer, by consumer and outcome (ack, retry, dead_letter)"
    );
    describe_counter!(
        JETSTREAM_REDELIVERIES,
        "Messages delivered more than once, by consumer"
    );
    describe_counter!(
        WEBHOOK_EVENTS,
        "Stripe webhook events by type and result (endpoint: accepted, duplicate, rejected, no_change; worker: routed, no_change, ignored, failed, unreadable)"
    );
    describe_histogram!(
        RESERVATION_BATCH,
        "Reservations decided per inventory transaction (a shard's batch)"
    );
    describe_histogram!(
        DATABASE_BATCH,
        "Requests per statement of a batching writer or reader, by writer: snapshots, charges, idempotency_claims, price_reads"
    );
    describe_counter!(
        crate::payments::FAILURE_STREAK_ALERTS,
        "Payment failure streaks that raised an alert"
    );
    describe_gauge!(
        CLUSTER_PARTITIONS_OWNED,
        "Partitions this instance holds the lease of"
    );
    describe_counter!(
        CLUSTER_PARTITION_CHANGES,
        "Partitions that changed hands here, by change (acquired, released in a hand-off, lost to a takeover or a lapsed lease)"
    );
    describe_histogram!(
        CLUSTER_LEASE_RENEW,
        Unit::Seconds,
        "Time to heartbeat and renew this instance's partition leases"
    );
    describe_counter!(
        CLUSTER_FENCED_WRITES,
        "Writes refused because this instance no longer held the partition at the epoch it acquired, by store"
    );
}
