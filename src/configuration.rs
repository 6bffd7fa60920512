//! Configuration: one `clap` definition that reads flags and the environment variables of the
//! same names (documented in `.env.example`), with defaults that work on a developer machine where
//! PostgreSQL and NATS listen on their standard local ports.

use std::net::SocketAddr;
use std::time::Duration;

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
    Serve(Settings),
}

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
    /// PostgreSQL URL; the database is created if missing and migrated at start.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/ordersaga"
    )]
    pub database_url: String,

    /// Maximum PostgreSQL connections of this process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,

    /// NATS server URL (JetStream must be enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Roles this process runs, comma separated.
    #[arg(
        long,
        env = "ROLES",
        value_delimiter = ',',
        default_value = "order,inventory,payment"
    )]
    pub roles: Vec<Role>,

    /// Number of inventory shard actors (SKUs are hashed onto them).
    #[arg(long, env = "INVENTORY_SHARDS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub inventory_shards: u16,

    /// How long a stock reservation is held, in seconds.
    #[arg(long, env = "RESERVATION_TTL_SECS", default_value_t = 900)]
    pub reservation_ttl_secs: u64,

    /// Seed a small demo catalog when the products table is empty.
    #[arg(long, env = "SEED_DEMO_CATALOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub seed_demo_catalog: bool,

    /// Log output: JSON lines (default) or human-readable.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl Settings {
    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn reservation_ttl(&self) -> Duration {
        Duration::from_secs(self.reservation_ttl_secs)
    }

    /// Defaults for a given database and NATS server: what tests and tools start from.
    pub fn for_servers(database_url: &str, nats_url: &str) -> Self {
        let mut settings = Settings::parse_from(["serve"]);
        settings.database_url = database_url.to_owned();
        settings.nats_url = nats_url.to_owned();
        settings.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        settings
    }
}
