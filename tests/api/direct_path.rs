//! With all roles in one process, commands go from actor to actor without the broker, and the
//! sagas' own state makes them durable. These tests leave the database as a crash between two
//! actors would (one side committed, the other never told), start the application on it, and
//! check that recovery finishes each order with nothing lost or done twice; and that orders
//! complete while NATS is down.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use actors::domain::{
    CorrelationId, Currency, CustomerId, Money, OrderId, OrderLine, PaymentMethod, PricedLine,
    Quantity, Sku,
};
use actors::payments::idempotency_key;
use actors::ports::{
    ChargeOutcome, ChargeRequest, OrderSnapshotStore, PaymentGateway, PaymentRecords,
    ReservationLedger, ReservationOutcome, ReservationRequest,
};
use actors::saga::{self, Decision, NewOrder, OrderState, SagaEvent, StepTimeouts};
use adapters::postgres::{self as pg, PgOrderSnapshotStore, PgPaymentRecords, PgReservationLedger};
use adapters::stripe::{StripeClient, StripeConfig};

use crate::helpers::{
    TestApp, eventually, order_body, spawn_app, spawn_app_with, standalone_stripe_fake,
};

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.unwrap()
}

/// Two units of `sku` at 5.00 EUR.
fn new_order(sku: &str) -> NewOrder {
    let eur = ok(Currency::parse("EUR"));
    NewOrder {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        customer_id: ok(CustomerId::parse("customer-1")),
        lines: vec![PricedLine {
            sku: ok(Sku::parse(sku)),
            quantity: ok(Quantity::try_from(2)),
            unit_price: ok(Money::new(500, eur)),
        }],
        amount: ok(Money::new(1000, eur)),
        payment_method: ok(PaymentMethod::parse("pm_card_visa")),
    }
}

/// The order's saga after `events`, each committed as the saga actor would, but with no
/// messages: nothing but the saga's own state says what it waits for. Its steps may take ten
/// minutes, so no deadline finishes the order while a test waits for recovery to.
async fn saga_after(app: &TestApp, order: NewOrder, events: &[SagaEvent]) -> OrderState {
    let store = PgOrderSnapshotStore::new(app.pool.clone(), pg::OutboxSignal::new(), 1);
    let patient = StepTimeouts {
        inventory_ms: 600_000,
        payment_ms: 600_000,
    };
    let mut state = saga::start_with_timeouts(order, patient, Utc::now()).next;
    assert!(ok(store.create(&state, &[]).await));
    for event in events {
        let Decision::Apply(step) = saga::decide(&state, event, Utc::now()) else {
            panic!("{} does not apply to {:?}", event.name(), state.status);
        };
        ok(store.commit(state.version, &step.next, &[]).await);
        state = step.next;
    }
    state
}

/// Reserves the order's lines in the ledger, as the inventory shard would have, expiring at
/// `expires_at`.
async fn reserve(app: &TestApp, state: &OrderState, expires_at: chrono::DateTime<Utc>) {
    let ledger = PgReservationLedger::new(app.pool.clone(), pg::OutboxSignal::new());
    let request = ReservationRequest {
        order_id: state.order_id,
        correlation_id: state.correlation_id.clone(),
        lines: state
            .lines
            .iter()
            .map(|l| OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
            })
            .collect(),
        expires_at,
    };
    let outcome = ok(ledger.reserve(&request, &|_| Vec::new()).await);
    assert!(matches!(outcome, ReservationOutcome::Reserved { .. }));
}

/// (status, count) of the order's reservation rows.
async fn reservation_rows(app: &TestApp, order_id: OrderId) -> Vec<(String, i64)> {
    ok(sqlx::query_as(
        "SELECT status, count(*) FROM stock_reservations WHERE order_id = $1 GROUP BY status",
    )
    .bind(order_id.as_uuid())
    .fetch_all(&app.pool)
    .await)
}

