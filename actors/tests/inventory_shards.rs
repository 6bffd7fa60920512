//! The inventory shards against an in-memory ledger: reservations, releases, commits, outages,
//! and concurrent reservations of one SKU.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

use actors::ports::ManualClock;
use std::sync::Arc;
use std::time::Duration;

use actors::domain::{CorrelationId, OrderId, OrderLine};
use actors::events::{
    Envelope, EventBody, InventoryReleaseRequested, OrderCancelled, OrderConfirmed, PaymentPending,
    Shortage, subjects,
};
use actors::inventory::{InventoryError, InventoryShards};
use actors::ports::{ExpiredReservation, StoreError};

use common::ledger::InMemoryLedger;
use common::{envelope, eur, order_created, quantity, sku, t0};

const TTL: Duration = Duration::from_secs(15 * 60);

async fn spawn_shards(count: usize, ledger: &Arc<InMemoryLedger>) -> InventoryShards {
    InventoryShards::spawn(count, ledger.clone(), Arc::new(ManualClock::at(t0())), TTL)
        .await
        .unwrap()
}

fn order_cancelled(order_id: OrderId) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::OrderCancelled(OrderCancelled {
            reason: "customer changed their mind".into(),
            // A cancellation that names no SKU (nothing was reserved): routed by the order id.
            skus: vec![],
        }),
    )
}

fn release_requested(order_id: OrderId) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::InventoryReleaseRequested(InventoryReleaseRequested {
            reason: "payment failed".into(),
            skus: vec![],
        }),
    )
}

async fn on_message(shards: &InventoryShards, envelope: &Envelope) {
    shards.on_message(envelope).await.expect("inventory failed");
}

/// One shard actor on its own (no `InventoryShards` in front), for tests that talk to it
/// directly.
async fn spawn_bare_shard(
    ledger: &Arc<InMemoryLedger>,
) -> ractor::ActorRef<actors::inventory::ShardMessage> {
    let dyn_ledger: Arc<dyn actors::ports::ReservationLedger> = ledger.clone();
    let (shard, _) = ractor::Actor::spawn(
        None,
        actors::inventory::InventoryShard,
        (0, dyn_ledger, Arc::new(ManualClock::at(t0())) as _),
    )
    .await
    .unwrap();
    shard
}

/// A reservation of `units` of SKU-A for `order_id`.
fn reservation(order_id: OrderId, units: i64) -> actors::ports::ReservationRequest {
    actors::ports::ReservationRequest {
        order_id,
        correlation_id: CorrelationId::new(),
        lines: vec![OrderLine {
            sku: sku("SKU-A"),
            quantity: quantity(units),
        }],
        expires_at: t0() + chrono::Duration::minutes(15),
    }
}

#[tokio::test]
async fn reserving_an_order_emits_inventory_reserved_with_its_lines_and_expiry() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5), ("SKU-B", 5)]));
    let shards = spawn_shards(4, &ledger).await;
    let id = OrderId::new();
    let created = order_created(id, &[("SKU-B", 1), ("SKU-A", 2)]);

    on_message(&shards, &created).await;

    let expected_lines = vec![
        OrderLine {
            sku: sku("SKU-B"),
            quantity: quantity(1),
        },
        OrderLine {
            sku: sku("SKU-A"),
            quantity: quantity(2),
        },
    ];
    let expires_at = t0() + chrono::Duration::minutes(15);
    let requests = ledger.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].order_id, id);
    assert_eq!(requests[0].correlation_id, created.correlation_id);
    assert_eq!(requests[0].lines, expected_lines);
    assert_eq!(requests[0].expires_at, expires_at);

    let outbox = ledger.outbox();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].order_id, id);
    assert_eq!(outbox[0].correlation_id, created.correlation_id);
    match &outbox[0].body {
        EventBody::InventoryReserved(reserved) => {
            assert_eq!(reserved.lines, expected_lines);
            assert_eq!(reserved.expires_at, expires_at);
        }
        other => panic!("expected inventory.reserved.v1, got {other:?}"),
    }
    assert_eq!(ledger.stock("SKU-A").reserved, 2);
    assert_eq!(ledger.stock("SKU-B").reserved, 1);
}

