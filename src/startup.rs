//! Wiring: connect to PostgreSQL and NATS, start the roles this process runs, serve HTTP.
//!
//! `Application::build` does everything that can fail up front and reports which dependency is
//! missing; `run_until_stopped` then runs until Ctrl-C/SIGTERM or until a task dies, and drains.
//! Tests build the same `Application` on a random port against their own database and NATS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use actors::events::Envelope;
use actors::inventory::InventoryShards;
use actors::orders::{OrderSupervisor, OrderSupervisorHandle, SagaDeps, SagaError, StatusWatchers};
use actors::payments::{FailureStreak, PaymentService};
use actors::ports::{OrderSnapshotStore, ReservationLedger, SharedClock, SystemClock};
use actors::saga::SagaEvent;
use adapters::nats::{
    self as bus, ConsumerContext, ConsumerSpec, HandlerError, MessageHandler, RetryPolicy,
};
use adapters::postgres::{self as pg, Catalog, IdempotencyKeys, OutboxSignal};
use adapters::stripe::{StripeClient, StripeConfig, WebhookInbox, WebhookVerifier};
use stripe_fake::{FakeConfig, StripeFake};

use crate::configuration::{DEV_WEBHOOK_SECRET, Role, Settings};
use crate::http::{self, AppParts, AppState};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Postgres(#[from] pg::ConnectError),
    #[error("{0}")]
    Nats(#[from] bus::NatsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start actors: {0}")]
    Actors(String),
    #[error("database error while starting: {0}")]
    Catalog(#[from] pg::CatalogError),
    #[error("Stripe is misconfigured: {0}")]
    Stripe(String),
}

impl StartupError {
    /// What a newcomer should do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            StartupError::Postgres(pg::ConnectError::Unreachable { .. }) => Some(
                "PostgreSQL is needed. `cargo xtask run` starts a private one when none answers; or \
                 install and start it (Debian: `apt-get install postgresql && pg_ctlcluster 15 \
                 main start`), or run `docker compose up -d postgres nats`; then set \
                 DATABASE_URL if it is not at postgres://postgres@127.0.0.1:5432.",
            ),
            StartupError::Nats(bus::NatsError::Unreachable { .. }) => Some(
                "NATS with JetStream is needed. `cargo xtask run` starts a private one when none \
                 answers; or install and start it (Debian: `apt-get install nats-server && \
                 nats-server -js &`), or run `docker compose up -d postgres nats`; then set \
                 NATS_URL if it is not at nats://127.0.0.1:4222.",
            ),
            StartupError::Nats(bus::NatsError::Setup { .. }) => {
                Some("Is JetStream enabled on the NATS server? Start it with `-js`.")
            }
            _ => None,
        }
    }
}

pub struct Application {
    address: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), String>)>,
    pool: PgPool,
    orders: Option<OrderSupervisorHandle>,
    shards: Option<InventoryShards>,
    /// The in-process Stripe fake, when no real Stripe key is configured.
    stripe_fake: Option<StripeFake>,
}

/// The payment provider this process talks to, and what verifies its webhooks.
struct Payments {
    client: StripeClient,
    verifier: WebhookVerifier,
    fake: Option<StripeFake>,
}

