//! The load generator as a library, so the end-to-end tests reuse exactly what the `load-tests`
//! binary runs: set up a catalog, place N orders with C in flight over HTTP, wait for every order
//! to be terminal, report throughput and placed→terminal latency, and check the invariants
//! (every order terminal, nothing oversold, stock conserved, nothing left reserved).

mod report;
mod run;

pub use report::{LoadReport, Percentiles};
pub use run::{LoadConfig, run};
