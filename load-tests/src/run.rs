//! One load run against a running ordersaga.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use rand::Rng;
use serde_json::{Value, json};

use crate::report::{LoadReport, Percentiles};

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub base_url: String,
    pub orders: usize,
    pub concurrency: usize,
    /// Number of SKUs created for the run (named `LT-<run>-<n>`, so runs never interfere).
    pub skus: usize,
    /// Units on hand of each SKU at the start.
    pub stock_per_sku: i64,
    /// Share of orders (0..=1) that go to the first SKU, the "hot" one.
    pub hot_share: f64,
    /// Share of orders (0..=1) paid with a card that is declined.
    pub decline_share: f64,
    /// Largest quantity per order (each order asks for 1..=max units of one SKU).
    pub max_quantity: i64,
    /// How long to wait for one order to become terminal.
    pub order_timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".into(),
            orders: 100,
            concurrency: 100,
            skus: 10,
            stock_per_sku: 1000,
            hot_share: 0.0,
            decline_share: 0.0,
            max_quantity: 3,
            order_timeout: Duration::from_secs(60),
        }
    }
}

struct Outcome {
    sku: usize,
    quantity: i64,
    status: Option<String>,
    latency: Option<Duration>,
    request_failed: bool,
}

pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    if config.orders == 0 || config.concurrency == 0 || config.skus == 0 || config.max_quantity < 1
    {
        bail!("orders, concurrency, skus and max quantity must all be at least 1");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .timeout(Duration::from_secs(35))
        .build()
        .context("building the HTTP client")?;
    let base = config.base_url.trim_end_matches('/').to_owned();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase();
    let skus: Vec<String> = (0..config.skus)
        .map(|i| format!("LT-{run_id}-{i}"))
        .collect();
    for sku in &skus {
        let response = client
            .put(format!("{base}/inventory/products/{sku}"))
            .json(&json!({"name": "load test item", "unit_price_cents": 100, "currency": "EUR", "on_hand": config.stock_per_sku}))
            .send()
            .await
            .with_context(|| format!("creating {sku}: is ordersaga running at {base}?"))?;
        if !response.status().is_success() {
            bail!(
                "creating {sku} failed: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
    }

    let client = Arc::new(client);
    let skus = Arc::new(skus);
    let started = Instant::now();
    let outcomes: Vec<Outcome> =
        futures::stream::iter(0..config.orders)
            .map(|_| {
                let (sku, quantity, declined) = {
                    let mut rng = rand::rng();
                    let sku =
                        if config.skus > 1 && !rng.random_bool(config.hot_share.clamp(0.0, 1.0)) {
                            rng.random_range(0..config.skus)
                        } else {
                            0
                        };
                    (
                        sku,
                        rng.random_range(1..=config.max_quantity),
                        rng.random_bool(config.decline_share.clamp(0.0, 1.0)),
                    )
                };
                let client = client.clone();
                let skus = skus.clone();
                let base = base.clone();
                let timeout = config.order_timeout;
                async move {
                    one_order(&client, &base, &skus[sku], sku, quantity, declined, timeout).await
                }
            })
            .buffer_unordered(config.concurrency)
            .collect()
            .await;
    let elapsed = started.elapsed();

    let mut report = LoadReport {
        orders: config.orders,
        concurrency: config.concurrency,
        elapsed_s: elapsed.as_secs_f64(),
        orders_per_s: config.orders as f64 / elapsed.as_secs_f64().max(1e-9),
        ..Default::default()
    };
    let mut latencies = Vec::with_capacity(outcomes.len());
    let mut committed: HashMap<usize, i64> = HashMap::new();
    for o in &outcomes {
        if o.request_failed {
            report.failed_requests += 1;
        }
        match o.status.as_deref() {
            Some("COMPLETED") => {
                report.completed += 1;
                *committed.entry(o.sku).or_default() += o.quantity;
            }
            Some("CANCELLED") => report.cancelled += 1,
            _ => report.not_terminal += 1,
        }
        latencies.extend(o.latency);
    }
    report.latency = Percentiles::of(&mut latencies);
    if report.not_terminal > 0 {
        report.violations.push(format!(
            "{} orders did not reach a terminal status",
            report.not_terminal
        ));
    }
    // Completion commits stock asynchronously (inventory reacts to order.confirmed.v1): wait,
    // with a deadline, for every SKU to be at rest before judging conservation.
    let settle_deadline = Instant::now() + Duration::from_secs(30);
    for (i, sku) in skus.iter().enumerate() {
        let product = loop {
            let product: Value = client
                .get(format!("{base}/inventory/products/{sku}"))
                .send()
                .await?
                .json()
                .await
                .with_context(|| format!("reading {sku}"))?;
            let at_rest = product["reserved"].as_i64() == Some(0);
            if at_rest || report.not_terminal > 0 || Instant::now() > settle_deadline {
                break product;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let on_hand = product["on_hand"].as_i64().unwrap_or(-1);
        let reserved = product["reserved"].as_i64().unwrap_or(-1);
        let sold = committed.get(&i).copied().unwrap_or(0);
        if sold > config.stock_per_sku {
            report.violations.push(format!(
                "{sku}: oversold: {sold} units sold of {}",
                config.stock_per_sku
            ));
        }
        if reserved != 0 && report.not_terminal == 0 {
            report
                .violations
                .push(format!("{sku}: {reserved} units still reserved at rest"));
        } else if on_hand + sold != config.stock_per_sku {
            report.violations.push(format!(
                "{sku}: stock not conserved: on_hand {on_hand} + sold {sold} != initial {}",
                config.stock_per_sku
            ));
        }
    }
    Ok(report)
}

async fn one_order(
    client: &reqwest::Client,
    base: &str,
    sku_name: &str,
    sku: usize,
    quantity: i64,
    declined: bool,
    timeout: Duration,
) -> Outcome {
    let mut outcome = Outcome {
        sku,
        quantity,
        status: None,
        latency: None,
        request_failed: false,
    };
    let method = if declined {
        "pm_card_chargeDeclined"
    } else {
        "pm_card_visa"
    };
    let placed_at = Instant::now();
    let body = json!({
        "customer_id": "load-test",
        "items": [{"sku": sku_name, "quantity": quantity}],
        "currency": "EUR",
        "payment_method": method,
    });
    let placed: Option<Value> = match client
        .post(format!("{base}/orders"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) if r.status().as_u16() == 202 => r.json().await.ok(),
        _ => None,
    };
    let Some(order_id) = placed
        .as_ref()
        .and_then(|p| p["order_id"].as_str())
        .map(str::to_owned)
    else {
        outcome.request_failed = true;
        // Never placed: it cannot hold stock, so it counts as cancelled for the invariants.
        outcome.status = Some("CANCELLED".into());
        return outcome;
    };
    let deadline = placed_at + timeout;
    while Instant::now() < deadline {
        let response = client
            .get(format!("{base}/orders/{order_id}?wait=5s"))
            .send()
            .await;
        let Ok(response) = response else {
            outcome.request_failed = true;
            continue;
        };
        let Ok(order) = response.json::<Value>().await else {
            outcome.request_failed = true;
            continue;
        };
        let status = order["status"].as_str().unwrap_or_default().to_owned();
        if status == "COMPLETED" || status == "CANCELLED" {
            outcome.latency = Some(placed_at.elapsed());
            outcome.status = Some(status);
            return outcome;
        }
    }
    outcome
}
