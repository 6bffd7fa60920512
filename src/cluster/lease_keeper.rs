//! Keeps this instance's partition leases: once per `PARTITION_RENEW_MS` it heartbeats, renews
//! what it holds (learning what was taken over), computes the plan over the live instances
//! (`actors::cluster::plan`), hands off what the plan gives to another instance and acquires
//! what the plan gives to it and nobody holds.
//!
//! A hand-off is two rounds of two instances: the old owner sees the new one live, stops its
//! work on the partition and releases the lease; the new owner finds it free on its next round,
//! acquires it at a higher epoch and recovers it. No message passes between them: both read the
//! same rows. Draining (SIGTERM) leaves the plan at once, so the others take everything.
//!
//! The keeper's view can be wrong for a moment (a pause, a lost connection); PostgreSQL's epoch
//! check refuses whatever a stale owner writes meanwhile. To stop wasting work, the keeper also
//! drops everything locally once a lease would have run out without a successful renewal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use actors::cluster::{Epoch, InstanceId, KeySpace, Ownership, PartitionId, plan};
use actors::metrics as names;
use adapters::postgres::PgPartitionLeases;

/// What changed in this instance's ownership of a key space, for its role to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipChange {
    /// Acquired (at these epochs): recover what they hold.
    Gained(KeySpace, Vec<(PartitionId, Epoch)>),
    /// No longer ours (handed off, taken over, or the lease lapsed): stop their work.
    Dropped(KeySpace, Vec<PartitionId>),
}

/// Hears a change and acts on it before the keeper goes on: a partition's work stops before its
/// lease is released, and a gained partition is recovered before the next round. An error on a
/// gain gives the partitions back, to be acquired (and recovered) again on a later round.
pub type ChangeListener =
    Arc<dyn Fn(OwnershipChange) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("partition leases: {0}")]
    Store(#[from] sqlx::Error),
    #[error("cannot recover gained partitions: {0}")]
    Recovery(String),
}

pub struct LeaseKeeper {
    leases: PgPartitionLeases,
    /// One view per key space this instance serves.
    spaces: Vec<Ownership>,
    http_address: String,
    lease: Duration,
    renew_every: Duration,
    listeners: Vec<ChangeListener>,
    /// When the leases held would run out if no renewal succeeds before then (local clock).
    valid_until: Option<Instant>,
}

impl LeaseKeeper {
    pub fn new(
        leases: PgPartitionLeases,
        spaces: Vec<Ownership>,
        http_address: String,
        lease: Duration,
        renew_every: Duration,
    ) -> Self {
        Self {
            leases,
            spaces,
            http_address,
            lease,
            renew_every,
            listeners: Vec::new(),
            valid_until: None,
        }
    }

    pub fn instance(&self) -> &InstanceId {
        self.leases.instance()
    }

    /// `listener` hears every change from now on.
    pub fn on_change(&mut self, listener: ChangeListener) {
        self.listeners.push(listener);
    }

    async fn tell(&self, change: OwnershipChange) -> Result<(), String> {
        for listener in &self.listeners {
            listener(change.clone()).await?;
        }
        Ok(())
    }

    async fn drop_locally(
        &self,
        ownership: &Ownership,
        partitions: Vec<PartitionId>,
        why: &'static str,
    ) {
        if partitions.is_empty() {
            return;
        }
        for p in &partitions {
            ownership.revoke(*p);
        }
        let space = ownership.space();
        metrics::counter!(names::CLUSTER_PARTITION_CHANGES, "space" => space.as_str(), "change" => why)
            .increment(partitions.len() as u64);
        if let Err(e) = self.tell(OwnershipChange::Dropped(space, partitions)).await {
            warn!(error = %e, "stopping the work of dropped partitions failed");
        }
    }

