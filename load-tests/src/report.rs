//! Figures and invariant results of one run, printable for humans and as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::api::MessageCounts;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted in place): exact.
    pub fn of(samples: &mut [Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort();
        let at = |p: f64| {
            let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1000.0
        };
        Self {
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p95_ms: at(95.0),
            p99_ms: at(99.0),
            max_ms: at(100.0),
        }
    }

    /// Percentiles of a histogram of microseconds, HDR-accurate (3 significant digits: each
    /// figure is within 0.1 % of the recorded value it stands for).
    pub fn of_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// One bar of the latency chart: orders whose latency is in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyBucket {
    pub from_ms: f64,
    pub to_ms: f64,
    pub count: u64,
}

/// Bars per doubling of latency in [`latency_buckets`].
const BUCKETS_PER_DOUBLING: f64 = 4.0;

/// Log-spaced buckets (four per doubling) covering every recorded value of a histogram of
/// microseconds, from the power of two at or below the smallest value.
pub fn latency_buckets(histogram: &Histogram<u64>) -> Vec<LatencyBucket> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let lowest = histogram.min().max(1) as f64;
    let start = 2f64.powf(lowest.log2().floor());
    let factor = 2f64.powf(1.0 / BUCKETS_PER_DOUBLING);
    let index_of =
        |us: f64| ((us.max(start) / start).log2() * BUCKETS_PER_DOUBLING).floor() as usize;
    let last = index_of(histogram.max().max(1) as f64);
    let mut buckets: Vec<LatencyBucket> = (0..=last)
        .map(|i| LatencyBucket {
            from_ms: start * factor.powi(i as i32) / 1000.0,
            to_ms: start * factor.powi(i as i32 + 1) / 1000.0,
            count: 0,
        })
        .collect();
    for value in histogram.iter_recorded() {
        let i = index_of(histogram.median_equivalent(value.value_iterated_to()) as f64).min(last);
        buckets[i].count += value.count_at_value();
    }
    buckets
}

/// Stock of one SKU after the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SkuStock {
    pub sku: String,
    pub initial: i64,
    /// Units of the completed orders, counted by the client.
    pub sold: i64,
    pub on_hand: i64,
    pub reserved: i64,
}

/// A goal the figures are compared with; missing it is reported but is not an invariant failure.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Target {
    pub what: String,
    pub met: bool,
}

/// One sample of the server while the load ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the load started (negative: before it).
    pub t_s: f64,
    /// Share of the run done (orders finished, or time elapsed for a run by duration), 0..1.
    pub progress: f64,
    pub orders_finished: u64,
    /// Resident set size of `--pid` (`VmRSS` of `/proc/<pid>/status`).
    pub rss_bytes: Option<u64>,
    /// `order_actors_live` from the server's `GET /metrics`.
    pub order_actors_live: Option<f64>,
}

/// What the soak scenario derives from the samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakSummary {
    pub pid: Option<u32>,
    /// Before any order was placed.
    pub rss_idle_bytes: Option<u64>,
    /// First sample at or past 10 % of the run (warm-up over).
    pub rss_after_warmup_bytes: Option<u64>,
    /// First sample at or past 50 % of the run.
    pub rss_middle_bytes: Option<u64>,
    /// Last sample while the load was still running.
    pub rss_end_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    /// After every order finished and the stock settled.
    pub rss_after_drain_bytes: Option<u64>,
    pub max_order_actors_live: Option<f64>,
    /// (peak RSS − idle RSS) / most live order actors observed.
    pub bytes_per_live_actor: Option<f64>,
    /// (end RSS − RSS after warm-up) / RSS after warm-up.
    pub rss_growth_after_warmup: Option<f64>,
    pub growth_threshold: f64,
    /// Growth after warm-up above the threshold: a possible leak, look at the samples.
    pub growth_flagged: bool,
}