/// Real Stripe when a key is configured; otherwise the fake, started here, whose webhooks come
/// back to this process's `/payments/webhook`.
async fn payments(settings: &Settings, address: SocketAddr) -> Result<Payments, StartupError> {
    let tolerance = Duration::from_secs(settings.stripe_webhook_tolerance_secs);
    let secrets: Vec<String> = settings
        .stripe_webhook_secret
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    if let Some(key) = &settings.stripe_secret_key {
        if secrets.is_empty() {
            return Err(StartupError::Stripe(
                "STRIPE_WEBHOOK_SECRET is required with STRIPE_SECRET_KEY (comma separate several during a rotation)".into(),
            ));
        }
        let client = StripeClient::new(StripeConfig::new(&settings.stripe_api_base, key.expose()))
            .map_err(|e| StartupError::Stripe(e.to_string()))?;
        return Ok(Payments {
            client,
            verifier: WebhookVerifier::new(secrets, tolerance),
            fake: None,
        });
    }
    let secret = secrets
        .first()
        .cloned()
        .unwrap_or_else(|| DEV_WEBHOOK_SECRET.to_owned());
    let webhook_host = if address.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    };
    let config = FakeConfig {
        webhook_url: Some(format!("http://{webhook_host}/payments/webhook")),
        webhook_secret: secret.clone(),
        processing_delay: Duration::from_millis(settings.stripe_fake_delay_ms),
        ..FakeConfig::default()
    };
    let fake = StripeFake::start(settings.stripe_fake_addr, config)
        .await
        .map_err(|source| StartupError::Listen {
            addr: settings.stripe_fake_addr,
            source,
        })?;
    info!(address = %fake.address, "no STRIPE_SECRET_KEY: payments go to the in-process Stripe fake");
    let client = StripeClient::new(StripeConfig::new(fake.base_url(), "sk_test_ordersaga_fake"))
        .map_err(|e| StartupError::Stripe(e.to_string()))?;
    Ok(Payments {
        client,
        verifier: WebhookVerifier::new(vec![secret], tolerance),
        fake: Some(fake),
    })
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Install the metrics recorder before anything records (the facade drops what is
        // recorded while no recorder is installed).
        let _ = crate::metrics::handle();
        let timeouts = settings.step_timeouts();
        let worst_case =
            Duration::from_millis(timeouts.inventory_ms.saturating_add(timeouts.payment_ms));
        if settings.reservation_ttl() <= worst_case {
            warn!(
                reservation_ttl_secs = settings.reservation_ttl_secs,
                step_timeouts_ms = worst_case.as_millis() as u64,
                "reservations can expire before the saga's own timeouts; orders may be cancelled by expiry"
            );
        }
        let pool =
            pg::connect_and_migrate(&settings.database_url, settings.database_max_connections)
                .await?;
        let (nats, js) = bus::connect(&settings.nats_url).await?;
        bus::ensure_streams(&js).await?;

        let listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .map_err(|source| StartupError::Listen {
                addr: settings.http_addr,
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                addr: settings.http_addr,
                source,
            })?;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let signal = OutboxSignal::new();
        let clock: SharedClock = Arc::new(SystemClock);
        let status_watchers = StatusWatchers::default();

        let catalog = Catalog::new(pool.clone());
        if settings.seed_demo_catalog && catalog.seed_demo_if_empty().await? {
            info!("seeded the demo catalog");
        }

        let (sampled, token) = (pool.clone(), shutdown.clone());
        tasks.spawn(async move {
            crate::metrics::sample_store(sampled, token).await;
            ("store sampler", Ok(()))
        });

        // Every role writes to the outbox, so every process relays it.
        let relay = bus::OutboxRelay::new(pool.clone(), js.clone(), signal.clone());
        let token = shutdown.clone();
        tasks.spawn(async move {
            relay.run(token).await;
            ("outbox relay", Ok(()))
        });

        let orders = if settings.runs(Role::Order) {
            let deps_store: Arc<dyn OrderSnapshotStore> = Arc::new(pg::PgOrderSnapshotStore::new(
                pool.clone(),
                signal.clone(),
                settings.snapshot_writer_count(),
            ));
            let deps = SagaDeps {
                store: deps_store.clone(),
                clock: clock.clone(),
                status_watchers: status_watchers.clone(),
                timeouts: settings.step_timeouts(),
            };
            let (supervisor, _) = Actor::spawn(None, OrderSupervisor, deps)
                .await
                .map_err(|e| StartupError::Actors(e.to_string()))?;
            let handle = OrderSupervisorHandle::new(supervisor, Duration::from_secs(30));
            recover(&deps_store, &handle).await?;
            for spec in [bus::ORDER_SAGA_INVENTORY, bus::ORDER_SAGA_PAYMENTS] {
                let context = consumer_context(&js, &pool, settings.retry_policy_order);
                spawn_consumer(
                    &mut tasks,
                    context,
                    spec,
                    saga_handler(handle.clone()),
                    &shutdown,
                )
                .await?;
            }
            Some(handle)
        } else {
            None
        };

        let shards = if settings.runs(Role::Inventory) {
            let ledger: Arc<dyn ReservationLedger> =
                Arc::new(pg::PgReservationLedger::new(pool.clone(), signal.clone()));
            let shards = InventoryShards::spawn(
                settings.inventory_shard_count(),
                ledger.clone(),
                clock.clone(),
                settings.reservation_ttl(),
            )
            .await
            .map_err(|e| StartupError::Actors(e.to_string()))?;
            let sweeper = shards.clone();
            let interval = Duration::from_millis(settings.reservation_sweep_interval_ms);
            let token = shutdown.clone();
            let swept_ledger = ledger.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return ("reservation sweeper", Ok(())),
                        _ = tokio::time::sleep(interval) => {}
                    }
                    match sweeper.sweep_expired(swept_ledger.as_ref(), 500).await {
                        Ok(0) => {}
                        Ok(n) => info!(orders = n, "expired reservations released"),
                        Err(e) => warn!(error = %e, "reservation sweep failed; will retry"),
                    }
                }
            });
            for spec in [bus::INVENTORY_ORDERS, bus::INVENTORY_COMMANDS] {
                let shards = shards.clone();
                let handler: MessageHandler = Arc::new(move |envelope: Envelope, _| {
                    let shards = shards.clone();
                    Box::pin(async move {
                        shards
                            .on_message(&envelope)
                            .await
                            .map_err(|e| HandlerError::Retry(e.to_string()))
                    })
                });
                let context = consumer_context(&js, &pool, settings.retry_policy_inventory);
                spawn_consumer(&mut tasks, context, spec, handler, &shutdown).await?;
            }
            Some(shards)
        } else {
            None
        };

        let (payment_http, stripe_fake) = if settings.runs(Role::Payment) {
            let payments = payments(&settings, address).await?;
            let streak = Arc::new(FailureStreak::new(settings.payment_failure_streak_alert));
            let records = pg::PgPaymentRecords::new(
                pool.clone(),
                signal.clone(),
                settings.charge_writer_count(),
            );
            let recorded_charges = records.recorded_charges();
            let service = PaymentService::with_streak(
                Arc::new(payments.client.clone()),
                Arc::new(records),
                clock.clone(),
                streak,
            );
            for spec in [
                bus::PAYMENT_REQUESTS,
                bus::PAYMENT_REFUNDS,
                bus::PAYMENT_CANCELLATIONS,
            ] {
                let service = service.clone();
                let handler: MessageHandler =
                    Arc::new(move |envelope: Envelope, delivery: bus::Delivery| {
                        let service = service.clone();
                        Box::pin(async move {
                            service
                                .on_delivery(&envelope, delivery.is_first())
                                .await
                                .map_err(|e| HandlerError::Retry(e.to_string()))
                        })
                    });
                let context = consumer_context(&js, &pool, settings.retry_policy_payment);
                spawn_consumer(&mut tasks, context, spec, handler, &shutdown).await?;
            }
            let inbox = WebhookInbox::new(pool.clone(), recorded_charges);
            let worker = inbox.clone();
            let token = shutdown.clone();
            tasks.spawn(async move {
                worker.run(service, token).await;
                ("webhook worker", Ok(()))
            });
            let http = http::PaymentHttp {
                inbox,
                verifier: payments.verifier,
                stripe: payments.client,
            };
            (Some(http), payments.fake)
        } else {
            (None, None)
        };

        // Other processes' finished orders wake this process's long polls.
        let (client, watchers, token) = (nats.clone(), status_watchers.clone(), shutdown.clone());
        tasks.spawn(async move {
            let forwarded = bus::forward_order_events(client, watchers, token).await;
            ("order event forwarder", forwarded)
        });

        let state = AppState::new(AppParts {
            pool: pool.clone(),
            catalog,
            idempotency: IdempotencyKeys::new(pool.clone()),
            orders: orders.clone(),
            status_watchers,
            nats,
            payments: payment_http,
            shards: shards.clone(),
            admin_token: settings.admin_token.as_ref().map(|t| t.expose().to_owned()),
            order_rate_limit: http::rate_limit::OrderRateLimit::new(
                settings.order_rate_limit_per_sec,
                settings.order_rate_limit_burst,
            ),
        });
        // Keeps the readiness gauges current between `/health/ready` calls (alerts use them).
        let (probed, token) = (state.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                http::health::probe(&probed).await;
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                }
            }
            ("readiness probe", Ok(()))
        });
        let limits = &settings.http_limits;
        let router = http::router(
            state,
            http::RequestLimits::new(
                limits.http_max_requests_in_flight as usize,
                limits.request_timeout(),
                limits.body_timeout(),
            ),
        );
        let connection_limits = http::server::ConnectionLimits {
            header_timeout: limits.header_timeout(),
            idle_timeout: limits.idle_timeout(),
            max_connections: http::server::connection_bound(limits.http_max_connections as usize),
        };
        let token = shutdown.clone();
        tasks.spawn(async move {
            http::server::serve(listener, router, connection_limits, token).await;
            ("http server", Ok(()))
        });

        info!(%address, roles = ?settings.roles, "ordersaga started");
        Ok(Self {
            address,
            shutdown,
            tasks,
            pool,
            orders,
            shards,
            stripe_fake,
        })
    }

    /// The in-process Stripe fake's base URL, when one runs (tests read its ledger).
    pub fn stripe_fake_url(&self) -> Option<String> {
        self.stripe_fake.as_ref().map(StripeFake::base_url)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn orders(&self) -> Option<&OrderSupervisorHandle> {
        self.orders.as_ref()
    }

    /// Cancel this to stop the application (tests use it; `main` relies on signals).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until a shutdown signal or until any task ends, then stops everything and drains.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        let first = tokio::select! {
            _ = token.cancelled() => None,
            _ = shutdown_signal() => None,
            ended = self.tasks.join_next() => ended,
        };
        let failure = match first {
            Some(Ok((task, Err(e)))) => Some(format!("{task} failed: {e}")),
            Some(Ok((task, Ok(())))) if !token.is_cancelled() => {
                Some(format!("{task} stopped unexpectedly"))
            }
            Some(Err(e)) => Some(format!("a task panicked: {e}")),
            _ => None,
        };
        info!("shutting down");
        self.shutdown.cancel();
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_secs(10), self.tasks.join_next()).await
        {}
        if let Some(orders) = &self.orders {
            orders.actor().stop(None);
        }
        if let Some(shards) = &self.shards {
            shards.stop();
        }
        self.pool.close().await;
        match failure {
            Some(f) => {
                warn!(failure = %f, "stopped after a failure");
                Err(anyhow::anyhow!(f))
            }
            None => Ok(()),
        }
    }
}

