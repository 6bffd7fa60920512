//! The load generator as a library, so the end-to-end tests reuse exactly what the `load-tests`
//! binary runs: set up a catalog, place orders with C in flight over HTTP (a fixed number, or for
//! a duration), wait for every order to be terminal (long poll), report throughput and
//! placed→terminal latency percentiles, and check the invariants (every order terminal, nothing
//! oversold, stock conserved, nothing left reserved).
//!
//! [`run`] runs one [`LoadConfig`]; [`run_scenario`] runs a named [`Scenario`] (baseline,
//! throughput, latency, flash-sale, soak, recovery) with its own checks and figures; and
//! [`write_results`] writes a report as JSON with a self-contained HTML chart beside it.

mod api;
mod output;
mod recovery;
mod report;
mod resources;
mod run;
mod scenario;

pub use output::{default_json_path, html, write_results};
pub use recovery::RecoveryOptions;
pub use report::{
    LatencyBucket, LoadReport, Percentiles, RecoveryReport, Sample, SkuStock, SoakSummary, Target,
};
pub use run::{LoadConfig, RunOptions, Sampling, run, run_with};
pub use scenario::{Defaults, Scenario, ScenarioConfig, run_scenario};
