//! Configuration: one `clap` definition that reads flags and the environment variables of the
//! same names (documented in `.env.example`), with defaults that work on a developer machine where
//! PostgreSQL and NATS listen on their standard local ports.

use secrecy::SecretString;
use std::net::SocketAddr;
use std::time::Duration;

use adapters::nats::RetryPolicy;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ordersaga",
    version,
    about = "Order sagas over NATS JetStream and PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: HTTP API plus the chosen roles (all of them by default).
    Serve(Box<Settings>),
    /// Run the Stripe-compatible fake server on its own (`serve` starts one in-process when no
    /// STRIPE_SECRET_KEY is configured).
    StripeFake(FakeSettings),
}

#[derive(Debug, Clone, Parser)]
pub struct FakeSettings {
    /// Address to listen on.
    #[arg(long, env = "STRIPE_FAKE_ADDR", default_value = "127.0.0.1:12111")]
    pub addr: SocketAddr,
    /// Where to deliver webhooks (ordersaga's POST /payments/webhook).
    #[arg(long, env = "STRIPE_FAKE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Secret to sign webhooks with (ordersaga's STRIPE_WEBHOOK_SECRET).
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_SECRET",
        default_value = DEV_WEBHOOK_SECRET,
        hide_env_values = true
    )]
    pub webhook_secret: String,
}

/// Parses a configuration value that must never reach logs (`SecretString`: redacted in
/// `Debug`, wiped from memory when dropped), trimmed, and refused when empty.
fn secret(raw: &str) -> Result<SecretString, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(SecretString::from(trimmed))
    }
}

/// The webhook secret shared by `serve` and its in-process fake when none is configured.
pub const DEV_WEBHOOK_SECRET: &str = "whsec_ordersaga_dev_fake";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Role {
    /// Order sagas: accepts orders over HTTP and runs one actor per live order.
    Order,
    /// Inventory shards: reserve, commit and release stock.
    Inventory,
    /// Payments: charges orders through the payment gateway.
    Payment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Parser)]
