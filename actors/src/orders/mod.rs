//! Order actors: one `OrderSagaActor` per live order, spawned and watched by `OrderSupervisor`.
//!
//! The supervisor owns no order state; it only routes messages to the order's actor, creating it
//! on demand (which rehydrates from the last snapshot), and forgets actors that stop. A finished
//! order's actor stops itself, so memory is bounded by live orders, not by orders ever placed.

mod deadline_timers;
mod handle;
mod resend;
mod saga_actor;
mod status_watch;
mod supervisor;

use std::sync::Arc;

pub use handle::OrderSupervisorHandle;
pub use resend::ResendPolicy;
pub use saga_actor::{LiveOrder, OrderSagaActor, OrderSagaMessage};
pub use status_watch::{Change, StatusWatch, StatusWatchers};
pub use supervisor::{OrderFilter, OrderSupervisor, SupervisorMessage, SupervisorOverview};

use crate::domain::OrderId;
use crate::ports::{OrderSnapshotStore, SharedClock, StoreError};
use crate::saga::{OrderStatus, StepTimeouts};

/// What every saga actor needs from the outside, shared by all of them.
#[derive(Clone)]
pub struct SagaDeps {
    pub store: Arc<dyn OrderSnapshotStore>,
    pub clock: SharedClock,
    /// Waiters for committed changes of one order (`GET /orders/{id}?wait=`).
    pub status_watchers: StatusWatchers,
    /// Step timeouts given to every new order.
    pub timeouts: StepTimeouts,
    /// Hands committed commands to receivers in this process (see `postman`).
    pub postman: crate::postman::Postman,
    /// How a pending step's command is re-sent while its answer does not come.
    pub resend: ResendPolicy,
    /// The order partitions this instance owns; `None`: it runs every order (a process on its
    /// own, as in the actors' tests).
    pub ownership: Option<crate::cluster::Ownership>,
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
