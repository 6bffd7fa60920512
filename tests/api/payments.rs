//! Payments end to end through the Stripe client, the Stripe-compatible fake (real HTTP, signed
//! webhooks) and the webhook endpoint.

use std::time::Duration;

use serde_json::{Value, json};

use adapters::stripe::signature_header;
use ordersaga::configuration::DEV_WEBHOOK_SECRET;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with, statuses};

async fn order(app: &TestApp, method: &str) -> Value {
    app.put_product("MUG", 10, 1250).await;
    let id = app.place(&[("MUG", 2)], method).await;
    app.wait_terminal(&id).await
}

pub(crate) fn reference(order: &Value) -> String {
    order["payment_reference"]
        .as_str()
        .unwrap_or_else(|| panic!("no payment reference in {order}"))
        .to_owned()
}

/// Waits until the fake saw a 2xx for an `event_type` webhook about `pi` and no recorded event
/// about `pi` is left unprocessed (the event is usually not recorded at all: it reports what the
/// create call's answer already recorded).
async fn wait_webhook_handled(app: &TestApp, pi: &str, event_type: &str) {
    let what = format!("the {event_type} webhook to be handled");
    eventually(Duration::from_secs(15), &what, || async {
        let ledger = app.ledger().await;
        let acknowledged = ledger["deliveries"].as_array().is_some_and(|deliveries| {
            deliveries.iter().any(|d| {
                d["event_type"] == event_type && d["payment_intent"] == pi && d["delivered"] == true
            })
        });
        let unprocessed: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE processed_at IS NULL AND payload->'data'->'object'->>'id' = $1")
            .bind(pi)
            .fetch_one(&app.pool)
            .await
            .unwrap_or(-1);
        (acknowledged && unprocessed == 0).then_some(())
    })
    .await;
}

/// Asserts the order's status and version are still those of `order`.
async fn assert_order_unchanged(app: &TestApp, order: &Value, why: &str) {
    let id = order["order_id"].as_str().unwrap_or_default();
    let (_, after) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(
        (&after["status"], &after["version"]),
        (&order["status"], &order["version"]),
        "{why}"
    );
}

#[tokio::test]
async fn a_card_payment_is_charged_once_and_its_webhook_changes_nothing_after() {
    let app = spawn_app().await;
    let order = order(&app, "pm_card_visa").await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    let pi = reference(&order);
    assert!(pi.starts_with("pi_fake_"), "{pi}");
    assert_eq!(app.charges_of(&pi).await, 1);
    let ledger = app.ledger().await;
    let intent = ledger["intents"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["id"] == pi.as_str()).cloned())
        .unwrap_or_default();
    assert_eq!(
        intent["amount"], 2500,
        "the amount from catalog prices reached Stripe"
    );
    assert_eq!(intent["currency"], "eur");
    assert_eq!(intent["metadata"]["order_id"], order["order_id"]);
    assert_eq!(
        intent["metadata"]["correlation_id"],
        order["correlation_id"]
    );
    // The create call answered `succeeded`, which completed the order; Stripe's webhook still
    // comes and is verified and acknowledged (2xx). It reports what the answer recorded, so it is
    // not recorded (unless it beat the answer: then it is recorded and processed).
    wait_webhook_handled(&app, &pi, "payment_intent.succeeded").await;
    assert_order_unchanged(&app, &order, "the webhook changed nothing").await;
}

#[tokio::test]
async fn a_declined_card_compensates_and_keeps_stripes_code_and_message() {
    let app = spawn_app().await;
    let order = order(&app, "pm_card_chargeDeclined").await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["payment"]["failure"]["code"], "card_declined");
    assert_eq!(
        order["payment"]["failure"]["message"],
        "Your card was declined."
    );
    assert_eq!(app.charges_of(&reference(&order)).await, 0);
    let mug = app.product("MUG").await;
    assert_eq!(
        (mug["on_hand"].as_i64(), mug["reserved"].as_i64()),
        (Some(10), Some(0))
    );
}