/// What the recovery scenario measured around the restart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    /// How the restart was done: `restart-cmd`, `kill-pid`, `kill-pid+start-cmd` or `operator`.
    pub restart_mode: String,
    /// Orders placed (and still waiting for their payment) before the restart.
    pub orders_in_flight: usize,
    /// Statuses of those orders just before the restart.
    pub status_before_restart: BTreeMap<String, u64>,
    pub armed_timers_before_restart: Option<u64>,
    /// Whether the server was seen down (a failed `/health/ready`) after the restart began.
    pub server_down_observed: bool,
    /// From the restart (the command, the kill, or the first failed probe in operator mode)
    /// until `GET /health/ready` answered 200.
    pub time_to_ready_s: Option<f64>,
    /// From the same instant until `GET /actors` showed `order_supervisor.armed_timers` ≥ the
    /// orders in flight: timers re-armed for all of them. `None`: not measured (no admin token)
    /// or not reached before the timeout.
    pub time_to_timers_rearmed_s: Option<f64>,
    pub armed_timers_after_restart: Option<u64>,
    /// Statuses of the orders after the restart (every one must still exist).
    pub status_after_restart: BTreeMap<String, u64>,
    /// Orders that `GET /orders/{id}` answered 404 for after the restart.
    pub lost_orders: usize,
    /// `spread`: from the restart until every order of the run was terminal.
    pub time_to_all_terminal_s: Option<f64>,
    /// `spread`: new orders placed once the server was ready, and the p99 of their time to 202.
    pub placements_during_recovery: usize,
    pub placement_p99_during_recovery_ms: Option<f64>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub scenario: String,
    /// RFC 3339, when the run started.
    pub started_at: String,
    pub base_url: String,
    /// Orders the client started (placed or tried to place).
    pub orders: usize,
    pub concurrency: usize,
    pub skus: usize,
    pub stock_per_sku: i64,
    pub hot_share: f64,
    pub decline_share: f64,
    pub max_quantity: i64,
    /// Set for a run by duration: how long new orders were started.
    pub duration_s: Option<f64>,
    pub completed: usize,
    /// Cancelled orders, and orders that could not be placed (`cancel_reasons["not_placed"]`).
    pub cancelled: usize,
    pub not_terminal: usize,
    /// Orders placed and left running on purpose (the recovery scenario does not wait).
    pub left_running: usize,
    /// Every request that failed: placements and waits.
    pub failed_requests: usize,
    /// Orders whose `POST /orders` never got a 202.
    pub placement_failures: usize,
    /// Non-202 answers to `POST /orders`, by HTTP status (429s excluded: they are retried).
    pub rejected_by_status: BTreeMap<u16, u64>,
    /// 429 answers; each was retried after its `Retry-After`.
    pub rate_limited_retries: u64,
    /// Cancelled orders by `cancel_reason`.
    pub cancel_reasons: BTreeMap<String, u64>,
    /// From the first order to the last one finished.
    pub elapsed_s: f64,
    /// Orders finished per second over `elapsed_s`.
    pub orders_per_s: f64,
    /// Run by duration: orders that finished within the duration, per second of it.
    pub sustained_orders_per_s: Option<f64>,
    /// What `latency` measures.
    pub latency_measured: String,
    pub latency: Percentiles,
    pub latency_histogram: Vec<LatencyBucket>,
    pub stock: Vec<SkuStock>,
    pub targets: Vec<Target>,
    pub samples: Vec<Sample>,
    pub soak: Option<SoakSummary>,
    pub recovery: Option<RecoveryReport>,
    /// Messages one finished order cost the process at `base_url` (only that one): outbox rows
    /// written, published by its outbox relay, delivered to its durable consumers (any outcome),
    /// how many deliveries were repeats, and how many commands and answers went from actor to
    /// actor without the broker. What the sagas need from the broker shows here.
    pub messages_per_order: Option<MessageCounts>,
    /// The invariants this run checked.
    pub invariants_checked: Vec<String>,
    /// Human-readable descriptions of every invariant that failed; empty means all held.
    pub violations: Vec<String>,
    /// Worth a look, but not an invariant failure (rate limiting, missed targets, RSS growth).
    pub warnings: Vec<String>,
}

