//! A barrage of generated bad inputs: every one gets a 4xx with the JSON error shape, the process
//! keeps serving, and nothing changes.

use serde_json::{Value, json};

use adapters::stripe::signature_header;
use ordersaga::configuration::DEV_WEBHOOK_SECRET;

use crate::helpers::spawn_app_with;

/// A tiny deterministic generator (xorshift), so a failure is reproducible.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn bad_values() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1.5),
        json!(1e300),
        json!(i64::MIN),
        json!(""),
        json!(" "),
        json!("x".repeat(5000)),
        json!("\u{0000}"),
        json!("ÄÖÜ"),
        json!([]),
        json!([1, 2]),
        json!({}),
        json!({"nested": {"deep": [1]}}),
        json!("pm card"),
        json!("eur1"),
        json!("DROP TABLE products;"),
    ]
}

fn valid() -> Value {
    json!({"customer_id": "c-1", "items": [{"sku": "MUG", "quantity": 1}], "currency": "EUR", "payment_method": "pm_card_visa"})
}

/// A valid order with exactly one thing wrong.
fn mutate(g: &mut Gen) -> Value {
    let mut body = valid();
    let values = bad_values();
    let not_a_string = [
        json!(null),
        json!(true),
        json!(-1),
        json!(1.5),
        json!([]),
        json!({}),
    ];
    match g.next() % 9 {
        0 => {
            let bad = [
                json!(""),
                json!("   "),
                json!("x".repeat(65)),
                json!("a\u{0007}b"),
            ];
            body["customer_id"] = if g.next().is_multiple_of(2) {
                g.pick(&bad).clone()
            } else {
                g.pick(&not_a_string).clone()
            }
        }
        1 => {
            let bad = [
                json!(""),
                json!("EU"),
                json!("EURO"),
                json!("E1R"),
                json!("€€€"),
                json!("USD"),
            ];
            body["currency"] = if g.next().is_multiple_of(2) {
                g.pick(&bad).clone()
            } else {
                g.pick(&not_a_string).clone()
            }
        }
        2 => {
            let bad = [
                json!(""),
                json!("pm card"),
                json!("x".repeat(101)),
                json!("ÄÖÜ"),
                json!("DROP TABLE products;"),
            ];
            body["payment_method"] = if g.next().is_multiple_of(2) {
                g.pick(&bad).clone()
            } else {
                g.pick(&not_a_string).clone()
            }
        }
        3 => {
            body["items"][0]["quantity"] = g
                .pick(&[
                    json!(0),
                    json!(-5),
                    json!(1001),
                    json!(1_000_000),
                    json!("1"),
                    json!(1.5),
                    json!(null),
                ])
                .clone()
        }
        4 => {
            body["items"][0]["sku"] = g
                .pick(&[
                    json!("mug"),
                    json!("NOPE"),
                    json!(""),
                    json!("A B"),
                    json!(7),
                    json!("Z".repeat(65)),
                ])
                .clone()
        }
        5 => {
            body["items"] = g
                .pick(&[
                    json!([]),
                    json!(null),
                    json!("MUG"),
                    json!([{"sku": "MUG"}]),
                    json!([{"quantity": 1}]),
                    json!(
                        (0..101)
                            .map(|i| json!({"sku": format!("S{i}"), "quantity": 1}))
                            .collect::<Vec<_>>()
                    ),
                ])
                .clone()
        }
        6 => {
            let field = *g.pick(&["customer_id", "items", "currency", "payment_method"]);
            if let Some(map) = body.as_object_mut() {
                map.remove(field);
            }
        }
        7 => body[*g.pick(&["amount_cents", "status", "unit_price_cents", "order_id"])] = json!(1),
        _ => body = g.pick(&values).clone(),
    }
    body
}

