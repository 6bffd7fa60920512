//! Adapter integration tests against the real servers: snapshot store, reservation ledger, outbox
//! relay and consumer redelivery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use actors::domain::{CorrelationId, Currency, Money, OrderId, OrderLine, Quantity, Sku};
use actors::events::{Envelope, EventBody, OrderCancelled};
use actors::ports::{
    OrderSnapshotStore, ReservationLedger, ReservationOutcome, ReservationRequest, StoreError,
};
use actors::saga::{self, Decision, SagaEvent};
use adapters::nats::{
    self as bus, ConsumerContext, ConsumerSpec, DeliveryCount, HandlerError, MessageHandler,
};
use adapters::postgres::{self as pg, PgOrderSnapshotStore, PgReservationLedger};

use crate::helpers::{TestDb, TestNats, eventually, new_order};

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.unwrap()
}

async fn outbox_subjects(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT subject FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn a_transition_and_its_messages_commit_together_and_a_stale_version_writes_nothing() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    let store = PgOrderSnapshotStore::new(pool.clone(), pg::OutboxSignal::new(), 2);

    let start = saga::start(new_order(), Utc::now());
    let msgs = envelopes_of(&start);
    assert!(ok(store.create(&start.next, &msgs).await));
    assert!(
        !ok(store.create(&start.next, &msgs).await),
        "placing twice is a no-op"
    );
    assert_eq!(outbox_subjects(&pool).await, ["order.created.v1"]);

    let Decision::Apply(step) = saga::decide(&start.next, &SagaEvent::StockReserved, Utc::now())
    else {
        panic!("reservation must apply");
    };
    let request = Envelope::new(
        step.next.order_id,
        step.next.correlation_id.clone(),
        Utc::now(),
        match &step.effects[0] {
            saga::Effect::Publish(b) => b.clone(),
        },
    );
    ok(store
        .commit(
            step.next.version - 1,
            &step.next,
            std::slice::from_ref(&request),
        )
        .await);
    assert_eq!(
        outbox_subjects(&pool).await,
        ["order.created.v1", "payment.requested.v1"]
    );

    // A second writer that still holds version 1 loses, and leaves no message behind.
    let stale = saga::decide(
        &start.next,
        &SagaEvent::OutOfStock { shortages: vec![] },
        Utc::now(),
    );
    let Decision::Apply(stale) = stale else {
        panic!("must apply")
    };
    let cancel = Envelope::new(
        stale.next.order_id,
        stale.next.correlation_id.clone(),
        Utc::now(),
        EventBody::OrderCancelled(OrderCancelled {
            reason: "x".into(),
            skus: vec![],
        }),
    );
    assert_eq!(
        store.commit(1, &stale.next, &[cancel]).await,
        Err(StoreError::VersionConflict { expected: 1 })
    );
    assert_eq!(
        outbox_subjects(&pool).await,
        ["order.created.v1", "payment.requested.v1"]
    );
    let loaded = ok(store.load(start.next.order_id).await).expect("snapshot");
    assert_eq!(
        (loaded.version, loaded.status.as_str()),
        (2, "STOCK_RESERVED")
    );
}

