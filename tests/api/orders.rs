//! The saga end to end: HTTP placement → NATS → inventory → payment → terminal status.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{order_body, spawn_app, statuses};

#[tokio::test]
async fn a_paid_order_completes_and_its_stock_is_committed() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 1250).await;
    app.put_product("TEE", 5, 1999).await;

    let response = app
        .post_order(&order_body(&[("MUG", 2), ("TEE", 1)], "pm_card_visa"))
        .await;
    assert_eq!(response.status(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let placed: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(placed["status"], "PENDING");
    let id = placed["order_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(location, Some(format!("/orders/{id}")));

    let order = app.wait_terminal(&id).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    assert_eq!(
        statuses(&order),
        [
            "PENDING",
            "STOCK_RESERVED",
            "PAYMENT_PROCESSING",
            "COMPLETED"
        ]
    );
    assert_eq!(
        order["amount_cents"],
        2 * 1250 + 1999,
        "the amount comes from catalog prices"
    );
    assert_eq!(order["lines"][0]["unit_price_cents"], 1250);
    assert!(
        order["payment_reference"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );

    // Inventory commits when it sees order.confirmed.v1, just after COMPLETED.
    let mug = app.settled_product("MUG").await;
    assert_eq!(
        (mug["on_hand"].as_i64(), mug["reserved"].as_i64()),
        (Some(8), Some(0))
    );
    let tee = app.settled_product("TEE").await;
    assert_eq!(
        (tee["on_hand"].as_i64(), tee["reserved"].as_i64()),
        (Some(4), Some(0))
    );
    let reservation: Vec<String> =
        sqlx::query_scalar("SELECT status FROM stock_reservations WHERE order_id = $1::uuid")
            .bind(&id)
            .fetch_all(&app.pool)
            .await
            .unwrap_or_default();
    assert_eq!(reservation, ["COMMITTED", "COMMITTED"]);
}

#[tokio::test]
async fn an_order_beyond_stock_is_cancelled_without_asking_for_payment() {
    let app = spawn_app().await;
    app.put_product("RARE", 1, 10_000).await;
    app.put_product("COMMON", 100, 100).await;

    let id = app
        .place(&[("COMMON", 5), ("RARE", 2)], "pm_card_visa")
        .await;
    let order = app.wait_terminal(&id).await;
    assert_eq!(order["status"], "CANCELLED");
    let reason = order["cancel_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("RARE (requested 2, available 1)"),
        "{reason}"
    );
    assert_eq!(order["payment"], Value::Null);
    let charges: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap_or(-1);
    assert_eq!(charges, 0, "no payment was requested");
    // All or nothing: the line that was available was not reserved either.
    let common = app.product("COMMON").await;
    assert_eq!(
        (common["on_hand"].as_i64(), common["reserved"].as_i64()),
        (Some(100), Some(0))
    );
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock_then_cancels() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 1250).await;

    let id = app.place(&[("MUG", 3)], "pm_card_chargeDeclined").await;
    let order = app.wait_terminal(&id).await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(
        order["cancel_reason"],
        "payment failed: card_declined: Your card was declined."
    );
    assert_eq!(order["payment"]["failure"]["code"], "card_declined");
    // CANCELLED is only reached once inventory confirmed the release, so no waiting is needed.
    let mug = app.product("MUG").await;
    assert_eq!(
        (mug["on_hand"].as_i64(), mug["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    let released: Vec<String> =
        sqlx::query_scalar("SELECT status FROM stock_reservations WHERE order_id = $1::uuid")
            .bind(&id)
            .fetch_all(&app.pool)
            .await
            .unwrap_or_default();
    assert_eq!(released, ["RELEASED"]);
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_same_order() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 1250).await;
    let body = order_body(&[("MUG", 1)], "pm_card_visa");
    let send = |body: Value| {
        app.http
            .post(format!("{}/orders", app.base))
            .header("Idempotency-Key", "checkout-42")
            .json(&body)
            .send()
    };
    let first: Value = send(body.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    let second = send(body.clone()).await.unwrap();
    assert_eq!(second.status(), 202);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let second: Value = second.json().await.unwrap_or(Value::Null);
    assert_eq!(first["order_id"], second["order_id"]);

    let other = send(order_body(&[("MUG", 2)], "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    let error: Value = other.json().await.unwrap_or(Value::Null);
    assert_eq!(error["error"]["code"], "idempotency_key_reused");

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    assert_eq!(orders, 1, "one order for one key");
    let id = first["order_id"].as_str().unwrap_or_default();
    app.wait_terminal(id).await;
    assert_eq!(
        app.settled_product("MUG").await["on_hand"],
        9,
        "charged and shipped once"
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_order_and_other_keys_their_own() {
    let app = spawn_app().await;
    app.put_product("MUG", 100, 1250).await;
    let body = order_body(&[("MUG", 1)], "pm_card_visa");
    // Claims that arrive together are claimed in one statement: the same key twenty times in
    // flight, and ten other keys beside it.
    let place = |key: String| {
        let request = app
            .http
            .post(format!("{}/orders", app.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 202);
            let placed: Value = response.json().await.unwrap_or(Value::Null);
            placed["order_id"].as_str().unwrap_or_default().to_owned()
        }
    };
    let keys = (0..20)
        .map(|_| "same-checkout".to_owned())
        .chain((0..10).map(|i| format!("checkout-{i}")));
    let ids = futures::future::join_all(keys.map(place)).await;
    let same: std::collections::HashSet<&String> = ids[..20].iter().collect();
    assert_eq!(same.len(), 1, "one order for one key: {same:?}");
    let others: std::collections::HashSet<&String> = ids[20..].iter().collect();
    assert_eq!(others.len(), 10, "one order per other key");
    assert!(!others.contains(&ids[0]));
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    assert_eq!(orders, 11);
    for id in same.iter().chain(others.iter()) {
        app.wait_terminal(id).await;
    }
    assert_eq!(app.settled_product("MUG").await["on_hand"], 89);
}

#[tokio::test]
async fn wait_returns_as_soon_as_the_order_is_terminal_and_a_snapshot_otherwise() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 1250).await;
    let id = app.place(&[("MUG", 1)], "pm_card_visa").await;
    // Without wait the current snapshot comes back at once, whatever its status.
    let (status, now) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(status, 200);
    assert!(now["status"].is_string());
    let order = app.wait_terminal(&id).await;
    assert_eq!(order["status"], "COMPLETED");
    assert_eq!(order["version"], 4);
}

#[tokio::test]
async fn a_hundred_concurrent_orders_on_limited_stock_never_oversell() {
    let app = spawn_app().await;
    let report = load_tests::run(load_tests::LoadConfig {
        base_url: app.base.clone(),
        orders: 100,
        concurrency: 100,
        skus: 3,
        stock_per_sku: 40,
        hot_share: 0.5,
        decline_share: 0.2,
        max_quantity: 3,
        order_timeout: Duration::from_secs(60),
    })
    .await
    .unwrap_or_else(|e| panic!("load run failed: {e:#}"));
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    assert_eq!(report.completed + report.cancelled, 100);
    assert_eq!(report.failed_requests, 0);
    assert!(
        report.cancelled > 0,
        "the stock was meant to run out for some orders"
    );
    assert!(report.completed > 0);
}

#[tokio::test]
async fn saga_figures_are_served_as_json_and_as_prometheus_metrics() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 100).await;
    let ok = app.place(&[("MUG", 1)], "pm_card_visa").await;
    let declined = app.place(&[("MUG", 1)], "pm_card_chargeDeclined").await;
    let short = app.place(&[("MUG", 50)], "pm_card_visa").await;
    for id in [&ok, &declined, &short] {
        app.wait_terminal(id).await;
    }
    let (status, figures) = app.get_json("/orders/metrics").await;
    assert_eq!(status, 200, "{figures}");
    assert_eq!(figures["orders"]["total"], 3);
    assert_eq!(figures["orders"]["by_status"]["COMPLETED"], 1);
    assert_eq!(figures["orders"]["by_status"]["CANCELLED"], 2);
    let success = figures["success_rate"].as_f64().unwrap_or(-1.0);
    assert!((success - 1.0 / 3.0).abs() < 1e-9, "{figures}");
    let compensation = figures["compensation_rate"].as_f64().unwrap_or(-1.0);
    assert!(
        (compensation - 1.0 / 3.0).abs() < 1e-9,
        "only the decline was compensated: {figures}"
    );
    assert!(
        figures["duration_seconds"]["p99"]
            .as_f64()
            .is_some_and(|p| p >= 0.0)
    );

    // The Prometheus counters are process-wide (other tests add to them): they must exist and
    // be at least this test's own figures.
    let text = app.metrics_text().await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("order_saga_started_total") >= 3.0, "{text}");
    assert!(value("order_saga_completed_total") >= 1.0);
    assert!(value("order_saga_failed_total") >= 2.0);
    assert!(value("order_saga_compensated_total") >= 1.0);
    assert!(text.contains("order_saga_duration_seconds"), "{text}");
    // HTTP requests by route template (never the raw path) and status, and the outbox sampler.
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains(r#"route="/orders""#)
            && l.contains(r#"status="202""#)),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("http_requests_total{") && l.contains(r#"route="/orders/{id}""#)), "{text}");
    assert!(
        !text.contains(&format!("route=\"/orders/{ok}\"")),
        "no raw paths as labels"
    );
    assert!(text.contains("outbox_pending_messages"), "{text}");
}

/// `POST /orders?wait=` with the app's client; the status and the JSON body.
async fn place_and_wait(
    app: &crate::helpers::TestApp,
    wait: &str,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let response = app
        .http
        .post(format!("{}/orders?wait={wait}", app.base))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /orders?wait={wait}: {e}"));
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        location,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn placing_with_wait_answers_once_with_the_finished_order() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 1250).await;

    let (status, location, order) =
        place_and_wait(&app, "10s", &order_body(&[("MUG", 2)], "pm_card_visa")).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "COMPLETED", "{order}");
    assert_eq!(order["version"], 4, "{order}");
    assert_eq!(order["amount_cents"], 2 * 1250);
    let id = order["order_id"].as_str().unwrap_or_default();
    assert_eq!(location, Some(format!("/orders/{id}")));
    // The answer is the stored order, as GET serves it.
    let (_, stored) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(stored, order);

    let (status, _, declined) = place_and_wait(
        &app,
        "10s",
        &order_body(&[("MUG", 1)], "pm_card_chargeDeclined"),
    )
    .await;
    assert_eq!(status, 200, "{declined}");
    assert_eq!(declined["status"], "CANCELLED", "{declined}");
    assert!(
        declined["cancel_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("payment failed")),
        "{declined}"
    );
}

#[tokio::test]
async fn placing_with_a_wait_that_runs_out_answers_202_with_the_order_as_it_stands() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 1250).await;
    // No webhook ever comes and the create call answers `processing`: the order waits for its
    // payment far longer than the 300 ms asked for.
    let (status, _, order) = place_and_wait(
        &app,
        "300ms",
        &order_body(&[("MUG", 1)], "pm_fake_no_webhook"),
    )
    .await;
    assert_eq!(status, 202, "{order}");
    let current = order["status"].as_str().unwrap_or_default();
    assert!(
        !matches!(current, "COMPLETED" | "CANCELLED" | ""),
        "not terminal yet: {order}"
    );
    assert!(order["history"].is_array(), "the whole order: {order}");

    let (status, _, error) =
        place_and_wait(&app, "forever", &order_body(&[("MUG", 1)], "pm_card_visa")).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "invalid_query");
    assert_eq!(error["error"]["field"], "wait");
}
