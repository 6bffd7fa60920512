//! Waiting for one order to change (`GET /orders/{id}?wait=`).
//!
//! A waiting request registers interest in its order only; a committed transition looks up that
//! order's entry (one hash lookup when nobody waits, which is almost always) and hands the new
//! state to its waiters, so they answer without reading the database. A broadcast of every
//! change to every waiter would cost O(changes × waiters): at a thousand long polls in flight
//! that is most of a core spent waking requests that are not concerned.
//!
//! Built on `tokio::sync::watch`: a receiver remembers which value it has seen, so a change that
//! lands between registering and waiting is never missed.
//!
//! Transitions committed by *another* process arrive as a nudge (`changed_elsewhere`, fed by the
//! order events on NATS): the waiter then re-reads the store once. Polling the store instead
//! cost one read per waiter per poll; under a backlog (a flash sale with a second of queueing)
//! those reads were most of the database's work.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::domain::OrderId;
use crate::saga::OrderState;

/// What a waiter learns about its order.
#[derive(Debug, Clone)]
pub enum Change {
    /// This process committed the state.
    Committed(Arc<OrderState>),
    /// Another process changed the order: read the store.
    Elsewhere,
}

/// The registry of waiters, shared by the saga actors (which publish) and HTTP (which waits):
/// a concurrent map from order to its channel, so publishers and waiters of different orders
/// rarely meet on a lock.
#[derive(Clone, Default)]
pub struct StatusWatchers {
    slots: Arc<DashMap<OrderId, watch::Sender<Option<Change>>>>,
}

impl StatusWatchers {
    /// Registers interest in `order_id`; changes committed from now on are delivered to it.
    pub fn watch(&self, order_id: OrderId) -> StatusWatch {
        let receiver = self
            .slots
            .entry(order_id)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        StatusWatch {
            watchers: self.clone(),
            order_id,
            receiver: Some(receiver),
        }
    }

    /// A transition of `state` was committed: wake its waiters, if any.
    pub fn publish(&self, state: &OrderState) {
        if let Some(sender) = self.slots.get(&state.order_id) {
            sender.send_replace(Some(Change::Committed(Arc::new(state.clone()))));
        }
    }

    /// Another process reported a transition of `order_id`: its waiters, if any, re-read it.
    ///
    /// Not when the last change handed over is a terminal state this process committed: waiters
    /// return on it, and replacing it would only make them read the store for the same answer.
    /// The case is common, because this process receives its own order events too: under load
    /// its `order.confirmed.v1` comes back over NATS before a waiter has been scheduled to take
    /// the `COMPLETED` committed moments before.
    pub fn changed_elsewhere(&self, order_id: OrderId) {
        if let Some(sender) = self.slots.get(&order_id) {
            sender.send_if_modified(|change| {
                if matches!(change, Some(Change::Committed(state)) if state.is_terminal()) {
                    return false;
                }
                *change = Some(Change::Elsewhere);
                true
            });
        }
    }

    /// Orders with at least one waiter (inspection and tests).
    pub fn watched_orders(&self) -> usize {
        self.slots.len()
    }
}

/// One waiter's registration; dropping it unregisters (the entry goes with the last waiter).
pub struct StatusWatch {
    watchers: StatusWatchers,
    order_id: OrderId,
    receiver: Option<watch::Receiver<Option<Change>>>,
}

impl StatusWatch {
    /// The order's next change (cancel-safe: use it in `select!`); `None` if the registry went
    /// away (read the store).
    pub async fn changed(&mut self) -> Option<Change> {
        let receiver = self.receiver.as_mut()?;
        receiver.changed().await.ok()?;
        receiver.borrow_and_update().clone()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        self.receiver = None;
        // Checked and removed under the entry's lock: a waiter that registers meanwhile either
        // keeps the entry (it counts) or creates a new one.
        self.watchers
            .slots
            .remove_if(&self.order_id, |_, sender| sender.receiver_count() == 0);
    }
}