#[tokio::test]
async fn an_order_that_does_not_fit_the_stock_emits_out_of_stock_and_reserves_nothing() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5), ("SKU-B", 1)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();

    on_message(&shards, &order_created(id, &[("SKU-A", 2), ("SKU-B", 3)])).await;

    assert_eq!(ledger.subjects(id), vec![subjects::INVENTORY_OUT_OF_STOCK]);
    match &ledger.outbox()[0].body {
        EventBody::InventoryOutOfStock(e) => assert_eq!(
            e.shortages,
            vec![Shortage {
                sku: sku("SKU-B"),
                requested: 3,
                available: 1
            }]
        ),
        other => panic!("expected inventory.out_of_stock.v1, got {other:?}"),
    }
    assert_eq!(ledger.stock("SKU-A").reserved, 0, "all or nothing");
    assert_eq!(ledger.stock("SKU-B").reserved, 0);
}

#[tokio::test]
async fn a_redelivered_order_created_reserves_once_and_emits_once() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();
    let created = order_created(id, &[("SKU-A", 2)]);

    on_message(&shards, &created).await;
    on_message(&shards, &created).await;

    assert_eq!(ledger.subjects(id), vec![subjects::INVENTORY_RESERVED]);
    assert_eq!(ledger.stock("SKU-A").reserved, 2);
}

#[tokio::test]
async fn a_release_request_is_always_answered_with_inventory_released() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(3, &ledger).await;
    let id = OrderId::new();
    on_message(&shards, &order_created(id, &[("SKU-A", 2)])).await;

    on_message(&shards, &release_requested(id)).await;
    assert_eq!(ledger.stock("SKU-A").reserved, 0, "units are back on sale");
    // A duplicate finds nothing left to release but must still be answered.
    on_message(&shards, &release_requested(id)).await;

    assert_eq!(
        ledger.subjects(id),
        vec![
            subjects::INVENTORY_RESERVED,
            subjects::INVENTORY_RELEASED,
            subjects::INVENTORY_RELEASED
        ]
    );
    let released = ledger.outbox();
    assert!(
        matches!(&released[1].body, EventBody::InventoryReleased(r) if r.reason == "payment failed"),
        "{:?}",
        released[1]
    );
}

#[tokio::test]
async fn an_order_cancelled_only_announces_a_release_when_something_was_released() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(3, &ledger).await;

    // Nothing reserved: the cancellation is silent.
    let refused = OrderId::new();
    on_message(&shards, &order_created(refused, &[("SKU-A", 9)])).await;
    on_message(&shards, &order_cancelled(refused)).await;
    assert_eq!(
        ledger.subjects(refused),
        vec![subjects::INVENTORY_OUT_OF_STOCK]
    );

    // A reservation left behind: it is released and announced, once.
    let reserved = OrderId::new();
    on_message(&shards, &order_created(reserved, &[("SKU-A", 2)])).await;
    on_message(&shards, &order_cancelled(reserved)).await;
    on_message(&shards, &order_cancelled(reserved)).await;
    assert_eq!(
        ledger.subjects(reserved),
        vec![subjects::INVENTORY_RESERVED, subjects::INVENTORY_RELEASED]
    );
    assert_eq!(ledger.stock("SKU-A").reserved, 0);
}

#[tokio::test]
async fn a_reservation_arriving_after_the_cancellation_reserves_nothing() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();

    on_message(&shards, &order_cancelled(id)).await;
    on_message(&shards, &order_created(id, &[("SKU-A", 2)])).await;

    assert!(ledger.subjects(id).is_empty(), "{:?}", ledger.subjects(id));
    assert_eq!(ledger.stock("SKU-A").reserved, 0);
}

