//! Durable step timeouts, reservation expiry and crash recovery, end to end.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, eventually, spawn_app_with};

async fn intent_status(app: &TestApp, pi: &str) -> Option<String> {
    let ledger = app.ledger().await;
    ledger["intents"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == pi)?["status"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn a_payment_that_never_answers_times_out_cancels_the_intent_and_releases_stock() {
    let app = spawn_app_with(|s| s.payment_step_timeout_ms = 1500).await;
    app.put_product("MUG", 10, 1250).await;
    let id = app.place(&[("MUG", 3)], "pm_fake_no_webhook").await;
    let waiting = app.wait_status(&id, "PAYMENT_PROCESSING").await;
    let pi = waiting["payment_reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let order = app.wait_terminal(&id).await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(
        order["cancel_reason"],
        "payment failed: payment_timeout: payment step timed out after 1.5s"
    );
    let mug = app.settled_product("MUG").await;
    assert_eq!(mug["on_hand"], 10, "stock released");
    eventually(
        Duration::from_secs(10),
        "the PaymentIntent to be canceled",
        || async { (intent_status(&app, &pi).await.as_deref() == Some("canceled")).then_some(()) },
    )
    .await;
    assert_eq!(app.charges_of(&pi).await, 0);
}

#[tokio::test]
async fn without_an_inventory_service_orders_time_out_instead_of_waiting_forever() {
    // This process runs no inventory role: nobody answers order.created.v1.
    let app = spawn_app_with(|s| {
        s.roles = vec![
            ordersaga::configuration::Role::Order,
            ordersaga::configuration::Role::Payment,
        ];
        s.inventory_step_timeout_ms = 1000;
    })
    .await;
    sqlx::query("INSERT INTO products (sku, name, unit_price_cents, currency, on_hand) VALUES ('MUG', 'mug', 100, 'EUR', 5)")
        .execute(&app.pool)
        .await
        .unwrap();
    let id = app.place(&[("MUG", 1)], "pm_card_visa").await;
    let order = app.wait_terminal(&id).await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["cancel_reason"], "inventory step timed out after 1s");
    assert_eq!(order["payment"], Value::Null, "no payment was requested");
}

#[tokio::test]
async fn a_deadline_survives_a_restart_and_fires_in_the_new_process() {
    let mut app = spawn_app_with(|s| s.payment_step_timeout_ms = 4000).await;
    app.put_product("MUG", 10, 1250).await;
    let id = app.place(&[("MUG", 2)], "pm_fake_no_webhook").await;
    app.wait_status(&id, "PAYMENT_PROCESSING").await;
    // The process stops while the order waits for its payment (deadline ~4 s away).
    app.restart().await;
    let order = app.wait_terminal(&id).await;
    assert_eq!(
        order["status"], "CANCELLED",
        "the new process re-armed the persisted deadline"
    );
    assert!(
        order["cancel_reason"]
            .as_str()
            .is_some_and(|r| r.contains("payment step timed out")),
        "{order}"
    );
    assert_eq!(app.settled_product("MUG").await["on_hand"], 10);
}

#[tokio::test]
async fn an_expired_reservation_is_swept_and_its_saga_cancels_the_order() {
    let app = spawn_app_with(|s| {
        s.reservation_ttl_secs = 1;
        s.reservation_sweep_interval_ms = 100;
    })
    .await;
    app.put_product("MUG", 10, 1250).await;
    let id = app.place(&[("MUG", 4)], "pm_fake_no_webhook").await;
    let waiting = app.wait_status(&id, "PAYMENT_PROCESSING").await;
    let pi = waiting["payment_reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let order = app.wait_terminal(&id).await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(
        order["cancel_reason"],
        "stock reservation expired before the payment completed"
    );
    let mug = app.settled_product("MUG").await;
    assert_eq!(
        (mug["on_hand"].as_i64(), mug["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM stock_reservations WHERE order_id = $1::uuid")
            .bind(&id)
            .fetch_all(&app.pool)
            .await
            .unwrap_or_default();
    assert_eq!(statuses, ["RELEASED"]);
    eventually(
        Duration::from_secs(10),
        "the PaymentIntent to be canceled",
        || async { (intent_status(&app, &pi).await.as_deref() == Some("canceled")).then_some(()) },
    )
    .await;
}
