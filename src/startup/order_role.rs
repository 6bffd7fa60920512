//! The order role: the supervisor of the saga actors, and crash recovery.
//!
//! Answers from inventory and payments reach a saga straight from the postman when those roles
//! run in this process; only for a role that runs elsewhere does the saga read that role's
//! events from its durable consumer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tracing::info;

use actors::cluster::{KeySpace, Ownership, PartitionCount, PartitionId};
use actors::events::Envelope;
use actors::orders::{OrderFilter, OrderSupervisor, OrderSupervisorHandle, SagaDeps, SagaError};
use actors::ports::OrderSnapshotStore;
use actors::saga::SagaEvent;
use adapters::nats::{self as bus, HandlerError, MessageHandler};
use adapters::postgres as pg;

use super::StartupError;
use super::wiring::Wiring;
use crate::cluster::{ChangeListener, OwnershipChange};
use crate::configuration::Role;

/// The running order role.
pub(crate) struct OrderRole {
    pub handle: OrderSupervisorHandle,
    store: Arc<dyn OrderSnapshotStore>,
    ownership: Ownership,
    mailbox: bus::PartitionMailbox,
}

pub(crate) async fn start(
    wiring: &mut Wiring<'_>,
    ownership: Ownership,
) -> Result<OrderRole, StartupError> {
    let settings = wiring.settings;
    let store: Arc<dyn OrderSnapshotStore> = Arc::new(pg::PgOrderSnapshotStore::fenced(
        wiring.pool.clone(),
        wiring.signal.clone(),
        settings.snapshot_writer_count(),
        ownership.clone(),
    ));
    let deps = SagaDeps {
        store: store.clone(),
        clock: wiring.clock.clone(),
        status_watchers: wiring.status_watchers.clone(),
        timeouts: settings.step_timeouts(),
        postman: wiring.postman.clone(),
        resend: settings.resend_policy(),
        ownership: Some(ownership.clone()),
    };
    let (supervisor, _) = Actor::spawn(None, OrderSupervisor, deps)
        .await
        .map_err(|e| StartupError::Actors(e.to_string()))?;
    let handle = OrderSupervisorHandle::new(supervisor, Duration::from_secs(30));
    wiring.postman.serve_orders(handle.clone());
    // Answers for another instance's orders are posted to it; this instance's mail arrives in
    // its mailbox, one subscription per partition it owns.
    let mail = bus::NatsClusterMail::new(wiring.nats.clone(), ownership.count());
    wiring
        .postman
        .reach_order_owners(ownership.clone(), Arc::new(mail));
    let delivered = handle.clone();
    let mailbox = bus::PartitionMailbox::new(
        wiring.nats.clone(),
        KeySpace::Orders,
        Arc::new(move |letter: &[u8]| {
            if let Some((order_id, event)) = bus::read_answer(letter) {
                drop(delivered.enqueue(order_id, event));
            }
        }),
    );
    let remote = [
        (Role::Inventory, bus::ORDER_SAGA_INVENTORY),
        (Role::Payment, bus::ORDER_SAGA_PAYMENTS),
    ];
    for (role, spec) in remote {
        if !settings.runs(role) {
            let policy = settings.retry_policy_order;
            let handler = saga_handler(handle.clone(), ownership.clone(), wiring.postman.clone());
            wiring.consume(spec, policy, handler).await?;
        }
    }
    Ok(OrderRole {
        handle,
        store,
        ownership,
        mailbox,
    })
}

impl OrderRole {
    /// What the order role does when its partitions change hands: it opens the mail of the
    /// partitions it gains and recovers their sagas; it closes the mail of those it loses and
    /// stops their actors and timers.
    pub(crate) fn ownership_listener(&self) -> ChangeListener {
        let (handle, store, count, mailbox) = (
            self.handle.clone(),
            self.store.clone(),
            self.ownership.count(),
            self.mailbox.clone(),
        );
        Arc::new(move |change| {
            let (handle, store, mailbox) = (handle.clone(), store.clone(), mailbox.clone());
            Box::pin(async move {
                match change {
                    OwnershipChange::Gained(KeySpace::Orders, gained) => {
                        let partitions: Vec<PartitionId> =
                            gained.into_iter().map(|(p, _)| p).collect();
                        mailbox.open(&partitions).await?;
                        recover(&handle, store.as_ref(), count, partitions).await
                    }
                    OwnershipChange::Dropped(KeySpace::Orders, lost) => {
                        mailbox.close(&lost);
                        let lost: HashSet<PartitionId> = lost.into_iter().collect();
                        let gone: OrderFilter =
                            Arc::new(move |order| lost.contains(&count.of_order(order)));
                        let stopped = handle.relinquish(gone).await.map_err(|e| e.to_string())?;
                        info!(
                            order_actors = stopped,
                            "stopped the sagas of partitions given up"
                        );
                        Ok(())
                    }
                    _ => Ok(()),
                }
            })
        })
    }
}

/// Crash recovery of the partitions just acquired: every saga of theirs that was not finished
/// gets its timer back and its pending command re-sent (when its receiver runs here; a broker's
/// consumer redelivers the others). Only ids and deadlines are held, not actors: a saga is
/// rehydrated from its snapshot when something happens.
#[tracing::instrument(skip_all, fields(partitions = partitions.len()))]
async fn recover(
    handle: &OrderSupervisorHandle,
    store: &dyn OrderSnapshotStore,
    count: PartitionCount,
    partitions: Vec<PartitionId>,
) -> Result<(), String> {
    let gained: HashSet<PartitionId> = partitions.into_iter().collect();
    let live = store
        .live_deadlines()
        .await
        .map_err(|e| format!("cannot read live sagas: {e}"))?;
    let now = chrono::Utc::now();
    let mut count_recovered = 0;
    let ours = live
        .into_iter()
        .filter(|(id, _)| gained.contains(&count.of_order(*id)));
    let timers: Vec<_> = ours
        .map(|(id, deadline)| (id, deadline.unwrap_or(now)))
        .collect();
    for chunk in timers.chunks(1000) {
        count_recovered += chunk.len();
        handle.recover(chunk.to_vec()).map_err(|e| e.to_string())?;
    }
    if count_recovered > 0 {
        info!(
            live_sagas = count_recovered,
            partitions = gained.len(),
            "recovered in-flight sagas; their timers are armed and pending commands re-sent"
        );
    }
    Ok(())
}

/// Routes saga-relevant messages to the order's actor, or to its owner's mail when another
/// instance owns the order (order instances share the durable consumer); acknowledges the rest.
fn saga_handler(
    orders: OrderSupervisorHandle,
    ownership: Ownership,
    postman: actors::postman::Postman,
) -> MessageHandler {
    Arc::new(move |envelope: Envelope, _| {
        let Some(event) = SagaEvent::from_body(&envelope.body) else {
            return Box::pin(async { Ok(()) });
        };
        if !ownership.owns_order(envelope.order_id) {
            postman.answer_order(envelope.order_id, event);
            return Box::pin(async { Ok(()) });
        }
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