#[tokio::test]
async fn a_500_on_the_first_create_is_retried_with_the_same_key_and_charged_once() {
    let app = spawn_app().await;
    let order = order(&app, "pm_fake_fail_first_create").await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    let ledger = app.ledger().await;
    let creates: Vec<(String, u64)> = ledger["creates"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| {
                    (
                        c["idempotency_key"].as_str().unwrap_or_default().to_owned(),
                        c["status"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let key = format!(
        "ordersaga-{}-payment-1",
        order["order_id"].as_str().unwrap_or_default()
    );
    assert_eq!(
        creates,
        vec![(key.clone(), 500), (key, 200)],
        "one failed try, one retry with the same key"
    );
    assert_eq!(app.charges_of(&reference(&order)).await, 1);
}

#[tokio::test]
async fn a_payment_that_stays_processing_completes_when_the_later_webhook_arrives() {
    let app = spawn_app().await;
    let order = order(&app, "pm_fake_processing_then_succeeds").await;
    assert_eq!(order["status"], "COMPLETED");
    assert_eq!(
        statuses(&order),
        [
            "PENDING",
            "STOCK_RESERVED",
            "PAYMENT_PROCESSING",
            "COMPLETED"
        ]
    );
    assert_eq!(app.charges_of(&reference(&order)).await, 1);
}

#[tokio::test]
async fn a_success_after_the_order_was_cancelled_is_refunded_and_the_refund_shows_on_the_order() {
    let app = spawn_app().await;
    let cancelled = order(&app, "pm_fake_fails_then_succeeds").await;
    assert_eq!(cancelled["status"], "CANCELLED");
    let id = cancelled["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pi = reference(&cancelled);
    let refunded = eventually(
        Duration::from_secs(20),
        "the late payment to be refunded",
        || async {
            let (_, order) = app.get_json(&format!("/orders/{id}")).await;
            order["refund_due"]["refund_id"]
                .is_string()
                .then_some(order)
        },
    )
    .await;
    assert_eq!(
        refunded["status"], "CANCELLED",
        "a late payment never resurrects the order"
    );
    assert_eq!(refunded["refund_due"]["reference"], pi.as_str());
    let ledger = app.ledger().await;
    let refunds: Vec<&Value> = ledger["refunds"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|r| r["payment_intent"] == pi.as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(refunds.len(), 1, "refunded exactly once");
    assert_eq!(refunds[0]["id"], refunded["refund_due"]["refund_id"]);
    assert_eq!(
        app.settled_product("MUG").await["on_hand"],
        10,
        "the stock went back on sale"
    );
}

#[tokio::test]
async fn duplicate_webhooks_are_acknowledged_and_processed_once() {
    let app = spawn_app().await;
    let order = order(&app, "pm_fake_duplicate_webhooks").await;
    assert_eq!(order["status"], "COMPLETED");
    let pi = reference(&order);
    // Both copies were delivered (2xx), and the event was recorded once.
    let deliveries = eventually(
        Duration::from_secs(10),
        "both copies to be delivered",
        || async {
            let ledger = app.ledger().await;
            let delivered: Vec<String> = ledger["deliveries"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter(|d| d["payment_intent"] == pi.as_str() && d["delivered"] == true)
                        .filter_map(|d| d["event_id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (delivered.len() == 2).then_some(delivered)
        },
    )
    .await;
    assert_eq!(deliveries[0], deliveries[1], "the same event twice");
    // Recorded at most once: usually not at all, since it reports the success the create call's
    // answer recorded; once if a copy beat that answer (the other copy is then a duplicate).
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE event_id = $1")
            .bind(&deliveries[0])
            .fetch_one(&app.pool)
            .await
            .unwrap_or(-1);
    assert!((0..=1).contains(&recorded), "recorded {recorded} times");
    assert_eq!(app.charges_of(&pi).await, 1);
    assert_order_unchanged(&app, &order, "processed once: the order did not move").await;
}

#[tokio::test]
async fn processing_after_succeeded_does_not_regress_the_payment() {
    let app = spawn_app().await;
    let order = order(&app, "pm_fake_processing_after_succeeded").await;
    assert_eq!(order["status"], "COMPLETED");
    let pi = reference(&order);
    // Wait until the stale `processing` event was acknowledged (the fake saw a 2xx) and, if it
    // was recorded, processed.
    wait_webhook_handled(&app, &pi, "payment_intent.processing").await;
    let status: String = sqlx::query_scalar("SELECT status FROM payments WHERE reference = $1")
        .bind(&pi)
        .fetch_one(&app.pool)
        .await
        .unwrap_or_default();
    assert_eq!(status, "SUCCEEDED");
    let id = order["order_id"].as_str().unwrap_or_default();
    let (_, after) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(
        (after["status"].as_str(), &after["version"]),
        (Some("COMPLETED"), &order["version"])
    );
}

pub(crate) async fn post_webhook(
    app: &TestApp,
    body: &str,
    signature: Option<String>,
) -> (u16, Value) {
    let mut request = app
        .http
        .post(format!("{}/payments/webhook", app.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) fn signed(body: &str) -> Option<String> {
    Some(signature_header(
        DEV_WEBHOOK_SECRET,
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    ))
}

async fn recorded_events(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1)
}

#[tokio::test]
async fn a_webhook_reporting_what_the_create_answer_recorded_is_acknowledged_without_being_recorded()
 {
    let app = spawn_app().await;
    let done = order(&app, "pm_card_visa").await;
    assert_eq!(done["status"], "COMPLETED");
    let pi = reference(&done);
    let event_with = |id: &str, kind: &str, status: &str| {
        json!({"id": id, "object": "event", "type": kind,
            "data": {"object": {"id": pi, "object": "payment_intent", "status": status}}})
        .to_string()
    };
    let known = |event_id: &str| {
        let pool = app.pool.clone();
        let event_id = event_id.to_owned();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM stripe_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_one(&pool)
                .await
                .unwrap_or(-1)
        }
    };

    // The create call's answer recorded `succeeded`: a success (or an older status) changes
    // nothing, so it is acknowledged and not written.
    for (id, kind, status) in [
        ("evt_known_1", "payment_intent.succeeded", "succeeded"),
        ("evt_known_2", "payment_intent.processing", "processing"),
    ] {
        let event = event_with(id, kind, status);
        let (code, body) = post_webhook(&app, &event, signed(&event)).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            (&body["already_applied"], &body["duplicate"]),
            (&json!(true), &json!(false)),
            "{kind}: {body}"
        );
        assert_eq!(known(id).await, 0, "{kind} must not be recorded");
    }
    // A charge this process has not recorded: the durable path, as before.
    let other =
        json!({"id": "evt_unknown_pi", "object": "event", "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_not_ours", "object": "payment_intent"}}})
        .to_string();
    let (code, body) = post_webhook(&app, &other, signed(&other)).await;
    assert_eq!(
        (code, &body["already_applied"]),
        (200, &json!(false)),
        "{body}"
    );
    assert_eq!(known("evt_unknown_pi").await, 1);
    // Nothing moved on the order.
    let (_, after) = app
        .get_json(&format!(
            "/orders/{}",
            done["order_id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(
        (&after["status"], &after["version"]),
        (&done["status"], &done["version"])
    );
}

#[tokio::test]
async fn the_webhook_endpoint_routes_verified_events_once_and_refuses_forged_ones() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 1250).await;
    // This method never sends a webhook: the order waits in PAYMENT_PROCESSING for ours.
    let id = app.place(&[("MUG", 1)], "pm_fake_no_webhook").await;
    let waiting = app.wait_status(&id, "PAYMENT_PROCESSING").await;
    let pi = reference(&waiting);
    let event = json!({"id": "evt_test_1", "object": "event", "type": "payment_intent.succeeded",
        "data": {"object": {"id": pi, "object": "payment_intent", "status": "succeeded", "metadata": {}}}})
    .to_string();

    // Forged, missing, stale and re-serialised signatures: 400, nothing recorded, nothing changes.
    let before = recorded_events(&app).await;
    let forged = Some(signature_header(
        "whsec_attacker",
        chrono::Utc::now().timestamp(),
        event.as_bytes(),
    ));
    let stale = Some(signature_header(
        DEV_WEBHOOK_SECRET,
        chrono::Utc::now().timestamp() - 3600,
        event.as_bytes(),
    ));
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&event).unwrap_or_default())
            .unwrap_or_default();
    for (name, body, signature) in [
        ("forged", event.as_str(), forged),
        ("missing", event.as_str(), None),
        ("replayed after the tolerance", event.as_str(), stale),
        ("re-serialised body", pretty.as_str(), signed(&event)),
    ] {
        let (status, body) = post_webhook(&app, body, signature).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["code"], "invalid_signature", "{name}");
    }
    assert_eq!(recorded_events(&app).await, before);
    let (_, still) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(still["status"], "PAYMENT_PROCESSING");

    // Valid: acknowledged, routed by the PaymentIntent id, order completes.
    let (status, body) = post_webhook(&app, &event, signed(&event)).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(false)));
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "COMPLETED");

    // The same event again: 2xx, marked duplicate, nothing changes.
    let (status, body) = post_webhook(&app, &event, signed(&event)).await;
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)));
    // Out of order: processing after succeeded is acknowledged and does not regress anything.
    let stale_event =
        json!({"id": "evt_test_2", "object": "event", "type": "payment_intent.processing",
        "data": {"object": {"id": pi, "object": "payment_intent", "status": "processing"}}})
        .to_string();
    assert_eq!(
        post_webhook(&app, &stale_event, signed(&stale_event))
            .await
            .0,
        200
    );
    // Unknown PaymentIntent, unknown type: 2xx, ignored.
    let unknown = json!({"id": "evt_test_3", "object": "event", "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_nobody", "object": "payment_intent"}}})
    .to_string();
    assert_eq!(post_webhook(&app, &unknown, signed(&unknown)).await.0, 200);
    let other = json!({"id": "evt_test_4", "object": "event", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}).to_string();
    assert_eq!(post_webhook(&app, &other, signed(&other)).await.0, 200);
    let (status, _) = post_webhook(&app, "not json", signed("not json")).await;
    assert_eq!(status, 400, "an unparseable (but signed) body is refused");

    eventually(
        Duration::from_secs(10),
        "every recorded event to be processed",
        || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE processed_at IS NULL")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap_or(-1);
            (pending == 0).then_some(())
        },
    )
    .await;
    let (_, after) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(
        (after["status"].as_str(), &after["version"]),
        (Some("COMPLETED"), &done["version"]),
        "processed once, no regression"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM payments WHERE reference = $1")
        .bind(&pi)
        .fetch_one(&app.pool)
        .await
        .unwrap_or_default();
    assert_eq!(status, "SUCCEEDED");
}

