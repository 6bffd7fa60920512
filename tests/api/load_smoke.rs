//! CI smoke run of the load generator against the app spawned in-process: a few hundred orders
//! with declines and a hot SKU that runs out, and a small flash sale. Only the invariants are
//! asserted, never timings (CI machines vary too much for those).

use std::time::Duration;

use load_tests::{LoadConfig, RunOptions, Scenario, ScenarioConfig};

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_mixed_load_with_declines_and_a_hot_sku_keeps_the_invariants() {
    let app = spawn_app().await;
    let report = load_tests::run_with(
        LoadConfig {
            base_url: app.base.clone(),
            orders: 300,
            concurrency: 50,
            skus: 5,
            // The hot SKU gets about half the orders (~300 units) and runs out; the others do not.
            stock_per_sku: 120,
            hot_share: 0.5,
            decline_share: 0.1,
            max_quantity: 2,
            order_timeout: Duration::from_secs(60),
        },
        RunOptions {
            scenario: "ci-smoke".into(),
            ..RunOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("load run failed: {e:#}"));
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    assert_eq!(report.orders, 300);
    assert_eq!(report.completed + report.cancelled, 300, "{report}");
    assert_eq!(report.not_terminal, 0);
    assert_eq!(report.failed_requests, 0, "{report}");
    for reason in report.cancel_reasons.keys() {
        assert!(
            matches!(reason.as_str(), "out_of_stock" | "payment_failed"),
            "unexpected cancel reason {reason}: {report}"
        );
    }
    assert_eq!(report.stock.len(), 5);
    for sku in &report.stock {
        assert_eq!(sku.reserved, 0, "{sku:?}");
        assert_eq!(sku.on_hand + sku.sold, sku.initial, "{sku:?}");
        assert!(sku.sold <= sku.initial, "{sku:?}");
    }
}

#[tokio::test]
async fn a_small_flash_sale_sells_exactly_the_stock() {
    let app = spawn_app().await;
    let mut config = ScenarioConfig::new(Scenario::FlashSale, app.base.clone());
    config.orders = Some(200);
    config.concurrency = Some(50);
    config.stock_per_sku = Some(40);
    let report = load_tests::run_scenario(&config)
        .await
        .unwrap_or_else(|e| panic!("flash sale failed: {e:#}"));
    println!("{report}");
    assert!(report.invariants_hold(), "{report}");
    assert_eq!(report.completed, 40, "{report}");
    assert_eq!(report.cancel_reasons.get("out_of_stock"), Some(&160));
    assert_eq!(report.stock.len(), 1);
    assert_eq!(report.stock[0].on_hand, 0);
}
