//! Several real `ordersaga serve` processes against one database and one JetStream: two
//! all-role processes sharing the work, and the three roles as three separate services.

use std::time::Duration;

use crate::helpers::{ChildProcess, TestDb, TestNats, free_port, wait_healthy};

fn serve(db: &TestDb, nats: &TestNats, port: u16) -> ChildProcess {
    serve_roles(db, nats, port, "order,inventory,payment")
}

fn serve_roles(db: &TestDb, nats: &TestNats, port: u16, roles: &str) -> ChildProcess {
    ChildProcess::ordersaga(
        &["serve"],
        &[
            ("ROLES", roles.to_owned()),
            ("DATABASE_URL", db.url.clone()),
            ("NATS_URL", nats.url.clone()),
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("SEED_DEMO_CATALOG", "false".to_owned()),
            ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
        ],
    )
}

#[tokio::test]
async fn two_processes_share_the_work_without_breaking_invariants() {
    ordersaga::install_crypto_provider();
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let (port_a, port_b) = (free_port(), free_port());
    // Start one first so migrations and streams are created once, then the second.
    let _a = serve(&db, &nats, port_a);
    wait_healthy(port_a).await;
    let _b = serve(&db, &nats, port_b);
    wait_healthy(port_b).await;

    // Both processes take orders at once. Whatever process an order was placed on, its
    // inventory, payment and saga messages are handled by whichever process the shared durable
    // consumers hand them to, so both processes advance the same orders and touch the same rows.
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
    let ra = ra.unwrap_or_else(|e| panic!("{e:#}"));
    let rb = rb.unwrap_or_else(|e| panic!("{e:#}"));
    println!("process A:\n{ra}\nprocess B:\n{rb}");
    assert!(ra.invariants_hold(), "{ra}");
    assert!(rb.invariants_hold(), "{rb}");
    assert_eq!(
        ra.completed + ra.cancelled + rb.completed + rb.cancelled,
        200
    );
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
        .unwrap_or_else(|e| panic!("{e}"));
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
    .unwrap_or_else(|e| panic!("{e:#}"));
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    assert_eq!(report.completed + report.cancelled, 40);
    assert!(
        report.completed > 0,
        "payments were taken by the payment process"
    );
}
