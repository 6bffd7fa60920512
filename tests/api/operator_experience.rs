//! What operators rely on, end to end: metrics that move with the flows, the low-stock alert,
//! pausing and resuming a saga, and log lines that carry one correlation id across every hop.
//!
//! The metrics recorder is process-wide and tests run in parallel in this binary, so metric
//! assertions compare a counter before and after this test's own flows (it must have grown at
//! least by what this test caused), and gauges are read through labels no other test uses.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    ChildProcess, TestDb, TestNats, eventually, free_port, spawn_app, spawn_app_with, wait_healthy,
};
use crate::inspection::{TOKEN, admin_get, admin_post};
use crate::payments::{post_webhook, reference, signed};

/// The value of one series in Prometheus text: `name` with at least the given labels.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match key.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            let wanted = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            (metric == name && wanted).then(|| value.parse::<f64>().ok())?
        })
        .reduce(f64::max)
}

/// A counter series (name, labels) and by how much it must have grown at least.
type Expectation = (&'static str, Vec<(&'static str, &'static str)>, f64);

#[tokio::test]
async fn metrics_move_as_orders_flow_through_every_step() {
    let app = spawn_app().await;
    app.put_product("OBS-METRICS", 7, 500).await;
    let before = app.metrics_text().await;
    let counter =
        |text: &str, name: &str, labels: &[(&str, &str)]| series(text, name, labels).unwrap_or(0.0);

    let paid = app.place(&[("OBS-METRICS", 2)], "pm_card_visa").await;
    let declined = app
        .place(&[("OBS-METRICS", 1)], "pm_card_chargeDeclined")
        .await;
    assert_eq!(app.wait_terminal(&paid).await["status"], "COMPLETED");
    assert_eq!(app.wait_terminal(&declined).await["status"], "CANCELLED");

    // Each webhook reports what the create call's answer already said. Usually that answer is
    // recorded first, and the endpoint acknowledges the event as `no_change` without recording
    // it; when the webhook wins the race it is `accepted`, and the worker then finds it changes
    // nothing (`no_change`) or routes it (`routed`). Each case counts.
    let webhook_handled = |text: &str, kind: &str| {
        ["no_change", "routed"]
            .iter()
            .map(|result| {
                counter(
                    text,
                    "stripe_webhook_events_total",
                    &[("type", kind), ("result", result)],
                )
            })
            .sum::<f64>()
    };
    let webhooks_handled = |text: &str| {
        ["payment_intent.succeeded", "payment_intent.payment_failed"]
            .iter()
            .all(|kind| webhook_handled(text, kind) - webhook_handled(&before, kind) >= 1.0)
    };
    // Counters recorded on the way (the webhook worker and the relay finish asynchronously).
    let grew = |after: &str, name: &str, labels: &[(&str, &str)], by: f64| {
        counter(after, name, labels) - counter(&before, name, labels) >= by
    };
    let expectations: Vec<Expectation> = vec![
        ("order_saga_started_total", vec![], 2.0),
        ("order_saga_completed_total", vec![], 1.0),
        ("order_saga_failed_total", vec![], 1.0),
        ("order_saga_compensated_total", vec![], 1.0),
        ("order_saga_duration_seconds_count", vec![], 2.0),
        (
            "order_saga_step_duration_seconds_count",
            vec![("step", "inventory")],
            2.0,
        ),
        (
            "order_saga_step_duration_seconds_count",
            vec![("step", "payment")],
            2.0,
        ),
        (
            "order_saga_step_duration_seconds_count",
            vec![("step", "compensation")],
            1.0,
        ),
        (
            "jetstream_messages_published_total",
            vec![("stream", "orders")],
            2.0,
        ),
        (
            "jetstream_messages_published_total",
            vec![("stream", "inventory")],
            2.0,
        ),
        (
            "jetstream_messages_published_total",
            vec![("stream", "payments")],
            2.0,
        ),
        // All roles run here: commands and answers go from actor to actor, not through JetStream
        // (two reservations, a commit, a release; two charges; five answers).
        (
            "postman_delivered_total",
            vec![("receiver", "inventory")],
            4.0,
        ),
        (
            "postman_delivered_total",
            vec![("receiver", "payments")],
            2.0,
        ),
        ("postman_delivered_total", vec![("receiver", "orders")], 5.0),
        (
            "http_requests_total",
            vec![("method", "POST"), ("route", "/orders"), ("status", "202")],
            2.0,
        ),
    ];
    let after = eventually(
        Duration::from_secs(20),
        "every counter to reflect the two orders",
        || async {
            let after = app.metrics_text().await;
            (expectations
                .iter()
                .all(|(name, labels, by)| grew(&after, name, labels, *by))
                && webhooks_handled(&after))
            .then_some(after)
        },
    )
    .await;
    for (name, labels, by) in &expectations {
        assert!(grew(&after, name, labels, *by), "{name} {labels:?}");
    }
    for consumer in [
        "inventory-orders",
        "payment-requests",
        "order-saga-inventory",
        "order-saga-payments",
    ] {
        let consumed = |text: &str| {
            counter(
                text,
                "jetstream_messages_consumed_total",
                &[("consumer", consumer), ("outcome", "ack")],
            )
        };
        assert_eq!(
            consumed(&after) - consumed(&before),
            0.0,
            "no JetStream delivery on an order's way when every role runs here ({consumer})"
        );
    }
    // Histograms have real buckets (alerts and dashboards take quantiles from them).
    assert!(
        after.contains("# TYPE order_saga_duration_seconds histogram"),
        "{after}"
    );
    assert!(
        series(
            &after,
            "order_saga_duration_seconds_bucket",
            &[("le", "+Inf")]
        )
        .is_some()
    );
    // Gauges: actor and mailbox figures exist; the sampler reports this test's SKU's stock.
    for gauge in [
        "order_actors_live",
        "order_sagas_stuck",
        "inventory_reservations_active",
        "outbox_lag_seconds",
        "ordersaga_ready",
    ] {
        assert!(series(&after, gauge, &[]).is_some(), "{gauge} missing");
    }
    assert!(series(&after, "actor_mailbox_depth", &[("actor", "order_saga")]).is_some());
    assert!(
        series(
            &after,
            "actor_mailbox_depth",
            &[("actor", "inventory_shard")]
        )
        .is_some()
    );
    let settled = app.settled_product("OBS-METRICS").await;
    let available = settled["available"].as_f64().unwrap_or(-1.0);
    assert_eq!(available, 5.0, "2 sold, 1 released: {settled}");
    eventually(
        Duration::from_secs(15),
        "the stock gauge to show the settled stock",
        || async {
            let text = app.metrics_text().await;
            (series(
                &text,
                "inventory_stock_available",
                &[("sku", "OBS-METRICS")],
            ) == Some(available))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_reservation_that_crosses_the_low_stock_threshold_alerts_once() {
    let app = spawn_app().await;
    let response = app
        .http
        .put(format!("{}/inventory/products/OBS-LOW", app.base))
        .json(&json!({"name": "Low", "unit_price_cents": 100, "currency": "EUR", "on_hand": 10, "low_stock_threshold": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let alerts = |text: &str| series(text, "inventory_low_stock_alerts_total", &[]).unwrap_or(0.0);
    let before = alerts(&app.metrics_text().await);

    // 10 → 6 (above the threshold), 6 → 3 (crosses it), 3 → 2 (already below: no new alert).
    let mut orders = Vec::new();
    for quantity in [4, 3, 1] {
        let id = app.place(&[("OBS-LOW", quantity)], "pm_card_visa").await;
        assert_eq!(app.wait_terminal(&id).await["status"], "COMPLETED");
        orders.push(id);
    }

    let client = async_nats::connect(&app.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("inventory").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: "inventory.low_stock.v1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let info = consumer.get_info().await.unwrap();
    assert_eq!(info.num_pending, 1, "one alert for one crossing");
    let message = stream
        .get_last_raw_message_by_subject("inventory.low_stock.v1")
        .await
        .unwrap();
    let event: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
    assert_eq!(event["type"], "inventory.low_stock.v1");
    assert_eq!(
        event["data"],
        json!({"sku": "OBS-LOW", "available": 3, "threshold": 3})
    );
    assert_eq!(
        event["order_id"],
        orders[1].as_str(),
        "the crossing order's ids"
    );
    assert!(event["correlation_id"].is_string());
    assert!(alerts(&app.metrics_text().await) - before >= 1.0);
}

fn history_text(order: &Value) -> String {
    order["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| e["reason"].as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_paused_saga_keeps_what_arrives_and_acts_on_it_when_resumed() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    app.put_product("OBS-PAUSE", 10, 700).await;
    let id = app.place(&[("OBS-PAUSE", 2)], "pm_fake_no_webhook").await;
    let waiting = app.wait_status(&id, "PAYMENT_PROCESSING").await;

    let by = json!({"by": "carol", "reason": "suspected fraud"});
    let (status, body) = admin_post(&app, &format!("/actors/orders/{id}/pause"), by.clone()).await;
    assert_eq!((status, &body["applied"]), (200, &json!(true)), "{body}");
    let (status, body) = admin_post(&app, &format!("/actors/orders/{id}/pause"), by.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("not_applicable")),
        "already paused"
    );
    let (_, inspected) = admin_get(&app, &format!("/actors/orders/{id}"), Some(TOKEN)).await;
    assert_eq!(
        inspected["current_step"],
        "paused by an operator (resume to continue)"
    );
    assert!(
        inspected["pending_timer"].is_null(),
        "the deadline is held: {inspected}"
    );
    assert_eq!(inspected["paused"]["by"], "carol");
    let (status, _) = admin_post(&app, &format!("/actors/orders/{id}/retry"), by.clone()).await;
    assert_eq!(status, 409, "other actions wait for the resume");

    // The provider reports success while the saga is paused: kept, not acted on.
    let pi = reference(&waiting);
    let event = json!({"id": "evt_paused_1", "object": "event", "type": "payment_intent.succeeded",
        "data": {"object": {"id": pi, "object": "payment_intent", "status": "succeeded", "metadata": {}}}})
    .to_string();
    let (status, _) = post_webhook(&app, &event, signed(&event)).await;
    assert_eq!(status, 200);
    let held = eventually(
        Duration::from_secs(15),
        "the success to be held by the paused saga",
        || async {
            let (_, o) = app.get_json(&format!("/orders/{id}")).await;
            history_text(&o)
                .contains("payment_succeeded held while paused")
                .then_some(o)
        },
    )
    .await;
    assert_eq!(held["status"], "PAYMENT_PROCESSING", "nothing acted on");

    let resume = json!({"by": "dave", "reason": "checked with the bank"});
    let (status, body) = admin_post(&app, &format!("/actors/orders/{id}/resume"), resume).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("COMPLETED")),
        "{body}"
    );
    let done = app.wait_terminal(&id).await;
    assert_eq!(done["status"], "COMPLETED");
    let history = history_text(&done);
    assert!(
        history.contains("paused by operator carol: suspected fraud")
            && history.contains("resumed by operator dave: checked with the bank"),
        "{history}"
    );
    assert_eq!(app.settled_product("OBS-PAUSE").await["on_hand"], 8);
    let (status, _) = admin_post(
        &app,
        &format!("/actors/orders/{id}/resume"),
        json!({"by": "dave", "reason": "again"}),
    )
    .await;
    assert_eq!(status, 409, "a finished order is not paused");
}

/// One log line (a JSON object) as written by the binary.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line.get(name)
        .or_else(|| line.get("span").and_then(|s| s.get(name)))
        .and_then(Value::as_str)
}

#[tokio::test]
async fn every_hop_of_an_order_logs_the_same_correlation_id() {
    ordersaga::install_crypto_provider();
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let port = free_port();
    let log = std::env::temp_dir().join(format!("ordersaga-hops-{}.jsonl", uuid::Uuid::new_v4()));
    let mut process = ChildProcess::ordersaga_logging(
        &["serve"],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("NATS_URL", nats.url.clone()),
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("SEED_DEMO_CATALOG", "false".to_owned()),
            ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            (
                "RUST_LOG",
                "warn,ordersaga=debug,actors=debug,adapters=debug".to_owned(),
            ),
        ],
        &log,
    );
    wait_healthy(port).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let put = http
        .put(format!("{base}/inventory/products/OBS-LOG"))
        .json(&json!({"name": "Log", "unit_price_cents": 900, "currency": "EUR", "on_hand": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let correlation_id = format!("hop-test-{}", uuid::Uuid::new_v4());
    let placed: Value = http
        .post(format!("{base}/orders"))
        .header("X-Correlation-Id", &correlation_id)
        // A payment that succeeds later, so the outcome reaches the saga through the webhook
        // worker (a card paid at once completes from the create answer, and its webhook is
        // acknowledged without being written).
        .json(&crate::helpers::order_body(
            &[("OBS-LOG", 1)],
            "pm_fake_processing_then_succeeds",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(placed["correlation_id"], correlation_id.as_str());
    let order_id = placed["order_id"].as_str().unwrap_or_default().to_owned();

    // Every hop writes at least one line about this order: wait for all of them.
    let hops = [
        ("HTTP", "ordersaga::http::orders"),
        ("saga actor", "actors::orders"),
        // Every role runs in this process: commands pass through the postman, not a consumer.
        ("postman", "actors::postman"),
        ("inventory", "actors::inventory"),
        ("Stripe call", "adapters::stripe::client"),
        ("webhook", "ordersaga::http::webhooks"),
        ("webhook worker", "adapters::stripe::inbox"),
    ];
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let about_order = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| field(l, "order_id") == Some(order_id.as_str()))
            .cloned()
            .collect()
    };
    let lines = eventually(
        Duration::from_secs(30),
        "a log line from every hop",
        || async {
            let lines = about_order(&read());
            let targets: BTreeSet<&str> =
                lines.iter().filter_map(|l| l["target"].as_str()).collect();
            hops.iter()
                .all(|(_, prefix)| targets.iter().any(|t| t.starts_with(prefix)))
                .then_some(lines.clone())
        },
    )
    .await;
    process.kill();
    let _ = std::fs::remove_file(&log);
    for line in &lines {
        assert_eq!(
            field(line, "correlation_id"),
            Some(correlation_id.as_str()),
            "a line about the order without its correlation id: {line}"
        );
    }
    for (hop, prefix) in hops {
        assert!(
            lines
                .iter()
                .any(|l| l["target"].as_str().is_some_and(|t| t.starts_with(prefix))),
            "no {hop} line"
        );
    }
}
