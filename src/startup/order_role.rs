//! The order role: the supervisor of the saga actors, and crash recovery.
//!
//! Answers from inventory and payments reach a saga straight from the postman when those roles
//! run in this process; only for a role that runs elsewhere does the saga read that role's
//! events from its durable consumer.

use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tracing::info;

use actors::events::Envelope;
use actors::orders::{OrderSupervisor, OrderSupervisorHandle, SagaDeps, SagaError};
use actors::ports::OrderSnapshotStore;
use actors::saga::SagaEvent;
use adapters::nats::{self as bus, HandlerError, MessageHandler};
use adapters::postgres as pg;

use super::StartupError;
use super::wiring::Wiring;
use crate::configuration::Role;

/// The running order role.
pub(crate) struct OrderRole {
    pub handle: OrderSupervisorHandle,
    store: Arc<dyn OrderSnapshotStore>,
}

pub(crate) async fn start(wiring: &mut Wiring<'_>) -> Result<OrderRole, StartupError> {
    let settings = wiring.settings;
    let store: Arc<dyn OrderSnapshotStore> = Arc::new(pg::PgOrderSnapshotStore::new(
        wiring.pool.clone(),
        wiring.signal.clone(),
        settings.snapshot_writer_count(),
    ));
    let deps = SagaDeps {
        store: store.clone(),
        clock: wiring.clock.clone(),
        status_watchers: wiring.status_watchers.clone(),
        timeouts: settings.step_timeouts(),
        postman: wiring.postman.clone(),
        resend: settings.resend_policy(),
    };
    let (supervisor, _) = Actor::spawn(None, OrderSupervisor, deps)
        .await
        .map_err(|e| StartupError::Actors(e.to_string()))?;
    let handle = OrderSupervisorHandle::new(supervisor, Duration::from_secs(30));
    wiring.postman.serve_orders(handle.clone());
    let remote = [
        (Role::Inventory, bus::ORDER_SAGA_INVENTORY),
        (Role::Payment, bus::ORDER_SAGA_PAYMENTS),
    ];
    for (role, spec) in remote {
        if !settings.runs(role) {
            let policy = settings.retry_policy_order;
            wiring
                .consume(spec, policy, saga_handler(handle.clone()))
                .await?;
        }
    }
    Ok(OrderRole { handle, store })
}

impl OrderRole {
    /// Crash recovery, once every role of this process is wired: every saga that was not
    /// finished gets its timer back and its pending command re-sent (when its receiver runs
    /// here; a broker's consumer redelivers the others). Only ids and deadlines are held, not
    /// actors: a saga is rehydrated from its snapshot when something happens.
    pub(crate) async fn recover(&self) -> Result<(), StartupError> {
        let live = self
            .store
            .live_deadlines()
            .await
            .map_err(|e| StartupError::Actors(format!("cannot read live sagas: {e}")))?;
        let now = chrono::Utc::now();
        let count = live.len();
        for chunk in live.chunks(1000) {
            let timers = chunk
                .iter()
                .map(|(id, deadline)| (*id, deadline.unwrap_or(now)))
                .collect();
            self.handle
                .recover(timers)
                .map_err(|e| StartupError::Actors(e.to_string()))?;
        }
        if count > 0 {
            info!(
                live_sagas = count,
                "recovered in-flight sagas; their timers are armed and pending commands re-sent"
            );
        }
        Ok(())
    }
}

/// Routes saga-relevant messages to the order's actor; acknowledges the rest.
fn saga_handler(orders: OrderSupervisorHandle) -> MessageHandler {
    Arc::new(move |envelope: Envelope, _| {
        let Some(event) = SagaEvent::from_body(&envelope.body) else {
            return Box::pin(async { Ok(()) });
        };
        let answer = orders.enqueue(envelope.order_id, event);
        Box::pin(async move {
            match answer.await {
                Ok(_) => Ok(()),
                // Nothing will ever make this order exist: park it for an operator to see.
                Err(SagaError::UnknownOrder(id)) => Err(HandlerError::Permanent(format!(
                    "order {id} does not exist"
                ))),
                Err(e) => Err(HandlerError::Retry(e.to_string())),
            }
        })
    })
}
