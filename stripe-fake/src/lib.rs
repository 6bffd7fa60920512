//! A Stripe-compatible fake server for development and tests (there is no internet here).
//!
//! It speaks real HTTP with Stripe's paths, form encoding, error JSON and status codes, replays
//! idempotent requests (same key and parameters → same response; same key, other parameters →
//! `idempotency_error`), and delivers webhooks signed exactly like Stripe's (`Stripe-Signature`)
//! to a configured URL, retrying non-2xx answers with backoff. Outcomes follow Stripe's test
//! payment methods plus fake-only `pm_fake_*` methods (see `methods.rs` and docs/stripe-fake.md).
//! A ledger of intents, charges, refunds and webhook deliveries (`GET /_fake/ledger`) lets tests
//! prove nothing was charged twice.

mod methods;
mod routes;
mod state;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use methods::behaviour;
pub use state::FakeState;

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Where webhooks go; `None` holds them until one is set (`POST /_fake/config`).
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
    /// Unit of delay for scripted late webhooks (e.g. "processing, then succeeded").
    pub processing_delay: Duration,
    /// How long creating a PaymentIntent takes before the fake answers: a slow provider, for
    /// load tests (zero by default).
    pub api_delay: Duration,
    pub webhook_max_attempts: u32,
    pub webhook_initial_backoff: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: "whsec_ordersaga_dev_fake".into(),
            processing_delay: Duration::from_millis(300),
            api_delay: Duration::ZERO,
            webhook_max_attempts: 10,
            webhook_initial_backoff: Duration::from_millis(100),
        }
    }
}

/// A running fake.
pub struct StripeFake {
    pub address: SocketAddr,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl StripeFake {
    /// Binds `addr` (port 0 for a free port) and serves until dropped.
    pub async fn start(addr: SocketAddr, config: FakeConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let address = listener.local_addr()?;
        let state = FakeState::new(config);
        let router = routes::router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            address,
            state,
            task,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Runs until the server task ends (for the standalone `stripe-fake` command).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for StripeFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}