impl LoadReport {
    pub fn invariants_hold(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Bytes in MiB, or `-` when not measured.
pub(crate) fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".into(),
        |b| format!("{:.1} MiB", b as f64 / 1048576.0),
    )
}

/// A duration in seconds, or `not measured`.
pub(crate) fn secs(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "not measured".into(), |s| format!("{s:.2} s"))
}

/// A whole number, or `-` when not measured.
pub(crate) fn whole(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// A share as a signed percentage, or `-` when not measured.
pub(crate) fn signed_percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |g| format!("{:+.1} %", g * 100.0))
}

impl Percentiles {
    /// The percentiles on one line, as both the text report and the page show them.
    pub(crate) fn summary(&self) -> String {
        format!(
            "p50 {:.1} ms, p90 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.p50_ms, self.p90_ms, self.p95_ms, self.p99_ms, self.max_ms
        )
    }
}

impl Target {
    /// `met` or, to stand out, `MISSED`.
    pub(crate) fn verdict(&self) -> &'static str {
        if self.met { "met" } else { "MISSED" }
    }
}

impl LoadReport {
    /// Orders per second over the run, and sustained within the duration for a run by duration.
    pub(crate) fn throughput(&self) -> String {
        format!(
            "{:.1} orders/s over {:.2} s{}",
            self.orders_per_s,
            self.elapsed_s,
            self.sustained_orders_per_s
                .map(|s| format!(" ({s:.1} orders/s sustained within the duration)"))
                .unwrap_or_default()
        )
    }

    /// What was run and how the orders ended.
    fn write_run(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario: {} against {}", self.scenario, self.base_url)?;
        match self.duration_s {
            Some(d) => writeln!(
                f,
                "orders: {} placed with {} in flight for {d:.0} s",
                self.orders, self.concurrency
            )?,
            None => writeln!(
                f,
                "orders: {} placed with {} in flight",
                self.orders, self.concurrency
            )?,
        }
        writeln!(
            f,
            "outcome: {} completed, {} cancelled, {} not terminal, {} left running, {} failed requests",
            self.completed,
            self.cancelled,
            self.not_terminal,
            self.left_running,
            self.failed_requests
        )?;
        if !self.cancel_reasons.is_empty() {
            let reasons: Vec<String> = self
                .cancel_reasons
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            writeln!(f, "cancelled by reason: {}", reasons.join(", "))?;
        }
        if self.rate_limited_retries > 0 || !self.rejected_by_status.is_empty() {
            writeln!(
                f,
                "placement: {} retried after 429, rejected by status {:?}",
                self.rate_limited_retries, self.rejected_by_status
            )?;
        }
        Ok(())
    }

    /// Throughput, latency, messages per order and the targets.
    fn write_figures(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "throughput: {}", self.throughput())?;
        writeln!(
            f,
            "latency ({}): {}",
            self.latency_measured,
            self.latency.summary()
        )?;
        if let Some(m) = &self.messages_per_order {
            writeln!(
                f,
                "per finished order (this process): {:.2} outbox rows written; JetStream {:.2} published, {:.2} delivered, {:.2} redelivered; {:.2} handed from actor to actor",
                m.outbox_rows, m.published, m.delivered, m.redelivered, m.handed_over
            )?;
        }
        for target in &self.targets {
            writeln!(f, "target {}: {}", target.what, target.verdict())?;
        }
        Ok(())
    }

    /// The warnings, then whether the invariants held (no newline after a clean verdict).
    fn write_verdict(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        if self.violations.is_empty() {
            write!(
                f,
                "invariants: all hold ({})",
                self.invariants_checked.join(", ")
            )
        } else {
            writeln!(f, "invariants VIOLATED:")?;
            for v in &self.violations {
                writeln!(f, "  - {v}")?;
            }
            Ok(())
        }
    }
}

