//! The order supervisor and its saga actors, driven through the supervisor handle against an
//! in-memory snapshot store: placement, event delivery, late payments and status waiters.
//! Conflicts, outages and crashes are in `order_recovery.rs`.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use actors::events::{EventBody, OrderCreated, PaymentRefundRequested, subjects};
use actors::orders::Delivery;
use actors::ports::OrderSnapshotStore;
use actors::saga::{self, OrderStatus, PaymentStatus, SagaEvent};

use common::orders::spawn_orders;
use common::{TIMEOUT, customer, eur, new_order, out_of_stock, pending, succeeded, t0};

#[tokio::test]
async fn a_placed_order_is_stored_pending_with_order_created_in_its_outbox() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;

    let placed = orders.place(order.clone()).await;

    assert_eq!(placed.status, OrderStatus::Pending);
    assert_eq!(placed.version, 1);
    assert_eq!(placed.order_id, id);
    assert_eq!(orders.store.get(id), Some(placed.clone()));
    assert_eq!(orders.store.subjects(id), vec![subjects::ORDER_CREATED]);
    let outbox = orders.store.outbox(id);
    let created = &outbox[0];
    assert_eq!(created.correlation_id, order.correlation_id);
    assert_eq!(
        created.body,
        EventBody::OrderCreated(OrderCreated {
            customer_id: order.customer_id,
            lines: order.lines,
            amount: order.amount,
        })
    );
    assert_eq!(
        orders.live_orders().await,
        1,
        "a live order keeps its actor"
    );
}

#[tokio::test]
async fn placing_the_same_order_twice_returns_the_first_and_writes_once() {
    let orders = spawn_orders().await;
    let first = new_order();
    let id = first.order_id;
    let first_state = orders.place(first.clone()).await;

    let mut again = first.clone();
    again.customer_id = customer("someone-else");
    again.amount = eur(1);
    let second_state = orders.place(again).await;

    assert_eq!(second_state, first_state);
    assert_eq!(orders.store.stored(id).customer_id, customer("c-1"));
    assert_eq!(orders.store.creates_written(), 1);
    assert_eq!(orders.store.subjects(id), vec![subjects::ORDER_CREATED]);
}

#[tokio::test]
async fn placing_an_order_another_process_already_stored_returns_theirs() {
    let orders = spawn_orders().await;
    let theirs = saga::start(new_order(), t0()).next;
    let id = theirs.order_id;
    let inserted = orders.store.create(&theirs, &[]).await;
    assert_eq!(inserted, Ok(true));

    let mut ours = new_order();
    ours.order_id = id;
    ours.customer_id = customer("latecomer");
    let placed = orders.place(ours).await;

    assert_eq!(placed, theirs);
    assert_eq!(orders.store.stored(id), theirs);
    assert!(
        orders.store.subjects(id).is_empty(),
        "nothing written twice"
    );
}

#[tokio::test]
async fn losing_a_placement_race_returns_the_winners_order() {
    let orders = spawn_orders().await;
    let theirs = saga::start(new_order(), t0()).next;
    let id = theirs.order_id;
    let inserted = orders.store.create(&theirs, &[]).await;
    assert_eq!(inserted, Ok(true));
    // Placement inserts without reading first; our insert loses and their order is returned.

    let mut ours = new_order();
    ours.order_id = id;
    ours.customer_id = customer("latecomer");
    let placed = orders.place(ours).await;

    assert_eq!(placed, theirs);
    assert_eq!(orders.store.stored(id).customer_id, customer("c-1"));
    assert!(orders.store.subjects(id).is_empty());
}

