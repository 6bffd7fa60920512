//! ordersaga's composition root: configuration, telemetry, the HTTP API and the wiring that
//! connects actors to adapters (`startup`). The only crate that sees every other one.

pub mod cluster;
pub mod configuration;
pub mod http;
pub mod metrics;
pub mod startup;
pub mod telemetry;

/// rustls needs exactly one process-wide crypto provider; sqlx, async-nats and reqwest are all
/// built on ring here, and installing it explicitly avoids rustls's "cannot determine provider"
/// panic. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
