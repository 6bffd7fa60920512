//! How the order actors recover: unknown orders, version conflicts with other processes, store
//! outages, commits of unknown outcome and crashed actors.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use actors::domain::OrderId;
use actors::events::subjects;
use actors::orders::{Delivery, SagaError};
use actors::ports::StoreError;
use actors::saga::{OrderStatus, SagaEvent};

use common::new_order;
use common::orders::{advance_elsewhere, spawn_orders};
use common::{pending, succeeded};

#[tokio::test]
async fn an_event_for_an_unknown_order_is_reported_as_unknown() {
    let orders = spawn_orders().await;
    let id = OrderId::new();

    let result = orders.handle.deliver(id, SagaEvent::StockReserved).await;

    assert_eq!(result, Err(SagaError::UnknownOrder(id)));
    assert_eq!(orders.store.get(id), None, "nothing is invented");
    assert_eq!(orders.store.commits_written(), 0);
}

#[tokio::test]
async fn an_event_for_an_unknown_order_leaves_no_actor_behind() {
    let orders = spawn_orders().await;
    for _ in 0..3 {
        let id = OrderId::new();
        let result = orders.handle.deliver(id, SagaEvent::StockReserved).await;
        assert_eq!(result, Err(SagaError::UnknownOrder(id)));
    }
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn a_version_conflict_makes_the_actor_reload_and_decide_on_the_fresh_state() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;
    // Our actor caches v2 (STOCK_RESERVED); another process moves the order on to v3.
    advance_elsewhere(&orders.store, id, &pending("pi_1")).await;
    assert_eq!(orders.store.stored(id).version, 3);

    // On the stale v2 this decides "complete as v3", which the store refuses.
    let delivery = orders.deliver(id, succeeded("pi_1")).await;

    assert_eq!(delivery, Delivery::Applied(OrderStatus::Completed));
    assert_eq!(orders.store.conflicts(), 1);
    let stored = orders.store.stored(id);
    assert_eq!(stored.status, OrderStatus::Completed);
    assert_eq!(stored.version, 4, "decided on the fresh v3");
    let history: Vec<OrderStatus> = stored.history.iter().map(|h| h.status).collect();
    assert_eq!(
        history,
        vec![
            OrderStatus::Pending,
            OrderStatus::StockReserved,
            OrderStatus::PaymentProcessing,
            OrderStatus::Completed
        ],
        "the other process's transition was kept, not overwritten"
    );
    assert_eq!(
        orders.store.subjects(id),
        vec![
            subjects::ORDER_CREATED,
            subjects::PAYMENT_REQUESTED,
            subjects::ORDER_CONFIRMED
        ]
    );
}

#[tokio::test]
async fn a_conflicting_stale_decision_is_dropped_when_the_fresh_state_has_finished() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;
    // Another process completes the order while our actor still caches STOCK_RESERVED.
    advance_elsewhere(&orders.store, id, &succeeded("pi_1")).await;
    let completed = orders.store.stored(id);

    // On the stale snapshot this would move the order to PAYMENT_PROCESSING.
    let delivery = orders.deliver(id, pending("pi_1")).await;

    assert_eq!(delivery, Delivery::Ignored("the order is finished"));
    assert_eq!(orders.store.conflicts(), 1);
    assert_eq!(orders.store.stored(id), completed);
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn an_event_ignored_on_a_cached_snapshot_is_judged_again_on_a_fresh_read() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    let loads = orders.store.loads();
    // Our actor caches v1 (PENDING); another process records the reservation.
    advance_elsewhere(&orders.store, id, &SagaEvent::StockReserved).await;

    // PAYMENT_PENDING means nothing to a PENDING order, but fits the fresh STOCK_RESERVED.
    let delivery = orders.deliver(id, pending("pi_1")).await;

    assert_eq!(delivery, Delivery::Applied(OrderStatus::PaymentProcessing));
    assert_eq!(orders.store.loads(), loads + 1);
    let stored = orders.store.stored(id);
    assert_eq!(stored.version, 3);
    assert_eq!(stored.status, OrderStatus::PaymentProcessing);
}

#[tokio::test]
async fn a_store_outage_is_reported_and_the_next_delivery_succeeds() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    let placed = orders.place(order).await;

    orders.store.set_unavailable(true);
    let failed = orders.handle.deliver(id, SagaEvent::StockReserved).await;
    assert!(
        matches!(failed, Err(SagaError::Store(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    assert_eq!(orders.store.stored(id), placed, "nothing was written");

    orders.store.set_unavailable(false);
    let retried = orders.handle.deliver(id, SagaEvent::StockReserved).await;

    assert_eq!(retried, Ok(Delivery::Applied(OrderStatus::StockReserved)));
    assert_eq!(orders.store.stored(id).version, 2);
    assert_eq!(
        orders.store.subjects(id),
        vec![subjects::ORDER_CREATED, subjects::PAYMENT_REQUESTED]
    );
}

#[tokio::test]
async fn placing_during_a_store_outage_fails_and_a_retry_places_the_order() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;

    orders.store.set_unavailable(true);
    let failed = orders.handle.place(order.clone()).await;
    assert!(
        matches!(failed, Err(SagaError::Store(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    assert_eq!(orders.store.get(id), None);

    orders.store.set_unavailable(false);
    let placed = orders.place(order).await;
    assert_eq!(placed.status, OrderStatus::Pending);
    assert_eq!(orders.store.subjects(id), vec![subjects::ORDER_CREATED]);
}

#[tokio::test]
async fn after_a_commit_of_unknown_outcome_the_actor_rereads_instead_of_trusting_its_cache() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;

    // The commit lands, but the actor is told it failed.
    orders.store.fail_after_next_commit();
    let failed = orders.handle.deliver(id, SagaEvent::StockReserved).await;
    assert!(
        matches!(failed, Err(SagaError::Store(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    let loads = orders.store.loads();

    // The broker redelivers: the fresh read shows it was already applied.
    let redelivered = orders.deliver(id, SagaEvent::StockReserved).await;

    assert!(
        matches!(redelivered, Delivery::Ignored(_)),
        "{redelivered:?}"
    );
    assert_eq!(orders.store.loads(), loads + 1, "reloaded before deciding");
    assert_eq!(orders.store.conflicts(), 0, "never decided on the stale v1");
    assert_eq!(
        orders.store.subjects(id),
        vec![subjects::ORDER_CREATED, subjects::PAYMENT_REQUESTED],
        "payment requested exactly once"
    );
}

#[tokio::test]
async fn a_crashed_order_actor_is_forgotten_and_the_next_message_rehydrates_a_new_one() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;

    orders.store.panic_on_next_commit();
    let crashed = orders.handle.deliver(id, SagaEvent::StockReserved).await;
    assert!(
        matches!(crashed, Err(SagaError::ActorUnavailable(_))),
        "{crashed:?}"
    );
    orders.wait_until_no_actor_is_live().await;

    let retried = orders.handle.deliver(id, SagaEvent::StockReserved).await;

    assert_eq!(retried, Ok(Delivery::Applied(OrderStatus::StockReserved)));
    assert_eq!(orders.live_orders().await, 1, "the supervisor survived");
}
