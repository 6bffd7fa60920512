//! `order_snapshot_conflicts_total` counts each time a saga's commit met a version another writer
//! had already moved on. The multi-instance tests assert it stays at 0 outside a takeover; this
//! test shows it does count, so that 0 means none happened rather than a counter never touched.
//!
//! Its own test binary: it installs the process's one metrics recorder.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use actors::orders::Delivery;
use actors::saga::{OrderStatus, SagaEvent};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use common::new_order;
use common::orders::{advance_elsewhere, spawn_orders};
use common::{pending, succeeded};

fn conflicts(snapshotter: &Snapshotter) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == actors::metrics::SNAPSHOT_CONFLICTS)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("not a counter: {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn a_commit_that_meets_a_version_moved_on_elsewhere_is_counted_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;
    assert_eq!(conflicts(&snapshotter), 0, "no conflict on the way so far");

    // Another writer moves the order on; the actor's cached version is stale.
    advance_elsewhere(&orders.store, id, &pending("pi_1")).await;
    let delivery = orders.deliver(id, succeeded("pi_1")).await;

    assert_eq!(delivery, Delivery::Applied(OrderStatus::Completed));
    assert_eq!(orders.store.conflicts(), 1);
    assert_eq!(conflicts(&snapshotter), 1);
}
