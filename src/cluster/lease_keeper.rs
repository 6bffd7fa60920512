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

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use actors::cluster::{Epoch, InstanceId, Ownership, PartitionCount, PartitionId, plan};
use actors::metrics as names;
use adapters::postgres::PgPartitionLeases;

/// What changed in this instance's ownership, for the roles to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipChange {
    /// Acquired (at these epochs): recover what they hold.
    Gained(Vec<(PartitionId, Epoch)>),
    /// No longer ours (handed off, taken over, or the lease lapsed): stop their work.
    Dropped(Vec<PartitionId>),
}

pub type ChangeListener = Arc<dyn Fn(OwnershipChange) + Send + Sync>;

pub struct LeaseKeeper {
    leases: PgPartitionLeases,
    ownership: Ownership,
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
        ownership: Ownership,
        http_address: String,
        lease: Duration,
        renew_every: Duration,
    ) -> Self {
        Self {
            leases,
            ownership,
            http_address,
            lease,
            renew_every,
            listeners: Vec::new(),
            valid_until: None,
        }
    }

    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    pub fn instance(&self) -> &InstanceId {
        self.leases.instance()
    }

    /// `listener` hears every change from now on.
    pub fn on_change(&mut self, listener: ChangeListener) {
        self.listeners.push(listener);
    }

    fn count(&self) -> PartitionCount {
        self.ownership.count()
    }

    fn tell(&self, change: OwnershipChange) {
        for listener in &self.listeners {
            listener(change.clone());
        }
    }

    fn drop_locally(&self, partitions: Vec<PartitionId>, why: &'static str) {
        if partitions.is_empty() {
            return;
        }
        for p in &partitions {
            self.ownership.revoke(*p);
        }
        metrics::counter!(names::CLUSTER_PARTITION_CHANGES, "change" => why)
            .increment(partitions.len() as u64);
        self.tell(OwnershipChange::Dropped(partitions));
    }

    /// One round: heartbeat, renew, rebalance. `draining` gives everything away.
    pub async fn round(&mut self, draining: bool) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        self.leases.heartbeat(&self.http_address, draining).await?;
        let held = self.ownership.owned();
        let renewed = self.leases.renew(self.count(), &held).await?;
        metrics::histogram!(names::CLUSTER_LEASE_RENEW).record(started.elapsed().as_secs_f64());
        self.valid_until = Some(started + self.lease);
        let lost: Vec<PartitionId> = held
            .iter()
            .filter(|(p, _)| !renewed.iter().any(|(r, _)| r == p))
            .map(|(p, _)| *p)
            .collect();
        if !lost.is_empty() {
            warn!(partitions = ?lost, "partitions were taken over by another instance");
        }
        self.drop_locally(lost, "lost");

        let live = match draining {
            true => Vec::new(),
            false => self.leases.live_instances().await?,
        };
        let planned = plan(self.count(), &live);
        let me = self.leases.instance().clone();
        let mine = |p: PartitionId| planned[p.index()].as_ref() == Some(&me);
        let (keep, hand_off): (Vec<_>, Vec<_>) = renewed.into_iter().partition(|(p, _)| mine(*p));
        if !hand_off.is_empty() {
            // Stop the work first, then let the lease go: whatever is still being written under
            // the old epoch lands before the next owner can acquire and recover.
            self.drop_locally(hand_off.iter().map(|(p, _)| *p).collect(), "released");
            self.leases.release(&hand_off).await?;
            info!(partitions = hand_off.len(), "handed partitions off");
        }
        let wanted: Vec<PartitionId> = self
            .count()
            .all()
            .filter(|p| mine(*p) && !keep.iter().any(|(k, _)| k == p))
            .collect();
        if !wanted.is_empty() {
            let gained = self.leases.acquire(self.count(), &wanted).await?;
            if !gained.is_empty() {
                for (p, e) in &gained {
                    self.ownership.grant(*p, *e);
                }
                metrics::counter!(names::CLUSTER_PARTITION_CHANGES, "change" => "acquired")
                    .increment(gained.len() as u64);
                info!(partitions = gained.len(), "acquired partitions");
                self.tell(OwnershipChange::Gained(gained));
            }
        }
        metrics::gauge!(names::CLUSTER_PARTITIONS_OWNED).set(self.ownership.owned().len() as f64);
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
                    let all = self.ownership.owned().into_iter().map(|(p, _)| p).collect();
                    self.drop_locally(all, "lost");
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
