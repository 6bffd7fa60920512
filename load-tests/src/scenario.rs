//! The named scenarios: each is a workload (its defaults, every one overridable) plus the checks
//! and figures that go with it.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::recovery::{self, RecoveryOptions};
use crate::report::{LoadReport, Target};
use crate::resources;
use crate::run::{LoadConfig, RunOptions, Sampling, execute};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 100 orders, 100 in flight; p95 placed->terminal against the 2 s target.
    Baseline,
    /// 1,000 in flight for a duration over many well-stocked SKUs; orders/s sustained.
    Throughput,
    /// 100 in flight for a duration; latency percentiles at moderate load.
    Latency,
    /// 20,000 orders of one unit for one SKU with 1,000 units, 1,000 in flight.
    FlashSale,
    /// Throughput-style load for a long time, sampling the server's RSS and live actors.
    Soak,
    /// Orders left waiting for their payment, then a server restart: time to ready and to
    /// timers re-armed, and no order lost.
    Recovery,
    /// 3,000 in flight against a payment provider that takes 300 ms to answer (bench.sh starts
    /// the fake so): throughput should be bounded by CPU, not by orders waiting; with `--pid`,
    /// the server's RSS is sampled.
    SlowStripe,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::FlashSale => "flash-sale",
            Scenario::Soak => "soak",
            Scenario::Recovery => "recovery",
            Scenario::SlowStripe => "slow-stripe",
        }
    }

    /// The workload when no flag overrides it.
    pub fn defaults(self) -> Defaults {
        // Enough stock that a long run at thousands of orders/s never runs out: 100 SKUs of
        // 10 million units take over 300 million orders of at most 3 units.
        let plenty = Defaults {
            orders: None,
            concurrency: 1000,
            duration: Some(Duration::from_secs(60)),
            skus: 100,
            stock_per_sku: 10_000_000,
            max_quantity: 3,
        };
        match self {
            Scenario::Baseline => Defaults {
                orders: Some(100),
                concurrency: 100,
                duration: None,
                skus: 10,
                stock_per_sku: 1000,
                max_quantity: 3,
            },
            Scenario::Throughput => plenty,
            Scenario::Latency => Defaults {
                concurrency: 100,
                ..plenty
            },
            Scenario::FlashSale => Defaults {
                orders: Some(20_000),
                concurrency: 1000,
                duration: None,
                skus: 1,
                stock_per_sku: 1000,
                max_quantity: 1,
            },
            Scenario::Soak => Defaults {
                orders: Some(1_000_000),
                duration: None,
                ..plenty
            },
            Scenario::SlowStripe => Defaults {
                concurrency: 3000,
                ..plenty
            },
            Scenario::Recovery => Defaults {
                orders: Some(10_000),
                concurrency: 100,
                duration: None,
                skus: 10,
                stock_per_sku: 10_000_000,
                max_quantity: 1,
            },
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `None`: as many as the duration allows.
    pub orders: Option<usize>,
    pub concurrency: usize,
    /// `None`: until the orders are done.
    pub duration: Option<Duration>,
    pub skus: usize,
    pub stock_per_sku: i64,
    pub max_quantity: i64,
}

/// A scenario and every override of its defaults.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub scenario: Scenario,
    pub base_url: String,
    pub orders: Option<usize>,
    pub concurrency: Option<usize>,
    pub duration: Option<Duration>,
    pub skus: Option<usize>,
    pub stock_per_sku: Option<i64>,
    pub hot_share: f64,
    pub decline_share: f64,
    pub max_quantity: Option<i64>,
    pub order_timeout: Duration,
    pub progress: bool,
    /// Two requests per order (placement, then long poll) instead of `POST /orders?wait=`.
    pub place_then_poll: bool,
    pub client_keys: usize,
    /// The server's process: its RSS is sampled (soak; any scenario when given), and the
    /// recovery scenario SIGKILLs it.
    pub pid: Option<u32>,
    /// Soak: RSS growth after warm-up above this share is flagged.
    pub growth_threshold: f64,
    pub recovery: RecoveryOptions,
}

impl ScenarioConfig {
    pub fn new(scenario: Scenario, base_url: impl Into<String>) -> Self {
        Self {
            scenario,
            base_url: base_url.into(),
            orders: None,
            concurrency: None,
            duration: None,
            skus: None,
            stock_per_sku: None,
            hot_share: 0.0,
            decline_share: 0.0,
            max_quantity: None,
            order_timeout: Duration::from_secs(60),
            progress: false,
            place_then_poll: false,
            client_keys: 0,
            pid: None,
            growth_threshold: 0.10,
            recovery: RecoveryOptions::default(),
        }
    }

    /// The workload and options the scenario runs with.
    pub fn resolve(&self) -> (LoadConfig, RunOptions) {
        let d = self.scenario.defaults();
        // An explicit order count without a duration runs to that count, whatever the scenario.
        let duration = match (self.duration, self.orders) {
            (Some(duration), _) => Some(duration),
            (None, Some(_)) => None,
            (None, None) => d.duration,
        };
        let orders = self.orders.or(d.orders).unwrap_or(usize::MAX);
        let config = LoadConfig {
            base_url: self.base_url.clone(),
            orders,
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            skus: self.skus.unwrap_or(d.skus),
            stock_per_sku: self.stock_per_sku.unwrap_or(d.stock_per_sku),
            hot_share: self.hot_share,
            decline_share: self.decline_share,
            max_quantity: self.max_quantity.unwrap_or(d.max_quantity),
            order_timeout: self.order_timeout,
        };
        let sampling = (self.scenario == Scenario::Soak || self.pid.is_some()).then(|| Sampling {
            pid: self.pid,
            interval: Duration::from_secs(1),
        });
        let options = RunOptions {
            scenario: self.scenario.name().into(),
            duration,
            progress: self.progress,
            place_then_poll: self.place_then_poll,
            client_keys: self.client_keys,
            sampling,
            ..RunOptions::default()
        };
        (config, options)
    }
}

