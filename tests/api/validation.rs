//! Bad input gets a clear 4xx with a JSON body naming the field, and changes nothing.

use serde_json::{Value, json};

use crate::helpers::{order_body, spawn_app};

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (
        status,
        response.json::<Value>().await.unwrap_or(Value::Null)["error"].clone(),
    )
}

#[tokio::test]
async fn bad_orders_are_refused_with_the_field_named_and_nothing_is_stored() {
    let app = spawn_app().await;
    app.put_product("MUG", 10, 1250).await;
    app.put_product("USD-ITEM", 10, 100).await;
    sqlx::query("UPDATE products SET currency = 'USD' WHERE sku = 'USD-ITEM'")
        .execute(&app.pool)
        .await
        .unwrap();

    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"sku": format!("S{i}"), "quantity": 1}))
        .collect();
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "quantity 0",
            order_body(&[("MUG", 0)], "pm_card_visa"),
            422,
            Some("items[0].quantity"),
        ),
        (
            "negative quantity",
            order_body(&[("MUG", -3)], "pm_card_visa"),
            422,
            Some("items[0].quantity"),
        ),
        (
            "huge quantity",
            order_body(&[("MUG", 1_000_000)], "pm_card_visa"),
            422,
            Some("items[0].quantity"),
        ),
        (
            "unknown SKU",
            order_body(&[("MUG", 1), ("NOPE", 1)], "pm_card_visa"),
            422,
            Some("items[1].sku"),
        ),
        (
            "malformed SKU",
            order_body(&[("MUG MUG", 1)], "pm_card_visa"),
            422,
            Some("items[0].sku"),
        ),
        (
            "duplicate SKU",
            order_body(&[("MUG", 1), ("MUG", 2)], "pm_card_visa"),
            422,
            Some("items[1].sku"),
        ),
        (
            "no items",
            order_body(&[], "pm_card_visa"),
            422,
            Some("items"),
        ),
        (
            "too many items",
            json!({"customer_id": "c", "items": too_many, "currency": "EUR", "payment_method": "pm_card_visa"}),
            422,
            Some("items"),
        ),
        (
            "bad currency",
            json!({"customer_id": "c", "items": [{"sku": "MUG", "quantity": 1}], "currency": "EURO", "payment_method": "pm_card_visa"}),
            422,
            Some("currency"),
        ),
        (
            "other currency than the catalog",
            json!({"customer_id": "c", "items": [{"sku": "USD-ITEM", "quantity": 1}], "currency": "EUR", "payment_method": "pm_card_visa"}),
            422,
            Some("currency"),
        ),
        (
            "empty customer",
            json!({"customer_id": " ", "items": [{"sku": "MUG", "quantity": 1}], "currency": "EUR", "payment_method": "pm_card_visa"}),
            422,
            Some("customer_id"),
        ),
        (
            "bad payment method",
            json!({"customer_id": "c", "items": [{"sku": "MUG", "quantity": 1}], "currency": "EUR", "payment_method": "4242 4242"}),
            422,
            Some("payment_method"),
        ),
        (
            "wrong type",
            json!({"customer_id": "c", "items": [{"sku": "MUG", "quantity": "two"}], "currency": "EUR", "payment_method": "pm_card_visa"}),
            400,
            Some("items[0].quantity"),
        ),
        (
            "fractional quantity",
            json!({"customer_id": "c", "items": [{"sku": "MUG", "quantity": 1.5}], "currency": "EUR", "payment_method": "pm_card_visa"}),
            400,
            Some("items[0].quantity"),
        ),
        (
            "missing field",
            json!({"customer_id": "c", "items": [{"sku": "MUG", "quantity": 1}], "currency": "EUR"}),
            400,
            None,
        ),
        (
            "client-supplied amount",
            json!({"customer_id": "c", "items": [{"sku": "MUG", "quantity": 1}], "currency": "EUR", "payment_method": "pm_card_visa", "amount_cents": 1}),
            400,
            None,
        ),
    ];
    for (name, body, status, field) in cases {
        let (got, error) = error_of(app.post_order(&body).await).await;
        assert_eq!(got, status, "{name}: {error}");
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "{name}: {error}"
        );
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{name}: {error}");
        }
    }

    let raw = |body: &'static str, content_type: &'static str| {
        app.http
            .post(format!("{}/orders", app.base))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let (status, error) =
        error_of(raw("{\"customer_id\": ", "application/json").await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let (status, _) = error_of(
        raw("customer_id=c", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 415);
    let huge = "x".repeat(70 * 1024);
    let response = app
        .http
        .post(format!("{}/orders", app.base))
        .header("content-type", "application/json")
        .body(format!("{{\"customer_id\":\"{huge}\"}}"))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("body_too_large"))
    );

    let bad_key = app
        .http
        .post(format!("{}/orders", app.base))
        .header("Idempotency-Key", "k".repeat(256))
        .json(&order_body(&[("MUG", 1)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(bad_key).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    assert_eq!((orders, outbox), (0, 0), "refused orders leave no trace");
    assert_eq!(app.product("MUG").await["reserved"], 0);
    // The process keeps serving.
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unknown_and_malformed_order_ids_are_404_and_400() {
    let app = spawn_app().await;
    let (status, body) = app
        .get_json("/orders/0190b6e4-2b7c-7cc4-9a4e-0d5d1f2f6a11")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = app.get_json("/orders/not-an-id").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("order_id"))
    );
    let (status, body) = app
        .get_json("/orders/0190b6e4-2b7c-7cc4-9a4e-0d5d1f2f6a11?wait=forever")
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("wait"))
    );
    let (status, body) = app.get_json("/no/such/route").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn order_placement_is_rate_limited_per_client_with_retry_after() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.order_rate_limit_per_sec = 1;
        s.order_rate_limit_burst = 3;
    })
    .await;
    app.put_product("MUG", 100, 100).await;
    let body = order_body(&[("MUG", 1)], "pm_card_visa");
    for _ in 0..3 {
        assert_eq!(app.post_order(&body).await.status(), 202);
    }
    let limited = app.post_order(&body).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let error: Value = limited.json().await.unwrap_or_default();
    assert_eq!(error["error"]["code"], "rate_limited");
    let other = app
        .http
        .post(format!("{}/orders", app.base))
        .header("X-Client-Key", "shop-b")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202, "another client has its own allowance");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    assert_eq!(orders, 4, "the limited request stored nothing");
}