#[tokio::test]
async fn events_delivered_through_the_supervisor_drive_the_order_to_completed_and_the_actor_stops()
{
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    assert_eq!(orders.live_orders().await, 1);

    assert_eq!(
        orders.deliver(id, SagaEvent::StockReserved).await,
        Delivery::Applied(OrderStatus::StockReserved)
    );
    assert_eq!(
        orders.deliver(id, pending("pi_1")).await,
        Delivery::Applied(OrderStatus::PaymentProcessing)
    );
    assert_eq!(
        orders.deliver(id, succeeded("pi_1")).await,
        Delivery::Applied(OrderStatus::Completed)
    );

    let stored = orders.store.stored(id);
    assert_eq!(stored.status, OrderStatus::Completed);
    assert_eq!(stored.version, 4);
    assert_eq!(
        stored
            .payment
            .as_ref()
            .map(|p| (p.status, p.reference.clone())),
        Some((PaymentStatus::Succeeded, Some("pi_1".to_owned())))
    );
    assert_eq!(
        orders.store.subjects(id),
        vec![
            subjects::ORDER_CREATED,
            subjects::PAYMENT_REQUESTED,
            subjects::ORDER_CONFIRMED
        ]
    );
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn duplicates_queued_behind_the_final_event_are_answered_not_dropped() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;

    // Enqueue the final event and its redeliveries back to back, before any is answered.
    let answers: Vec<_> = (0..5)
        .map(|_| orders.handle.enqueue(id, succeeded("pi_1")))
        .collect();
    let mut results = Vec::new();
    for answer in answers {
        results.push(answer.await);
    }

    assert_eq!(
        results[0],
        Ok(Delivery::Applied(OrderStatus::Completed)),
        "{results:?}"
    );
    for result in &results[1..] {
        assert!(
            matches!(result, Ok(Delivery::Ignored(_))),
            "a duplicate must be acknowledged as ignored, got {result:?}"
        );
    }
    let confirmations = orders
        .store
        .subjects(id)
        .into_iter()
        .filter(|s| *s == subjects::ORDER_CONFIRMED)
        .count();
    assert_eq!(confirmations, 1);
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn a_late_event_for_a_finished_order_rehydrates_from_the_snapshot_and_is_ignored() {
    let orders = spawn_orders().await;
    let id = orders.completed_order().await;
    orders.wait_until_no_actor_is_live().await;
    let before = orders.store.stored(id);
    let loads = orders.store.loads();
    let outbox = orders.store.subjects(id);

    let delivery = orders.deliver(id, succeeded("pi_1")).await;

    assert_eq!(delivery, Delivery::Ignored("the order is finished"));
    assert_eq!(
        orders.store.loads(),
        loads + 1,
        "a fresh actor read the snapshot"
    );
    assert_eq!(orders.store.stored(id), before);
    assert_eq!(orders.store.subjects(id), outbox);
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn a_payment_succeeding_after_cancellation_is_recorded_for_refund_by_a_rehydrated_actor() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    assert_eq!(
        orders.deliver(id, out_of_stock()).await,
        Delivery::Applied(OrderStatus::Cancelled)
    );
    orders.wait_until_no_actor_is_live().await;

    let delivery = orders.deliver(id, succeeded("pi_late")).await;

    assert_eq!(delivery, Delivery::Applied(OrderStatus::Cancelled));
    let stored = orders.store.stored(id);
    assert_eq!(stored.status, OrderStatus::Cancelled);
    assert_eq!(
        stored.late_payment.map(|l| l.reference),
        Some("pi_late".to_owned())
    );
    assert_eq!(
        orders.store.subjects(id),
        vec![
            subjects::ORDER_CREATED,
            subjects::ORDER_CANCELLED,
            subjects::PAYMENT_REFUND_REQUESTED
        ]
    );
    let outbox = orders.store.outbox(id);
    assert_eq!(
        outbox[2].body,
        EventBody::PaymentRefundRequested(PaymentRefundRequested {
            payment_reference: "pi_late".into(),
            amount: eur(1000),
        }),
        "the whole order amount is given back"
    );
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn a_refund_of_a_late_payment_is_recorded_once_on_the_cancelled_order() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, out_of_stock()).await;
    orders.deliver(id, succeeded("pi_late")).await;
    let refunded = |refund_id: &str| SagaEvent::PaymentRefunded {
        reference: "pi_late".into(),
        refund_id: refund_id.into(),
    };

    let delivery = orders.deliver(id, refunded("re_1")).await;
    let duplicate = orders.deliver(id, refunded("re_2")).await;
    let stranger = orders
        .deliver(
            id,
            SagaEvent::PaymentRefunded {
                reference: "pi_other".into(),
                refund_id: "re_3".into(),
            },
        )
        .await;

    assert_eq!(delivery, Delivery::Applied(OrderStatus::Cancelled));
    assert_eq!(duplicate, Delivery::Ignored("refund already recorded"));
    assert!(matches!(stranger, Delivery::Ignored(_)), "{stranger:?}");
    let late = orders
        .store
        .stored(id)
        .late_payment
        .expect("no late payment");
    assert_eq!(late.refund_id.as_deref(), Some("re_1"));
    assert_eq!(late.refunded_at, Some(t0()));
    assert_eq!(
        orders.store.subjects(id),
        vec![
            subjects::ORDER_CREATED,
            subjects::ORDER_CANCELLED,
            subjects::PAYMENT_REFUND_REQUESTED
        ],
        "recording a refund publishes nothing"
    );
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn a_payment_canceled_by_the_provider_releases_stock_then_cancels_the_order() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;
    orders.deliver(id, pending("pi_1")).await;

    let canceled = orders
        .deliver(
            id,
            SagaEvent::PaymentCanceled {
                reference: "pi_1".into(),
            },
        )
        .await;
    assert_eq!(canceled, Delivery::Applied(OrderStatus::PaymentProcessing));
    let released = orders.deliver(id, SagaEvent::StockReleased).await;

    assert_eq!(released, Delivery::Applied(OrderStatus::Cancelled));
    let stored = orders.store.stored(id);
    assert_eq!(
        stored.payment.and_then(|p| p.failure).map(|f| f.code),
        Some("payment_canceled".to_owned())
    );
    assert_eq!(
        orders.store.subjects(id),
        vec![
            subjects::ORDER_CREATED,
            subjects::PAYMENT_REQUESTED,
            subjects::INVENTORY_RELEASE_REQUESTED,
            subjects::ORDER_CANCELLED
        ]
    );
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn each_order_gets_its_own_actor() {
    let orders = spawn_orders().await;
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let order = new_order();
        ids.push(order.order_id);
        let handle = orders.handle.clone();
        tasks.spawn(async move { handle.place(order).await });
    }
    while let Some(joined) = tasks.join_next().await {
        let placed = joined.unwrap();
        assert!(placed.is_ok(), "{placed:?}");
    }

    assert_eq!(orders.live_orders().await, 20);
    for id in ids {
        assert_eq!(orders.store.stored(id).status, OrderStatus::Pending);
    }
}

