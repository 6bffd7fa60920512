//! Figures and invariant results of one run, printable for humans and as JSON.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted in place).
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
            p95_ms: at(95.0),
            p99_ms: at(99.0),
            max_ms: at(100.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub orders: usize,
    pub concurrency: usize,
    pub completed: usize,
    pub cancelled: usize,
    pub not_terminal: usize,
    pub failed_requests: usize,
    pub elapsed_s: f64,
    pub orders_per_s: f64,
    pub latency: Percentiles,
    /// Human-readable descriptions of every invariant that failed; empty means all held.
    pub violations: Vec<String>,
}

impl LoadReport {
    pub fn invariants_hold(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "orders: {} placed with {} in flight",
            self.orders, self.concurrency
        )?;
        writeln!(
            f,
            "outcome: {} completed, {} cancelled, {} not terminal, {} failed requests",
            self.completed, self.cancelled, self.not_terminal, self.failed_requests
        )?;
        writeln!(
            f,
            "throughput: {:.1} orders/s over {:.2} s",
            self.orders_per_s, self.elapsed_s
        )?;
        writeln!(
            f,
            "placed->terminal latency: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latency.p50_ms, self.latency.p95_ms, self.latency.p99_ms, self.latency.max_ms
        )?;
        if self.violations.is_empty() {
            write!(
                f,
                "invariants: all hold (every order terminal, no oversell, stock conserved, nothing left reserved)"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(
            (p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(Percentiles::of(&mut []).max_ms, 0.0);
    }
}
