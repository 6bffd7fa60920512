//! `load-tests`: runs one load scenario against a running ordersaga, prints the figures, writes
//! them as JSON with an HTML latency chart beside it, and exits non-zero when an invariant fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use load_tests::{
    RecoveryOptions, Scenario, ScenarioConfig, default_json_path, run_scenario, write_results,
};

#[derive(Debug, Parser)]
#[command(
    name = "load-tests",
    about = "Place orders over HTTP, wait for them, print figures, check invariants",
    after_help = "Scenarios: baseline (100 orders, 100 in flight, p95 target 2 s), throughput (1000 in flight for 60 s), latency (100 in flight for 60 s), flash-sale (20000 orders of one unit for one SKU of 1000 units), soak (1000000 orders, RSS sampled with --pid), recovery (10000 orders waiting for their payment, then a restart). Every flag below overrides the scenario's default."
)]
struct Args {
    /// What to run.
    #[arg(long, value_enum, default_value_t = Scenario::Baseline)]
    scenario: Scenario,
    /// Base URL of a running ordersaga; several instances of a cluster separated by commas
    /// (orders are spread round-robin, and a placement an instance does not take moves on to
    /// the next, under an Idempotency-Key).
    #[arg(long, env = "ORDERSAGA_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Orders to place (with --duration: at most this many).
    #[arg(long)]
    orders: Option<usize>,
    /// Start orders for this long, then wait for those in flight: `60s`, `10m`, `2h`, or seconds.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Orders in flight at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// SKUs to spread orders over.
    #[arg(long)]
    skus: Option<usize>,
    /// Units on hand per SKU at the start.
    #[arg(long)]
    stock: Option<i64>,
    /// Share of orders for the first (hot) SKU, 0..1.
    #[arg(long, default_value_t = 0.0)]
    hot_share: f64,
    /// Share of orders paid with a declined card, 0..1.
    #[arg(long, default_value_t = 0.0)]
    decline_share: f64,
    /// Largest quantity per order.
    #[arg(long)]
    max_quantity: Option<i64>,
    /// Seconds to wait for each order to finish.
    #[arg(long, default_value_t = 60)]
    order_timeout_secs: u64,
    /// Spread orders over this many `X-Client-Key`s (the server rate-limits per key, else per
    /// IP address); 0 sends none.
    #[arg(long, default_value_t = 0)]
    client_keys: usize,
    /// The server's process id: its RSS (`/proc/<pid>/status`) is sampled every second (soak, or
    /// any scenario); recovery SIGKILLs it.
    #[arg(long)]
    pid: Option<u32>,
    /// Soak: flag RSS growth after warm-up above this share.
    #[arg(long, default_value_t = 0.10)]
    growth_threshold: f64,
    /// Recovery: a shell command that restarts the server (waited for).
    #[arg(long)]
    restart_cmd: Option<String>,
    /// Recovery, with --pid: a shell command that starts the server after the SIGKILL (left
    /// running).
    #[arg(long)]
    start_cmd: Option<String>,
    /// Recovery: the admin bearer token, to read armed timers from `GET /actors`.
    #[arg(long, env = "ORDERSAGA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Recovery: orders that can finish, caught on their way by the restart (run the server
    /// against a slow payment provider), waited for until all are terminal.
    #[arg(long)]
    spread: bool,
    /// Recovery: longest wait for each phase, in seconds.
    #[arg(long, default_value_t = 300)]
    recovery_timeout_secs: u64,
    /// The JSON result file; the HTML chart goes beside it. Default:
    /// `load-tests/results/<scenario>-<timestamp>.json`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Place each order with a plain `POST /orders` (202 at once) and follow it with long-poll
    /// `GET /orders/{id}?wait=`, instead of one `POST /orders?wait=` that answers with the outcome.
    #[arg(long)]
    place_then_poll: bool,
    /// Also print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `60s`, `500ms`, `10m`, `2h`, or plain seconds.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration such as 60s, 10m or 2h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{raw:?}: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{raw:?} is not a positive duration"))
}

/// `load-tests/results` when run from a checkout (cargo run), else `./results`.
fn default_results_dir() -> PathBuf {
    let in_checkout = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results"));
    if in_checkout.parent().is_some_and(|p| p.is_dir()) {
        in_checkout
    } else {
        PathBuf::from("results")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let json_path = args
        .out
        .clone()
        .unwrap_or_else(|| default_json_path(&default_results_dir(), args.scenario.name()));
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut config = ScenarioConfig::new(args.scenario, args.url);
    config.orders = args.orders;
    config.duration = args.duration;
    config.concurrency = args.concurrency;
    config.skus = args.skus;
    config.stock_per_sku = args.stock;
    config.hot_share = args.hot_share;
    config.decline_share = args.decline_share;
    config.max_quantity = args.max_quantity;
    config.order_timeout = Duration::from_secs(args.order_timeout_secs);
    config.progress = !args.no_progress;
    config.place_then_poll = args.place_then_poll;
    config.client_keys = args.client_keys;
    config.pid = args.pid;
    config.growth_threshold = args.growth_threshold;
    config.recovery = RecoveryOptions {
        restart_cmd: args.restart_cmd,
        start_cmd: args.start_cmd,
        admin_token: args.admin_token,
        timeout: Duration::from_secs(args.recovery_timeout_secs),
        command_log: Some(json_path.with_extension("commands.log")),
        spread: args.spread,
    };

    let report = run_scenario(&config).await?;
    println!("{report}");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    let (json, html) = write_results(&report, &json_path)?;
    println!("results: {} and {}", json.display(), html.display());
    Ok(if report.invariants_hold() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-5s").is_err());
    }
}