#[tokio::test]
async fn hundreds_of_generated_bad_requests_get_4xx_and_change_nothing() {
    let app = spawn_app_with(|s| s.order_rate_limit_per_sec = 0).await;
    app.put_product("MUG", 10, 100).await;
    let product_before = app.product("MUG").await;
    let mut g = Gen(0x5eed_1234_abcd_9876);
    let mut checked = 0;
    let mut expect_4xx = |status: u16, body: &str, what: &str| {
        assert!((400..500).contains(&status), "{what}: got {status}: {body}");
        let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        assert!(
            parsed["error"]["code"].is_string() && parsed["error"]["message"].is_string(),
            "{what}: not the error shape: {body}"
        );
        checked += 1;
    };

    for i in 0..300 {
        let body = mutate(&mut g);
        let r = app.post_order(&body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        expect_4xx(status, &text, &format!("order #{i} {body}"));
    }
    let raw_bodies: [&[u8]; 8] = [
        b"",
        b"{",
        b"[]",
        b"null",
        b"{\"customer_id\":",
        b"\xff\xfe",
        b"{}{}",
        b"{\"a\":1}garbage",
    ];
    for raw in raw_bodies {
        let r = app
            .http
            .post(format!("{}/orders", app.base))
            .header("content-type", "application/json")
            .body(raw.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        expect_4xx(
            status,
            &r.text().await.unwrap_or_default(),
            &format!("raw {raw:?}"),
        );
    }
    for content_type in ["text/plain", "application/xml", "multipart/form-data"] {
        let r = app
            .http
            .post(format!("{}/orders", app.base))
            .header("content-type", content_type)
            .body(valid().to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        expect_4xx(status, &r.text().await.unwrap_or_default(), content_type);
    }
    for path in [
        "/orders/x",
        "/orders/123",
        "/orders/%00",
        "/orders/0190b6e4-2b7c-7cc4-9a4e-0d5d1f2f6a11",
        "/orders/0190b6e4-2b7c-7cc4-9a4e-0d5d1f2f6a11?wait=99s",
        "/inventory/products/lower",
        "/inventory/products/NOPE",
        "/inventory/products?limit=0",
        "/inventory/products?limit=abc",
        "/inventory/products?after=bad%20sku",
    ] {
        let (status, body) = app.get_json(path).await;
        expect_4xx(status, &body.to_string(), path);
    }
    for _ in 0..40 {
        let values = bad_values();
        let mut product =
            json!({"name": "x", "unit_price_cents": 1, "currency": "EUR", "on_hand": 1});
        let field = *g.pick(&[
            "name",
            "unit_price_cents",
            "currency",
            "on_hand",
            "low_stock_threshold",
            "extra",
        ]);
        product[field] = g.pick(&values).clone();
        let r = app
            .http
            .put(format!("{}/inventory/products/MUG", app.base))
            .json(&product)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        // Some mutations are valid (e.g. a boolean-free field set to an acceptable value): skip those.
        if status == 200 {
            app.put_product("MUG", 10, 100).await;
            continue;
        }
        expect_4xx(status, &text, &format!("product {product}"));
    }
    let event = json!({"id": "evt_x", "object": "event", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_x"}}}).to_string();
    let now = chrono::Utc::now().timestamp();
    for signature in [
        None,
        Some("t=1,v1=00".to_owned()),
        Some(signature_header("whsec_forged", now, event.as_bytes())),
        Some(signature_header(
            DEV_WEBHOOK_SECRET,
            now - 10_000,
            event.as_bytes(),
        )),
    ] {
        let mut request = app
            .http
            .post(format!("{}/payments/webhook", app.base))
            .body(event.clone());
        if let Some(s) = &signature {
            request = request.header("Stripe-Signature", s);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        expect_4xx(
            status,
            &r.text().await.unwrap_or_default(),
            &format!("webhook {signature:?}"),
        );
    }
    assert!(checked > 350, "{checked} requests checked");

    // Nothing changed, and the process still serves.
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&app.pool)
        .await
        .unwrap_or(-1);
    assert_eq!((orders, outbox, events), (0, 0, 0));
    let after = app.product("MUG").await;
    assert_eq!(
        (
            after["on_hand"].clone(),
            after["reserved"].clone(),
            after["unit_price_cents"].clone()
        ),
        (
            product_before["on_hand"].clone(),
            product_before["reserved"].clone(),
            product_before["unit_price_cents"].clone()
        )
    );
    assert_eq!(app.get_json("/health").await.0, 200);
    let id = app.place(&[("MUG", 1)], "pm_card_visa").await;
    assert_eq!(
        app.wait_terminal(&id).await["status"],
        "COMPLETED",
        "a good order still goes through"
    );
}