    /// One round: heartbeat, then renew and rebalance each key space. `draining` gives
    /// everything away.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn round(&mut self, draining: bool) -> Result<(), KeeperError> {
        let started = Instant::now();
        let spaces: Vec<KeySpace> = self.spaces.iter().map(Ownership::space).collect();
        self.leases
            .heartbeat(&self.http_address, &spaces, draining)
            .await?;
        for ownership in self.spaces.clone() {
            self.rebalance(&ownership, draining).await?;
        }
        metrics::histogram!(names::CLUSTER_LEASE_RENEW).record(started.elapsed().as_secs_f64());
        self.valid_until = Some(started + self.lease);
        Ok(())
    }

    async fn rebalance(&self, ownership: &Ownership, draining: bool) -> Result<(), KeeperError> {
        let (space, count) = (ownership.space(), ownership.count());
        let held = ownership.owned();
        let renewed = self.leases.renew(space, count, &held).await?;
        let lost: Vec<PartitionId> = held
            .iter()
            .filter(|(p, _)| !renewed.iter().any(|(r, _)| r == p))
            .map(|(p, _)| *p)
            .collect();
        if !lost.is_empty() {
            warn!(space = space.as_str(), partitions = ?lost, "partitions were taken over by another instance");
        }
        self.drop_locally(ownership, lost, "lost").await;

        let live = match draining {
            true => Vec::new(),
            false => self.leases.live_instances(space).await?,
        };
        let planned = plan(count, &live);
        let me = self.leases.instance();
        let mine = |p: PartitionId| planned[p.index()].as_ref() == Some(me);
        let (keep, hand_off): (Vec<_>, Vec<_>) = renewed.into_iter().partition(|(p, _)| mine(*p));
        if !hand_off.is_empty() {
            // Stop the work first, then let the lease go: whatever is still being written under
            // the old epoch lands before the next owner can acquire and recover.
            let leaving = hand_off.iter().map(|(p, _)| *p).collect();
            self.drop_locally(ownership, leaving, "released").await;
            self.leases.release(space, &hand_off).await?;
            info!(
                space = space.as_str(),
                partitions = hand_off.len(),
                "handed partitions off"
            );
        }
        let wanted: Vec<PartitionId> = count
            .all()
            .filter(|p| mine(*p) && !keep.iter().any(|(k, _)| k == p))
            .collect();
        if !wanted.is_empty() {
            let gained = self.leases.acquire(space, count, &wanted).await?;
            if !gained.is_empty() {
                for (p, e) in &gained {
                    ownership.grant(*p, *e);
                }
                metrics::counter!(names::CLUSTER_PARTITION_CHANGES, "space" => space.as_str(), "change" => "acquired")
                    .increment(gained.len() as u64);
                info!(
                    space = space.as_str(),
                    partitions = gained.len(),
                    "acquired partitions"
                );
                if let Err(e) = self
                    .tell(OwnershipChange::Gained(space, gained.clone()))
                    .await
                {
                    let back = gained.iter().map(|(p, _)| *p).collect();
                    self.drop_locally(ownership, back, "released").await;
                    self.leases.release(space, &gained).await?;
                    return Err(KeeperError::Recovery(e));
                }
            }
        }
        metrics::gauge!(names::CLUSTER_PARTITIONS_OWNED, "space" => space.as_str())
            .set(ownership.owned().len() as f64);
        Ok(())
    }

    /// Rounds until `shutdown`, then drains: gives every partition away and leaves.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), String> {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.renew_every) => {}
            }
            if let Err(e) = self.round(false).await {
                warn!(error = %e, "cannot renew partition leases; will retry");
                if self
                    .valid_until
                    .is_some_and(|until| Instant::now() >= until)
                {
                    warn!("partition leases ran out without a renewal; dropping every partition");
                    for ownership in &self.spaces {
                        let all = ownership.owned().into_iter().map(|(p, _)| p).collect();
                        self.drop_locally(ownership, all, "lost").await;
                    }
                    self.valid_until = None;
                }
            }
        }
        self.drain().await;
        Ok(())
    }

    /// Leaves the cluster: hands every partition off at once instead of letting the others
    /// wait for the leases to run out.
    pub async fn drain(&mut self) {
        if let Err(e) = self.round(true).await {
            warn!(error = %e, "cannot release partitions; they pass on when their leases run out");
            return;
        }
        if let Err(e) = self.leases.deregister().await {
            warn!(error = %e, "cannot deregister this instance");
        }
    }
}
