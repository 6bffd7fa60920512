//! Wiring: connect to PostgreSQL and NATS, start the roles this process runs, serve HTTP.
//!
//! `Application::build` does everything that can fail up front and reports which dependency is
//! missing; `run_until_stopped` then runs until Ctrl-C/SIGTERM or until a task dies, and drains.
//! Tests build the same `Application` on a random port against their own database and NATS.
//!
//! Each role this process runs is started by its own module (`order_role`, `inventory_role`,
//! `payment_role`) inside one `Wiring`; the postman learns each receiver as its role starts, so
//! commands between roles of this process skip the broker.

mod inventory_role;
mod order_role;
mod payment_role;
mod wiring;

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use actors::cluster::{KeySpace, Ownership, PartitionCount};
use actors::inventory::InventoryShards;
use actors::orders::OrderSupervisorHandle;
use adapters::nats as bus;
use adapters::postgres::{self as pg, Catalog, IdempotencyKeys, PgPartitionLeases};
use stripe_fake::StripeFake;

use crate::cluster::LeaseKeeper;
use crate::configuration::{Role, Settings};
use crate::http::{self, AppParts, AppState};
use wiring::Wiring;

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
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
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

/// Reservations should outlive the saga's own step timeouts, or orders get cancelled by expiry.
fn warn_if_reservations_expire_first(settings: &Settings) {
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
}

/// Binds the HTTP port now (serving starts last), so a taken port fails the start early.
async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartupError> {
    let listen_error = |source| StartupError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(listen_error)?;
    let address = listener.local_addr().map_err(listen_error)?;
    Ok((listener, address))
}

/// The HTTP API behind the edge's limits.
fn build_router(settings: &Settings, state: AppState) -> axum::Router {
    let limits = &settings.http_limits;
    http::router(
        state,
        http::RequestLimits::new(
            limits.http_max_requests_in_flight as usize,
            limits.request_timeout(),
            limits.body_timeout(),
        ),
    )
}