pub struct Settings {
    /// PostgreSQL URL; the database is created if missing and migrated at start. The default
    /// disables TLS because it is a loopback connection, where TLS protects nothing and costs
    /// most of the throughput (docs/performance.md); give `sslmode=verify-full` (or `require`)
    /// for a database on another host.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ordersaga?sslmode=disable"
    )]
    pub database_url: String,

    /// Maximum PostgreSQL connections of this process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,

    /// NATS server URL (JetStream must be enabled); the nodes of a cluster separated by commas,
    /// any of which the client may use.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Copies of each stream the JetStream cluster keeps (1 on a single server; 3 on a 3-node
    /// cluster, so a node may die without losing a message).
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_stream_replicas: u8,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Timeouts and bounds of the HTTP server: what keeps slow, idle or too many clients from
    /// holding the process.
    #[command(flatten)]
    pub http_limits: HttpLimits,

    #[command(flatten)]
    pub cluster: ClusterSettings,

    /// Roles this process runs, comma separated.
    #[arg(
        long,
        env = "ROLES",
        value_delimiter = ',',
        default_value = "order,inventory,payment"
    )]
    pub roles: Vec<Role>,

    /// Number of inventory shard actors (SKUs are hashed onto them); default: half the CPU
    /// cores, at least one.
    #[arg(long, env = "INVENTORY_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub inventory_shards: Option<u16>,

    /// Group-commit writers for order snapshots (half as many, at least one, for payment
    /// records); default: half the CPU cores, at least one.
    #[arg(long, env = "DATABASE_WRITERS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub database_writers: Option<u16>,

    /// How long a batching writer or reader (snapshots, charges, idempotency claims, prices)
    /// waits for more work when requests come in company and it holds less than a full batch,
    /// in milliseconds; 0: never. Fuller batches cost PostgreSQL fewer transactions per order,
    /// most of all when several instances share the load; a lone request never waits.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub batch_linger_ms: u64,

    /// How long the inventory step may take (placement → reserved or out of stock; also the wait
    /// for a release during compensation), in milliseconds.
    #[arg(long, env = "INVENTORY_STEP_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub inventory_step_timeout_ms: u64,

    /// How long the payment step may take (reserved → payment outcome), in milliseconds.
    #[arg(long, env = "PAYMENT_STEP_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub payment_step_timeout_ms: u64,

    /// How long a saga waits for the answer to a command handed to an actor in this process before
    /// sending it again, in milliseconds (doubled on each re-send, up to 30 s, with jitter).
    #[arg(long, env = "SAGA_RESEND_AFTER_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub saga_resend_after_ms: u64,

    /// Commands handed to actors in this process and not answered yet above which new orders
    /// are refused with 503 and Retry-After (backpressure instead of unbounded queues).
    #[arg(long, env = "MAX_COMMANDS_IN_FLIGHT", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_commands_in_flight: u32,

    /// Charges the payment role of this process makes at once (each holds a connection to the
    /// provider while it answers); the others wait their turn.
    #[arg(long, env = "PAYMENT_CONCURRENCY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub payment_concurrency: u32,

    /// How often expired stock reservations are looked for, in milliseconds.
    #[arg(long, env = "RESERVATION_SWEEP_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub reservation_sweep_interval_ms: u64,

    /// Retry policy of the order saga's consumers: `initial=100ms,multiplier=2,max=10s,attempts=20,jitter=0.2`
    /// (keys may be omitted). After the last attempt a message is parked in `dead_letters`.
    #[arg(
        long,
        env = "RETRY_POLICY_ORDER",
        default_value = "initial=100ms,multiplier=2,max=10s,attempts=20,jitter=0.2"
    )]
    pub retry_policy_order: RetryPolicy,

    /// Retry policy of the inventory role's consumers (same syntax).
    #[arg(
        long,
        env = "RETRY_POLICY_INVENTORY",
        default_value = "initial=100ms,multiplier=2,max=10s,attempts=20,jitter=0.2"
    )]
    pub retry_policy_inventory: RetryPolicy,

    /// Retry policy of the payment role's consumers (same syntax). Stripe calls have their own
    /// retries inside each attempt.
    #[arg(
        long,
        env = "RETRY_POLICY_PAYMENT",
        default_value = "initial=500ms,multiplier=2,max=30s,attempts=15,jitter=0.2"
    )]
    pub retry_policy_payment: RetryPolicy,

    /// Orders per second each client may place (by X-Client-Key header, else by IP); 0 disables.
    #[arg(long, env = "ORDER_RATE_LIMIT_PER_SEC", default_value_t = 500)]
    pub order_rate_limit_per_sec: u32,

    /// Orders a client may place in a burst above its rate.
    #[arg(long, env = "ORDER_RATE_LIMIT_BURST", default_value_t = 1000)]
    pub order_rate_limit_burst: u32,

    /// How long a stock reservation is held, in seconds.
    #[arg(long, env = "RESERVATION_TTL_SECS", default_value_t = 900)]
    pub reservation_ttl_secs: u64,

    /// Seed a small demo catalog when the products table is empty.
    #[arg(long, env = "SEED_DEMO_CATALOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub seed_demo_catalog: bool,

    /// Stripe secret key. When set, payments go to real Stripe at STRIPE_API_BASE; when not, an
    /// in-process Stripe-compatible fake is started and used.
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true, value_parser = secret)]
    pub stripe_secret_key: Option<SecretString>,

    /// Stripe API base URL (only used with STRIPE_SECRET_KEY).
    #[arg(
        long,
        env = "STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_api_base: String,

    /// Webhook signing secrets, comma separated (several during a secret rotation). Required
    /// with STRIPE_SECRET_KEY; defaults to the in-process fake's secret otherwise.
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = secret
    )]
    pub stripe_webhook_secret: Vec<SecretString>,

    /// Oldest webhook signature timestamp accepted, in seconds (replay protection).
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub stripe_webhook_tolerance_secs: u64,

    /// Address of the in-process Stripe fake (port 0: any free port).
    #[arg(long, env = "STRIPE_FAKE_ADDR", default_value = "127.0.0.1:0")]
    pub stripe_fake_addr: SocketAddr,

    /// Delay unit of the in-process fake's scripted late webhooks, in milliseconds.
    #[arg(long, env = "STRIPE_FAKE_DELAY_MS", default_value_t = 300)]
    pub stripe_fake_delay_ms: u64,

    /// How long the in-process fake takes to answer the creation of a PaymentIntent, in
    /// milliseconds: a slow provider, for load tests.
    #[arg(long, env = "STRIPE_FAKE_API_DELAY_MS", default_value_t = 0)]
    pub stripe_fake_api_delay_ms: u64,

    /// Consecutive payment failures that raise an alert (error log, metric, event).
    #[arg(long, env = "PAYMENT_FAILURE_STREAK_ALERT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub payment_failure_streak_alert: u32,

    /// Bearer token for the operators' inspection API (`/actors/...`); unset closes it.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = secret)]
    pub admin_token: Option<SecretString>,

    /// Log output: JSON lines (default) or human-readable.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// The HTTP server's timeouts and bounds, in one place (docs/architecture.md, "The HTTP edge").
