//! A stand-in for ordersaga that answers at once, to measure what the load generator itself
//! costs (its CPU per order) without a real server in the way:
//!
//! ```sh
//! cargo run --release -p load-tests --example mock_server -- 127.0.0.1:18282
//! /usr/bin/time -v target/release/load-tests --url http://127.0.0.1:18282 --scenario throughput --duration 30s
//! ```
//!
//! Orders are decided when placed (completed when the SKU has the units, else cancelled out of
//! stock); `GET /orders/{id}` answers with a body shaped like ordersaga's (about 1.5 KB). Every
//! `MOCK_429_EVERY`-th placement (0: none) is answered 429, and `MOCK_DELAY_MS` holds each
//! `GET /orders/{id}?wait=` that long first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

#[derive(Default)]
struct Mock {
    stock: Mutex<HashMap<String, i64>>,
    orders: Mutex<HashMap<Uuid, (bool, String, i64)>>,
    placed: AtomicU64,
    every_429: u64,
    delay: Duration,
}

#[derive(Deserialize)]
struct Product {
    on_hand: i64,
}

#[derive(Deserialize)]
struct Place {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    sku: String,
    quantity: i64,
}

#[derive(Deserialize)]
struct Wait {
    wait: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn put_product(
    State(mock): State<Arc<Mock>>,
    Path(sku): Path<String>,
    Json(p): Json<Product>,
) -> Response {
    lock(&mock.stock).insert(sku.clone(), p.on_hand);
    Json(json!({"sku": sku, "on_hand": p.on_hand, "reserved": 0})).into_response()
}

async fn get_product(State(mock): State<Arc<Mock>>, Path(sku): Path<String>) -> Response {
    match lock(&mock.stock).get(&sku) {
        Some(on_hand) => {
            Json(json!({"sku": sku, "on_hand": on_hand, "reserved": 0})).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn place(State(mock): State<Arc<Mock>>, Json(body): Json<Place>) -> Response {
    let n = mock.placed.fetch_add(1, Ordering::Relaxed) + 1;
    if mock.every_429 > 0 && n % mock.every_429 == 0 {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("1"));
        return (StatusCode::TOO_MANY_REQUESTS, headers).into_response();
    }
    let Some(item) = body.items.first() else {
        return StatusCode::UNPROCESSABLE_ENTITY.into_response();
    };
    let completed = {
        let mut stock = lock(&mock.stock);
        match stock.get_mut(&item.sku) {
            Some(on_hand) if *on_hand >= item.quantity => {
                *on_hand -= item.quantity;
                true
            }
            Some(_) => false,
            None => return StatusCode::UNPROCESSABLE_ENTITY.into_response(),
        }
    };
    let id = Uuid::new_v4();
    lock(&mock.orders).insert(id, (completed, item.sku.clone(), item.quantity));
    (
        StatusCode::ACCEPTED,
        Json(json!({"order_id": id, "status": "PENDING", "correlation_id": id.to_string()})),
    )
        .into_response()
}

async fn get_order(
    State(mock): State<Arc<Mock>>,
    Path(id): Path<Uuid>,
    Query(q): Query<Wait>,
) -> Response {
    if q.wait.is_some() && !mock.delay.is_zero() {
        tokio::time::sleep(mock.delay).await;
    }
    let Some((completed, sku, quantity)) = lock(&mock.orders).get(&id).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (status, reason) = if completed {
        ("COMPLETED", serde_json::Value::Null)
    } else {
        (
            "CANCELLED",
            json!(format!(
                "out of stock: {sku} (requested {quantity}, available 0)"
            )),
        )
    };
    let at = "2026-01-01T00:00:00.000000Z";
    Json(json!({
        "order_id": id, "status": status, "customer_id": "load-test",
        "lines": [{"sku": sku, "quantity": quantity, "unit_price_cents": 100, "line_total_cents": 100 * quantity}],
        "amount_cents": 100 * quantity, "currency": "EUR", "payment_method": "pm_card_visa",
        "payment_reference": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "payment": {"reference": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "status": "SUCCEEDED", "attempts": 1},
        "cancel_reason": reason, "compensating": false, "refund_due": null,
        "correlation_id": id.to_string(), "version": 4, "created_at": at, "updated_at": at,
        "history": [
            {"status": "PENDING", "at": at, "reason": null},
            {"status": "STOCK_RESERVED", "at": at, "reason": null},
            {"status": "PAYMENT_PROCESSING", "at": at, "reason": null},
            {"status": status, "at": at, "reason": null},
        ],
    }))
    .into_response()
}

async fn metrics(State(mock): State<Arc<Mock>>) -> String {
    format!(
        "# TYPE order_actors_live gauge\norder_actors_live {}\n",
        lock(&mock.orders).len().min(1000)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18282".into());
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mock = Arc::new(Mock {
        every_429: env("MOCK_429_EVERY"),
        delay: Duration::from_millis(env("MOCK_DELAY_MS")),
        ..Mock::default()
    });
    let app = Router::new()
        .route(
            "/inventory/products/{sku}",
            get(get_product).put(put_product),
        )
        .route("/orders", post(place))
        .route("/orders/{id}", get(get_order))
        .route("/metrics", get(metrics))
        .route("/health/ready", get(|| async { "ready" }))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("mock ordersaga on http://{addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