#[tokio::test]
async fn waiters_of_an_order_get_its_committed_states_and_nothing_else() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    let other = new_order();
    let mut waiter = orders.status_watchers.watch(id);
    let mut other_waiter = orders.status_watchers.watch(other.order_id);

    async fn next(watch: &mut actors::orders::StatusWatch) -> actors::saga::OrderState {
        match tokio::time::timeout(TIMEOUT, watch.changed()).await {
            Ok(Some(actors::orders::Change::Committed(state))) => (*state).clone(),
            other => panic!("no status change: {other:?}"),
        }
    }

    // Committed before the waiter looks: still seen (the watch remembers what it has not read).
    orders.place(order.clone()).await;
    let placed = next(&mut waiter).await;
    assert_eq!((placed.status, placed.version), (OrderStatus::Pending, 1));
    orders.deliver(id, SagaEvent::StockReserved).await;
    assert_eq!(next(&mut waiter).await.status, OrderStatus::StockReserved);

    // Neither an ignored duplicate nor an idempotent re-placement publishes anything.
    let duplicate = orders.deliver(id, SagaEvent::StockReserved).await;
    assert!(matches!(duplicate, Delivery::Ignored(_)), "{duplicate:?}");
    orders.place(order).await;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), waiter.changed())
            .await
            .is_err(),
        "nothing new was committed"
    );

    orders.deliver(id, succeeded("pi_1")).await;
    let done = next(&mut waiter).await;
    assert_eq!(done.status, OrderStatus::Completed);
    assert_eq!(done, orders.store.stored(id), "the committed state itself");
    // The other order's waiter was never woken.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(10), other_waiter.changed())
            .await
            .is_err()
    );
    // Registrations go away with their waiters.
    assert_eq!(orders.status_watchers.watched_orders(), 2);
    drop(waiter);
    drop(other_waiter);
    assert_eq!(orders.status_watchers.watched_orders(), 0);
}