/// PaymentIntents the Stripe fake created for this order.
async fn intents_of(app: &TestApp, order_id: OrderId) -> usize {
    let ledger = app.ledger().await;
    ledger["intents"]
        .as_array()
        .map(|intents| {
            intents
                .iter()
                .filter(|i| i["metadata"]["order_id"] == order_id.to_string())
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_reservation_committed_before_the_saga_heard_of_it_is_answered_again_after_a_restart() {
    let mut app = spawn_app().await;
    app.put_product("SKU-A", 10, 500).await;
    let state = saga_after(&app, new_order("SKU-A"), &[]).await;
    reserve(&app, &state, Utc::now() + chrono::Duration::minutes(15)).await;

    app.restart().await;

    let order = app.wait_terminal(&state.order_id.to_string()).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    let product = app.settled_product("SKU-A").await;
    assert_eq!(
        product["on_hand"], 8,
        "the units were taken once: {product}"
    );
    assert_eq!(
        reservation_rows(&app, state.order_id).await,
        vec![("COMMITTED".to_owned(), 1)]
    );
    assert_eq!(intents_of(&app, state.order_id).await, 1, "one charge");
}

#[tokio::test]
async fn a_charge_recorded_before_the_saga_heard_of_it_completes_the_order_without_charging_again()
{
    let mut app = spawn_app().await;
    app.put_product("SKU-A", 10, 500).await;
    let state = saga_after(&app, new_order("SKU-A"), &[SagaEvent::StockReserved]).await;
    reserve(&app, &state, Utc::now() + chrono::Duration::minutes(15)).await;
    let records = PgPaymentRecords::new(app.pool.clone(), pg::OutboxSignal::new(), 1);
    let charged = ChargeOutcome::Succeeded {
        reference: "pi_recorded_before_the_crash".into(),
    };
    let recorded = records
        .record(
            state.order_id,
            1,
            &state.correlation_id,
            &charged,
            Box::new(|_| Vec::new()),
        )
        .await;
    assert!(ok(recorded));

    app.restart().await;

    let order = app.wait_terminal(&state.order_id.to_string()).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    assert_eq!(
        order["payment"]["reference"], "pi_recorded_before_the_crash",
        "{order}"
    );
    assert_eq!(
        intents_of(&app, state.order_id).await,
        0,
        "the recorded charge is the answer: the provider is not asked again"
    );
    let product = app.settled_product("SKU-A").await;
    assert_eq!(product["on_hand"], 8, "{product}");
}

#[tokio::test]
async fn a_release_made_before_the_compensating_saga_heard_of_it_is_confirmed_again() {
    let mut app = spawn_app().await;
    app.put_product("SKU-A", 10, 500).await;
    let declined = SagaEvent::PaymentFailed {
        reference: Some("pi_declined".into()),
        code: "card_declined".into(),
        message: "Your card was declined.".into(),
    };
    let state = saga_after(
        &app,
        new_order("SKU-A"),
        &[SagaEvent::StockReserved, declined],
    )
    .await;
    assert!(state.compensation.is_some(), "the saga waits for its stock");
    reserve(&app, &state, Utc::now() + chrono::Duration::minutes(15)).await;
    let ledger = PgReservationLedger::new(app.pool.clone(), pg::OutboxSignal::new());
    let released = ok(ledger.release(state.order_id, &|_| Vec::new()).await);
    assert_eq!(released.rows_changed, 1);

    app.restart().await;

    let order = app.wait_terminal(&state.order_id.to_string()).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(
        reservation_rows(&app, state.order_id).await,
        vec![("RELEASED".to_owned(), 1)]
    );
    let product = app.product("SKU-A").await;
    assert_eq!(
        (product["on_hand"].clone(), product["reserved"].clone()),
        (Value::from(10), Value::from(0)),
        "released once: {product}"
    );
}

#[tokio::test]
async fn a_completed_order_whose_stock_commit_was_lost_has_its_units_committed_not_released() {
    let app = spawn_app().await;
    app.put_product("SKU-A", 10, 500).await;
    let paid = SagaEvent::PaymentSucceeded {
        reference: "pi_paid".into(),
    };
    let state = saga_after(&app, new_order("SKU-A"), &[SagaEvent::StockReserved, paid]).await;
    assert!(state.is_terminal());
    // The commit that follows completion never ran, and the reservation has run out.
    reserve(&app, &state, Utc::now() - chrono::Duration::seconds(1)).await;

    let rows = eventually(
        Duration::from_secs(15),
        "the sweeper to settle the expired reservation",
        || async {
            let rows = reservation_rows(&app, state.order_id).await;
            (rows.iter().all(|(status, _)| status != "RESERVED")).then_some(rows)
        },
    )
    .await;
    assert_eq!(rows, vec![("COMMITTED".to_owned(), 1)]);
    let product = app.product("SKU-A").await;
    assert_eq!(
        (product["on_hand"].clone(), product["reserved"].clone()),
        (Value::from(8), Value::from(0)),
        "sold units leave stock: {product}"
    );
}

#[tokio::test]
async fn with_every_role_in_one_process_orders_complete_while_nats_is_down_and_events_follow() {
    let mut app = spawn_app().await;
    app.put_product("SKU-A", 100, 500).await;
    app.stop_nats();

    for _ in 0..5 {
        let response = app
            .http
            .post(format!("{}/orders?wait=10s", app.base))
            .json(&order_body(&[("SKU-A", 1)], "pm_card_visa"))
            .send()
            .await
            .expect("POST /orders");
        assert_eq!(response.status(), 200);
        let order: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(order["status"], "COMPLETED", "{order}");
    }
    let pool = app.pool.clone();
    let pending = || async {
        let n: i64 = ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await);
        n
    };
    assert!(
        pending().await >= 5,
        "the domain events wait in the outbox for NATS"
    );
    let subjects: std::collections::BTreeSet<String> =
        ok(sqlx::query_scalar("SELECT DISTINCT subject FROM outbox")
            .fetch_all(&pool)
            .await)
        .into_iter()
        .collect();
    assert_eq!(
        subjects,
        [
            "inventory.reserved.v1",
            "order.confirmed.v1",
            "order.created.v1",
            "payment.succeeded.v1"
        ]
        .map(String::from)
        .into(),
        "the facts are published; the charge command, carried in the process, is not"
    );

    app.start_nats();
    eventually(
        Duration::from_secs(30),
        "the outbox to drain once NATS is back",
        || async { (pending().await == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_charge_made_but_not_recorded_is_asked_again_under_its_key_and_made_once() {
    // The provider outlives the crash: the fake runs as its own process.
    let (_fake, fake) = standalone_stripe_fake().await;
    let mut app = spawn_app_with(|s| {
        s.stripe_secret_key = Some("sk_test_direct_path".into());
        s.stripe_api_base = fake.clone();
        s.stripe_webhook_secret = vec!["whsec_direct_path".into()];
    })
    .await;
    app.put_product("SKU-A", 10, 500).await;
    let state = saga_after(&app, new_order("SKU-A"), &[SagaEvent::StockReserved]).await;
    reserve(&app, &state, Utc::now() + chrono::Duration::minutes(15)).await;
    // The payment role charged, and died before recording the answer.
    let client = ok(StripeClient::new(StripeConfig::new(
        fake.clone(),
        "sk_test_direct_path",
    )));
    let charged = client
        .charge(&ChargeRequest {
            order_id: state.order_id,
            correlation_id: state.correlation_id.clone(),
            amount: state.amount,
            payment_method: state.payment_method.clone(),
            attempt: 1,
            idempotency_key: idempotency_key(state.order_id, 1),
        })
        .await;
    let ChargeOutcome::Succeeded { reference } = ok(charged) else {
        panic!("the fake declined a visa card");
    };

    app.restart().await;

    let order = app.wait_terminal(&state.order_id.to_string()).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    assert_eq!(order["payment"]["reference"], reference.as_str(), "{order}");
    let ledger: Value = ok(ok(reqwest::get(format!("{fake}/_fake/ledger")).await)
        .json()
        .await);
    let charges = ledger["charges"].as_array().map(|c| {
        c.iter()
            .filter(|c| c["payment_intent"] == reference.as_str())
            .count()
    });
    assert_eq!(charges, Some(1), "charged once: {ledger}");
    assert_eq!(
        ledger["intents"].as_array().map(Vec::len),
        Some(1),
        "the provider replayed the first intent: {ledger}"
    );
}

#[tokio::test]
async fn too_many_commands_in_flight_refuse_placements_with_503_until_they_drain() {
    let app = spawn_app_with(|s| {
        s.max_commands_in_flight = 1;
        // Charges take two seconds: commands pile up behind the payment provider.
        s.stripe_fake_api_delay_ms = 2_000;
        s.order_rate_limit_per_sec = 0;
    })
    .await;
    app.put_product("SKU-A", 100, 500).await;
    // Each accepted order holds a command in flight for two seconds; placing goes on (fast,
    // and bounded) until the postman counts more than one.
    let mut accepted = Vec::new();
    let response = loop {
        let response = app
            .post_order(&order_body(&[("SKU-A", 1)], "pm_card_visa"))
            .await;
        if response.status() != 202 {
            break response;
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        accepted.push(body["order_id"].as_str().unwrap_or_default().to_owned());
        assert!(accepted.len() < 50, "never refused: {accepted:?}");
    };
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        accepted.len() >= 2,
        "refused only above the bound: {accepted:?}"
    );

    for id in &accepted {
        assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    }
    // The stock commits that follow completion drain a moment later.
    eventually(
        Duration::from_secs(10),
        "placements to be accepted again once the commands drained",
        || async {
            let again = app
                .post_order(&order_body(&[("SKU-A", 1)], "pm_card_visa"))
                .await;
            (again.status() == 202).then_some(())
        },
    )
    .await;
}