/// Runs the scenario and checks its invariants.
pub async fn run_scenario(config: &ScenarioConfig) -> anyhow::Result<LoadReport> {
    if config.scenario == Scenario::Recovery {
        return recovery::run(config).await;
    }
    let (load, options) = config.resolve();
    let drained = options.sampling.is_some();
    let mut report = execute(load, options).await?.report;
    match config.scenario {
        Scenario::Baseline => {
            report.targets.push(Target {
                what: format!(
                    "p95 placed->terminal < 2 s (p95 {:.0} ms)",
                    report.latency.p95_ms
                ),
                met: !report.latency_histogram.is_empty() && report.latency.p95_ms < 2000.0,
            });
        }
        Scenario::FlashSale => check_flash_sale(&mut report),
        _ => {}
    }
    if config.scenario == Scenario::Soak || config.pid.is_some() {
        let soak = resources::summarize(
            &report.samples,
            config.pid,
            drained,
            config.growth_threshold,
        );
        if soak.growth_flagged {
            report.warnings.push(format!(
                "server RSS grew {:+.1} % between the end of warm-up and the end of the load (threshold {:.0} %)",
                soak.rss_growth_after_warmup.unwrap_or_default() * 100.0,
                config.growth_threshold * 100.0
            ));
        }
        if config.pid.is_none() {
            report
                .warnings
                .push("no --pid: the server's RSS was not sampled".into());
        }
        report.soak = Some(soak);
    }
    for target in &report.targets {
        if !target.met {
            report
                .warnings
                .push(format!("target missed: {}", target.what));
        }
    }
    Ok(report)
}

/// One SKU, quantity 1: exactly min(stock, orders placed) complete, the rest are cancelled out
/// of stock (declined cards, when asked for, may leave units unsold).
fn check_flash_sale(report: &mut LoadReport) {
    let stock = usize::try_from(report.stock_per_sku.max(0)).unwrap_or(usize::MAX);
    let placed = report.orders - report.placement_failures;
    report
        .invariants_checked
        .push("completed = min(stock, orders); the rest cancelled out of stock".into());
    let allowed = |reason: &str| {
        reason == "out_of_stock" || (report.decline_share > 0.0 && reason == "payment_failed")
    };
    let others: Vec<String> = report
        .cancel_reasons
        .iter()
        .filter(|(reason, _)| !allowed(reason))
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let violation = if report.decline_share > 0.0 {
        (report.completed > stock)
            .then(|| format!("{} completed for a stock of {stock}", report.completed))
    } else {
        (report.completed != stock.min(placed)).then(|| {
            format!(
                "{} completed, expected exactly min(stock {stock}, orders placed {placed}) = {}",
                report.completed,
                stock.min(placed)
            )
        })
    };
    report.violations.extend(violation);
    if !others.is_empty() {
        report.violations.push(format!(
            "orders cancelled for another reason than out of stock: {}",
            others.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_defaults_and_an_order_count_alone_drops_the_duration() {
        let mut c = ScenarioConfig::new(Scenario::Throughput, "http://x");
        let (load, options) = c.resolve();
        assert_eq!(load.concurrency, 1000);
        assert_eq!(load.orders, usize::MAX);
        assert_eq!(options.duration, Some(Duration::from_secs(60)));
        c.orders = Some(5000);
        let (load, options) = c.resolve();
        assert_eq!((load.orders, options.duration), (5000, None));
        c.duration = Some(Duration::from_secs(5));
        assert_eq!(c.resolve().1.duration, Some(Duration::from_secs(5)));

        let (load, options) = ScenarioConfig::new(Scenario::FlashSale, "http://x").resolve();
        assert_eq!(
            (
                load.orders,
                load.skus,
                load.stock_per_sku,
                load.max_quantity
            ),
            (20_000, 1, 1000, 1)
        );
        assert!(options.sampling.is_none());
        assert!(
            ScenarioConfig::new(Scenario::Soak, "http://x")
                .resolve()
                .1
                .sampling
                .is_some()
        );
    }

    fn flash(completed: usize, reasons: &[(&str, u64)]) -> LoadReport {
        let mut r = LoadReport {
            orders: 20_000,
            stock_per_sku: 1000,
            completed,
            ..Default::default()
        };
        r.cancel_reasons = reasons.iter().map(|(k, v)| ((*k).into(), *v)).collect();
        check_flash_sale(&mut r);
        r
    }

    #[test]
    fn a_flash_sale_sells_exactly_the_stock_and_cancels_the_rest_out_of_stock() {
        assert!(flash(1000, &[("out_of_stock", 19_000)]).invariants_hold());
        assert_eq!(flash(999, &[("out_of_stock", 19_001)]).violations.len(), 1);
        assert_eq!(
            flash(1000, &[("out_of_stock", 18_999), ("payment_timeout", 1)])
                .violations
                .len(),
            1
        );
    }
}