/// The messages of `decision`'s effects, as the saga actor would send them.
fn envelopes_of(step: &saga::Transition) -> Vec<Envelope> {
    step.effects
        .iter()
        .map(|saga::Effect::Publish(b)| {
            Envelope::new(
                step.next.order_id,
                step.next.correlation_id.clone(),
                Utc::now(),
                b.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn concurrent_writes_batched_together_apply_once_each_with_only_their_own_messages() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    // One writer: every concurrent write below queues for the same one, so they share batches.
    let store = PgOrderSnapshotStore::new(pool.clone(), pg::OutboxSignal::new(), 1);
    let starts: Vec<saga::Transition> = (0..40)
        .map(|_| saga::start(new_order(), Utc::now()))
        .collect();

    // Every order placed, the first ten twice at once: each is created exactly once.
    let creates = starts
        .iter()
        .chain(starts.iter().take(10))
        .map(|start| store.create(&start.next, &[]));
    let created = futures::future::join_all(creates).await;
    let created = created.into_iter().map(ok).filter(|c| *c).count();
    assert_eq!(
        created, 40,
        "each order created once, its duplicate a no-op"
    );

    // Two conflicting transitions of every order from version 1, all at once: for each order
    // exactly one applies, and only its message reaches the outbox.
    let mut writes = Vec::new();
    for start in &starts {
        for event in [
            SagaEvent::StockReserved,
            SagaEvent::OutOfStock { shortages: vec![] },
        ] {
            let Decision::Apply(step) = saga::decide(&start.next, &event, Utc::now()) else {
                panic!("{event:?} must apply to a new order");
            };
            writes.push(step);
        }
    }
    let envelopes: Vec<Vec<Envelope>> = writes.iter().map(|step| envelopes_of(step)).collect();
    let results = futures::future::join_all(
        writes
            .iter()
            .zip(&envelopes)
            .map(|(step, messages)| store.commit(1, &step.next, messages)),
    )
    .await;
    // Per order: the status and the message subjects of the write that applied.
    let mut winners = std::collections::HashMap::new();
    for ((step, messages), result) in writes.iter().zip(&envelopes).zip(&results) {
        match result {
            Ok(()) => {
                let subjects: Vec<String> =
                    messages.iter().map(|m| m.subject().to_owned()).collect();
                assert!(
                    !subjects.is_empty(),
                    "every transition here sends a message"
                );
                let winner = (step.next.status.as_str(), subjects);
                let previous = winners.insert(step.next.order_id, winner);
                assert!(previous.is_none(), "two writes of one order both applied");
            }
            Err(StoreError::VersionConflict { expected: 1 }) => {}
            Err(e) => panic!("unexpected store error: {e}"),
        }
    }
    assert_eq!(winners.len(), 40, "one write of every order applied");

    let rows: Vec<(uuid::Uuid, String)> = ok(sqlx::query_as(
        "SELECT order_id, subject FROM outbox ORDER BY id",
    )
    .fetch_all(&pool)
    .await);
    let mut sent: std::collections::HashMap<OrderId, Vec<String>> = Default::default();
    for (order_id, subject) in rows {
        sent.entry(OrderId::from_uuid(order_id))
            .or_default()
            .push(subject);
    }
    assert_eq!(sent.len(), 40, "messages of every order, of no other");
    for (order_id, (status, subjects)) in &winners {
        assert_eq!(
            sent.get(order_id),
            Some(subjects),
            "only the messages of the write that applied, in order"
        );
        let loaded = ok(store.load(*order_id).await).expect("snapshot");
        assert_eq!((loaded.version, loaded.status.as_str()), (2, *status));
    }
}

#[tokio::test]
async fn concurrent_reservations_from_two_ledgers_never_oversell_and_the_database_refuses_to() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 16).await);
    sqlx::query("INSERT INTO products (sku, name, unit_price_cents, currency, on_hand) VALUES ('HOT', 'hot', 1, 'EUR', 25)")
        .execute(&pool)
        .await
        .unwrap();
    // Two ledgers stand for two processes: nothing but Postgres coordinates them.
    let ledgers = [
        Arc::new(PgReservationLedger::new(
            pool.clone(),
            pg::OutboxSignal::new(),
        )),
        Arc::new(PgReservationLedger::new(
            pool.clone(),
            pg::OutboxSignal::new(),
        )),
    ];
    let mut tasks = Vec::new();
    for i in 0..60 {
        let ledger = ledgers[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let request = ReservationRequest {
                order_id: OrderId::new(),
                correlation_id: CorrelationId::new(),
                lines: vec![OrderLine {
                    sku: ok(Sku::parse("HOT")),
                    quantity: ok(Quantity::try_from(1)),
                }],
                expires_at: Utc::now() + chrono::Duration::minutes(15),
            };
            let outcome = ok(ledger.reserve(&request, &|_| Vec::new()).await);
            // A redelivered request changes nothing.
            assert_eq!(
                ok(ledger.reserve(&request, &|_| Vec::new()).await),
                ReservationOutcome::AlreadyDecided
            );
            outcome
        }));
    }
    let mut reserved = 0;
    for t in tasks {
        if matches!(ok(t.await), ReservationOutcome::Reserved { .. }) {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 25, "exactly the units on hand were reserved");
    let (on_hand, held): (i64, i64) = ok(sqlx::query_as(
        "SELECT on_hand, reserved FROM products WHERE sku = 'HOT'",
    )
    .fetch_one(&pool)
    .await);
    assert_eq!((on_hand, held), (25, 25));
    let rows: i64 = ok(sqlx::query_scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM stock_reservations WHERE sku = 'HOT' AND status = 'RESERVED'").fetch_one(&pool).await);
    assert_eq!(rows, 25);

    // The last line of defence: even a direct write cannot reserve more than is on hand.
    let oversell = sqlx::query("UPDATE products SET reserved = reserved + 1 WHERE sku = 'HOT'")
        .execute(&pool)
        .await;
    assert!(
        oversell.is_err(),
        "the CHECK constraint must refuse an oversell"
    );
}

#[tokio::test]
async fn the_relay_publishes_each_message_once_and_a_failing_handler_gets_it_again() {
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    let (_client, js) = ok(bus::connect(&nats.url).await);
    ok(bus::ensure_streams(&js, 1).await);

    let order_id = OrderId::new();
    let message = Envelope::new(
        order_id,
        CorrelationId::new(),
        Utc::now(),
        EventBody::OrderCancelled(OrderCancelled {
            reason: "test".into(),
            skus: vec![],
        }),
    );
    let mut tx = ok(pool.begin().await);
    ok(pg::outbox::insert(&mut tx, std::slice::from_ref(&message)).await);
    ok(tx.commit().await);
    let relay = bus::OutboxRelay::new(pool.clone(), js.clone(), pg::OutboxSignal::new());
    assert_eq!(ok(relay.relay_once().await), 1);
    assert_eq!(
        ok(pg::outbox::pending_count(&pool).await),
        0,
        "published rows are deleted"
    );

    // A crash between publish and delete re-publishes the row: JetStream drops the copy.
    let mut tx = ok(pool.begin().await);
    ok(pg::outbox::insert(&mut tx, std::slice::from_ref(&message)).await);
    ok(tx.commit().await);
    assert_eq!(ok(relay.relay_once().await), 1);
    let mut stream = ok(js.get_stream("orders").await);
    assert_eq!(
        ok(stream.info().await).state.messages,
        1,
        "deduplicated by Nats-Msg-Id"
    );

    // The handler fails on the first delivery; the message comes back and succeeds once.
    let attempts = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let (a, s) = (attempts.clone(), successes.clone());
    let firsts = Arc::new(Mutex::new(Vec::new()));
    let seen_firsts = firsts.clone();
    let handler: MessageHandler = Arc::new(move |envelope: Envelope, delivery: DeliveryCount| {
        let (a, s) = (a.clone(), s.clone());
        if let Ok(mut seen) = seen_firsts.lock() {
            seen.push(delivery.is_first());
        }
        Box::pin(async move {
            assert_eq!(envelope.order_id, order_id);
            if a.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(HandlerError::Retry("transient failure".to_owned()))
            } else {
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    });
    let spec = ConsumerSpec {
        stream: "orders",
        durable: "test-redelivery",
        filter: "order.>",
        step: "test",
    };
    let shutdown = CancellationToken::new();
    let context = ConsumerContext {
        js: js.clone(),
        policy: "initial=50ms,jitter=0".parse().unwrap_or_default(),
        pool: pool.clone(),
    };
    let consumer = tokio::spawn(bus::run_consumer(context, spec, handler, shutdown.clone()));
    eventually(
        Duration::from_secs(15),
        "the redelivered message to succeed",
        || {
            let s = successes.clone();
            async move { (s.load(Ordering::SeqCst) == 1).then_some(()) }
        },
    )
    .await;
    // Acked: the consumer has nothing pending.
    let info = eventually(Duration::from_secs(5), "the ack to land", || {
        let js = js.clone();
        async move {
            let mut consumer = js
                .get_stream("orders")
                .await
                .ok()?
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("test-redelivery")
                .await
                .ok()?;
            let info = consumer.info().await.ok()?.clone();
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
        }
    })
    .await;
    assert_eq!(info.delivered.stream_sequence, 1);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "delivered twice: failed once, then handled"
    );
    assert_eq!(
        firsts.lock().map(|f| f.clone()).unwrap_or_default(),
        vec![true, false],
        "the handler is told which delivery is the first"
    );
    shutdown.cancel();
    let _ = consumer.await;
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_parked_and_stops_blocking_nothing() {
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    let (_client, js) = ok(bus::connect(&nats.url).await);
    ok(bus::ensure_streams(&js, 1).await);
    let poison = OrderId::new();
    let healthy = OrderId::new();
    let mut tx = ok(pool.begin().await);
    for order in [poison, healthy] {
        let body = EventBody::OrderCancelled(OrderCancelled {
            reason: "test".into(),
            skus: vec![],
        });
        ok(pg::outbox::insert(
            &mut tx,
            &[Envelope::new(order, CorrelationId::new(), Utc::now(), body)],
        )
        .await);
    }
    ok(tx.commit().await);
    let relay = bus::OutboxRelay::new(pool.clone(), js.clone(), pg::OutboxSignal::new());
    assert_eq!(ok(relay.relay_once().await), 2);
    // Garbage on the same subjects: undecodable, parked at once.
    ok(ok(js.publish("order.cancelled.v1", "not json".into()).await).await);

    let handled = Arc::new(AtomicUsize::new(0));
    let seen = handled.clone();
    let handler: MessageHandler = Arc::new(move |envelope: Envelope, _| {
        let seen = seen.clone();
        Box::pin(async move {
            if envelope.order_id == poison {
                Err(HandlerError::Retry("always fails".to_owned()))
            } else {
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    });
    let context = ConsumerContext {
        js: js.clone(),
        policy: "initial=20ms,max=50ms,attempts=3,jitter=0"
            .parse()
            .unwrap_or_default(),
        pool: pool.clone(),
    };
    let spec = ConsumerSpec {
        stream: "orders",
        durable: "test-parking",
        filter: "order.>",
        step: "test",
    };
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(bus::run_consumer(context, spec, handler, shutdown.clone()));
    let letters: Vec<(Option<uuid::Uuid>, String, i64)> =
        eventually(Duration::from_secs(15), "two dead letters", || {
            let pool = pool.clone();
            async move {
                let rows: Vec<(Option<uuid::Uuid>, String, i64)> = sqlx::query_as(
                    "SELECT order_id, error, deliveries FROM dead_letters ORDER BY id",
                )
                .fetch_all(&pool)
                .await
                .ok()?;
                (rows.len() == 2).then_some(rows)
            }
        })
        .await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "the healthy message went through meanwhile"
    );
    let parked_poison = letters
        .iter()
        .find(|l| l.0 == Some(poison.as_uuid()))
        .unwrap_or_else(|| panic!("poison parked: {letters:?}"));
    assert_eq!(
        (parked_poison.1.as_str(), parked_poison.2),
        ("always fails", 3),
        "parked after the policy's attempts"
    );
    assert!(
        letters
            .iter()
            .any(|l| l.0.is_none() && l.1.starts_with("undecodable")),
        "{letters:?}"
    );
    let info = eventually(Duration::from_secs(5), "nothing left pending", || {
        let js = js.clone();
        async move {
            let mut consumer = js
                .get_stream("orders")
                .await
                .ok()?
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("test-parking")
                .await
                .ok()?;
            let info = consumer.info().await.ok()?.clone();
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
        }
    })
    .await;
    assert_eq!(info.num_ack_pending, 0);
    shutdown.cancel();
    let _ = consumer.await;
}

#[tokio::test]
async fn an_expired_reservation_names_its_smallest_sku_in_byte_order_for_the_sweepers_routing() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    sqlx::query("INSERT INTO products (sku, name, unit_price_cents, currency, on_hand) VALUES ('EXPB', 'b', 1, 'EUR', 5), ('EXP-Z', 'z', 1, 'EUR', 5)")
        .execute(&pool)
        .await
        .unwrap();
    let ledger = PgReservationLedger::new(pool.clone(), pg::OutboxSignal::new());
    let request = |lines: &[&str], expires_in: i64| ReservationRequest {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        lines: lines
            .iter()
            .map(|sku| OrderLine {
                sku: ok(Sku::parse(sku)),
                quantity: ok(Quantity::try_from(1)),
            })
            .collect(),
        expires_at: Utc::now() + chrono::Duration::seconds(expires_in),
    };
    // Byte order puts '-' before letters ("EXP-Z" < "EXPB"), as `Sku`'s `Ord` does; a
    // linguistic collation, which skips the '-', would say "EXPB".
    let both = request(&["EXPB", "EXP-Z"], -20);
    let one = request(&["EXPB"], -10);
    let live = request(&["EXP-Z"], 600);
    for r in [&both, &one, &live] {
        assert!(matches!(
            ok(ledger.reserve(r, &|_| Vec::new()).await),
            ReservationOutcome::Reserved { .. }
        ));
    }
    let due = ok(ledger.due_for_expiry(Utc::now(), 10).await);
    let found: Vec<(OrderId, Option<String>, String)> = due
        .iter()
        .map(|e| {
            (
                e.order_id,
                e.routing_sku.as_ref().map(|s| s.as_str().to_owned()),
                e.correlation_id.to_string(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (
                both.order_id,
                Some("EXP-Z".to_owned()),
                both.correlation_id.to_string()
            ),
            (
                one.order_id,
                Some("EXPB".to_owned()),
                one.correlation_id.to_string()
            ),
        ],
        "oldest first, the unexpired order left alone"
    );
    let expected = both.lines.iter().map(|l| l.sku.clone()).min();
    assert_eq!(
        due[0].routing_sku, expected,
        "the same SKU `Sku`'s order picks"
    );
}

#[tokio::test]
async fn a_confirmation_after_expiry_takes_the_units_again_if_they_are_still_there() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    sqlx::query("INSERT INTO products (sku, name, unit_price_cents, currency, on_hand) VALUES ('EXP', 'exp', 1, 'EUR', 5)")
        .execute(&pool)
        .await
        .unwrap();
    let ledger = PgReservationLedger::new(pool.clone(), pg::OutboxSignal::new());
    let request = |order_id: OrderId, q: i64| ReservationRequest {
        order_id,
        correlation_id: CorrelationId::new(),
        lines: vec![OrderLine {
            sku: ok(Sku::parse("EXP")),
            quantity: ok(Quantity::try_from(q)),
        }],
        expires_at: Utc::now() - chrono::Duration::seconds(1),
    };
    let stock = || async {
        let row: (i64, i64) = ok(sqlx::query_as(
            "SELECT on_hand, reserved FROM products WHERE sku = 'EXP'",
        )
        .fetch_one(&pool)
        .await);
        row
    };

    // Reserved, expired (the sweeper releases it), then confirmed: taken again, stock conserved.
    let late = OrderId::new();
    assert_eq!(
        ok(ledger.reserve(&request(late, 2), &|_| Vec::new()).await),
        ReservationOutcome::Reserved {
            low_stock: Vec::new()
        }
    );
    let due = ok(ledger.due_for_expiry(Utc::now(), 10).await);
    assert_eq!(
        due.iter().map(|e| e.order_id).collect::<Vec<_>>(),
        vec![late]
    );
    ok(ledger.release(late, &|_| Vec::new()).await);
    assert_eq!(stock().await, (5, 0));
    let committed = ok(ledger.commit(late).await);
    assert_eq!(committed.rows_changed, 1);
    assert_eq!(
        stock().await,
        (3, 0),
        "the late confirmation took its 2 units"
    );
    assert_eq!(
        ok(ledger.commit(late).await).rows_changed,
        0,
        "a repeat commits nothing"
    );

    // Expired, then the units are sold to another order, then confirmed: nothing taken.
    let unlucky = OrderId::new();
    ok(ledger.reserve(&request(unlucky, 2), &|_| Vec::new()).await);
    ok(ledger.release(unlucky, &|_| Vec::new()).await);
    let other = OrderId::new();
    assert_eq!(
        ok(ledger.reserve(&request(other, 3), &|_| Vec::new()).await),
        ReservationOutcome::Reserved {
            low_stock: Vec::new()
        }
    );
    assert_eq!(ok(ledger.commit(unlucky).await).rows_changed, 0);
    assert_eq!(stock().await, (3, 3), "never more than what is on hand");
}

#[tokio::test]
async fn a_batch_of_reservations_decides_each_in_order_as_if_one_at_a_time() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 16).await);
    sqlx::query("INSERT INTO products (sku, name, unit_price_cents, currency, on_hand, low_stock_threshold) VALUES ('HOT', 'hot', 1, 'EUR', 5, 2), ('COLD', 'cold', 1, 'EUR', 10, 0)")
        .execute(&pool)
        .await
        .unwrap();
    let ledger = PgReservationLedger::new(pool.clone(), pg::OutboxSignal::new());
    let request = |lines: &[(&str, i64)]| ReservationRequest {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        lines: lines
            .iter()
            .map(|(sku, q)| OrderLine {
                sku: ok(Sku::parse(sku)),
                quantity: ok(Quantity::try_from(*q)),
            })
            .collect(),
        expires_at: Utc::now() + chrono::Duration::minutes(15),
    };
    let a = request(&[("HOT", 2)]);
    let b = request(&[("HOT", 1), ("COLD", 4)]);
    let c = request(&[("HOT", 3)]);
    let d = request(&[("HOT", 1), ("HOT", 1)]);
    let unknown = request(&[("NOPE", 1)]);
    let batch = [a.clone(), b.clone(), c, a.clone(), d.clone(), unknown];
    let outcomes = ok(ledger
        .reserve_batch(&batch, &|r, o| {
            actors::inventory::reservation_messages(r, o, Utc::now())
        })
        .await);
    let kinds: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            ReservationOutcome::Reserved { low_stock } => format!("reserved{}", low_stock.len()),
            ReservationOutcome::OutOfStock(s) => format!("short:{}@{}", s[0].sku, s[0].available),
            ReservationOutcome::AlreadyDecided => "repeat".into(),
        })
        .collect();
    // 5 HOT: a takes 2 (3 left), b 1 (2 left: crosses the threshold 2), c wants 3 of 2, the
    // repeated a is already decided, d takes the last 2, NOPE does not exist.
    assert_eq!(
        kinds,
        [
            "reserved0",
            "reserved1",
            "short:HOT@2",
            "repeat",
            "reserved0",
            "short:NOPE@0"
        ]
    );
    let stock: Vec<(String, i64, i64)> = ok(sqlx::query_as(
        "SELECT sku, on_hand, reserved FROM products ORDER BY sku",
    )
    .fetch_all(&pool)
    .await);
    assert_eq!(
        stock,
        [("COLD".to_owned(), 10, 4), ("HOT".to_owned(), 5, 5)]
    );
    let decisions: Vec<String> = ok(sqlx::query_scalar(
        "SELECT outcome FROM inventory_decisions ORDER BY outcome",
    )
    .fetch_all(&pool)
    .await);
    assert_eq!(
        decisions,
        [
            "OUT_OF_STOCK",
            "OUT_OF_STOCK",
            "RESERVED",
            "RESERVED",
            "RESERVED"
        ]
    );
    // One message per decided order plus the low-stock alert, all in the same transaction.
    let mut subjects = outbox_subjects(&pool).await;
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "inventory.low_stock.v1",
            "inventory.out_of_stock.v1",
            "inventory.out_of_stock.v1",
            "inventory.reserved.v1",
            "inventory.reserved.v1",
            "inventory.reserved.v1",
        ]
    );

    // Committing a batch moves each order's units out of stock once.
    let committed = ok(ledger
        .commit_batch(&[a.order_id, b.order_id, a.order_id, d.order_id])
        .await);
    let rows: Vec<u64> = committed.iter().map(|o| o.rows_changed).collect();
    assert_eq!(
        rows,
        [1, 2, 0, 1],
        "b has two SKUs; the repeated a changes nothing"
    );
    let stock: Vec<(String, i64, i64)> = ok(sqlx::query_as(
        "SELECT sku, on_hand, reserved FROM products ORDER BY sku",
    )
    .fetch_all(&pool)
    .await);
    assert_eq!(stock, [("COLD".to_owned(), 6, 0), ("HOT".to_owned(), 0, 0)]);
}

