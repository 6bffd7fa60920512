//! Order actors: one `OrderSagaActor` per live order, spawned and watched by `OrderSupervisor`.
//!
//! The supervisor owns no order state; it only routes messages to the order's actor, creating it
//! on demand (which rehydrates from the last snapshot), and forgets actors that stop. A finished
//! order's actor stops itself, so memory is bounded by live orders, not by orders ever placed.

mod handle;
mod saga_actor;
mod supervisor;

use std::sync::Arc;

use tokio::sync::broadcast;

pub use handle::OrderSupervisorHandle;
pub use saga_actor::{LiveOrder, OrderSagaActor, OrderSagaMessage};
pub use supervisor::{OrderSupervisor, SupervisorMessage, SupervisorOverview};

use crate::domain::OrderId;
use crate::ports::{OrderSnapshotStore, SharedClock, StoreError};
use crate::saga::{OrderStatus, StepTimeouts};

/// What every saga actor needs from the outside, shared by all of them.
#[derive(Clone)]
pub struct SagaDeps {
    pub store: Arc<dyn OrderSnapshotStore>,
    pub clock: SharedClock,
    /// Every committed status change, for in-process waiters (`GET /orders/{id}?wait=`).
    /// Lossy by design: a lagging receiver rereads the store.
    pub status_changes: broadcast::Sender<StatusChange>,
    /// Step timeouts given to every new order.
    pub timeouts: StepTimeouts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    pub order_id: OrderId,
    pub status: OrderStatus,
}

/// The answer to a delivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Applied(OrderStatus),
    Ignored(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    #[error("order {0} does not exist")]
    UnknownOrder(OrderId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("order actor unavailable: {0}")]
    ActorUnavailable(String),
}
