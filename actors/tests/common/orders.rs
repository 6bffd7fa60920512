//! The order supervisor wired to an in-memory snapshot store, and ways to drive it.

use actors::ports::ManualClock;
use std::sync::Arc;

use actors::domain::OrderId;
use actors::events::Envelope;
use actors::orders::{Delivery, OrderSupervisor, OrderSupervisorHandle, SagaDeps, StatusWatchers};
use actors::ports::OrderSnapshotStore;
use actors::saga::{self, Decision, Effect, NewOrder, OrderState, OrderStatus, SagaEvent};
use ractor::Actor;

use super::snapshots::InMemorySnapshotStore;
use super::{TIMEOUT, eventually, new_order, pending, succeeded, t0};

pub struct Orders {
    pub handle: OrderSupervisorHandle,
    pub store: Arc<InMemorySnapshotStore>,
    pub status_watchers: StatusWatchers,
}

pub async fn spawn_orders() -> Orders {
    let store = Arc::new(InMemorySnapshotStore::default());
    let status_watchers = StatusWatchers::default();
    let deps = SagaDeps {
        store: store.clone(),
        clock: Arc::new(ManualClock::at(t0())),
        status_watchers: status_watchers.clone(),
        timeouts: actors::saga::StepTimeouts::default(),
        postman: actors::postman::Postman::default(),
        resend: actors::orders::ResendPolicy::default(),
        ownership: None,
    };
    let (supervisor, _join) = Actor::spawn(None, OrderSupervisor, deps).await.unwrap();
    Orders {
        handle: OrderSupervisorHandle::new(supervisor, TIMEOUT),
        store,
        status_watchers,
    }
}

impl Orders {
    pub async fn place(&self, order: NewOrder) -> OrderState {
        self.handle.place(order).await.expect("placing failed")
    }

    pub async fn deliver(&self, order_id: OrderId, event: SagaEvent) -> Delivery {
        self.handle
            .deliver(order_id, event)
            .await
            .expect("delivery failed")
    }

    pub async fn live_orders(&self) -> usize {
        self.handle.live_orders().await.unwrap()
    }

    /// Waits (with a deadline) until no order actor is alive any more.
    pub async fn wait_until_no_actor_is_live(&self) {
        eventually("every order actor to stop", || async {
            self.handle.live_orders().await == Ok(0)
        })
        .await;
    }

    /// Places an order and drives it to COMPLETED.
    pub async fn completed_order(&self) -> OrderId {
        let order = new_order();
        let id = order.order_id;
        self.place(order).await;
        for event in [SagaEvent::StockReserved, pending("pi_1"), succeeded("pi_1")] {
            self.deliver(id, event).await;
        }
        assert_eq!(self.store.stored(id).status, OrderStatus::Completed);
        id
    }
}

/// Commits `event` on the stored snapshot the way another process would (bypassing our actors).
pub async fn advance_elsewhere(
    store: &InMemorySnapshotStore,
    order_id: OrderId,
    event: &SagaEvent,
) {
    let current = store.stored(order_id);
    let Decision::Apply(transition) = saga::decide(&current, event, t0()) else {
        panic!("{event:?} does not apply to {:?}", current.status);
    };
    let outbox: Vec<Envelope> = transition
        .effects
        .iter()
        .map(|Effect::Publish(body)| {
            Envelope::new(order_id, current.correlation_id.clone(), t0(), body.clone())
        })
        .collect();
    store
        .commit(current.version, &transition.next, &outbox)
        .await
        .expect("the other process could not commit");
}
