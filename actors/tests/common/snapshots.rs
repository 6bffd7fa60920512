//! `OrderSnapshotStore` in memory, with switches for the failures the order actors must survive.

use std::collections::HashMap;
use std::sync::Mutex;

use actors::domain::OrderId;
use actors::events::Envelope;
use actors::ports::{OrderSnapshotStore, StoreError};
use actors::saga::OrderState;
use async_trait::async_trait;

use super::{lock, unavailable};

#[derive(Default)]
struct SnapshotInner {
    orders: HashMap<OrderId, OrderState>,
    /// Every envelope committed with a snapshot write, in commit order.
    outbox: Vec<Envelope>,
    unavailable: bool,
    /// The next `load` answers "no such order" even if there is one (a concurrent placement).
    hide_next_load: bool,
    /// The next `commit` is written but reported as failed (the connection dropped after COMMIT).
    fail_after_next_commit: bool,
    /// The next `commit` panics (a bug in the store driver), crashing the calling actor.
    panic_on_next_commit: bool,
    loads: usize,
    creates_written: usize,
    commits_written: usize,
    conflicts: usize,
}

/// Order snapshots in a map, with the same optimistic-concurrency contract as Postgres.
#[derive(Default)]
pub struct InMemorySnapshotStore {
    inner: Mutex<SnapshotInner>,
}

impl InMemorySnapshotStore {
    pub fn set_unavailable(&self, unavailable: bool) {
        lock(&self.inner).unavailable = unavailable;
    }

    pub fn hide_next_load(&self) {
        lock(&self.inner).hide_next_load = true;
    }

    pub fn fail_after_next_commit(&self) {
        lock(&self.inner).fail_after_next_commit = true;
    }

    pub fn panic_on_next_commit(&self) {
        lock(&self.inner).panic_on_next_commit = true;
    }

    pub fn get(&self, order_id: OrderId) -> Option<OrderState> {
        lock(&self.inner).orders.get(&order_id).cloned()
    }

    pub fn stored(&self, order_id: OrderId) -> OrderState {
        self.get(order_id)
            .unwrap_or_else(|| panic!("order {order_id} is not in the store"))
    }

    pub fn subjects(&self, order_id: OrderId) -> Vec<&'static str> {
        lock(&self.inner)
            .outbox
            .iter()
            .filter(|e| e.order_id == order_id)
            .map(Envelope::subject)
            .collect()
    }

    pub fn outbox(&self, order_id: OrderId) -> Vec<Envelope> {
        lock(&self.inner)
            .outbox
            .iter()
            .filter(|e| e.order_id == order_id)
            .cloned()
            .collect()
    }

    pub fn loads(&self) -> usize {
        lock(&self.inner).loads
    }

    pub fn creates_written(&self) -> usize {
        lock(&self.inner).creates_written
    }

    pub fn commits_written(&self) -> usize {
        lock(&self.inner).commits_written
    }

    pub fn conflicts(&self) -> usize {
        lock(&self.inner).conflicts
    }
}

#[async_trait]
impl OrderSnapshotStore for InMemorySnapshotStore {
    async fn live_deadlines(
        &self,
    ) -> Result<Vec<(OrderId, Option<chrono::DateTime<chrono::Utc>>)>, StoreError> {
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        Ok(inner
            .orders
            .values()
            .filter(|s| !s.is_terminal())
            .map(|s| (s.order_id, s.deadline))
            .collect())
    }

    async fn load(&self, order_id: OrderId) -> Result<Option<OrderState>, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        inner.loads += 1;
        if std::mem::take(&mut inner.hide_next_load) {
            return Ok(None);
        }
        Ok(inner.orders.get(&order_id).cloned())
    }

    async fn create(&self, first: &OrderState, outbox: &[Envelope]) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        if inner.orders.contains_key(&first.order_id) {
            return Ok(false);
        }
        inner.orders.insert(first.order_id, first.clone());
        inner.outbox.extend_from_slice(outbox);
        inner.creates_written += 1;
        Ok(true)
    }

    async fn commit(
        &self,
        expected: i64,
        next: &OrderState,
        outbox: &[Envelope],
    ) -> Result<(), StoreError> {
        let panic_now = {
            let mut inner = lock(&self.inner);
            if inner.unavailable {
                return Err(unavailable());
            }
            std::mem::take(&mut inner.panic_on_next_commit)
        };
        if panic_now {
            panic!("the fake store driver blew up (deliberately)");
        }
        let mut inner = lock(&self.inner);
        let stored = inner.orders.get(&next.order_id).map(|o| o.version);
        if stored != Some(expected) {
            inner.conflicts += 1;
            return Err(StoreError::VersionConflict { expected });
        }
        inner.orders.insert(next.order_id, next.clone());
        inner.outbox.extend_from_slice(outbox);
        inner.commits_written += 1;
        if std::mem::take(&mut inner.fail_after_next_commit) {
            return Err(StoreError::Unavailable(
                "connection lost after COMMIT".into(),
            ));
        }
        Ok(())
    }
}
