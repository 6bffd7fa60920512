//! Fault tests: the real binary killed with SIGKILL mid-load, the NATS server stopped mid-load,
//! PostgreSQL cut off through a proxy. Each test breaks only servers it started itself, then
//! checks the invariants from the database: every order terminal, stock conserved, nothing left
//! reserved, every charge made once, no event applied twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{
    ChildProcess, TestDb, TestNats, database_port, eventually, free_port, order_body,
    spawn_app_with, wait_healthy,
};

const SKUS: [&str; 3] = ["FA", "FB", "FC"];
const STOCK: i64 = 120;

/// Places `count` orders, `in_flight` at a time, each retried with its own Idempotency-Key until
/// accepted (as a careful client does through an outage). Returns the accepted order ids.
async fn place_many(base: String, count: usize, in_flight: usize) -> Vec<String> {
    use futures::StreamExt;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    futures::stream::iter(0..count)
        .map(|i| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let method = if i % 7 == 0 {
                    "pm_card_chargeDeclined"
                } else {
                    "pm_card_visa"
                };
                let body = order_body(&[(SKUS[i % SKUS.len()], 1 + (i % 2) as i64)], method);
                let key = format!("fault-test-{i}");
                let deadline = Instant::now() + Duration::from_secs(90);
                while Instant::now() < deadline {
                    let sent = http
                        .post(format!("{base}/orders"))
                        .header("Idempotency-Key", &key)
                        .json(&body)
                        .send()
                        .await;
                    if let Ok(r) = sent
                        && r.status() == 202
                    {
                        let v: Value = r.json().await.unwrap_or_default();
                        return v["order_id"].as_str().map(str::to_owned);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None
            }
        })
        .buffer_unordered(in_flight)
        .filter_map(|id| async move { id })
        .collect()
        .await
}

async fn seed(pool: &PgPool) {
    for sku in SKUS {
        sqlx::query("INSERT INTO products (sku, name, unit_price_cents, currency, on_hand) VALUES ($1, $1, 100, 'EUR', $2)")
            .bind(sku)
            .bind(STOCK)
            .execute(pool)
            .await
            .unwrap();
    }
}

/// Waits until every order is terminal and nothing is reserved.
async fn settled(pool: &PgPool) {
    eventually(Duration::from_secs(90), "every order to be terminal and stock at rest", || async {
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots WHERE status NOT IN ('COMPLETED', 'CANCELLED')")
            .fetch_one(pool)
            .await
            .ok()?;
        let reserved: i64 = sqlx::query_scalar("SELECT coalesce(sum(reserved), 0)::bigint FROM products").fetch_one(pool).await.ok()?;
        (live == 0 && reserved == 0).then_some(())
    })
    .await;
}

