//! The cluster's partitions and their leases: how instances share them, hand them off, and take
//! over a dead instance's; the leases' fencing rules at the store; `GET /cluster`.

use std::time::Duration;

use serde_json::Value;

use actors::cluster::{InstanceId, PartitionCount};
use adapters::postgres::{self as pg, PgPartitionLeases};

use crate::helpers::{TestApp, TestDb, eventually, spawn_app_with};

const TOKEN: &str = "cluster-admin-token";

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A cluster whose leases run out in a second and are renewed every 100 ms, so a takeover is
/// quick to wait for.
async fn quick_cluster_app() -> TestApp {
    spawn_app_with(|s| {
        s.admin_token = TOKEN.parse().ok();
        s.cluster.partition_lease_ms = 1_000;
        s.cluster.partition_renew_ms = 100;
    })
    .await
}

async fn cluster_of(app: &TestApp) -> Value {
    cluster_at(app, &app.base).await
}

/// `GET /cluster` from the instance at `base`.
async fn cluster_at(app: &TestApp, base: &str) -> Value {
    let response = app
        .http
        .get(format!("{base}/cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /cluster: {e}"));
    assert_eq!(response.status().as_u16(), 200);
    ok(response.json().await)
}

/// Live partitions held by each instance, by instance id, and the count of hand-offs.
fn holdings(cluster: &Value) -> (Vec<(String, u64)>, usize) {
    let held = cluster["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["live"] == true)
        .map(|i| {
            (
                i["instance_id"].as_str().unwrap_or_default().to_owned(),
                i["partitions"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let handoffs = cluster["handoffs"].as_array().map_or(0, Vec::len);
    (held, handoffs)
}

#[tokio::test]
async fn a_lone_instance_owns_every_partition_from_its_start() {
    let app = quick_cluster_app().await;
    let cluster = cluster_of(&app).await;
    assert_eq!(cluster["partition_count"], 64);
    assert_eq!(cluster["owned_here"], 64);
    let (held, handoffs) = holdings(&cluster);
    assert_eq!(held.len(), 1, "{cluster}");
    assert_eq!(held[0].1, 64);
    assert_eq!(handoffs, 0);
    assert!(
        cluster["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| p["epoch"].as_i64() >= Some(1) && p["owner"] == held[0].0.as_str()),
        "{cluster}"
    );
}

#[tokio::test]
async fn a_joining_instance_takes_half_and_gives_it_back_when_it_drains() {
    let app = quick_cluster_app().await;
    let peer = app.spawn_peer(|_| {}).await;
    eventually(
        Duration::from_secs(20),
        "two instances with 32 each",
        || async {
            let (held, handoffs) = holdings(&cluster_of(&app).await);
            let even = held.len() == 2 && held.iter().all(|(_, n)| *n == 32) && handoffs == 0;
            even.then_some(())
        },
    )
    .await;
    // The partitions the peer took were handed off by the first instance, so each was acquired a
    // second time, at a higher epoch.
    let cluster = cluster_of(&app).await;
    let me = cluster["instance"].as_str().unwrap_or_default().to_owned();
    let moved: Vec<&Value> = cluster["partitions"]
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
    assert_eq!(cluster["owned_here"], 32);
    // The peer tells the same story from the same rows, and holds the other half itself.
    let seen_by_peer = cluster_at(&app, &peer.base).await;
    assert_eq!(seen_by_peer["partitions"], cluster["partitions"]);
    assert_eq!(seen_by_peer["owned_here"], 32);
    assert_ne!(seen_by_peer["instance"], cluster["instance"]);

    peer.stop().await;
    eventually(
        Duration::from_secs(20),
        "the first instance with all 64 again",
        || async {
            let cluster = cluster_of(&app).await;
            let (held, handoffs) = holdings(&cluster);
            let all =
                held == vec![(me.clone(), 64)] && handoffs == 0 && cluster["owned_here"] == 64;
            all.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_dead_instance_s_partitions_are_taken_over_once_its_leases_run_out() {
    let app = quick_cluster_app().await;
    let peer = app.spawn_peer(|_| {}).await;
    eventually(
        Duration::from_secs(20),
        "two instances with 32 each",
        || async {
            let (held, handoffs) = holdings(&cluster_of(&app).await);
            (held.len() == 2 && handoffs == 0).then_some(())
        },
    )
    .await;
    let before = cluster_of(&app).await;
    let me = before["instance"].as_str().unwrap_or_default().to_owned();
    peer.crash().await;
    let after = eventually(Duration::from_secs(20), "all 64 taken over", || async {
        let cluster = cluster_of(&app).await;
        (cluster["owned_here"] == 64).then_some(cluster)
    })
    .await;
    // Every partition of the dead instance changed hands at a higher epoch; ours kept theirs.
    for (was, now) in before["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(after["partitions"].as_array().into_iter().flatten())
    {
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

    let taken = ok(a.acquire(count, &[p0]).await);
    assert_eq!(taken.len(), 1);
    let (_, first_epoch) = taken[0];
    assert!(ok(b.acquire(count, &[p0]).await).is_empty(), "a live lease");
    assert_eq!(ok(a.renew(count, &taken).await), taken);

    // Once a's lease runs out, b takes it at a higher epoch; a's renewal then finds nothing and
    // its release changes nothing.
    let by_b = eventually(Duration::from_secs(10), "the lease to run out", || async {
        let got = ok(b.acquire(count, &[p0]).await);
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert!(by_b[0].1 > first_epoch);
    assert!(ok(a.renew(count, &taken).await).is_empty());
    assert_eq!(ok(a.release(&taken).await), 0);
    assert!(ok(a.acquire(count, &[p0]).await).is_empty());

    // Released, it is free at once; a restarted instance under its old name takes its own back
    // without waiting, at a higher epoch still.
    assert_eq!(ok(b.release(&by_b).await), 1);
    let back = ok(a.acquire(count, &[p0]).await);
    assert!(back[0].1 > by_b[0].1);
    let a_again = PgPartitionLeases::new(pool.clone(), ok(InstanceId::parse("a")), lease);
    let reborn = ok(a_again.acquire(count, &[p0]).await);
    assert!(reborn[0].1 > back[0].1);
    assert!(
        ok(a.renew(count, &back).await).is_empty(),
        "the old life is fenced"
    );
}