#[tokio::test]
async fn consecutive_failures_raise_a_streak_alert_event() {
    let app = spawn_app_with(|s| s.payment_failure_streak_alert = 2).await;
    app.put_product("MUG", 10, 1250).await;
    for _ in 0..2 {
        let id = app.place(&[("MUG", 1)], "pm_card_chargeDeclined").await;
        assert_eq!(app.wait_terminal(&id).await["status"], "CANCELLED");
    }
    let (_, js) = adapters::nats::connect(&app.nats_url).await.unwrap();
    let alert = eventually(
        Duration::from_secs(10),
        "the streak alert on the bus",
        || {
            let js = js.clone();
            async move {
                let stream = js.get_stream("payments").await.ok()?;
                stream
                    .get_last_raw_message_by_subject("payment.failure_streak.v1")
                    .await
                    .ok()
            }
        },
    )
    .await;
    let body: Value = serde_json::from_slice(&alert.payload).unwrap_or_default();
    assert_eq!(body["data"]["consecutive_failures"], 2);
    assert_eq!(body["data"]["last_code"], "card_declined");
    // And the metric (process-wide: other tests in this binary may add to it).
    let text = app.metrics_text().await;
    let count: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("payment_failure_streak_alerts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "{text}");
}

#[tokio::test]
async fn readiness_reports_the_payment_provider() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["stripe"]["status"], "up");
    assert_eq!(body["checks"]["stripe"]["api_base"], app.stripe.as_str());
}