/// The defaults follow what servers exposed to the internet do (nginx, Go's `http.Server`):
/// generous for real clients on slow networks, short enough that connections which send nothing
/// cannot pile up.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers, from the connection's start or
    /// from the first byte of a later request on the same connection, in milliseconds. Past it
    /// the connection is closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_ms: u64,

    /// How long a client may take to send a request's whole body once its headers are in, in
    /// milliseconds. Past it the answer is 408 and the connection is closed.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_ms: u64,

    /// How long a keep-alive connection may stay open with no request, in milliseconds.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 75_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout_ms: u64,

    /// How long a request may take to be answered, in milliseconds; a long poll (`?wait=`) gets
    /// its wait on top. Past it the answer is 503 with Retry-After.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_request_timeout_ms: u64,

    /// Open connections at most; past it a new connection gets 503 with Retry-After and is
    /// closed. Lowered to what the process's open-file limit leaves room for.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// Requests being answered at once, long polls included; past it a request gets 503 with
    /// Retry-After. Health and metrics are always answered.
    #[arg(long, env = "HTTP_MAX_REQUESTS_IN_FLIGHT", default_value_t = 4_096, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_requests_in_flight: u32,
}

/// How this instance takes part in the cluster (docs/scaling.md).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterSettings {
    /// This instance's name in the cluster; by default the host name and the HTTP port. Two live
    /// processes must not share one (fencing keeps the data right, but they would take each
    /// other's partitions); a restarted process under the same name takes its partitions back
    /// at once instead of waiting for their leases to run out.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Partitions that order ids and SKUs hash to. Fixed by the first instance that starts on a
    /// database; later instances use the stored count and warn if theirs differs.
    #[arg(long, env = "PARTITIONS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub partitions: u16,

    /// How long a partition's lease lasts after its owner last renewed it: after a crash, its
    /// partitions wait this long for another instance.
    #[arg(long, env = "PARTITION_LEASE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub partition_lease_ms: u64,

    /// How often an instance heartbeats, renews its leases and rebalances; at most a third of
    /// the lease, so two renewals can fail before a lease runs out.
    #[arg(long, env = "PARTITION_RENEW_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub partition_renew_ms: u64,
}

impl ClusterSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.partition_lease_ms)
    }

    pub fn renew_every(&self) -> Duration {
        Duration::from_millis(
            self.partition_renew_ms
                .min(self.partition_lease_ms / 3)
                .max(10),
        )
    }

    /// `INSTANCE_ID`, or the host's name and the HTTP port.
    pub fn instance_id(&self, http: SocketAddr) -> Result<actors::cluster::InstanceId, String> {
        let name = match &self.instance_id {
            Some(name) => name.clone(),
            None => format!("{}:{}", host_name(), http.port()),
        };
        actors::cluster::InstanceId::parse(&name).map_err(|e| format!("INSTANCE_ID {name:?}: {e}"))
    }
}

/// The host's name from the kernel, or `localhost` where there is none to read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| actors::cluster::InstanceId::parse(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl HttpLimits {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.http_body_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.http_idle_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http_request_timeout_ms)
    }
}

/// The cores this process may use (2 when the platform cannot tell).
fn cpu_cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Shards and snapshot writers when not configured: half the cores, at least one. PostgreSQL
/// and NATS usually share the machine, and a shard's or writer's batch is whatever queued
/// while its last transaction ran, so more of them than the cores left for their transactions
/// only split the same work into smaller transactions (docs/performance.md has the
/// measurements).
fn default_stage_count() -> usize {
    (cpu_cores() / 2).max(1)
}

impl Settings {
    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// How sagas re-send the commands handed to actors in this process.
    pub fn resend_policy(&self) -> actors::orders::ResendPolicy {
        actors::orders::ResendPolicy {
            first: Duration::from_millis(self.saga_resend_after_ms),
            max: Duration::from_secs(30).max(Duration::from_millis(self.saga_resend_after_ms)),
        }
    }

