//! The cluster's membership and partition leases in PostgreSQL (tables `cluster_config`,
//! `cluster_instances`, `partition_leases`).
//!
//! Every time here is PostgreSQL's `now()`, so instances on machines whose clocks disagree still
//! agree on who is live and whose lease ran out. Leases only decide *when* a partition may change
//! hands; *safety* comes from the epoch, raised by every acquisition in the same `UPDATE` that
//! takes the row, so that a write conditioned on the epoch it was made under is refused once the
//! partition has changed hands.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use actors::cluster::{Epoch, InstanceId, KeySpace, PartitionCount, PartitionId};

/// One instance as `cluster_instances` has it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub http_address: String,
    /// The key spaces whose partitions it shares (`orders`, `skus`).
    pub key_spaces: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub draining: bool,
    /// Heartbeat within the lease time.
    pub live: bool,
}

/// One partition's lease as `partition_leases` has it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LeaseRecord {
    pub key_space: String,
    pub partition: i32,
    pub owner: Option<String>,
    pub epoch: i64,
    pub lease_until: DateTime<Utc>,
    pub acquired_at: Option<DateTime<Utc>>,
    /// Held and not run out.
    pub live: bool,
}

#[derive(Clone)]
pub struct PgPartitionLeases {
    pool: PgPool,
    instance: InstanceId,
    lease_ms: i64,
}

impl PgPartitionLeases {
    /// Leases for `instance`, each good for `lease` after its last renewal.
    pub fn new(pool: PgPool, instance: InstanceId, lease: Duration) -> Self {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        Self {
            pool,
            instance,
            lease_ms,
        }
    }

    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    /// The cluster's partition count: `proposed` if this is the first instance on the database,
    /// else whatever the first one fixed. Creates the lease rows either way (idempotent).
    pub async fn partition_count(
        pool: &PgPool,
        proposed: PartitionCount,
    ) -> Result<PartitionCount, sqlx::Error> {
        sqlx::query(
            "INSERT INTO cluster_config (partition_count) VALUES ($1)
             ON CONFLICT (singleton) DO NOTHING",
        )
        .bind(proposed.get() as i32)
        .execute(pool)
        .await?;
        let stored: i32 = sqlx::query_scalar("SELECT partition_count FROM cluster_config")
            .fetch_one(pool)
            .await?;
        let count = PartitionCount::new(i64::from(stored))
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        sqlx::query(
            "INSERT INTO partition_leases (key_space, partition)
             SELECT space, generate_series(0, $1 - 1) FROM unnest($2::text[]) AS space
             ON CONFLICT (key_space, partition) DO NOTHING",
        )
        .bind(stored)
        .bind(KeySpace::ALL.map(KeySpace::as_str).as_slice())
        .execute(pool)
        .await?;
        Ok(count)
    }

    /// Announces this instance as serving `spaces`, or renews its heartbeat; `draining` asks the
    /// others to take its partitions.
    pub async fn heartbeat(
        &self,
        http_address: &str,
        spaces: &[KeySpace],
        draining: bool,
    ) -> Result<(), sqlx::Error> {
        let spaces: Vec<&str> = spaces.iter().map(|s| s.as_str()).collect();
        sqlx::query(
            "INSERT INTO cluster_instances (instance_id, http_address, draining, key_spaces)
             VALUES ($1, $2, $3, $5)
             ON CONFLICT (instance_id) DO UPDATE
             SET http_address = EXCLUDED.http_address, heartbeat_at = now(),
                 draining = EXCLUDED.draining, key_spaces = EXCLUDED.key_spaces,
                 started_at = CASE WHEN cluster_instances.heartbeat_at
                                        < now() - $4 * interval '1 millisecond'
                              THEN now() ELSE cluster_instances.started_at END",
        )
        .bind(self.instance.as_str())
        .bind(http_address)
        .bind(draining)
        .bind(self.lease_ms)
        .bind(&spaces)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The instances that share `space`'s partitions: serving it, heartbeat within the lease
    /// time, not draining.
    pub async fn live_instances(&self, space: KeySpace) -> Result<Vec<InstanceId>, sqlx::Error> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT instance_id FROM cluster_instances
             WHERE NOT draining AND heartbeat_at > now() - $1 * interval '1 millisecond'
               AND $2 = ANY(key_spaces)",
        )
        .bind(self.lease_ms)
        .bind(space.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(names
            .iter()
            .filter_map(|n| InstanceId::parse(n).ok())
            .collect())
    }