#[tokio::test]
async fn a_change_made_elsewhere_wakes_that_orders_waiters_only() {
    let watchers = actors::orders::StatusWatchers::default();
    let (one, two) = (new_order().order_id, new_order().order_id);
    let mut waiter = watchers.watch(one);
    let mut other_waiter = watchers.watch(two);
    // Nobody waits for this one: nothing to wake, nothing registered.
    watchers.changed_elsewhere(new_order().order_id);
    watchers.changed_elsewhere(one);
    assert!(matches!(
        tokio::time::timeout(TIMEOUT, waiter.changed()).await,
        Ok(Some(actors::orders::Change::Elsewhere))
    ));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(10), other_waiter.changed())
            .await
            .is_err()
    );
    assert_eq!(watchers.watched_orders(), 2);
}

/// The supervisor's timer queue runs on tokio's clock, paused here: its ticks come as soon as
/// the test waits, and the saga's own clock moves only when the test moves it.
#[tokio::test(start_paused = true)]
async fn the_supervisor_fires_a_deadline_retries_it_through_an_outage_and_the_saga_times_out() {
    use actors::orders::{OrderSupervisor, OrderSupervisorHandle, SagaDeps};
    use ractor::Actor;

    let store = std::sync::Arc::new(common::snapshots::InMemorySnapshotStore::default());
    let clock = std::sync::Arc::new(actors::ports::ManualClock::at(common::t0()));
    let deps = SagaDeps {
        store: store.clone(),
        clock: clock.clone(),
        status_watchers: actors::orders::StatusWatchers::default(),
        timeouts: actors::saga::StepTimeouts {
            inventory_ms: 1_000,
            payment_ms: 2_000,
        },
        postman: actors::postman::Postman::default(),
        resend: actors::orders::ResendPolicy::default(),
        ownership: None,
    };
    let (supervisor, _) = Actor::spawn(None, OrderSupervisor, deps).await.unwrap();
    let orders = OrderSupervisorHandle::new(supervisor, std::time::Duration::from_secs(5));
    let order = orders.place(common::new_order()).await.unwrap();
    assert_eq!(
        order.deadline,
        Some(common::t0() + chrono::Duration::seconds(1))
    );
    common::eventually("the placement to arm a timer", || async {
        orders.armed_timers().await.unwrap_or(0) > 0
    })
    .await;
    // Inventory never answers; time passes the deadline.
    clock.set(common::t0() + chrono::Duration::seconds(2));
    common::eventually("the deadline to fire", || async {
        store.get(order.order_id).is_some_and(|s| s.is_terminal())
    })
    .await;
    let cancelled = store.get(order.order_id).unwrap();
    assert_eq!(
        cancelled.cancel_reason.as_deref(),
        Some("inventory step timed out after 1s")
    );
    assert_eq!(
        orders.armed_timers().await.unwrap_or(99),
        0,
        "the fired timer is gone"
    );
}

#[tokio::test]
async fn a_nudge_from_elsewhere_does_not_replace_a_terminal_state_a_waiter_has_not_taken_yet() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    let mut waiter = orders.status_watchers.watch(id);
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;
    // Not terminal yet: a nudge replaces what the waiter has not taken, and it re-reads.
    orders.status_watchers.changed_elsewhere(id);
    assert!(matches!(
        tokio::time::timeout(TIMEOUT, waiter.changed()).await,
        Ok(Some(actors::orders::Change::Elsewhere))
    ));
    orders.deliver(id, succeeded("pi_1")).await;
    // This process's own order event comes back before the waiter looks: it still gets the
    // committed terminal state, not a nudge to read the store.
    orders.status_watchers.changed_elsewhere(id);
    match tokio::time::timeout(TIMEOUT, waiter.changed()).await {
        Ok(Some(actors::orders::Change::Committed(state))) => {
            assert_eq!(state.status, OrderStatus::Completed);
        }
        other => panic!("expected the committed COMPLETED state: {other:?}"),
    }
}
