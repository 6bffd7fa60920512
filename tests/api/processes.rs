//! Several real `ordersaga serve` processes against one database and one JetStream: instances
//! of a cluster sharing the work (a flash sale whose hot SKU its owner alone decides; one
//! instance SIGKILLed, one SIGSTOPped past its lease, one joining and one draining, all under
//! load), and the three roles as three separate services.

use std::time::Duration;

use serde_json::{Value, json};

use actors::cluster::PartitionCount;
use actors::domain::Sku;

use crate::helpers::{
    ChildProcess, TestDb, TestNats, eventually, free_port, standalone_stripe_fake, wait_healthy,
    wait_orders_placed,
};

const TOKEN: &str = "processes-admin-token";

fn serve(db: &TestDb, nats: &TestNats, port: u16) -> ChildProcess {
    serve_roles(db, nats, port, "order,inventory,payment")
}

fn serve_roles(db: &TestDb, nats: &TestNats, port: u16, roles: &str) -> ChildProcess {
    serve_with(db, nats, port, &[("ROLES", roles.to_owned())])
}

/// `ordersaga serve` with `extra` settings on top of the tests' own.
fn serve_with(db: &TestDb, nats: &TestNats, port: u16, extra: &[(&str, String)]) -> ChildProcess {
    let mut env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("NATS_URL", nats.url.clone()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("SEED_DEMO_CATALOG", "false".to_owned()),
        ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
        ("ADMIN_TOKEN", TOKEN.to_owned()),
        ("ORDER_RATE_LIMIT_PER_SEC", "100000".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    ChildProcess::ordersaga(&["serve"], &env)
}

/// Two all-role instances on free ports, started one after the other so migrations and streams
/// are created once; the processes live as long as the returned handles.
async fn two_instances(db: &TestDb, nats: &TestNats) -> ([u16; 2], [ChildProcess; 2]) {
    let ports = [free_port(), free_port()];
    let first = serve(db, nats, ports[0]);
    wait_healthy(ports[0]).await;
    let second = serve(db, nats, ports[1]);
    wait_healthy(ports[1]).await;
    (ports, [first, second])
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// `GET /cluster` of the instance on `port`, once no key space has a hand-off in progress and
/// `instances` instances are live.
async fn settled_cluster(client: &reqwest::Client, port: u16, instances: usize) -> Value {
    eventually(
        Duration::from_secs(30),
        "the partitions to settle",
        || async {
            let (_, body) = get(client, &format!("http://127.0.0.1:{port}/cluster")).await;
            let cluster: Value = serde_json::from_str(&body).ok()?;
            let live = cluster["instances"]
                .as_array()?
                .iter()
                .filter(|i| i["live"] == true)
                .count();
            let settled = cluster["key_spaces"]
                .as_array()?
                .iter()
                .all(|s| s["handoffs"].as_array().is_some_and(Vec::is_empty));
            (live == instances && settled).then_some(cluster)
        },
    )
    .await
}

/// The count of reservation batches the inventory shards of the process on `port` decided.
async fn reservation_batches(client: &reqwest::Client, port: u16) -> u64 {
    metric(client, port, "inventory_reservation_batch_size_count ").await as u64
}

/// The sum of the samples of the process on `port` whose line starts with `series` (a name,
/// or a name and some of its labels).
async fn metric(client: &reqwest::Client, port: u16, series: &str) -> f64 {
    let (_, text) = get(client, &format!("http://127.0.0.1:{port}/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

/// Sends SIGSTOP or SIGCONT to `process`.
fn signal(process: &ChildProcess, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &process.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{name}");
}

/// Connections to the local `port` whose received bytes nobody has read yet (Linux's
/// `/proc/net/tcp`): requests waiting for a stopped process.
fn unread_connections(port: u16) -> usize {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let established = fields.get(3) == Some(&"01");
                    let ours = fields.get(1).is_some_and(|a| a.ends_with(&local));
                    let unread = fields
                        .get(4)
                        .and_then(|q| q.split(':').nth(1))
                        .is_some_and(|rx| u64::from_str_radix(rx, 16).is_ok_and(|n| n > 0));
                    established && ours && unread
                })
                .count()
        })
        .sum()
}

/// The instance id in `GET /cluster` of the instance on `port`.
async fn instance_id(client: &reqwest::Client, port: u16) -> String {
    let (_, body) = get(client, &format!("http://127.0.0.1:{port}/cluster")).await;
    let cluster: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    cluster["instance"].as_str().unwrap_or_default().to_owned()
}

/// The Stripe idempotency keys of the fake's charges: one per order and attempt, so a repeated
/// key would be an order charged twice.
async fn charge_keys(client: &reqwest::Client, stripe: &str) -> Vec<String> {
    let ledger: Value = client
        .get(format!("{stripe}/_fake/ledger"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ledger["charges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["idempotency_key"].as_str().map(str::to_owned))
        .collect()
}

/// Fails unless no key is repeated (and there are some).
fn assert_charged_once(keys: &[String]) {
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "an order was charged twice");
    assert!(!keys.is_empty());
}

#[tokio::test]
async fn two_processes_share_the_work_without_breaking_invariants() {
    ordersaga::install_crypto_provider();
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let ([port_a, port_b], _instances) = two_instances(&db, &nats).await;
    let client = reqwest::Client::new();
    settled_cluster(&client, port_a, 2).await;

    // Both processes take orders at once. Each runs the sagas of the orders it places (their ids
    // fall in its own partitions); each SKU's reservations are decided by the instance that owns
    // the SKU's partition, so both processes touch the same stock rows.
    let run = |port: u16| {
        load_tests::run(load_tests::LoadConfig {
            base_url: format!("http://127.0.0.1:{port}"),
            orders: 100,
            concurrency: 50,
            skus: 4,
            stock_per_sku: 60,
            hot_share: 0.4,
            decline_share: 0.1,
            max_quantity: 2,
            order_timeout: Duration::from_secs(60),
        })
    };
    let (ra, rb) = tokio::join!(run(port_a), run(port_b));
    let ra = ra.unwrap();
    let rb = rb.unwrap();
    println!("process A:\n{ra}\nprocess B:\n{rb}");
    assert!(ra.invariants_hold(), "{ra}");
    assert!(rb.invariants_hold(), "{rb}");
    assert_eq!(
        ra.completed + ra.cancelled + rb.completed + rb.cancelled,
        200
    );
    // One live actor per order: no snapshot write ever found its order moved on by another.
    assert_eq!(snapshot_conflicts(&client, &[port_a, port_b]).await, 0.0);
}

/// Snapshot writes that found their order moved on, summed over the instances on `ports`.
async fn snapshot_conflicts(client: &reqwest::Client, ports: &[u16]) -> f64 {
    let mut sum = 0.0;
    for port in ports {
        sum += metric(client, *port, "order_snapshot_conflicts_total").await;
    }
    sum
}

#[tokio::test]
async fn the_three_roles_run_as_three_processes() {
    ordersaga::install_crypto_provider();
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let ports = [free_port(), free_port(), free_port()];
    let _order = serve_roles(&db, &nats, ports[0], "order");
    wait_healthy(ports[0]).await;
    let _inventory = serve_roles(&db, &nats, ports[1], "inventory");
    let _payment = serve_roles(&db, &nats, ports[2], "payment");
    wait_healthy(ports[1]).await;
    wait_healthy(ports[2]).await;

    let client = reqwest::Client::new();
    // The inventory-only process does not take orders, and says so.
    let refused = client
        .post(format!("http://127.0.0.1:{}/orders", ports[1]))
        .json(&crate::helpers::order_body(&[("X", 1)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);

    let report = load_tests::run(load_tests::LoadConfig {
        base_url: format!("http://127.0.0.1:{}", ports[0]),
        orders: 40,
        concurrency: 20,
        skus: 2,
        stock_per_sku: 30,
        hot_share: 0.0,
        decline_share: 0.2,
        max_quantity: 2,
        order_timeout: Duration::from_secs(60),
    })
    .await
    .unwrap();
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    assert_eq!(report.completed + report.cancelled, 40);
    assert!(
        report.completed > 0,
        "payments were taken by the payment process"
    );
}

#[tokio::test]
async fn a_flash_sale_across_three_instances_is_exact_and_decided_by_the_hot_sku_s_owner_alone() {
    ordersaga::install_crypto_provider();
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let ports = [free_port(), free_port(), free_port()];
    let mut instances = Vec::new();
    for port in ports {
        instances.push(serve(&db, &nats, port));
        wait_healthy(port).await;
    }
    let client = reqwest::Client::new();
    let cluster = settled_cluster(&client, ports[0], 3).await;

    let product =
        json!({"name": "hot", "unit_price_cents": 100, "currency": "EUR", "on_hand": 100});
    let put = client
        .put(format!(
            "http://127.0.0.1:{}/inventory/products/HOT",
            ports[0]
        ))
        .json(&product)
        .send()
        .await
        .expect("PUT");
    assert!(put.status().is_success());
    // 300 orders of one unit for 100 units, spread over the three instances, each waited for
    // where it was placed.
    let order = json!({"customer_id": "c", "items": [{"sku": "HOT", "quantity": 1}],
                       "currency": "EUR", "payment_method": "pm_card_visa"});
    let place = |port: u16| {
        let (client, order) = (client.clone(), order.clone());
        async move {
            let response = client
                .post(format!("http://127.0.0.1:{port}/orders?wait=30s"))
                .json(&order)
                .send()
                .await
                .expect("POST /orders");
            let body: Value = response.json().await.unwrap_or(Value::Null);
            body["status"].as_str().unwrap_or_default().to_owned()
        }
    };
    let placed = (0..300).map(|i| place(ports[i % 3]));
    let statuses = futures::future::join_all(placed).await;
    let completed = statuses.iter().filter(|s| *s == "COMPLETED").count();
    let cancelled = statuses.iter().filter(|s| *s == "CANCELLED").count();
    assert_eq!((completed, cancelled), (100, 200), "{statuses:?}");
    // The last commits follow the orders' completion (nobody waits for them).
    let url = format!("http://127.0.0.1:{}/inventory/products/HOT", ports[0]);
    eventually(
        Duration::from_secs(20),
        "the stock to settle at 0",
        || async {
            let (_, stock) = get(&client, &url).await;
            let stock: Value = serde_json::from_str(&stock).ok()?;
            (stock["on_hand"] == 0 && stock["reserved"] == 0).then_some(())
        },
    )
    .await;

    // Only the instance that owns HOT's partition decided reservations.
    let count = PartitionCount::new(cluster["partition_count"].as_i64().unwrap_or(0)).unwrap();
    let partition = count.of_sku(&Sku::parse("HOT").unwrap());
    let skus = cluster["key_spaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["key_space"] == "skus")
        .cloned()
        .unwrap_or(Value::Null);
    let owner = skus["partitions"][partition.index()]["owner"].clone();
    let owner_port = ports
        .into_iter()
        .find(|port| {
            owner
                .as_str()
                .is_some_and(|id| id.ends_with(&format!(":{port}")))
        })
        .unwrap_or_else(|| panic!("HOT's partition {partition} is owned by {owner}"));
    for port in ports {
        let batches = reservation_batches(&client, port).await;
        if port == owner_port {
            assert!(batches > 0);
        } else {
            assert_eq!(
                batches, 0,
                "the instance on {port} decided reservations of HOT"
            );
        }
    }
}

/// Settings for instances that pay through the shared Stripe fake at `stripe` (as instances of
/// one shop share Stripe), with `extra` on top.
fn paying_through(stripe: &str, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("STRIPE_SECRET_KEY", "sk_test_processes".to_owned()),
        ("STRIPE_API_BASE", stripe.to_owned()),
        (
            "STRIPE_WEBHOOK_SECRET",
            "whsec_ordersaga_dev_fake".to_owned(),
        ),
    ];
    settings.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    settings
}

/// Points the shared Stripe fake's webhooks at the instance on `port`, which routes each to the
/// order's owner.
async fn send_webhooks_to(client: &reqwest::Client, stripe: &str, port: u16) {
    let webhooks = json!({"webhook_url": format!("http://127.0.0.1:{port}/payments/webhook")});
    let set = client
        .post(format!("{stripe}/_fake/config"))
        .json(&webhooks)
        .send()
        .await
        .unwrap();
    assert!(set.status().is_success());
}

/// `orders` orders spread over the instances on `ports` (a placement an instance does not take
/// moves on to the next), `concurrency` at a time.
fn spread_load(ports: &[u16], orders: usize, concurrency: usize) -> load_tests::LoadConfig {
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    load_tests::LoadConfig {
        base_url: urls.join(","),
        orders,
        concurrency,
        skus: 4,
        stock_per_sku: 100,
        hot_share: 0.4,
        decline_share: 0.1,
        max_quantity: 2,
        order_timeout: Duration::from_secs(90),
    }
}

/// Three all-role instances on free ports with short leases (2 s, renewed every 300 ms), paying
/// through a Stripe fake of their own process whose webhooks all reach the first, settled.
struct PayingCluster {
    _nats: TestNats,
    db: TestDb,
    _fake: ChildProcess,
    stripe: String,
    ports: [u16; 3],
    instances: Vec<ChildProcess>,
    client: reqwest::Client,
}

async fn three_paying_instances() -> PayingCluster {
    ordersaga::install_crypto_provider();
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let (fake, stripe) = standalone_stripe_fake().await;
    let ports = [free_port(), free_port(), free_port()];
    let settings = paying_through(
        &stripe,
        &[
            ("PARTITION_LEASE_MS", "2000"),
            ("PARTITION_RENEW_MS", "300"),
        ],
    );
    let mut instances = Vec::new();
    for port in ports {
        instances.push(serve_with(&db, &nats, port, &settings));
        wait_healthy(port).await;
    }
    let client = reqwest::Client::new();
    send_webhooks_to(&client, &stripe, ports[0]).await;
    settled_cluster(&client, ports[0], 3).await;
    PayingCluster {
        _nats: nats,
        db,
        _fake: fake,
        stripe,
        ports,
        instances,
        client,
    }
}

/// The load report, once it shows every one of `orders` terminal and the invariants holding.
fn every_order_ended(
    report: anyhow::Result<load_tests::LoadReport>,
    orders: usize,
) -> load_tests::LoadReport {
    let report = report.unwrap();
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    assert_eq!(report.completed + report.cancelled, orders, "{report}");
    report
}

/// Orders in the database that are not COMPLETED or CANCELLED.
async fn orders_not_finished(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM order_snapshots WHERE status NOT IN ('COMPLETED', 'CANCELLED')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_instance_killed_a_third_of_the_way_through_leaves_its_orders_to_the_others() {
    let PayingCluster {
        _nats,
        db,
        _fake,
        stripe,
        ports,
        mut instances,
        client,
    } = three_paying_instances().await;

    let orders = 300;
    let load = load_tests::run(spread_load(&ports, orders, 30));
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut third = instances.pop().expect("three instances");
    let kill = async {
        wait_orders_placed(&pool, orders as i64 / 3).await;
        third.kill();
    };
    let (report, ()) = tokio::join!(load, kill);
    every_order_ended(report, orders);

    // Nothing left behind, and no order charged twice.
    assert_eq!(orders_not_finished(&pool).await, 0);
    assert_charged_once(&charge_keys(&client, &stripe).await);
    // Every webhook arrived at the first instance; those of the others' orders were answered by
    // their owners.
    let forwarded = metric(
        &client,
        ports[0],
        "cluster_owner_requests_total{outcome=\"answered\"}",
    )
    .await;
    assert!(
        forwarded > 0.0,
        "no webhook was handed to its order's owner"
    );
    // The dead instance wrote nothing after its death, and the survivors recovered its orders
    // from their snapshots: no two actors of one order ever wrote.
    assert_eq!(snapshot_conflicts(&client, &ports[..2]).await, 0.0);
}

#[tokio::test]
async fn an_owner_stopped_past_its_lease_is_refused_when_it_wakes_and_nothing_is_lost_or_doubled() {
    let PayingCluster {
        _nats,
        db,
        _fake,
        stripe,
        ports,
        instances,
        client,
    } = three_paying_instances().await;
    let stopped_id = instance_id(&client, ports[2]).await;
    let product = client
        .put(format!("http://127.0.0.1:{}/inventory/products/WOKEN", ports[0]))
        .json(&json!({"name": "asked of a sleeper", "unit_price_cents": 100, "currency": "EUR", "on_hand": 10}))
        .send()
        .await
        .unwrap();
    assert!(product.status().is_success());

    let orders = 300;
    let load = load_tests::run(spread_load(&ports, orders, 30));
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let stopped = &instances[2];
    let pause = async {
        wait_orders_placed(&pool, orders as i64 / 3).await;
        signal(stopped, "STOP");
        // Its leases run out and the two others take every partition over.
        eventually(
            Duration::from_secs(30),
            "every partition owned by a running instance",
            || async {
                let (_, body) =
                    get(&client, &format!("http://127.0.0.1:{}/cluster", ports[0])).await;
                let cluster: Value = serde_json::from_str(&body).ok()?;
                let taken = cluster["key_spaces"].as_array()?.iter().all(|space| {
                    space["partitions"].as_array().is_some_and(|partitions| {
                        partitions
                            .iter()
                            .all(|p| p["owner"].as_str().is_some_and(|owner| owner != stopped_id))
                    })
                });
                taken.then_some(())
            },
        )
        .await;
        // Placements sent to it while it sleeps are the first thing it does when it wakes,
        // before it can learn that its leases are gone.
        let asked: Vec<_> = (0..5)
            .map(|_| {
                client
                    .post(format!("http://127.0.0.1:{}/orders", ports[2]))
                    .json(&json!({"customer_id": "woken", "currency": "EUR",
                        "payment_method": "pm_card_visa", "items": [{"sku": "WOKEN", "quantity": 1}]}))
                    .send()
            })
            .collect();
        let answers = tokio::spawn(futures::future::join_all(asked));
        eventually(
            Duration::from_secs(10),
            "the requests to wait in the sleeping instance's sockets",
            || async { (unread_connections(ports[2]) >= 5).then_some(()) },
        )
        .await;
        signal(stopped, "CONT");
        let answers = answers.await.unwrap();
        let mut refused = 0;
        for answer in answers {
            let answer = answer.expect("a woken instance must answer");
            if answer.status().as_u16() == 503 {
                let body: Value = answer.json().await.unwrap_or(Value::Null);
                assert_eq!(body["error"]["code"], "not_owner", "{body}");
                refused += 1;
            }
        }
        refused
    };
    let (report, refused) = tokio::join!(load, pause);
    every_order_ended(report, orders);

    // What it tried to write as the owner it no longer was was refused, at the fence in
    // PostgreSQL or by its own view of its leases.
    let fenced = metric(&client, ports[2], "cluster_fenced_writes_total").await;
    let conflicts = snapshot_conflicts(&client, &ports).await;
    println!(
        "refused after waking: {refused} placements, {fenced} snapshot writes; {conflicts} snapshot conflicts"
    );
    assert!(
        refused + fenced as usize > 0,
        "the woken owner's work was not refused"
    );

    assert_eq!(orders_not_finished(&pool).await, 0);
    assert_charged_once(&charge_keys(&client, &stripe).await);
}

#[tokio::test]
async fn an_instance_joining_and_another_draining_under_load_fail_no_request() {
    ordersaga::install_crypto_provider();
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let (_fake, stripe) = standalone_stripe_fake().await;
    let ports = [free_port(), free_port(), free_port()];
    let settings = paying_through(&stripe, &[("PARTITION_RENEW_MS", "300")]);
    let first = serve_with(&db, &nats, ports[0], &settings);
    wait_healthy(ports[0]).await;
    let mut leaving = serve_with(&db, &nats, ports[1], &settings);
    wait_healthy(ports[1]).await;
    let client = reqwest::Client::new();
    send_webhooks_to(&client, &stripe, ports[0]).await;
    settled_cluster(&client, ports[0], 2).await;

    // The client knows all three addresses from the start; the third answers once it joins.
    let orders = 300;
    let load = load_tests::run(spread_load(&ports, orders, 20));
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let changes = async {
        wait_orders_placed(&pool, orders as i64 / 4).await;
        let joined = serve_with(&db, &nats, ports[2], &settings);
        settled_cluster(&client, ports[0], 3).await;
        wait_orders_placed(&pool, orders as i64 / 2).await;
        // SIGTERM: the second instance drains, hands its partitions off and leaves.
        let terminated = std::process::Command::new("kill")
            .args(["-TERM", &leaving.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(terminated.success());
        let _ = leaving.0.wait();
        joined
    };
    let (report, _joined) = tokio::join!(load, changes);
    let report = every_order_ended(report, orders);
    assert_eq!(report.failed_requests, 0, "{report}");
    assert_eq!(report.placement_failures, 0, "{report}");
    drop(first);
}