#[tokio::test]
async fn a_confirmed_order_takes_its_units_out_of_stock_silently() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();
    on_message(&shards, &order_created(id, &[("SKU-A", 2)])).await;

    let confirmed = envelope(
        id,
        &CorrelationId::new(),
        EventBody::OrderConfirmed(OrderConfirmed {
            amount: eur(1000),
            payment_reference: Some("pi_1".into()),
            skus: vec![sku("SKU-A")],
        }),
    );
    on_message(&shards, &confirmed).await;

    let stock = ledger.stock("SKU-A");
    assert_eq!((stock.on_hand, stock.reserved), (3, 0));
    assert_eq!(ledger.subjects(id), vec![subjects::INVENTORY_RESERVED]);
}

#[tokio::test]
async fn messages_inventory_does_not_handle_are_accepted_and_ignored() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();
    let pending = envelope(
        id,
        &CorrelationId::new(),
        EventBody::PaymentPending(PaymentPending {
            payment_reference: "pi_1".into(),
        }),
    );

    on_message(&shards, &pending).await;

    assert!(ledger.requests().is_empty());
    assert!(ledger.outbox().is_empty());
}

#[tokio::test]
async fn a_ledger_outage_is_reported_to_the_consumer() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();

    ledger.set_unavailable(true);
    let result = shards.on_message(&order_created(id, &[("SKU-A", 2)])).await;
    assert!(
        matches!(
            result,
            Err(InventoryError::Store(StoreError::Unavailable(_)))
        ),
        "{result:?}"
    );
    let result = shards.on_message(&release_requested(id)).await;
    assert!(
        matches!(
            result,
            Err(InventoryError::Store(StoreError::Unavailable(_)))
        ),
        "{result:?}"
    );
    assert!(ledger.outbox().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_of_one_sku_through_the_shards_never_exceed_the_stock() {
    // The racy ledger only stays correct if requests for one SKU are serialised by its shard.
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-HOT", 10)]).racy());
    let shards = spawn_shards(4, &ledger).await;
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    for _ in 0..40 {
        let id = OrderId::new();
        ids.push(id);
        let shards = shards.clone();
        tasks.spawn(async move {
            shards
                .on_message(&order_created(id, &[("SKU-HOT", 1)]))
                .await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap();
        assert!(result.is_ok(), "{result:?}");
    }

    let stock = ledger.stock("SKU-HOT");
    assert!(!ledger.oversold(), "oversold: {stock:?}");
    assert_eq!(stock.reserved, 10);
    let mut reserved = 0;
    let mut refused = 0;
    for id in ids {
        match ledger.subjects(id).as_slice() {
            [subjects::INVENTORY_RESERVED] => reserved += 1,
            [subjects::INVENTORY_OUT_OF_STOCK] => refused += 1,
            other => panic!("order {id} got {other:?}"),
        }
    }
    assert_eq!((reserved, refused), (10, 30));
}

#[tokio::test]
async fn the_sweeper_releases_expired_reservations_once_and_says_so() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-1", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let order_id = OrderId::new();
    let created = order_created(order_id, &[("SKU-1", 2)]);
    shards.on_message(&created).await.unwrap();
    assert_eq!(ledger.stock("SKU-1").reserved, 2);

    // Not yet due: nothing happens.
    let now = shards.sweep_expired(ledger.as_ref(), 100).await.unwrap();
    assert_eq!(now, 0);
    // Sixteen minutes later (TTL 15 min) the reservation is released and announced.
    let later = InventoryShards::spawn(
        2,
        ledger.clone(),
        Arc::new(ManualClock::at(t0() + chrono::Duration::minutes(16))),
        TTL,
    )
    .await
    .unwrap();
    assert_eq!(later.sweep_expired(ledger.as_ref(), 100).await.unwrap(), 1);
    assert_eq!(ledger.stock("SKU-1").reserved, 0);
    assert_eq!(
        ledger.subjects(order_id).last().copied(),
        Some(subjects::INVENTORY_RELEASED)
    );
    let released = ledger
        .outbox()
        .into_iter()
        .rev()
        .find(|e| e.order_id == order_id);
    match released.map(|e| e.body) {
        Some(EventBody::InventoryReleased(r)) => assert_eq!(r.reason, "reservation expired"),
        other => panic!("expected inventory.released.v1, got {other:?}"),
    }
    // A second sweep finds nothing left to release.
    assert_eq!(later.sweep_expired(ledger.as_ref(), 100).await.unwrap(), 0);
}

#[tokio::test]
async fn a_shard_that_crashes_is_replaced_and_serves_its_skus_again() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("A", 10)]));
    let shards = spawn_shards(2, &ledger).await;
    ledger.panic_on_next_reserve();
    let first = OrderId::new();
    let crashed = shards.on_message(&order_created(first, &[("A", 2)])).await;
    assert!(
        matches!(crashed, Err(InventoryError::ShardUnavailable(_))),
        "the caller of a crashed shard gets an error (its message is redelivered): {crashed:?}"
    );
    // The supervisor puts a fresh shard in the slot: the redelivery and new orders are served.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match shards.on_message(&order_created(first, &[("A", 2)])).await {
            Ok(()) => break,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
            Err(e) => panic!("the shard was not replaced: {e}"),
        }
    }
    let second = OrderId::new();
    let served = shards.on_message(&order_created(second, &[("A", 3)])).await;
    assert!(served.is_ok(), "{served:?}");
    assert_eq!(
        ledger.stock("A").reserved,
        5,
        "both orders hold their units once"
    );
    assert_eq!(shards.shard_count(), 2);
    shards.stop();
}