#[tokio::test]
async fn a_batch_of_releases_frees_each_order_once_and_refuses_later_reservations() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 16).await);
    sqlx::query("INSERT INTO products (sku, name, unit_price_cents, currency, on_hand, low_stock_threshold) VALUES ('HOT', 'hot', 1, 'EUR', 5, 0), ('COLD', 'cold', 1, 'EUR', 10, 0)")
        .execute(&pool)
        .await
        .unwrap();
    let ledger = PgReservationLedger::new(pool.clone(), pg::OutboxSignal::new());
    let request = |lines: &[(&str, i64)]| ReservationRequest {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        lines: lines
            .iter()
            .map(|(sku, q)| OrderLine {
                sku: ok(Sku::parse(sku)),
                quantity: ok(Quantity::try_from(*q)),
            })
            .collect(),
        expires_at: Utc::now() + chrono::Duration::minutes(15),
    };
    let a = request(&[("HOT", 2)]);
    let b = request(&[("HOT", 1), ("COLD", 4)]);
    let kept = request(&[("HOT", 1)]);
    let short = request(&[("HOT", 9)]);
    let batch = [a.clone(), b.clone(), kept.clone(), short.clone()];
    ok(ledger.reserve_batch(&batch, &|_, _| Vec::new()).await);
    let never_seen = request(&[("HOT", 1)]);
    sqlx::query("DELETE FROM outbox")
        .execute(&pool)
        .await
        .unwrap();

    let orders = [
        a.order_id,
        b.order_id,
        a.order_id,
        short.order_id,
        never_seen.order_id,
    ];
    let seen = Mutex::new(Vec::new());
    let released = ok(ledger
        .release_batch(&orders, &|i, outcome| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((i, outcome.rows_changed));
            let body = EventBody::OrderCancelled(OrderCancelled {
                reason: format!("release {i}"),
                skus: vec![],
            });
            vec![Envelope::new(
                orders[i],
                CorrelationId::new(),
                Utc::now(),
                body,
            )]
        })
        .await);
    let rows: Vec<u64> = released.iter().map(|o| o.rows_changed).collect();
    assert_eq!(
        rows,
        [1, 2, 0, 0, 0],
        "b has two SKUs; the repeated a, the order that found no stock and the unknown one free nothing"
    );
    assert_eq!(
        *seen.lock().unwrap_or_else(|p| p.into_inner()),
        [(0, 1), (1, 2), (2, 0), (3, 0), (4, 0)],
        "each position gets its own outcome"
    );
    assert_eq!(outbox_subjects(&pool).await.len(), 5, "committed with them");
    let stock: Vec<(String, i64, i64)> = ok(sqlx::query_as(
        "SELECT sku, on_hand, reserved FROM products ORDER BY sku",
    )
    .fetch_all(&pool)
    .await);
    assert_eq!(
        stock,
        [("COLD".to_owned(), 10, 0), ("HOT".to_owned(), 5, 1)],
        "only `kept` still holds a unit"
    );
    // A reservation that arrives after its order's release reserves nothing.
    let late = ok(ledger.reserve(&never_seen, &|_| Vec::new()).await);
    assert_eq!(late, ReservationOutcome::AlreadyDecided);
}