/// The server's memory over a soak.
fn write_soak(f: &mut fmt::Formatter<'_>, s: &SoakSummary) -> fmt::Result {
    writeln!(
        f,
        "server RSS (pid {}): idle {}, after warm-up {}, middle {}, end {}, peak {}, after drain {}",
        s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
        mib(s.rss_idle_bytes),
        mib(s.rss_after_warmup_bytes),
        mib(s.rss_middle_bytes),
        mib(s.rss_end_bytes),
        mib(s.rss_peak_bytes),
        mib(s.rss_after_drain_bytes)
    )?;
    writeln!(
        f,
        "live order actors: max {}; bytes per live actor: {}; RSS growth after warm-up: {}{}",
        whole(s.max_order_actors_live),
        whole(s.bytes_per_live_actor),
        signed_percent(s.rss_growth_after_warmup),
        if s.growth_flagged {
            format!(" (FLAGGED: above {:.0} %)", s.growth_threshold * 100.0)
        } else {
            String::new()
        }
    )
}

/// The restart's timings, the orders around it, and the notes that qualify them.
fn write_recovery(f: &mut fmt::Formatter<'_>, r: &RecoveryReport) -> fmt::Result {
    writeln!(
        f,
        "recovery ({}): {} orders in flight; server seen down: {}; ready after {}; timers re-armed for all after {}",
        r.restart_mode,
        r.orders_in_flight,
        r.server_down_observed,
        secs(r.time_to_ready_s),
        secs(r.time_to_timers_rearmed_s)
    )?;
    writeln!(
        f,
        "orders before restart {:?}, after {:?}, lost {}",
        r.status_before_restart, r.status_after_restart, r.lost_orders
    )?;
    if let Some(all) = r.time_to_all_terminal_s {
        writeln!(
            f,
            "every order terminal {all:.2} s after the restart; {} orders placed meanwhile, p99 to 202 {:.1} ms",
            r.placements_during_recovery,
            r.placement_p99_during_recovery_ms.unwrap_or_default()
        )?;
    }
    for note in &r.notes {
        writeln!(f, "  note: {note}")?;
    }
    Ok(())
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_run(f)?;
        self.write_figures(f)?;
        if let Some(s) = &self.soak {
            write_soak(f, s)?;
        }
        if let Some(r) = &self.recovery {
            write_recovery(f, r)?;
        }
        self.write_verdict(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 90.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(Percentiles::of(&mut []).max_ms, 0.0);
    }

    #[test]
    fn histogram_percentiles_are_within_a_tenth_of_a_percent() -> anyhow::Result<()> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        for ms in 1..=1000u64 {
            h.record(ms * 1000)?;
        }
        let p = Percentiles::of_histogram(&h);
        for (got, want) in [
            (p.p50_ms, 500.0),
            (p.p90_ms, 900.0),
            (p.p95_ms, 950.0),
            (p.p99_ms, 990.0),
            (p.max_ms, 1000.0),
        ] {
            assert!((got - want).abs() <= want * 0.001, "{got} vs {want}");
        }
        assert_eq!(Percentiles::of_histogram(&Histogram::new(3)?).max_ms, 0.0);
        Ok(())
    }

    #[test]
    fn buckets_cover_every_recorded_value_once() -> anyhow::Result<()> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        for us in [900u64, 1_000, 1_500, 40_000, 40_100, 2_000_000] {
            h.record(us)?;
        }
        let buckets = latency_buckets(&h);
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 6);
        let first = buckets.first().map(|b| b.from_ms).unwrap_or_default();
        let last = buckets.last().map(|b| b.to_ms).unwrap_or_default();
        assert!(first <= 0.9 && last > 2000.0, "{first}..{last}");
        for pair in buckets.windows(2) {
            assert!((pair[0].to_ms - pair[1].from_ms).abs() < 1e-9);
        }
        assert!(latency_buckets(&Histogram::new(3)?).is_empty());
        Ok(())
    }
}