    /// Shards to spawn; by default see [`default_stage_count`].
    pub fn inventory_shard_count(&self) -> usize {
        self.inventory_shards
            .map_or_else(default_stage_count, usize::from)
    }

    /// Snapshot writers to start; the same reasoning as the shards.
    pub fn snapshot_writer_count(&self) -> usize {
        self.database_writers
            .map_or_else(default_stage_count, usize::from)
    }

    /// Payment-record writers: a charge is written once per order, snapshots three times.
    pub fn charge_writer_count(&self) -> usize {
        (self.snapshot_writer_count() / 2).max(1)
    }

    pub fn reservation_ttl(&self) -> Duration {
        Duration::from_secs(self.reservation_ttl_secs)
    }

    pub fn step_timeouts(&self) -> actors::saga::StepTimeouts {
        actors::saga::StepTimeouts {
            inventory_ms: self.inventory_step_timeout_ms,
            payment_ms: self.payment_step_timeout_ms,
        }
    }

    /// Defaults for a given database and NATS server: what tests and tools start from.
    pub fn for_servers(database_url: &str, nats_url: &str) -> Self {
        let mut settings = Settings::parse_from(["serve"]);
        settings.database_url = database_url.to_owned();
        settings.nats_url = nats_url.to_owned();
        // Never real Stripe from a test, whatever the environment says.
        settings.stripe_secret_key = None;
        settings.stripe_webhook_secret = Vec::new();
        settings.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
    }

    #[test]
    fn secrets_are_trimmed_refused_when_empty_and_never_printed() {
        let settings = parse(&[
            "--stripe-secret-key",
            " sk_test_hidden ",
            "--stripe-webhook-secret",
            "whsec_one,whsec_two",
            "--admin-token",
            "token-hidden",
        ])
        .unwrap();
        let key = settings.stripe_secret_key.as_ref().unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(key), "sk_test_hidden");
        assert_eq!(settings.stripe_webhook_secret.len(), 2);
        let printed = format!("{settings:?}");
        for secret in ["sk_test_hidden", "whsec_one", "whsec_two", "token-hidden"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
        assert!(parse(&["--admin-token", "  "]).is_err());
    }

    #[test]
    fn shards_and_writers_default_to_half_the_cores_and_follow_their_flags() {
        let half = (cpu_cores() / 2).max(1);
        let defaults = Settings::parse_from(["serve"]);
        assert_eq!(defaults.inventory_shard_count(), half);
        assert_eq!(defaults.snapshot_writer_count(), half);
        assert_eq!(defaults.charge_writer_count(), (half / 2).max(1));

        let three = Settings::parse_from(["serve", "--inventory-shards", "3"]);
        assert_eq!(three.inventory_shard_count(), 3);
        let six = Settings::parse_from(["serve", "--database-writers", "6"]);
        assert_eq!(six.snapshot_writer_count(), 6);
        assert_eq!(six.charge_writer_count(), 3);
        let one = Settings::parse_from(["serve", "--database-writers", "1"]);
        assert_eq!(one.charge_writer_count(), 1);
    }

    #[test]
    fn http_limits_have_defaults_and_refuse_zero() {
        let defaults = Settings::parse_from(["serve"]).http_limits;
        assert_eq!(defaults.header_timeout(), Duration::from_secs(10));
        assert_eq!(defaults.idle_timeout(), Duration::from_secs(75));
        assert_eq!(defaults.http_max_connections, 10_000);
        let set = parse(&[
            "--http-body-timeout-ms",
            "1500",
            "--http-max-requests-in-flight",
            "7",
        ])
        .unwrap();
        assert_eq!(set.http_limits.body_timeout(), Duration::from_millis(1500));
        assert_eq!(set.http_limits.http_max_requests_in_flight, 7);
        for flag in [
            "--http-header-timeout-ms",
            "--http-body-timeout-ms",
            "--http-idle-timeout-ms",
            "--http-request-timeout-ms",
            "--http-max-connections",
            "--http-max-requests-in-flight",
        ] {
            assert!(parse(&[flag, "0"]).is_err(), "{flag} 0");
        }
    }

    #[test]
    fn zero_shards_or_writers_are_refused() {
        assert!(parse(&["--inventory-shards", "0"]).is_err());
        assert!(parse(&["--database-writers", "0"]).is_err());
        assert!(parse(&["--database-writers", "65"]).is_err());
    }
}
