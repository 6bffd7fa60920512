//! A 3-node JetStream cluster with every stream kept in three copies: a node dies under load
//! and nothing is lost.

use std::time::Duration;

use crate::helpers::{TestNats, eventually, spawn_app_on, wait_orders_placed};

#[tokio::test]
async fn with_streams_on_three_nodes_a_node_dying_mid_load_loses_nothing() {
    let (nodes, url) = TestNats::cluster(3).await;
    let mut app = spawn_app_on(nodes, &url, |s| s.nats_stream_replicas = 3).await;
    let orders = 150;
    let load = load_tests::run(load_tests::LoadConfig {
        base_url: app.base.clone(),
        orders,
        concurrency: 20,
        skus: 3,
        stock_per_sku: 100,
        hot_share: 0.4,
        decline_share: 0.1,
        max_quantity: 2,
        order_timeout: Duration::from_secs(60),
    });
    let pool = app.pool.clone();
    let kill = async {
        wait_orders_placed(&pool, orders as i64 / 3).await;
        // The first node of the list dies (SIGKILL); the client and the streams carry on with
        // the other two.
        app.stop_nats();
    };
    let (report, ()) = tokio::join!(load, kill);
    let report = report.unwrap();
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    assert_eq!(report.completed + report.cancelled, orders, "{report}");

    // Every fact was acknowledged by the cluster: the outbox empties, and the orders stream holds
    // each order's placement and its end.
    eventually(Duration::from_secs(60), "the outbox to drain", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .ok()?;
        (pending == 0).then_some(())
    })
    .await;
    let survivor = url.split(',').nth(1).unwrap_or_default().to_owned();
    let client = async_nats::connect(survivor).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("orders").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    assert!(
        info.state.messages >= 2 * orders as u64,
        "{} messages for {orders} orders",
        info.state.messages
    );
}
