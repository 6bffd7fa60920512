//! Operators' inspection API: the live state of sagas and stock, behind ADMIN_TOKEN.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with};

pub(crate) const TOKEN: &str = "test-admin-token";

pub(crate) async fn admin_get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = app.http.get(format!("{}{path}", app.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn inspection_needs_the_admin_token_and_is_closed_without_one() {
    let open = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    for path in [
        "/actors",
        "/actors/stuck",
        "/actors/orders/0190b6e4-2b7c-7cc4-9a4e-0d5d1f2f6a11",
        "/actors/inventory/MUG",
    ] {
        assert_eq!(
            admin_get(&open, path, None).await.0,
            401,
            "{path} without a token"
        );
        let (status, body) = admin_get(&open, path, Some("wrong")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{path} with a wrong token"
        );
    }
    let closed = spawn_app().await;
    let (status, body) = admin_get(&closed, "/actors", Some(TOKEN)).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ADMIN_TOKEN")),
        "{body}"
    );
}

#[tokio::test]
async fn inspection_shows_the_state_a_saga_is_really_in() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    app.put_product("MUG", 10, 100).await;
    // Waits for a payment outcome that never comes (no webhook): a live saga with a timer.
    let waiting = app.place(&[("MUG", 2)], "pm_fake_no_webhook").await;
    let snapshot = app.wait_status(&waiting, "PAYMENT_PROCESSING").await;
    let (status, live) = admin_get(&app, &format!("/actors/orders/{waiting}"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(
        live["source"], "live",
        "a waiting saga keeps its actor: {live}"
    );
    assert_eq!(live["status"], "PAYMENT_PROCESSING");
    assert_eq!(live["version"], snapshot["version"]);
    assert_eq!(live["current_step"], "payment (waiting for the outcome)");
    assert_eq!(live["pending_timer"]["overdue"], false);
    let deadline: Option<String> = sqlx::query_scalar("SELECT to_char(deadline AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') FROM order_snapshots WHERE order_id = $1::uuid")
        .bind(&waiting)
        .fetch_one(&app.pool)
        .await
        .unwrap_or_default();
    let shown = live["pending_timer"]["deadline"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        deadline.is_some_and(|d| shown.starts_with(&d)),
        "the timer shown is the persisted deadline: {shown}"
    );

    // A finished order has no actor: its snapshot is shown, marked as such.
    let done = app.place(&[("MUG", 1)], "pm_card_visa").await;
    app.wait_terminal(&done).await;
    let passivated = eventually(
        Duration::from_secs(10),
        "the finished order's actor to stop",
        || async {
            let (_, body) = admin_get(&app, &format!("/actors/orders/{done}"), Some(TOKEN)).await;
            (body["source"] == "passivated").then_some(body)
        },
    )
    .await;
    assert_eq!(passivated["status"], "COMPLETED");
    assert!(passivated["pending_timer"].is_null());

    let (_, overview) = admin_get(&app, "/actors", Some(TOKEN)).await;
    assert!(
        overview["order_supervisor"]["live_order_actors"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{overview}"
    );
    assert!(
        overview["order_supervisor"]["armed_timers"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{overview}"
    );
    assert_eq!(overview["live_sagas_by_status"]["PAYMENT_PROCESSING"], 1);
    assert_eq!(
        overview["inventory"]["shards"],
        app.settings().inventory_shard_count()
    );

    // The finished order's units are committed just after COMPLETED: wait for that.
    let stock = eventually(
        Duration::from_secs(10),
        "only the waiting order's units to be held",
        || async {
            let (_, stock) = admin_get(&app, "/actors/inventory/MUG", Some(TOKEN)).await;
            (stock["reserved"] == 2).then_some(stock)
        },
    )
    .await;
    assert!(
        stock["owning_shard"].as_u64().is_some_and(|s| s < 8),
        "{stock}"
    );
    assert_eq!(stock["reserved"], 2);
    let held = stock["active_reservations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(held.len(), 1, "{stock}");
    assert_eq!(held[0]["order_id"], waiting.as_str());
    assert!(held[0]["expires_at"].is_string());

    // Nothing is stuck while timers run; a saga whose deadline has long passed is listed.
    let (_, none) = admin_get(&app, "/actors/stuck", Some(TOKEN)).await;
    assert_eq!(none["count"], 0, "{none}");
    sqlx::query(
        "UPDATE order_snapshots SET deadline = now() - interval '1 hour' WHERE order_id = $1::uuid",
    )
    .bind(&waiting)
    .execute(&app.pool)
    .await
    .unwrap();
    let (_, stuck) = admin_get(&app, "/actors/stuck", Some(TOKEN)).await;
    assert_eq!(stuck["count"], 1, "{stuck}");
    assert_eq!(stuck["stuck"][0]["order_id"], waiting.as_str());
    assert!(
        stuck["stuck"][0]["overdue_seconds"]
            .as_f64()
            .is_some_and(|s| s > 3000.0)
    );
}

pub(crate) async fn admin_post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn operators_can_force_cancel_and_retry_a_stuck_order_end_to_end() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    app.put_product("MUG", 10, 100).await;
    let stuck = app.place(&[("MUG", 3)], "pm_fake_no_webhook").await;
    app.wait_status(&stuck, "PAYMENT_PROCESSING").await;

    // Retry: the payment request is re-sent; the provider's idempotency key makes it harmless.
    let (status, body) = admin_post(
        &app,
        &format!("/actors/orders/{stuck}/retry"),
        serde_json::json!({"by": "alice", "reason": "webhook lost?"}),
    )
    .await;
    assert_eq!(
        (status, body["applied"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let (_, order) = app.get_json(&format!("/orders/{stuck}")).await;
    let last = order["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("retried by operator alice: webhook lost?")),
        "{last}"
    );

    // Force cancel: the stock comes back, the intent is canceled, who and why are on the order.
    let (status, body) = admin_post(
        &app,
        &format!("/actors/orders/{stuck}/cancel"),
        serde_json::json!({"by": "bob", "reason": "customer called"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cancelled = app.wait_terminal(&stuck).await;
    assert_eq!(cancelled["status"], "CANCELLED");
    assert!(
        cancelled["cancel_reason"]
            .as_str()
            .is_some_and(|r| r.contains("cancelled by operator bob: customer called")),
        "{cancelled}"
    );
    assert_eq!(app.settled_product("MUG").await["on_hand"], 10);
    let pi = cancelled["payment_reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eventually(
        Duration::from_secs(10),
        "the intent to be canceled",
        || async {
            let ledger = app.ledger().await;
            let status = ledger["intents"]
                .as_array()?
                .iter()
                .find(|i| i["id"] == pi.as_str())?["status"]
                .clone();
            (status == "canceled").then_some(())
        },
    )
    .await;
    assert_eq!(app.charges_of(&pi).await, 0, "retried once, charged never");

    // A finished order cannot be acted on; bad bodies and missing tokens are refused.
    let (status, body) = admin_post(
        &app,
        &format!("/actors/orders/{stuck}/cancel"),
        serde_json::json!({"by": "bob", "reason": "again"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_applicable"))
    );
    let (status, body) = admin_post(
        &app,
        &format!("/actors/orders/{stuck}/retry"),
        serde_json::json!({"by": "", "reason": "x"}),
    )
    .await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("by")));
    let unauthenticated = app
        .http
        .post(format!("{}/actors/orders/{stuck}/retry", app.base))
        .json(&serde_json::json!({"by": "x", "reason": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}
