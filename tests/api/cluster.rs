//! The cluster's partitions and their leases: how instances share them, hand them off, and take
//! over a dead instance's; the leases' fencing rules at the store; `GET /cluster`.

use std::time::Duration;

use serde_json::Value;

use chrono::Utc;

use actors::cluster::{InstanceId, KeySpace, Ownership, PartitionCount};
use actors::ports::{OrderSnapshotStore, StoreError};
use actors::saga::{self, Decision, SagaEvent};
use adapters::postgres::{self as pg, PgOrderSnapshotStore, PgPartitionLeases};

use crate::helpers::{
    TestApp, TestDb, eventually, new_order, order_body, spawn_app_with, standalone_stripe_fake,
};

const TOKEN: &str = "cluster-admin-token";

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.unwrap()
}

/// A cluster whose leases run out in a second and are renewed every 100 ms, so a takeover is
/// quick to wait for.
async fn quick_cluster_app() -> TestApp {
    spawn_app_with(|s| {
        s.admin_token = Some(TOKEN.into());
        s.cluster.partition_lease_ms = 1_000;
        s.cluster.partition_renew_ms = 100;
    })
    .await
}

/// Waits until two instances hold 32 partitions each of both key spaces, with no hand-off in
/// progress in either.
async fn wait_for_two_halves(app: &TestApp) {
    eventually(
        Duration::from_secs(20),
        "two instances with 32 order and 32 SKU partitions each",
        || async {
            let cluster = cluster_of(app).await;
            let even = ["orders", "skus"].iter().all(|name| {
                let (held, handoffs) = holdings_of(&cluster, name);
                held.len() == 2 && held.iter().all(|(_, n)| *n == 32) && handoffs == 0
            });
            even.then_some(())
        },
    )
    .await;
}

async fn cluster_of(app: &TestApp) -> Value {
    cluster_at(app, &app.base).await
}