/// Serves `router` on `listener`, and keeps the readiness gauges current between
/// `/health/ready` calls (alerts use them).
fn serve_http(
    wiring: &mut Wiring<'_>,
    state: AppState,
    router: axum::Router,
    listener: tokio::net::TcpListener,
) {
    let (probed, token) = (state.clone(), wiring.shutdown.clone());
    wiring.spawn("readiness probe", async move {
        loop {
            http::health::probe(&probed).await;
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
        Ok(())
    });
    let limits = &wiring.settings.http_limits;
    let connection_limits = http::server::ConnectionLimits {
        header_timeout: limits.header_timeout(),
        idle_timeout: limits.idle_timeout(),
        max_connections: http::server::connection_bound(limits.http_max_connections as usize),
    };
    let token = wiring.shutdown.clone();
    wiring.spawn("http server", async move {
        http::server::serve(listener, router, connection_limits, token).await;
        Ok(())
    });
}

/// The tasks every process runs whatever its roles: the store sampler, the outbox relay (every
/// role writes to the outbox), and the forwarder through which other processes' finished orders
/// wake this process's long polls.
fn start_shared_tasks(wiring: &mut Wiring<'_>, nats: &async_nats::Client) {
    let (sampled, token) = (wiring.pool.clone(), wiring.shutdown.clone());
    wiring.spawn("store sampler", async move {
        crate::metrics::sample_store(sampled, token).await;
        Ok(())
    });
    let relay = bus::OutboxRelay::new(
        wiring.pool.clone(),
        wiring.js.clone(),
        wiring.signal.clone(),
    );
    let token = wiring.shutdown.clone();
    wiring.spawn("outbox relay", async move {
        relay.run(token).await;
        Ok(())
    });
    let (client, watchers, token) = (
        nats.clone(),
        wiring.status_watchers.clone(),
        wiring.shutdown.clone(),
    );
    wiring.spawn("order event forwarder", async move {
        bus::forward_order_events(client, watchers, token).await
    });
}

/// How long a request forwarded to an order's owner waits for its answer before this instance
/// answers it itself: long enough for an owner under load, short enough that a webhook or an
/// operator does not wait out a dead owner's lease.
const OWNER_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// This instance's membership before it joins: the ownership view of each key space it
/// serves (the roles consult them as they start) and the keeper that will fill them.
struct Membership {
    keeper: LeaseKeeper,
    parts: http::ClusterParts,
}

/// Reads (or, on a new database, fixes) the partition count and prepares the keeper; nothing
/// is owned until `join_cluster`.
async fn prepare_cluster(
    wiring: &Wiring<'_>,
    address: SocketAddr,
) -> Result<Membership, StartupError> {
    let settings = &wiring.settings.cluster;
    let proposed = PartitionCount::new(i64::from(settings.partitions))
        .map_err(|e| StartupError::Cluster(e.to_string()))?;
    let count = PgPartitionLeases::partition_count(&wiring.pool, proposed)
        .await
        .map_err(|e| StartupError::Cluster(e.to_string()))?;
    if count != proposed {
        warn!(
            stored = count.get(),
            configured = proposed.get(),
            "PARTITIONS differs from the count this database was created with; using the stored one"
        );
    }
    let instance = settings
        .instance_id(address)
        .map_err(StartupError::Cluster)?;
    let leases = PgPartitionLeases::new(wiring.pool.clone(), instance, settings.lease());
    let serves = |role| {
        wiring
            .settings
            .runs(role)
            .then(|| Ownership::new(role_space(role), count))
    };
    let parts = http::ClusterParts {
        leases: leases.clone(),
        count,
        orders: serves(Role::Order),
        skus: serves(Role::Inventory),
        owners: bus::OwnerRequests::new(wiring.nats.clone(), OWNER_ANSWER_TIMEOUT),
    };
    // SKUs first: the sagas recovered for the order partitions gained re-send their inventory
    // commands at once, and find the SKU partitions already owned.
    let spaces = parts.skus.iter().chain(&parts.orders).cloned().collect();
    let keeper = LeaseKeeper::new(
        leases,
        spaces,
        address.to_string(),
        settings.lease(),
        settings.renew_every(),
    );
    Ok(Membership { keeper, parts })
}

fn role_space(role: Role) -> KeySpace {
    match role {
        Role::Inventory => KeySpace::Skus,
        _ => KeySpace::Orders,
    }
}

/// Takes this instance's share of the partitions once its roles listen (a lone instance takes
/// them all in this first round, and recovers their sagas before serving), then keeps the
/// leases in a task that hands them all off on shutdown.
async fn join_cluster(
    wiring: &mut Wiring<'_>,
    mut keeper: LeaseKeeper,
) -> Result<(), StartupError> {
    keeper
        .round(false)
        .await
        .map_err(|e| StartupError::Cluster(e.to_string()))?;
    info!(instance = %keeper.instance(), "joined the cluster");
    let token = wiring.shutdown.clone();
    wiring.spawn("lease keeper", keeper.run(token));
    Ok(())
}

/// What the roles this process runs give the HTTP layer and the application.
struct Roles {
    orders: Option<OrderSupervisorHandle>,
    shards: Option<InventoryShards>,
    payments: Option<http::PaymentHttp>,
    stripe_fake: Option<StripeFake>,
}

/// Starts each role this process runs, and has the keeper tell the order and inventory roles
/// when their partitions change hands.
async fn start_roles(
    wiring: &mut Wiring<'_>,
    parts: &http::ClusterParts,
    keeper: &mut LeaseKeeper,
    address: SocketAddr,
) -> Result<Roles, StartupError> {
    let orders = match &parts.orders {
        Some(ownership) => Some(order_role::start(wiring, ownership.clone()).await?),
        None => None,
    };
    let inventory = match &parts.skus {
        Some(ownership) => Some(inventory_role::start(wiring, ownership.clone()).await?),
        None => None,
    };
    let payments = match wiring.settings.runs(Role::Payment) {
        true => Some(payment_role::start(wiring, address).await?),
        false => None,
    };
    // Only now does the postman know every receiver here, so the recovery of the partitions
    // this instance gains re-sends through it.
    if let Some(orders) = &orders {
        keeper.on_change(orders.ownership_listener());
    }
    if let Some(inventory) = &inventory {
        keeper.on_change(inventory.ownership_listener());
    }
    let (payments, stripe_fake) = match payments {
        Some(p) => (Some(p.http), p.stripe_fake),
        None => (None, None),
    };
    Ok(Roles {
        orders: orders.map(|o| o.handle),
        shards: inventory.map(|i| i.shards),
        payments,
        stripe_fake,
    })
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        // Install the metrics recorder before anything records (the facade drops what is
        // recorded while no recorder is installed).
        let _ = crate::metrics::handle();
        warn_if_reservations_expire_first(&settings);
        pg::set_batch_linger(Duration::from_millis(settings.batch_linger_ms));
        let pool =
            pg::connect_and_migrate(&settings.database_url, settings.database_max_connections)
                .await?;
        let (nats, js) = bus::connect(&settings.nats_url).await?;
        bus::ensure_streams(&js, usize::from(settings.nats_stream_replicas)).await?;
        let (listener, address) = bind(settings.http_addr).await?;
        let catalog = Catalog::new(pool.clone());
        if settings.seed_demo_catalog && catalog.seed_demo_if_empty().await? {
            info!("seeded the demo catalog");
        }

        let mut wiring = Wiring::new(&settings, pool.clone(), nats.clone(), js);
        let Membership { mut keeper, parts } = prepare_cluster(&wiring, address).await?;
        start_shared_tasks(&mut wiring, &nats);
        let Roles {
            orders,
            shards,
            payments,
            stripe_fake,
        } = start_roles(&mut wiring, &parts, &mut keeper, address).await?;
        let parts = AppParts {
            pool: pool.clone(),
            catalog,
            idempotency: IdempotencyKeys::new(pool.clone()),
            orders: orders.clone(),
            status_watchers: wiring.status_watchers.clone(),
            nats: nats.clone(),
            postman: wiring.postman.clone(),
            payments,
            shards: shards.clone(),
            admin_token: settings.admin_token.clone(),
            cluster: parts,
            order_rate_limit: http::rate_limit::OrderRateLimit::new(
                settings.order_rate_limit_per_sec,
                settings.order_rate_limit_burst,
            ),
        };
        let state = AppState::new(parts);
        let router = build_router(&settings, state.clone());
        if state.cluster.orders.is_some() {
            keeper.on_change(crate::cluster::owner_desk(nats.clone(), router.clone()));
        }
        join_cluster(&mut wiring, keeper).await?;
        serve_http(&mut wiring, state, router, listener);
        let Wiring {
            shutdown, tasks, ..
        } = wiring;

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

/// An application dropped without `run_until_stopped` finishing (its task aborted, as a test's
/// crash does) takes its actors with it: they are not tasks of its set, and a crashed process
/// leaves nothing running.
impl Drop for Application {
    fn drop(&mut self) {
        if let Some(orders) = &self.orders {
            orders.actor().stop(None);
        }
        if let Some(shards) = &self.shards {
            shards.stop();
        }
    }
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
