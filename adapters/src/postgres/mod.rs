//! PostgreSQL through sqlx: connection and migrations here, one module per store.
//!
//! Every state change that emits messages writes them to `outbox` in the same transaction
//! (`outbox::commit_with`), then hands them to the relay through `OutboxSignal` so publishing starts at once
//! instead of at the next poll.

mod batching;
mod catalog;
mod charge_writer;
pub mod dead_letters;
mod idempotency;
pub mod inspection;
mod ledger;
pub mod outbox;
pub mod partition_leases;
mod payments;
mod price_reads;
mod reservations;
mod snapshot_writer;
pub mod snapshots;
pub mod stripe_events;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub use batching::set_batch_linger;
pub use catalog::{Catalog, CatalogError, Product, ProductUpsert};
pub use idempotency::{IdempotencyClaim, IdempotencyKeys};
pub use ledger::PgReservationLedger;
pub use partition_leases::PgPartitionLeases;
pub use payments::{PgPaymentRecords, RecordedCharges};
pub use snapshots::PgOrderSnapshotStore;

use actors::ports::StoreError;

/// Hands committed outbox rows to the relay (see `outbox`).
pub use outbox::OutboxSignal;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("cannot reach PostgreSQL at {target}: {source}")]
    Unreachable {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create database {database}: {source}")]
    CreateDatabase {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects to `url`, creating the database first if it does not exist (a newcomer's first
/// `serve` should not need a manual `createdb`), then applies pending migrations.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<PgPool, ConnectError> {
    let options =
        PgConnectOptions::from_str(url).map_err(|e| ConnectError::BadUrl(e.to_string()))?;
    let target = format!("{}:{}", options.get_host(), options.get_port());
    if let Some(database) = options.get_database().map(str::to_owned) {
        ensure_database(&options, &database, &target).await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|source| ConnectError::Unreachable { target, source })?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

async fn ensure_database(
    options: &PgConnectOptions,
    database: &str,
    target: &str,
) -> Result<(), ConnectError> {
    let admin = options.clone().database("postgres");
    let mut conn = match admin.connect().await {
        Ok(conn) => conn,
        // No `postgres` database to connect to (unusual setups): let the real connect report.
        Err(sqlx::Error::Database(_)) => return Ok(()),
        Err(source) => {
            return Err(ConnectError::Unreachable {
                target: target.to_owned(),
                source,
            });
        }
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await
            .map_err(|source| ConnectError::Unreachable {
                target: target.to_owned(),
                source,
            })?;
    if !exists {
        let quoted = format!("\"{}\"", database.replace('"', "\"\""));
        let sql = format!("CREATE DATABASE {quoted}");
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // Someone else created it meanwhile (two processes starting together): PostgreSQL
            // says so as duplicate_database, or, when both got past its own check at once, as a
            // unique violation on pg_database's name index.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(source) => {
                return Err(ConnectError::CreateDatabase {
                    database: database.to_owned(),
                    source,
                });
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Maps a sqlx failure onto the port's vocabulary. Details go to the log, not to callers.
pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    tracing::warn!(error = %e, "database operation failed");
    StoreError::Unavailable(e.to_string())
}
