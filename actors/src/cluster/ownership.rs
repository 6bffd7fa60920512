//! What this process owns right now: for each partition, the epoch of its lease, or nothing.
//!
//! The cluster's lease keeper (in the binary) grants and revokes partitions here as it acquires,
//! loses and hands them off; actors and adapters read it on every decision that depends on
//! ownership (which sagas to recover, where a command goes, which epoch a write is fenced on).
//! One atomic per partition, so the readers on the hot path take no lock. Safety never rests on
//! this view being current: PostgreSQL refuses a write whose epoch is no longer the lease's.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::{OrderId, Sku};

use super::partition::{KeySpace, PartitionCount, PartitionId};

/// A lease's generation: raised by PostgreSQL each time a partition changes hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(i64);

impl Epoch {
    /// An epoch as PostgreSQL returned it; the lease table starts at 0 and only ever raises it,
    /// so a held lease is at least 1.
    pub fn new(raw: i64) -> Option<Self> {
        (raw >= 1).then_some(Self(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct Ownership {
    space: KeySpace,
    count: PartitionCount,
    /// 0: not owned.
    epochs: Arc<[AtomicI64]>,
}

impl fmt::Debug for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ownership")
            .field("space", &self.space)
            .field("partitions", &self.count.get())
            .field("owned", &self.owned().len())
            .finish()
    }
}

impl Ownership {
    /// Owning nothing of `space` yet.
    pub fn new(space: KeySpace, count: PartitionCount) -> Self {
        Self {
            space,
            count,
            epochs: (0..count.get()).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    pub fn space(&self) -> KeySpace {
        self.space
    }

    pub fn count(&self) -> PartitionCount {
        self.count
    }

    pub fn epoch_of(&self, partition: PartitionId) -> Option<Epoch> {
        self.epochs
            .get(partition.index())
            .and_then(|e| Epoch::new(e.load(Ordering::Acquire)))
    }

    /// Whether this process owns `order_id` (an `Orders` view).
    pub fn owns_order(&self, order_id: OrderId) -> bool {
        self.epoch_of(self.count.of_order(order_id)).is_some()
    }

    /// Whether this process owns `sku` (a `Skus` view).
    pub fn owns_sku(&self, sku: &Sku) -> bool {
        self.epoch_of(self.count.of_sku(sku)).is_some()
    }

    /// A new order id that falls in a partition owned here (an `Orders` view), so the order's
    /// saga runs where it is placed, with no hop to another instance; `None` when nothing is
    /// owned. Ids are drawn until one hashes to an owned partition: with a share of `k` of `n`
    /// partitions that takes `n / k` draws on average, and 4,096 draws miss with a chance
    /// below one in a million when even one partition of 64 is owned.
    pub fn new_order_id(&self) -> Option<OrderId> {
        if !self.owns_any() {
            return None;
        }
        (0..4096)
            .map(|_| OrderId::new())
            .find(|id| self.owns_order(*id))
    }

    /// Whether any partition is held (no allocation: asked on every placement).
    pub fn owns_any(&self) -> bool {
        self.epochs.iter().any(|e| e.load(Ordering::Acquire) > 0)
    }

    /// Every partition held, with its epoch, in partition order.
    pub fn owned(&self) -> Vec<(PartitionId, Epoch)> {
        self.count
            .all()
            .filter_map(|p| self.epoch_of(p).map(|e| (p, e)))
            .collect()
    }

    pub fn grant(&self, partition: PartitionId, epoch: Epoch) {
        if let Some(slot) = self.epochs.get(partition.index()) {
            slot.store(epoch.get(), Ordering::Release);
        }
    }

    pub fn revoke(&self, partition: PartitionId) {
        if let Some(slot) = self.epochs.get(partition.index()) {
            slot.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_granted_partition_is_owned_at_its_epoch_until_revoked() {
        let count = PartitionCount::new(8).unwrap();
        let ownership = Ownership::new(KeySpace::Orders, count);
        let order = OrderId::new();
        let partition = count.of_order(order);
        assert!(!ownership.owns_order(order));
        ownership.grant(partition, Epoch::new(3).unwrap());
        assert!(ownership.owns_order(order));
        assert_eq!(ownership.owned(), vec![(partition, Epoch::new(3).unwrap())]);
        ownership.revoke(partition);
        assert!(ownership.owned().is_empty());
        assert_eq!(ownership.epoch_of(partition), None);
    }

    #[test]
    fn new_order_ids_fall_in_the_partitions_owned() {
        let count = PartitionCount::new(64).unwrap();
        let ownership = Ownership::new(KeySpace::Orders, count);
        assert_eq!(ownership.new_order_id(), None);
        let (a, b) = (count.partition(3).unwrap(), count.partition(40).unwrap());
        ownership.grant(a, Epoch::new(1).unwrap());
        ownership.grant(b, Epoch::new(7).unwrap());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let id = ownership.new_order_id().unwrap();
            seen.insert(count.of_order(id));
        }
        assert_eq!(seen, [a, b].into_iter().collect());
    }

    #[test]
    fn an_epoch_below_one_is_not_a_lease() {
        assert_eq!(Epoch::new(0), None);
        assert_eq!(Epoch::new(1).map(Epoch::get), Some(1));
    }
}