/// Crash recovery: every saga that was not finished gets its timer back, so it either carries on
/// (its messages are still in JetStream and the outbox) or times out and compensates. Only ids and
/// deadlines are held, not actors: a saga is rehydrated from its snapshot when something happens.
async fn recover(
    store: &Arc<dyn OrderSnapshotStore>,
    orders: &OrderSupervisorHandle,
) -> Result<(), StartupError> {
    let live = store
        .live_deadlines()
        .await
        .map_err(|e| StartupError::Actors(format!("cannot read live sagas: {e}")))?;
    let now = chrono::Utc::now();
    let count = live.len();
    for chunk in live.chunks(1000) {
        let timers = chunk
            .iter()
            .map(|(id, deadline)| (*id, deadline.unwrap_or(now)))
            .collect();
        orders
            .arm(timers)
            .map_err(|e| StartupError::Actors(e.to_string()))?;
    }
    if count > 0 {
        info!(
            live_sagas = count,
            "recovered in-flight sagas; their timers are armed"
        );
    }
    Ok(())
}

fn consumer_context(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
    policy: RetryPolicy,
) -> ConsumerContext {
    ConsumerContext {
        js: js.clone(),
        policy,
        pool: pool.clone(),
    }
}

async fn spawn_consumer(
    tasks: &mut JoinSet<(&'static str, Result<(), String>)>,
    context: ConsumerContext,
    spec: ConsumerSpec,
    handler: MessageHandler,
    shutdown: &CancellationToken,
) -> Result<(), StartupError> {
    // Create it now so a misconfigured server fails the start, not some later moment.
    bus::ensure_consumer(&context.js, &spec, &context.policy).await?;
    let token = shutdown.clone();
    tasks.spawn(async move {
        bus::run_consumer(context, spec, handler, token).await;
        (spec.durable, Ok(()))
    });
    Ok(())
}

/// Routes saga-relevant messages to the order's actor; acknowledges the rest.
fn saga_handler(orders: OrderSupervisorHandle) -> MessageHandler {
    Arc::new(move |envelope: Envelope, _| {
        let Some(event) = SagaEvent::from_body(&envelope.body) else {
            return Box::pin(async { Ok(()) });
        };
        let answer = orders.enqueue(envelope.order_id, event);
        Box::pin(async move {
            match answer.await {
                Ok(_) => Ok(()),
                // Nothing will ever make this order exist: park it for an operator to see.
                Err(SagaError::UnknownOrder(id)) => Err(HandlerError::Permanent(format!(
                    "order {id} does not exist"
                ))),
                Err(e) => Err(HandlerError::Retry(e.to_string())),
            }
        })
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