    /// Takes every partition of `wanted` that nobody holds, whose lease ran out, or that is held
    /// under this instance's own name (a previous life of it), raising each one's epoch.
    pub async fn acquire(
        &self,
        space: KeySpace,
        count: PartitionCount,
        wanted: &[PartitionId],
    ) -> Result<Vec<(PartitionId, Epoch)>, sqlx::Error> {
        let wanted: Vec<i32> = wanted.iter().map(|p| p.as_i32()).collect();
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "UPDATE partition_leases
             SET owner = $2, epoch = epoch + 1, acquired_at = now(),
                 lease_until = now() + $3 * interval '1 millisecond'
             WHERE key_space = $4 AND partition = ANY($1)
               AND (owner IS NULL OR owner = $2 OR lease_until < now())
             RETURNING partition, epoch",
        )
        .bind(&wanted)
        .bind(self.instance.as_str())
        .bind(self.lease_ms)
        .bind(space.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(held(count, rows))
    }

    /// Extends the leases of `held` that are still this instance's at the same epoch, and returns
    /// those; a partition missing from the answer was taken over.
    pub async fn renew(
        &self,
        space: KeySpace,
        count: PartitionCount,
        held_now: &[(PartitionId, Epoch)],
    ) -> Result<Vec<(PartitionId, Epoch)>, sqlx::Error> {
        let rows = self
            .update_held(
                space,
                held_now,
                "lease_until = now() + $5 * interval '1 millisecond'",
            )
            .await?;
        Ok(held(count, rows))
    }

    /// Gives up `held` (still at their epochs) so another instance can acquire them at once.
    pub async fn release(
        &self,
        space: KeySpace,
        held_now: &[(PartitionId, Epoch)],
    ) -> Result<u64, sqlx::Error> {
        let rows = self
            .update_held(space, held_now, "owner = NULL, lease_until = 'epoch'")
            .await?;
        Ok(rows.len() as u64)
    }

    /// Applies `set` to the leases of `held_now` that this instance still holds at their epochs;
    /// returns those. `$5` in `set` is the lease time in milliseconds.
    async fn update_held(
        &self,
        space: KeySpace,
        held_now: &[(PartitionId, Epoch)],
        set: &str,
    ) -> Result<Vec<(i32, i64)>, sqlx::Error> {
        let (partitions, epochs) = columns(held_now);
        let statement = format!(
            "UPDATE partition_leases AS l SET {set}
             FROM unnest($1::int[], $2::bigint[]) AS h(partition, epoch)
             WHERE l.key_space = $4 AND l.partition = h.partition AND l.epoch = h.epoch
               AND l.owner = $3
             RETURNING l.partition, l.epoch"
        );
        sqlx::query_as(sqlx::AssertSqlSafe(statement))
            .bind(&partitions)
            .bind(&epochs)
            .bind(self.instance.as_str())
            .bind(space.as_str())
            .bind(self.lease_ms)
            .fetch_all(&self.pool)
            .await
    }

    /// Leaves the cluster (after releasing everything).
    pub async fn deregister(&self) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM cluster_instances WHERE instance_id = $1")
            .bind(self.instance.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every instance that heartbeat in the last ten lease times, for `GET /cluster`.
    pub async fn instances(&self) -> Result<Vec<InstanceRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT instance_id, http_address, key_spaces, started_at, heartbeat_at, draining,
                    heartbeat_at > now() - $1 * interval '1 millisecond' AS live
             FROM cluster_instances
             WHERE heartbeat_at > now() - 10 * $1 * interval '1 millisecond'
             ORDER BY instance_id",
        )
        .bind(self.lease_ms)
        .fetch_all(&self.pool)
        .await
    }

    /// Every partition's lease, by key space and partition, for `GET /cluster`.
    pub async fn leases(&self) -> Result<Vec<LeaseRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT key_space, partition, owner, epoch, lease_until, acquired_at,
                    owner IS NOT NULL AND lease_until > now() AS live
             FROM partition_leases ORDER BY key_space, partition",
        )
        .fetch_all(&self.pool)
        .await
    }
}

fn columns(held: &[(PartitionId, Epoch)]) -> (Vec<i32>, Vec<i64>) {
    held.iter().map(|(p, e)| (p.as_i32(), e.get())).unzip()
}

/// Rows of (partition, epoch) as the cluster's types; a row outside the cluster's range (a
/// lease table written by a different count) is ignored rather than trusted.
fn held(count: PartitionCount, rows: Vec<(i32, i64)>) -> Vec<(PartitionId, Epoch)> {
    let mut held: Vec<(PartitionId, Epoch)> = rows
        .into_iter()
        .filter_map(|(p, e)| Some((count.partition(i64::from(p))?, Epoch::new(e)?)))
        .collect();
    held.sort();
    held
}
