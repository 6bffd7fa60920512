//! `load-tests`: runs one load scenario against a running ordersaga and prints the figures.
//! Exits non-zero when an invariant fails.

use std::time::Duration;

use clap::Parser;
use load_tests::{LoadConfig, run};

#[derive(Debug, Parser)]
#[command(
    name = "load-tests",
    about = "Place orders over HTTP, wait for them, print figures, check invariants"
)]
struct Args {
    /// Base URL of a running ordersaga.
    #[arg(long, env = "ORDERSAGA_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Orders to place.
    #[arg(long, default_value_t = 100)]
    orders: usize,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// SKUs to spread orders over.
    #[arg(long, default_value_t = 10)]
    skus: usize,
    /// Units on hand per SKU at the start.
    #[arg(long, default_value_t = 1000)]
    stock: i64,
    /// Share of orders for the first (hot) SKU, 0..1.
    #[arg(long, default_value_t = 0.0)]
    hot_share: f64,
    /// Share of orders paid with a declined card, 0..1.
    #[arg(long, default_value_t = 0.0)]
    decline_share: f64,
    /// Largest quantity per order.
    #[arg(long, default_value_t = 3)]
    max_quantity: i64,
    /// Seconds to wait for each order to finish.
    #[arg(long, default_value_t = 60)]
    order_timeout_secs: u64,
    /// Also print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let report = run(LoadConfig {
        base_url: args.url,
        orders: args.orders,
        concurrency: args.concurrency,
        skus: args.skus,
        stock_per_sku: args.stock,
        hot_share: args.hot_share,
        decline_share: args.decline_share,
        max_quantity: args.max_quantity,
        order_timeout: Duration::from_secs(args.order_timeout_secs),
    })
    .await?;
    println!("{report}");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.invariants_hold() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