/// (key space, partition, owner, epoch) of every partition in a `GET /cluster` answer.
fn owners(cluster: &Value) -> Vec<(String, i64, String, i64)> {
    let spaces = cluster["key_spaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    spaces
        .iter()
        .flat_map(|space| {
            let name = space["key_space"].as_str().unwrap_or_default().to_owned();
            let partitions = space["partitions"].as_array().cloned().unwrap_or_default();
            partitions.into_iter().map(move |p| {
                (
                    name.clone(),
                    p["partition"].as_i64().unwrap_or(-1),
                    p["owner"].as_str().unwrap_or_default().to_owned(),
                    p["epoch"].as_i64().unwrap_or(-1),
                )
            })
        })
        .collect()
}

/// `GET /cluster` from the instance at `base`.
async fn cluster_at(app: &TestApp, base: &str) -> Value {
    let response = app
        .http
        .get(format!("{base}/cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /cluster");
    assert_eq!(response.status().as_u16(), 200);
    ok(response.json().await)
}

/// One key space's part of a `GET /cluster` answer (`orders` or `skus`).
fn space<'a>(cluster: &'a Value, name: &str) -> &'a Value {
    cluster["key_spaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["key_space"] == name)
        .unwrap_or_else(|| panic!("no key space {name} in {cluster}"))
}

/// Live partitions of `name` held by each instance, by instance id, and that key space's
/// hand-offs in progress.
fn holdings_of(cluster: &Value, name: &str) -> (Vec<(String, u64)>, usize) {
    let held = cluster["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["live"] == true)
        .map(|i| {
            (
                i["instance_id"].as_str().unwrap_or_default().to_owned(),
                i["partitions"][name].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let handoffs = space(cluster, name)["handoffs"]
        .as_array()
        .map_or(0, Vec::len);
    (held, handoffs)
}

fn holdings(cluster: &Value) -> (Vec<(String, u64)>, usize) {
    holdings_of(cluster, "orders")
}

#[tokio::test]
async fn a_lone_instance_owns_every_partition_from_its_start() {
    let app = quick_cluster_app().await;
    let cluster = cluster_of(&app).await;
    assert_eq!(cluster["partition_count"], 64);
    for name in ["orders", "skus"] {
        assert_eq!(cluster["owned_here"][name], 64);
        let (held, handoffs) = holdings_of(&cluster, name);
        assert_eq!(held.len(), 1, "{cluster}");
        assert_eq!(held[0].1, 64);
        assert_eq!(handoffs, 0);
        assert!(
            space(&cluster, name)["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|p| p["epoch"].as_i64() >= Some(1) && p["owner"] == held[0].0.as_str()),
            "{cluster}"
        );
    }
}

#[tokio::test]
async fn a_joining_instance_takes_half_and_gives_it_back_when_it_drains() {
    let app = quick_cluster_app().await;
    let peer = app.spawn_peer(|_| {}).await;
    wait_for_two_halves(&app).await;
    // The partitions the peer took were handed off by the first instance, so each was acquired a
    // second time, at a higher epoch.
    let cluster = cluster_of(&app).await;
    let me = cluster["instance"].as_str().unwrap_or_default().to_owned();
    let moved: Vec<&Value> = space(&cluster, "orders")["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["owner"] != me.as_str())
        .collect();
    assert_eq!(moved.len(), 32);
    assert!(
        moved.iter().all(|p| p["epoch"].as_i64() >= Some(2)),
        "{cluster}"
    );
    assert_eq!(cluster["owned_here"]["orders"], 32);
    // The peer tells the same story from the same rows (who owns what, at which epoch; the
    // leases' expiry moves with every renewal), and holds the other half itself.
    eventually(
        Duration::from_secs(20),
        "both instances to report the same owners",
        || async {
            let (mine, theirs) = (cluster_of(&app).await, cluster_at(&app, &peer.base).await);
            (owners(&mine) == owners(&theirs)).then_some(())
        },
    )
    .await;
    let seen_by_peer = cluster_at(&app, &peer.base).await;
    assert_eq!(seen_by_peer["owned_here"]["orders"], 32);
    assert_ne!(seen_by_peer["instance"], cluster["instance"]);

    peer.stop().await;
    eventually(
        Duration::from_secs(20),
        "the first instance with all 64 again",
        || async {
            let cluster = cluster_of(&app).await;
            let (held, handoffs) = holdings(&cluster);
            let all = held == vec![(me.clone(), 64)]
                && handoffs == 0
                && cluster["owned_here"]["orders"] == 64;
            all.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_dead_instance_s_partitions_are_taken_over_once_its_leases_run_out() {
    let app = quick_cluster_app().await;
    let peer = app.spawn_peer(|_| {}).await;
    wait_for_two_halves(&app).await;
    let before = cluster_of(&app).await;
    let me = before["instance"].as_str().unwrap_or_default().to_owned();
    peer.crash().await;
    let after = eventually(Duration::from_secs(20), "all 64 taken over", || async {
        let cluster = cluster_of(&app).await;
        let all = cluster["owned_here"]["orders"] == 64 && cluster["owned_here"]["skus"] == 64;
        all.then_some(cluster)
    })
    .await;
    // Every partition of the dead instance changed hands at a higher epoch; ours kept theirs.
    let partitions = |cluster: &Value| {
        cluster["key_spaces"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["partitions"].as_array().cloned().unwrap_or_default())
            .collect::<Vec<Value>>()
    };
    for (was, now) in partitions(&before).iter().zip(&partitions(&after)) {
        assert_eq!(now["owner"], me.as_str());
        if was["owner"] == me.as_str() {
            assert_eq!(now["epoch"], was["epoch"], "{was} -> {now}");
        } else {
            assert!(
                now["epoch"].as_i64() > was["epoch"].as_i64(),
                "{was} -> {now}"
            );
        }
    }
}

const S: KeySpace = KeySpace::Orders;

#[tokio::test]
async fn a_lease_is_taken_only_when_free_run_out_or_our_own_and_a_stale_holder_is_refused() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    let count = ok(PgPartitionLeases::partition_count(&pool, ok(PartitionCount::new(4))).await);
    // A second proposal does not change the count the database was created with.
    let again = ok(PgPartitionLeases::partition_count(&pool, ok(PartitionCount::new(8))).await);
    assert_eq!(again, count);
    let lease = Duration::from_millis(400);
    let a = PgPartitionLeases::new(pool.clone(), ok(InstanceId::parse("a")), lease);
    let b = PgPartitionLeases::new(pool.clone(), ok(InstanceId::parse("b")), lease);
    let p0 = ok(count.partition(0).ok_or("partition 0"));

    let taken = ok(a.acquire(S, count, &[p0]).await);
    assert_eq!(taken.len(), 1);
    // The same partition number in the other key space is a lease of its own.
    assert_eq!(ok(b.acquire(KeySpace::Skus, count, &[p0]).await).len(), 1);
    let (_, first_epoch) = taken[0];
    assert!(
        ok(b.acquire(S, count, &[p0]).await).is_empty(),
        "a live lease"
    );
    assert_eq!(ok(a.renew(S, count, &taken).await), taken);

    // Once a's lease runs out, b takes it at a higher epoch; a's renewal then finds nothing and
    // its release changes nothing.
    let by_b = eventually(Duration::from_secs(10), "the lease to run out", || async {
        let got = ok(b.acquire(S, count, &[p0]).await);
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert!(by_b[0].1 > first_epoch);
    assert!(ok(a.renew(S, count, &taken).await).is_empty());
    assert_eq!(ok(a.release(S, &taken).await), 0);
    assert!(ok(a.acquire(S, count, &[p0]).await).is_empty());

    // Released, it is free at once; a restarted instance under its old name takes its own back
    // without waiting, at a higher epoch still.
    assert_eq!(ok(b.release(S, &by_b).await), 1);
    let back = ok(a.acquire(S, count, &[p0]).await);
    assert!(back[0].1 > by_b[0].1);
    let a_again = PgPartitionLeases::new(pool.clone(), ok(InstanceId::parse("a")), lease);
    let reborn = ok(a_again.acquire(S, count, &[p0]).await);
    assert!(reborn[0].1 > back[0].1);
    assert!(
        ok(a.renew(S, count, &back).await).is_empty(),
        "the old life is fenced"
    );
}

/// Places an order at the instance at `base`; returns its id.
async fn place_at(app: &TestApp, base: &str, payment_method: &str) -> String {
    let response = app
        .http
        .post(format!("{base}/orders"))
        .json(&order_body(&[("MUG", 1)], payment_method))
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = ok(response.json().await);
    body["order_id"].as_str().unwrap_or_default().to_owned()
}

/// The instance that holds the order partition `order_id` hashes to.
fn owner_of(cluster: &Value, order_id: &str) -> String {
    let count = ok(PartitionCount::new(
        cluster["partition_count"].as_i64().unwrap_or(0),
    ));
    let partition = count.of_order(ok(order_id.parse()));
    space(cluster, "orders")["partitions"][partition.index()]["owner"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn each_instance_runs_the_orders_it_places_and_a_dead_one_s_are_finished_by_the_other() {
    let (_fake, stripe) = standalone_stripe_fake().await;
    let app = spawn_app_with(|s| {
        s.admin_token = Some(TOKEN.into());
        s.cluster.partition_lease_ms = 1_000;
        s.cluster.partition_renew_ms = 100;
        s.stripe_secret_key = Some("sk_test_cluster".into());
        s.stripe_api_base = stripe.clone();
        s.stripe_webhook_secret = vec!["whsec_ordersaga_dev_fake".into()];
        s.payment_step_timeout_ms = 4_000;
    })
    .await;
    // Every webhook reaches the first instance, whoever owns the order.
    let config = serde_json::json!({"webhook_url": format!("{}/payments/webhook", app.base)});
    let set = ok(app
        .http
        .post(format!("{stripe}/_fake/config"))
        .json(&config)
        .send()
        .await);
    assert!(set.status().is_success());
    let peer = app.spawn_peer(|_| {}).await;
    wait_for_two_halves(&app).await;
    app.put_product("MUG", 100, 1250).await;

    // Orders placed at the peer are the peer's; their webhooks arrive at the first instance,
    // which posts each answer to the peer.
    let mut paid = Vec::new();
    for _ in 0..6 {
        paid.push(place_at(&app, &peer.base, "pm_card_visa").await);
    }
    let cluster = cluster_of(&app).await;
    let peer_id = cluster_at(&app, &peer.base).await["instance"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for id in &paid {
        assert_eq!(owner_of(&cluster, id), peer_id, "order {id}");
        assert_eq!(
            app.wait_terminal(id).await["status"],
            "COMPLETED",
            "order {id}"
        );
    }

    // Orders of the peer wait for a payment answer that never comes; the peer dies. Once its
    // leases run out, the first instance owns their partitions, recovers them, and their payment
    // deadlines fire there: cancelled, stock released.
    let mut waiting = Vec::new();
    for _ in 0..6 {
        waiting.push(place_at(&app, &peer.base, "pm_fake_no_webhook").await);
    }
    for id in &waiting {
        app.wait_status(id, "PAYMENT_PROCESSING").await;
    }
    // An operator asking the first instance about the peer's order is answered by the peer,
    // which runs its live actor (the first instance alone would only find a snapshot); an
    // action asked of the first instance is carried out by the peer too.
    let inspected = ok(app
        .http
        .get(format!("{}/actors/orders/{}", app.base, waiting[0]))
        .bearer_auth(TOKEN)
        .send()
        .await);
    assert_eq!(inspected.status().as_u16(), 200);
    let inspected: Value = ok(inspected.json().await);
    assert_eq!(inspected["source"], "live", "{inspected}");
    assert_eq!(inspected["status"], "PAYMENT_PROCESSING", "{inspected}");
    let retry = ok(app
        .http
        .post(format!("{}/actors/orders/{}/retry", app.base, waiting[0]))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"by": "test", "reason": "asked another instance"}))
        .send()
        .await);
    assert_eq!(retry.status().as_u16(), 200);
    let retried: Value = ok(retry.json().await);
    assert_eq!(retried["applied"], true, "{retried}");
    peer.crash().await;
    for id in &waiting {
        let order = app.wait_terminal(id).await;
        assert_eq!(order["status"], "CANCELLED", "{order}");
        // The payment deadline was armed at the peer, then again at the first instance on
        // recovery: it fired once, at the one owner (one compensation started by it; the
        // final CANCELLED repeats its reason).
        let timeouts = order["history"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| {
                entry["status"] != "CANCELLED"
                    && entry["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("payment step timed out"))
            })
            .count();
        assert_eq!(timeouts, 1, "{order}");
    }
    let product = app.settled_product("MUG").await;
    assert_eq!(product["on_hand"], 94, "{product}");
    assert_eq!(product["reserved"], 0, "{product}");
}

#[tokio::test]
async fn a_snapshot_write_of_an_owner_whose_partition_was_taken_over_is_refused() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    let count = ok(PgPartitionLeases::partition_count(&pool, ok(PartitionCount::new(64))).await);
    let lease = Duration::from_millis(400);
    let a = PgPartitionLeases::new(pool.clone(), ok(InstanceId::parse("a")), lease);
    let b = PgPartitionLeases::new(pool.clone(), ok(InstanceId::parse("b")), lease);
    let start = saga::start(new_order(), Utc::now());
    let partition = count.of_order(start.next.order_id);
    let held = ok(a.acquire(S, count, &[partition]).await);
    let ownership = Ownership::new(S, count);
    ownership.grant(held[0].0, held[0].1);
    let store = PgOrderSnapshotStore::fenced(pool.clone(), pg::OutboxSignal::new(), 1, ownership);
    assert!(ok(store.create(&start.next, &[]).await), "the owner writes");

    // b takes the partition over once a's lease runs out; a still believes it owns it.
    eventually(
        Duration::from_secs(10),
        "b to take the partition over",
        || async { (!ok(b.acquire(S, count, &[partition]).await).is_empty()).then_some(()) },
    )
    .await;
    let Decision::Apply(step) = saga::decide(&start.next, &SagaEvent::StockReserved, Utc::now())
    else {
        panic!("a reservation applies to a new order");
    };
    let refused = store.commit(start.next.version, &step.next, &[]).await;
    assert!(
        matches!(refused, Err(StoreError::NotOwner(_))),
        "{refused:?}"
    );
    let stored = ok(store.load(start.next.order_id).await).map(|s| s.version);
    assert_eq!(stored, Some(start.next.version), "nothing was written");

    // An order of a partition this instance never held is refused before PostgreSQL is asked.
    let elsewhere = saga::start(new_order(), Utc::now());
    let refused = store.create(&elsewhere.next, &[]).await;
    assert!(
        matches!(refused, Err(StoreError::NotOwner(_))),
        "{refused:?}"
    );
    assert_eq!(ok(store.load(elsewhere.next.order_id).await), None);
}

#[tokio::test]
async fn a_placement_retried_at_another_instance_meets_its_order_at_the_owner() {
    let app = quick_cluster_app().await;
    let peer = app.spawn_peer(|_| {}).await;
    wait_for_two_halves(&app).await;
    app.put_product("MUG", 10, 1250).await;
    let body = order_body(&[("MUG", 1)], "pm_card_visa");
    let place = |base: String| {
        app.http
            .post(format!("{base}/orders?wait=10s"))
            .header("Idempotency-Key", "retried-elsewhere")
            .json(&body)
            .send()
    };
    let first = ok(place(peer.base.clone()).await);
    assert!(first.status().is_success(), "{}", first.status());
    let first: Value = ok(first.json().await);
    let id = first["order_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        owner_of(&cluster_of(&app).await, &id),
        peer_instance(&app, &peer).await
    );

    // The client retries at the other instance (say the first answer was lost): the order is
    // the peer's, so the peer answers, with the order as it is now.
    let retried = ok(place(app.base.clone()).await);
    assert_eq!(retried.status().as_u16(), 200);
    assert_eq!(
        retried
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let retried: Value = ok(retried.json().await);
    assert_eq!(retried["order_id"], id.as_str());
    assert_eq!(retried["status"], "COMPLETED", "{retried}");
    let orders: i64 = ok(sqlx::query_scalar("SELECT count(*) FROM order_snapshots")
        .fetch_one(&app.pool)
        .await);
    assert_eq!(orders, 1, "one order for one key");
}

/// The instance id the peer reports.
async fn peer_instance(app: &TestApp, peer: &crate::helpers::Peer) -> String {
    cluster_at(app, &peer.base).await["instance"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