/// Checks the invariants of a settled system against the fake's ledger (read after settling).
async fn assert_invariants(pool: &PgPool, placed: usize, ledger: Option<Value>) {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
        .fetch_one(pool)
        .await
        .unwrap_or(-1);
    assert_eq!(
        total as usize, placed,
        "one order per accepted request, no duplicates from retries"
    );

    // Stock conserved: what left on_hand is exactly what completed orders bought.
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT sku, on_hand FROM products")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let sold: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT line->>'sku', sum((line->>'quantity')::bigint)::bigint FROM order_snapshots, jsonb_array_elements(state->'lines') AS line
         WHERE status = 'COMPLETED' GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
    .into_iter()
    .collect();
    for (sku, on_hand) in rows {
        let sold = sold.get(&sku).copied().unwrap_or(0);
        assert_eq!(
            on_hand + sold,
            STOCK,
            "{sku}: on_hand {on_hand} + sold {sold}"
        );
    }
    // No event applied twice: every applied transition appends one history entry.
    let bad: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots WHERE version <> jsonb_array_length(state->'history')")
        .fetch_one(pool)
        .await
        .unwrap_or(-1);
    assert_eq!(bad, 0, "version and history agree for every order");
    // Each PaymentIntent created once: one successful create per idempotency key, one charge per order.
    if let Some(ledger) = ledger {
        let mut creates: HashMap<String, usize> = HashMap::new();
        for c in ledger["creates"].as_array().cloned().unwrap_or_default() {
            if c["status"] == 200 && c["replayed"] == false {
                *creates
                    .entry(c["idempotency_key"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
        }
        assert!(
            creates.values().all(|n| *n == 1),
            "a key created more than one intent: {creates:?}"
        );
        let mut charges: HashMap<String, usize> = HashMap::new();
        for c in ledger["charges"].as_array().cloned().unwrap_or_default() {
            *charges
                .entry(c["payment_intent"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        assert!(
            charges.values().all(|n| *n == 1),
            "an intent was charged twice"
        );
        let completed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM order_snapshots WHERE status = 'COMPLETED'")
                .fetch_one(pool)
                .await
                .unwrap_or(-1);
        let refunded = ledger["refunds"].as_array().map(Vec::len).unwrap_or(0) as i64;
        assert_eq!(
            charges.len() as i64,
            completed + refunded,
            "every charge is a completed order or was refunded"
        );
    }
}

#[tokio::test]
async fn sigkill_in_the_middle_of_500_orders_loses_nothing_and_charges_nothing_twice() {
    ordersaga::install_crypto_provider();
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let (port, fake_port) = (free_port(), free_port());
    let secret = "whsec_fault_test".to_owned();
    // The Stripe fake runs as its own process so its ledger survives the crash.
    let _fake = ChildProcess::ordersaga(
        &["stripe-fake"],
        &[
            ("STRIPE_FAKE_ADDR", format!("127.0.0.1:{fake_port}")),
            (
                "STRIPE_FAKE_WEBHOOK_URL",
                format!("http://127.0.0.1:{port}/payments/webhook"),
            ),
            ("STRIPE_WEBHOOK_SECRET", secret.clone()),
        ],
    );
    let env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("NATS_URL", nats.url.clone()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("SEED_DEMO_CATALOG", "false".to_owned()),
        ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
        ("STRIPE_SECRET_KEY", "sk_test_fault".to_owned()),
        ("STRIPE_API_BASE", format!("http://127.0.0.1:{fake_port}")),
        ("STRIPE_WEBHOOK_SECRET", secret),
        ("ORDER_RATE_LIMIT_PER_SEC", "0".to_owned()),
    ];
    let mut serve = ChildProcess::ordersaga(&["serve"], &env);
    wait_healthy(port).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    seed(&pool).await;

    let load = tokio::spawn(place_many(format!("http://127.0.0.1:{port}"), 500, 50));
    eventually(Duration::from_secs(60), "150 orders to be in", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n >= 150).then_some(())
    })
    .await;
    // SIGKILL: no shutdown, no draining, nothing flushed.
    serve.kill();
    serve = ChildProcess::ordersaga(&["serve"], &env);
    wait_healthy(port).await;

    let placed = load.await.unwrap_or_default();
    assert_eq!(placed.len(), 500, "every order was eventually accepted");
    settled(&pool).await;
    let ledger: Value = reqwest::get(format!("http://127.0.0.1:{fake_port}/_fake/ledger"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    assert_invariants(&pool, 500, Some(ledger)).await;
    drop(serve);
}

#[tokio::test]
async fn a_nats_outage_mid_load_delays_orders_but_loses_none() {
    let mut app = spawn_app_with(|s| s.order_rate_limit_per_sec = 0).await;
    seed(&app.pool).await;
    let load = tokio::spawn(place_many(app.base.clone(), 200, 20));
    eventually(Duration::from_secs(60), "50 orders to be in", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (n >= 50).then_some(())
    })
    .await;
    app.stop_nats();
    // Orders are still accepted while the broker is down: they wait in Postgres and the outbox.
    let during = app
        .post_order(&order_body(&[("FA", 1)], "pm_card_visa"))
        .await;
    assert_eq!(
        during.status(),
        202,
        "orders are accepted while NATS is down"
    );
    let outbox_grows = eventually(
        Duration::from_secs(10),
        "messages to wait in the outbox",
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&app.pool)
                .await
                .ok()?;
            (n > 0).then_some(n)
        },
    )
    .await;
    assert!(outbox_grows > 0);
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself, not a synchronisation
    app.start_nats();
    let placed = load.await.unwrap_or_default();
    assert_eq!(placed.len(), 200);
    settled(&app.pool).await;
    let ledger = app.ledger().await;
    assert_invariants(&app.pool, 201, Some(ledger)).await;
}

/// A TCP proxy the test can cut: while cut, it refuses new connections and drops live ones.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let (c, g) = (c.clone(), g.clone());
                let born = g.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let pipe = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let watch = async {
                        while !c.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = pipe => {}, _ = watch => {} }
                });
            }
        });
        Self {
            port,
            cut,
            generation,
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_database_cut_answers_503_with_retry_after_and_everything_resumes() {
    let upstream = database_port();
    let proxy = Proxy::start(upstream).await;
    let app = spawn_app_with(|s| {
        s.order_rate_limit_per_sec = 0;
        // The app reaches its database through the proxy.
        let direct = s.database_url.clone();
        s.database_url = direct.replace(&format!(":{upstream}/"), &format!(":{}/", proxy.port));
        assert_ne!(
            s.database_url, direct,
            "the app must reach its database through the proxy"
        );
    })
    .await;
    seed(&app.pool).await;
    let load = tokio::spawn(place_many(app.base.clone(), 150, 15));
    eventually(Duration::from_secs(60), "40 orders to be in", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (n >= 40).then_some(())
    })
    .await;
    proxy.set_cut(true);
    let probes_accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = eventually(
        Duration::from_secs(20),
        "a 503 while the database is cut",
        || async {
            let r = app
                .post_order(&order_body(&[("FA", 1)], "pm_card_visa"))
                .await;
            if r.status() == 202 {
                probes_accepted.fetch_add(1, Ordering::SeqCst);
            }
            (r.status() == 503).then_some(r)
        },
    )
    .await;
    assert!(
        refused.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    let body: Value = refused.json().await.unwrap_or_default();
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(
        app.get_json("/health/ready").await.0,
        503,
        "readiness reports the database down"
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself
    proxy.set_cut(false);
    let placed = load.await.unwrap_or_default();
    assert_eq!(placed.len(), 150);
    settled(&app.pool).await;
    let ledger = app.ledger().await;
    // Refused probes were never stored; a probe accepted before the cut took hold was.
    assert_invariants(
        &app.pool,
        150 + probes_accepted.load(Ordering::SeqCst),
        Some(ledger),
    )
    .await;
}

#[tokio::test]
async fn readiness_flips_to_503_while_nats_is_down_and_back_when_it_returns() {
    let mut app = spawn_app_with(|_| {}).await;
    let (status, _) = app.get_json("/health/ready").await;
    assert_eq!(status, 200);
    app.stop_nats();
    let down = eventually(
        Duration::from_secs(15),
        "readiness to report NATS down",
        || async {
            let (status, body) = app.get_json("/health/ready").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert_eq!(down["checks"]["nats"]["status"], "down", "{down}");
    assert_eq!(down["checks"]["postgres"]["status"], "up");
    assert_eq!(
        app.get_json("/health").await.0,
        200,
        "liveness is not readiness"
    );
    app.start_nats();
    eventually(Duration::from_secs(30), "readiness to recover", || async {
        (app.get_json("/health/ready").await.0 == 200).then_some(())
    })
    .await;
}