/// Messages put straight into one shard's mailbox, all before it handles the first: the shard
/// must decide them together, yet exactly as if one at a time.
#[tokio::test]
async fn releases_queued_together_are_one_batch_and_a_later_reservation_still_finds_them() {
    use actors::inventory::{ReleaseCause, ShardMessage};
    use actors::ports::{ReservationOutcome, SettleOutcome};
    use ractor::concurrency::oneshot;

    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 10)]));
    let held = OrderId::new();
    on_message(
        &spawn_shards(1, &ledger).await,
        &order_created(held, &[("SKU-A", 3)]),
    )
    .await;
    assert_eq!(ledger.stock("SKU-A").reserved, 3);

    let shard = spawn_bare_shard(&ledger).await;
    let release = |order_id: OrderId| {
        let (tx, rx) = oneshot::<Result<SettleOutcome, StoreError>>();
        let sent = shard.send_message(ShardMessage::Release {
            order_id,
            correlation_id: CorrelationId::new(),
            cause: ReleaseCause::Requested("payment failed".into()),
            reply: tx.into(),
        });
        assert!(sent.is_ok());
        rx
    };
    let others: Vec<OrderId> = (0..5).map(|_| OrderId::new()).collect();
    let mut released = vec![release(held)];
    released.extend(others.iter().map(|o| release(*o)));
    // A reservation of an order whose release is parked: decided after it, so refused.
    let (tx, late) = oneshot::<Result<ReservationOutcome, StoreError>>();
    assert!(
        shard
            .send_message(ShardMessage::Reserve(reservation(others[0], 1), tx.into()))
            .is_ok()
    );
    let tail = release(OrderId::new());

    for rx in released {
        let outcome = rx.await.unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    assert_eq!(late.await.unwrap(), Ok(ReservationOutcome::AlreadyDecided));
    assert!(tail.await.is_ok());
    assert_eq!(
        ledger.release_batches(),
        [6, 1],
        "the six queued releases in one call; the reservation behind them flushed them first"
    );
    assert_eq!(
        ledger.stock("SKU-A").reserved,
        0,
        "the held units came back"
    );
    assert_eq!(
        ledger.subjects(held),
        [subjects::INVENTORY_RESERVED, subjects::INVENTORY_RELEASED]
    );
    shard.stop(None);
}

