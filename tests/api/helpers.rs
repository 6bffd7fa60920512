//! Test fixtures: a private `nats-server` (free port, own store dir), a fresh database, and the
//! application spawned on a random port, all torn down when the test ends. Nothing here touches
//! the machine's shared NATS streams or other tests' databases.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use ordersaga::configuration::Settings;
use ordersaga::startup::Application;

/// Admin connection used to create and drop per-test databases.
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The port of the PostgreSQL the tests use (5432 unless TEST_DATABASE_URL says otherwise, as
/// `cargo xtask test` does with a private server), for tests that put a proxy in front of it.
pub fn database_port() -> u16 {
    let url = admin_database_url();
    let authority = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(5432)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A private JetStream server; killed (and its store removed) on drop.
pub struct TestNats {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    store: PathBuf,
    /// Clustering flags, for a node of a `nats_cluster`.
    cluster: Vec<String>,
}

impl TestNats {
    pub async fn start() -> Self {
        let port = free_port();
        let store =
            std::env::temp_dir().join(format!("ordersaga-nats-{}", uuid::Uuid::new_v4().simple()));
        let mut nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            child: None,
            store,
            cluster: Vec::new(),
        };
        nats.spawn();
        nats
    }

    /// A JetStream cluster of `nodes` private servers on loopback ports (each with its own store),
    /// returned once it can keep a stream in `nodes` copies; and the URL that lists them all.
    pub async fn cluster(nodes: usize) -> (Vec<TestNats>, String) {
        let name = format!("ordersaga-test-{}", uuid::Uuid::new_v4().simple());
        let routes: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let port = free_port();
            let others: Vec<String> = routes
                .iter()
                .filter(|r| *r != route)
                .map(|r| format!("nats://127.0.0.1:{r}"))
                .collect();
            let mut nats = Self {
                url: format!("nats://127.0.0.1:{port}"),
                port,
                child: None,
                store: std::env::temp_dir().join(format!("{name}-{i}")),
                cluster: vec![
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    name.clone(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    others.join(","),
                ],
            };
            nats.spawn();
            servers.push(nats);
        }
        let url = servers
            .iter()
            .map(|s| s.url.clone())
            .collect::<Vec<_>>()
            .join(",");
        wait_for_replicated_streams(&servers[0].url, nodes).await;
        (servers, url)
    }

    fn binary() -> String {
        if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
            return bin;
        }
        for candidate in [
            "/usr/sbin/nats-server",
            "/usr/local/bin/nats-server",
            "/usr/bin/nats-server",
        ] {
            if std::path::Path::new(candidate).exists() {
                return candidate.into();
            }
        }
        "nats-server".into()
    }

    fn spawn(&mut self) {
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .args(&self.cluster)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server ({}): {e}; install it (apt-get install nats-server) or set NATS_SERVER_BIN", Self::binary()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl TestNats {
    /// Stops the server (SIGKILL), keeping its store, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// Waits until the JetStream cluster behind `url` elects its leaders and can create a stream
/// kept in `replicas` copies (a probe stream, deleted again).
async fn wait_for_replicated_streams(url: &str, replicas: usize) {
    let client = eventually(
        Duration::from_secs(30),
        "the NATS cluster to answer",
        || async { async_nats::connect(url).await.ok() },
    )
    .await;
    let js = async_nats::jetstream::new(client);
    eventually(
        Duration::from_secs(60),
        "JetStream to keep replicated streams",
        || {
            let js = js.clone();
            async move {
                let probe = async_nats::jetstream::stream::Config {
                    name: "cluster-probe".into(),
                    subjects: vec!["cluster-probe".into()],
                    num_replicas: replicas,
                    ..Default::default()
                };
                js.create_stream(probe).await.ok()?;
                js.delete_stream("cluster-probe").await.ok()
            }
        },
    )
    .await;
}

impl Drop for TestNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A database of its own, dropped at the end of the test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("ordersaga_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_database_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {admin}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let _ = conn.close().await;
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived runtime on its own thread does the I/O.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_database_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Another instance of the application on a `TestApp`'s database and NATS server.
pub struct Peer {
    pub base: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Stops it as SIGTERM does: it drains, hands its partitions off and leaves.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }

    /// Stops it without draining, as SIGKILL would: its tasks (HTTP, lease keeper, relay, ...)
    /// and its actors are dropped at once and nothing is released.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    pub shutdown: CancellationToken,
    /// Base URL of the in-process Stripe fake.
    pub stripe: String,
    pub nats_url: String,
    settings: Settings,
    task: Option<tokio::task::JoinHandle<()>>,
    // Held for their Drop: the private servers live exactly as long as the app.
    _nats: TestNats,
    /// The other nodes, when the app runs against a NATS cluster.
    _other_nats: Vec<TestNats>,
    _db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let nats = TestNats::start().await;
    let url = nats.url.clone();
    spawn_app_on(vec![nats], &url, configure).await
}

/// The app against the NATS servers `nats` (one, or the nodes of a cluster), reached at
/// `nats_url`; they live as long as the app.
pub async fn spawn_app_on(
    mut nats: Vec<TestNats>,
    nats_url: &str,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    ordersaga::install_crypto_provider();
    let db = TestDb::create().await;
    let mut settings = Settings::for_servers(&db.url, nats_url);
    settings.seed_demo_catalog = false;
    settings.database_max_connections = 10;
    configure(&mut settings);
    let (base, pool, shutdown, stripe, task) = start(settings.clone()).await;
    let primary = nats.remove(0);
    TestApp {
        base,
        http: reqwest::Client::new(),
        pool,
        shutdown,
        stripe,
        nats_url: nats_url.to_owned(),
        settings,
        task: Some(task),
        _nats: primary,
        _other_nats: nats,
        _db: db,
    }
}

type Started = (
    String,
    PgPool,
    CancellationToken,
    String,
    tokio::task::JoinHandle<()>,
);

async fn start(settings: Settings) -> Started {
    let app = Application::build(settings)
        .await
        .expect("app failed to start");
    let base = format!("http://{}", app.address());
    let pool = app.pool().clone();
    let shutdown = app.shutdown_token();
    let stripe = app.stripe_fake_url().unwrap_or_default();
    let task = tokio::spawn(async move {
        let _ = app.run_until_stopped().await;
    });
    (base, pool, shutdown, stripe, task)
}

impl TestApp {
    /// This process's `GET /metrics` text (Prometheus counters are process-wide: other tests in
    /// this binary add to them).
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default()
    }

    /// The settings the app was started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn stop_nats(&mut self) {
        self._nats.stop();
    }

    pub fn start_nats(&mut self) {
        self._nats.restart();
    }

    /// Stops the application (as a deploy or crash would) and starts a new one on the same
    /// database and NATS server. In-memory state is gone; only what was committed survives.
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        let (base, pool, shutdown, stripe, task) = start(self.settings.clone()).await;
        self.base = base;
        self.pool = pool;
        self.shutdown = shutdown;
        self.stripe = stripe;
        self.task = Some(task);
    }

    /// Starts another instance of the application on the same database and NATS server (a new
    /// port, so a new instance id), with `configure` applied over this app's settings.
    pub async fn spawn_peer(&self, configure: impl FnOnce(&mut Settings)) -> Peer {
        let mut settings = self.settings.clone();
        settings.http_addr = "127.0.0.1:0".parse().unwrap();
        configure(&mut settings);
        let (base, _, shutdown, _, task) = start(settings).await;
        Peer {
            base,
            shutdown,
            task,
        }
    }

    pub async fn put_product(&self, sku: &str, on_hand: i64, unit_price_cents: i64) -> Value {
        let response = self
            .http
            .put(format!("{}/inventory/products/{sku}", self.base))
            .json(&json!({"name": format!("Product {sku}"), "unit_price_cents": unit_price_cents, "currency": "EUR", "on_hand": on_hand}))
            .send()
            .await
            .expect("PUT product");
        assert_eq!(response.status(), 200, "PUT product {sku}");
        response.json().await.expect("product json")
    }

    pub async fn product(&self, sku: &str) -> Value {
        self.get_json(&format!("/inventory/products/{sku}")).await.1
    }

    /// The product once nothing is reserved any more (completion commits stock asynchronously).
    pub async fn settled_product(&self, sku: &str) -> Value {
        eventually(
            Duration::from_secs(15),
            &format!("{sku} to have nothing reserved"),
            || async {
                let product = self.product(sku).await;
                (product["reserved"] == 0).then_some(product)
            },
        )
        .await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/orders", self.base))
            .json(body)
            .send()
            .await
            .expect("POST /orders")
    }

    /// The Stripe fake's ledger (intents, charges, refunds, creates, webhook deliveries).
    pub async fn ledger(&self) -> Value {
        self.http
            .get(format!("{}/_fake/ledger", self.stripe))
            .send()
            .await
            .expect("ledger")
            .json()
            .await
            .expect("ledger json")
    }

    /// Charges the fake made for one PaymentIntent.
    pub async fn charges_of(&self, payment_intent: &str) -> usize {
        let ledger = self.ledger().await;
        ledger["charges"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["payment_intent"] == payment_intent)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Places an order and returns its id (asserting 202).
    pub async fn place(&self, items: &[(&str, i64)], payment_method: &str) -> String {
        let response = self.post_order(&order_body(items, payment_method)).await;
        assert_eq!(response.status(), 202, "placing an order");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        body["order_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no order_id in {body}"))
            .to_owned()
    }

    /// Waits (with a deadline) until the order has `status` and returns it.
    pub async fn wait_status(&self, order_id: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(20),
            &format!("order {order_id} to be {status}"),
            || async {
                let (_, order) = self.get_json(&format!("/orders/{order_id}")).await;
                (order["status"] == status).then_some(order)
            },
        )
        .await
    }

    /// Waits (with a deadline) until the order is COMPLETED or CANCELLED and returns it.
    pub async fn wait_terminal(&self, order_id: &str) -> Value {
        let path = format!("/orders/{order_id}?wait=5s");
        eventually(
            Duration::from_secs(30),
            &format!("order {order_id} to finish"),
            || async {
                let (status, order) = self.get_json(&path).await;
                assert_eq!(status, 200, "GET order: {order}");
                matches!(order["status"].as_str(), Some("COMPLETED" | "CANCELLED")).then_some(order)
            },
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn order_body(items: &[(&str, i64)], payment_method: &str) -> Value {
    json!({
        "customer_id": "customer-1",
        "items": items.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>(),
        "currency": "EUR",
        "payment_method": payment_method,
    })
}

/// Statuses the order passed through, in order, without repeats.
pub fn statuses(order: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in order["history"].as_array().cloned().unwrap_or_default() {
        let s = entry["status"].as_str().unwrap_or_default().to_owned();
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    out
}

/// A child process (the real `ordersaga` binary), killed when dropped.
pub struct ChildProcess(pub Child);

impl ChildProcess {
    /// Runs `ordersaga <args>` with `env`, output discarded.
    pub fn ordersaga(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ordersaga"));
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("RUST_LOG", "warn");
        for (key, value) in env {
            command.env(key, value);
        }
        Self(command.spawn().expect("cannot start ordersaga"))
    }

    /// Runs `ordersaga <args>` with `env`, its log lines (stdout) written to `log`.
    pub fn ordersaga_logging(args: &[&str], env: &[(&str, String)], log: &std::path::Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ordersaga"));
        command
            .args(args)
            .stdout(Stdio::from(file))
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        Self(command.spawn().expect("cannot start ordersaga"))
    }

    /// SIGKILL: no shutdown, no draining, nothing flushed.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (with a deadline) until a process answers `GET /health` on `port`.
pub async fn wait_healthy(port: u16) {
    ordersaga::install_crypto_provider();
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "ordersaga to answer /health",
        || {
            let client = client.clone();
            async move {
                let r = client
                    .get(format!("http://127.0.0.1:{port}/health"))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        },
    )
    .await;
}

/// An order of one unit of SKU `A` for 1.00 EUR, as the saga takes it.
pub fn new_order() -> actors::saga::NewOrder {
    use actors::domain::{
        CorrelationId, Currency, CustomerId, Money, OrderId, PaymentMethod, PricedLine, Quantity,
        Sku,
    };
    fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
        r.unwrap()
    }
    let eur = ok(Currency::parse("EUR"));
    let price = ok(Money::new(100, eur));
    actors::saga::NewOrder {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        customer_id: ok(CustomerId::parse("c")),
        lines: vec![PricedLine {
            sku: ok(Sku::parse("A")),
            quantity: ok(Quantity::try_from(1)),
            unit_price: price,
        }],
        amount: price,
        payment_method: ok(PaymentMethod::parse("pm_card_visa")),
    }
}

/// The Stripe fake as its own process (`ordersaga stripe-fake`), as Stripe is to every
/// instance: its ledger outlives any of them. Its webhooks go nowhere until `/_fake/config`
/// sets where. Returns the process (killed on drop) and its base URL.
pub async fn standalone_stripe_fake() -> (ChildProcess, String) {
    ordersaga::install_crypto_provider();
    let port = free_port();
    let fake = ChildProcess::ordersaga(
        &["stripe-fake"],
        &[("STRIPE_FAKE_ADDR", format!("127.0.0.1:{port}"))],
    );
    let base = format!("http://127.0.0.1:{port}");
    eventually(
        Duration::from_secs(20),
        "the Stripe fake to answer",
        || async {
            reqwest::get(format!("{base}/_fake/ledger"))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    (fake, base)
}

/// Waits until at least `at_least` orders exist in the database behind `pool` (placed anywhere).
pub async fn wait_orders_placed(pool: &PgPool, at_least: i64) {
    eventually(Duration::from_secs(60), "orders to be placed", || async {
        let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
            .fetch_one(pool)
            .await
            .ok()?;
        (placed >= at_least).then_some(())
    })
    .await;
}