#[tokio::test]
async fn concurrent_price_reads_each_get_their_own_skus_at_the_price_current_when_asked() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    let catalog = pg::Catalog::new(pool.clone());
    let eur = ok(Currency::parse("EUR"));
    let skus: Vec<Sku> = (0..20).map(|i| ok(Sku::parse(&format!("P-{i}")))).collect();
    for (i, sku) in skus.iter().enumerate() {
        let product = pg::ProductUpsert {
            name: format!("product {i}"),
            unit_price: ok(Money::new(100 + i as i64, eur)),
            on_hand: 10,
            low_stock_threshold: 0,
        };
        ok(catalog.upsert(sku, &product).await);
    }
    let unknown = ok(Sku::parse("NOT-SOLD"));

    // Many reads at once (they share reads of the table): each answer holds exactly the SKUs
    // it asked for that exist, at their prices.
    let asks: Vec<Vec<Sku>> = (0..100)
        .map(|n| {
            vec![
                skus[n % 20].clone(),
                skus[(n * 7) % 20].clone(),
                unknown.clone(),
            ]
        })
        .collect();
    let answers = futures::future::join_all(asks.iter().map(|a| catalog.prices(a))).await;
    for (ask, answer) in asks.iter().zip(answers) {
        let answer = ok(answer);
        let mut expected: Vec<(String, i64)> = ask
            .iter()
            .filter(|s| **s != unknown)
            .map(|s| {
                let i: i64 = ok(s.as_str()[2..].parse::<i64>());
                (s.as_str().to_owned(), 100 + i)
            })
            .collect();
        expected.sort();
        expected.dedup();
        let mut got: Vec<(String, i64)> = answer
            .iter()
            .map(|(s, m)| (s.as_str().to_owned(), m.amount_cents()))
            .collect();
        got.sort();
        assert_eq!(got, expected);
    }

    // A price changed before a read is asked for is the price that read returns.
    let changed = pg::ProductUpsert {
        name: "product 3".into(),
        unit_price: ok(Money::new(999, eur)),
        on_hand: 10,
        low_stock_threshold: 0,
    };
    ok(catalog.upsert(&skus[3], &changed).await);
    let answer = ok(catalog.prices(std::slice::from_ref(&skus[3])).await);
    assert_eq!(answer.get(&skus[3]).map(Money::amount_cents), Some(999));
}