/// Virtual time: the shard's linger is a Tokio timer, so the test steps time instead of
/// waiting for it.
#[tokio::test(start_paused = true)]
async fn commits_arriving_within_the_linger_share_one_batch_and_a_lone_one_is_still_decided() {
    use actors::inventory::ShardMessage;
    use actors::ports::{ReservationOutcome, SettleOutcome};
    use ractor::concurrency::oneshot;

    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 10)]));
    let shards = spawn_shards(1, &ledger).await;
    let orders: Vec<OrderId> = (0..3).map(|_| OrderId::new()).collect();
    for order in &orders {
        on_message(&shards, &order_created(*order, &[("SKU-A", 2)])).await;
    }
    assert_eq!(ledger.stock("SKU-A").reserved, 6);

    let shard = spawn_bare_shard(&ledger).await;
    let commit = |order_id: OrderId| {
        let (tx, rx) = oneshot::<Result<SettleOutcome, StoreError>>();
        assert!(
            shard
                .send_message(ShardMessage::Commit(order_id, tx.into()))
                .is_ok()
        );
        rx
    };
    let first = commit(orders[0]);
    // Well inside the linger: the shard has long handled the first commit, and waits.
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A reservation is decided at once, and does not take the parked commit with it.
    let (tx, reserved) = oneshot::<Result<ReservationOutcome, StoreError>>();
    assert!(
        shard
            .send_message(ShardMessage::Reserve(
                reservation(OrderId::new(), 1),
                tx.into()
            ))
            .is_ok()
    );
    assert!(matches!(
        reserved.await,
        Ok(Ok(ReservationOutcome::Reserved { .. }))
    ));
    assert!(
        ledger.commit_batches().is_empty(),
        "the commit still lingers"
    );
    let second = commit(orders[1]);
    for rx in [first, second] {
        let outcome = rx.await.unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    assert_eq!(ledger.commit_batches(), [2], "both commits in one call");

    // Alone, a commit is decided when its linger runs out.
    let lone = commit(orders[2]);
    assert!(lone.await.unwrap().is_ok());
    assert_eq!(ledger.commit_batches(), [2, 1]);
    assert_eq!(
        ledger.stock("SKU-A").reserved,
        1,
        "only the last reservation"
    );
    assert_eq!(ledger.stock("SKU-A").on_hand, 4);
}

#[tokio::test]
async fn a_commit_or_release_goes_to_the_shard_of_its_smallest_sku_or_by_order_id_without_skus() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(4, &ledger).await;
    let reserving = shards.shard_of(&sku("SKU-A"));
    // An order whose id alone would pick another shard than its reservation's.
    let id = (0..1000)
        .map(|_| OrderId::new())
        .find(|id| shards.shard_for_settlement(*id, &[]) != reserving)
        .unwrap_or_else(|| panic!("no order id hashes away from shard {reserving}"));

    let skus = [sku("SKU-Z"), sku("SKU-A")];
    assert_eq!(shards.shard_for_settlement(id, &skus), reserving);
    assert_ne!(shards.shard_for_settlement(id, &[]), reserving);
    // The sweeper's expiries follow the SKU the ledger names, and the order id without one.
    let expired = |routing_sku| ExpiredReservation {
        order_id: id,
        correlation_id: CorrelationId::new(),
        routing_sku,
        finished: None,
    };
    assert_eq!(
        shards.shard_for_expiry(&expired(Some(sku("SKU-A")))),
        reserving
    );
    assert_ne!(shards.shard_for_expiry(&expired(None)), reserving);
    shards.stop();
}
