//! The catalog API: create, read, list and restock products.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn products_are_created_read_and_listed_with_availability() {
    let app = spawn_app().await;
    let created = app.put_product("B-ITEM", 7, 350).await;
    assert_eq!(created["available"], 7);
    app.put_product("A-ITEM", 3, 100).await;
    app.put_product("C-ITEM", 0, 100).await;

    let product = app.product("B-ITEM").await;
    assert_eq!(
        (
            product["on_hand"].as_i64(),
            product["reserved"].as_i64(),
            product["available"].as_i64()
        ),
        (Some(7), Some(0), Some(7))
    );

    let (status, page) = app.get_json("/inventory/products?limit=2").await;
    assert_eq!(status, 200);
    let skus: Vec<&str> = page["products"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["sku"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(skus, ["A-ITEM", "B-ITEM"]);
    assert_eq!(page["next_after"], "B-ITEM");
    let (_, rest) = app
        .get_json("/inventory/products?limit=2&after=B-ITEM")
        .await;
    assert_eq!(rest["products"][0]["sku"], "C-ITEM");
    assert!(rest["next_after"].is_null());

    let (status, _) = app.get_json("/inventory/products?limit=5000").await;
    assert_eq!(status, 400);
    let (status, body) = app.get_json("/inventory/products/NOPE").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = app.get_json("/inventory/products/bad%20sku").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("sku"))
    );
}

#[tokio::test]
async fn a_shop_s_skus_are_taken_as_written_and_case_keeps_them_apart() {
    let app = spawn_app().await;
    app.put_product("sku-123", 5, 100).await;
    app.put_product("SKU-123", 9, 100).await;
    app.put_product("tee.red_xl", 2, 100).await;
    assert_eq!(app.product("sku-123").await["on_hand"], 5);
    assert_eq!(app.product("SKU-123").await["on_hand"], 9);

    let id = app
        .place(&[("sku-123", 2), ("tee.red_xl", 1)], "pm_card_visa")
        .await;
    let order = app.wait_terminal(&id).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    assert_eq!(order["lines"][0]["sku"], "sku-123", "{order}");
    assert_eq!(app.settled_product("sku-123").await["on_hand"], 3);
    assert_eq!(app.settled_product("tee.red_xl").await["on_hand"], 1);
    assert_eq!(
        app.product("SKU-123").await["on_hand"],
        9,
        "its namesake untouched"
    );
}

#[tokio::test]
async fn bad_products_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"name": "", "unit_price_cents": 1, "currency": "EUR", "on_hand": 1}),
            "name",
        ),
        (
            json!({"name": "x", "unit_price_cents": -1, "currency": "EUR", "on_hand": 1}),
            "unit_price_cents",
        ),
        (
            json!({"name": "x", "unit_price_cents": 1, "currency": "E", "on_hand": 1}),
            "currency",
        ),
        (
            json!({"name": "x", "unit_price_cents": 1, "currency": "EUR", "on_hand": -5}),
            "on_hand",
        ),
        (
            json!({"name": "x", "unit_price_cents": 1, "currency": "EUR", "on_hand": 1, "low_stock_threshold": -1}),
            "low_stock_threshold",
        ),
    ];
    for (body, field) in cases {
        let response = app
            .http
            .put(format!("{}/inventory/products/X1", app.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{body}");
        let error: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(error["error"]["field"], field, "{body}");
    }
    let (status, _) = app.get_json("/inventory/products/X1").await;
    assert_eq!(status, 404, "nothing was created");
}

#[tokio::test]
async fn on_hand_cannot_drop_below_what_is_reserved() {
    let app = spawn_app().await;
    app.put_product("HELD", 10, 100).await;
    sqlx::query("UPDATE products SET reserved = 6 WHERE sku = 'HELD'")
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app
        .http
        .put(format!("{}/inventory/products/HELD", app.base))
        .json(&json!({"name": "held", "unit_price_cents": 100, "currency": "EUR", "on_hand": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let error: serde_json::Value = response.json().await.unwrap_or_default();
    assert_eq!(error["error"]["field"], "on_hand");
    assert_eq!(app.product("HELD").await["on_hand"], 10);
}
