//! One order's saga actor. It is the only writer of its order within this process: messages are
//! handled one at a time, each decided by the pure `saga::decide`, committed with its outbox
//! messages, and only then answered. Across processes, the snapshot version arbitrates: a commit
//! on a stale version fails, the actor reloads and decides again on the fresh state.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::debug;

use super::supervisor::SupervisorMessage;
use super::{Delivery, SagaDeps, SagaError};
use crate::domain::OrderId;
use crate::events::Envelope;
use crate::metrics as m;
use crate::ports::StoreError;
use crate::saga::{
    self, Decision, Effect, NewOrder, OrderState, OrderStatus, SagaEvent, Transition,
};

/// How often a commit that lost an optimistic-concurrency race is re-decided before giving up
/// (the message is then redelivered by the broker).
const MAX_CONFLICT_RETRIES: usize = 5;

pub struct OrderSagaActor;

pub enum OrderSagaMessage {
    /// Place the order (idempotent: an existing order is returned unchanged).
    Start(NewOrder, RpcReplyPort<Result<OrderState, SagaError>>),
    /// React to an event about this order.
    Handle(SagaEvent, RpcReplyPort<Result<Delivery, SagaError>>),
    /// The state this actor holds in memory right now (`None` if not loaded yet).
    Inspect(RpcReplyPort<Option<LiveOrder>>),
    /// Send the pending step's command again if the order still waits on the step that ends at
    /// `deadline` (its answer has not come: lost in a crash, or slow).
    Resend { deadline: DateTime<Utc> },
}

/// What inspection sees of a live order actor.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveOrder {
    pub state: OrderState,
    /// Messages waiting behind the inspection request.
    pub mailbox_depth: usize,
}

pub struct OrderSagaState {
    order_id: OrderId,
    deps: SagaDeps,
    /// Where timers are armed (the supervisor that spawned us; `None` if spawned standalone).
    supervisor: Option<ractor::ActorCell>,
    /// `None` until the first message loads it: spawning stays cheap and never touches the store.
    snapshot: Option<OrderState>,
    /// Messages routed to this actor and not yet taken (shared with the supervisor).
    queued: Arc<AtomicUsize>,
}

impl Actor for OrderSagaActor {
    type Msg = OrderSagaMessage;
    type State = OrderSagaState;
    type Arguments = (OrderId, SagaDeps, Arc<AtomicUsize>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (order_id, deps, queued): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(OrderSagaState {
            order_id,
            deps,
            // ractor links the supervisor only after pre_start; looked up on the first message.
            supervisor: None,
            snapshot: None,
            queued,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.supervisor.is_none() {
            state.supervisor = myself.try_get_supervisor();
        }
        // Saturating: an actor spawned outside the supervisor has nobody counting for it.
        let _ = state
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        m::mailbox_dequeued(m::ORDER_SAGA);
        match message {
            OrderSagaMessage::Start(order, reply) => {
                let result = state.start(order).await;
                let _ = reply.send(result);
            }
            OrderSagaMessage::Inspect(reply) => {
                let live = state.snapshot.clone().map(|snapshot| LiveOrder {
                    state: snapshot,
                    mailbox_depth: state.queued.load(Ordering::Relaxed),
                });
                let _ = reply.send(live);
                // Inspecting must not keep an idle actor alive or stop a live one.
                return Ok(());
            }
            OrderSagaMessage::Resend { deadline } => {
                if let Err(e) = state.resend(deadline).await {
                    // The next re-send, or the deadline, tries again.
                    debug!(order_id = %state.order_id, error = %e, "re-send skipped");
                }
            }
            OrderSagaMessage::Handle(event, reply) => {
                let result = state.handle(&event).await;
                match &event {
                    SagaEvent::DeadlinePassed { deadline } => state.after_timer(*deadline, &result),
                    SagaEvent::OperatorRetry { .. }
                        if matches!(result, Ok(Delivery::Applied(_))) =>
                    {
                        if let Some(current) = &state.snapshot {
                            metrics::counter!(m::STEP_RETRIES, "step" => step_of(current))
                                .increment(1);
                        }
                    }
                    _ => {}
                }
                let _ = reply.send(result);
            }
        }
        // Finished orders need no actor, and neither do unknown orders or a state we could not
        // load: a later event rehydrates a fresh actor from the store. Drain rather than stop, so
        // events already queued (duplicates) are still answered.
        if state.snapshot.as_ref().is_none_or(OrderState::is_terminal) {
            let _ = myself.drain();
        }
        Ok(())
    }
}

impl OrderSagaState {
    /// Loads the snapshot if this actor holds none. `firing` is the deadline whose timer is being
    /// handled, if any: that one is not armed again.
    async fn ensure_loaded(&mut self, firing: Option<DateTime<Utc>>) -> Result<(), SagaError> {
        if self.snapshot.is_none() {
            self.snapshot = self.deps.store.load(self.order_id).await?;
            if let Some(loaded) = &self.snapshot {
                // Rehydrated (after a crash, or in another process): make sure its timer runs.
                if firing.is_none() || loaded.deadline != firing {
                    self.arm(loaded);
                }
            }
        }
        Ok(())
    }

    /// A timer that could not be handled is retried; one that timed a step out is counted.
    fn after_timer(
        &self,
        deadline: chrono::DateTime<chrono::Utc>,
        result: &Result<Delivery, SagaError>,
    ) {
        match result {
            Err(_) => {
                if let Some(current) = &self.snapshot {
                    metrics::counter!(m::STEP_RETRIES, "step" => step_of(current)).increment(1);
                }
                if let Some(supervisor) = &self.supervisor {
                    let _ = supervisor
                        .send_message(SupervisorMessage::RetryTimer(self.order_id, deadline));
                }
            }
            Ok(Delivery::Applied(_)) => {
                // Which step timed out: the status before the timer (kept in the history).
                let step = self
                    .snapshot
                    .as_ref()
                    .and_then(|s| s.history.iter().rev().nth(1))
                    .map(|h| {
                        if h.status == OrderStatus::Pending {
                            "inventory"
                        } else {
                            "payment"
                        }
                    })
                    .unwrap_or("payment");
                metrics::counter!(crate::metrics::SAGA_TIMEOUTS, "step" => step).increment(1);
            }
            Ok(Delivery::Ignored(_)) => {}
        }
    }

    /// Tells the supervisor that the pending command was answered while the step goes on.
    fn answered(&self) {
        if let Some(supervisor) = &self.supervisor {
            let _ = supervisor.send_message(SupervisorMessage::Answered(self.order_id));
        }
    }

    /// Tells the supervisor which deadline this order waits for now, if any: a finished order's
    /// old timers must not wake it up again.
    fn arm(&self, state: &OrderState) {
        let Some(supervisor) = &self.supervisor else {
            return;
        };
        let _ = supervisor.send_message(match state.deadline {
            Some(deadline) => SupervisorMessage::Arm(vec![(state.order_id, deadline)]),
            None => SupervisorMessage::Disarm(state.order_id),
        });
    }

    async fn start(&mut self, order: NewOrder) -> Result<OrderState, SagaError> {
        // A new order has nothing to load: try to create it straight away (the store refuses an
        // existing one, which is then loaded), saving a read per placement.
        if let Some(existing) = &self.snapshot {
            return Ok(existing.clone());
        }
        let Transition { next, effects } =
            saga::start_with_timeouts(order, self.deps.timeouts, self.deps.clock.now());
        let outbox = envelopes(&next, &effects);
        if !self.deps.store.create(&next, &outbox).await? {
            // It exists already (a replay, or another process placed it first): that one wins.
            self.snapshot = None;
            self.ensure_loaded(None).await?;
            return self
                .snapshot
                .clone()
                .ok_or(SagaError::UnknownOrder(self.order_id));
        }
        Self::record_metrics(None, &next);
        self.publish_status(&next);
        self.arm(&next);
        self.deps.postman.dispatch(&outbox, true);
        self.snapshot = Some(next.clone());
        Ok(next)
    }

    /// Splits a transition's messages into those committed to the outbox and the commands that
    /// only the postman carries (their receiver runs here and nothing else consumes them).
    fn split(&self, messages: Vec<Envelope>) -> (Vec<Envelope>, Vec<Envelope>) {
        messages
            .into_iter()
            .partition(|e| self.deps.postman.publishes(&e.body))
    }

    /// Sends the pending step's command again, if the order still waits on that step.
    async fn resend(&mut self, deadline: DateTime<Utc>) -> Result<(), SagaError> {
        self.ensure_loaded(None).await?;
        let Some(current) = &self.snapshot else {
            return Ok(());
        };
        if current.deadline != Some(deadline) {
            return Ok(());
        }
        let Some((body, step, _)) = saga::pending_command(current) else {
            return Ok(());
        };
        metrics::counter!(m::STEP_RESENDS, "step" => step).increment(1);
        debug!(order_id = %self.order_id, correlation_id = %current.correlation_id, step, "re-sending the pending command");
        if current.status == OrderStatus::PaymentProcessing {
            // Asked once (at recovery: the answer of a webhook may have died with the process);
            // the provider's webhook brings the outcome, and the deadline bounds the wait.
            self.answered();
        }
        let envelope = Envelope::new(
            current.order_id,
            current.correlation_id.clone(),
            self.deps.clock.now(),
            body,
        );
        self.deps.postman.dispatch([&envelope], false);
        Ok(())
    }

    async fn handle(&mut self, event: &SagaEvent) -> Result<Delivery, SagaError> {
        // Whether `snapshot` was read from the store during this call. A cached snapshot can be
        // stale when another process advanced the order, so an event is only ever dropped after
        // it was judged against a fresh read.
        let mut fresh = self.snapshot.is_none();
        let firing = match event {
            SagaEvent::DeadlinePassed { deadline } => Some(*deadline),
            _ => None,
        };
        for _ in 0..MAX_CONFLICT_RETRIES {
            self.ensure_loaded(firing).await?;
            let Some(current) = self.snapshot.as_ref() else {
                return Err(SagaError::UnknownOrder(self.order_id));
            };
            let now = self.deps.clock.now();
            let current_deadline = current.deadline;
            let current_version = current.version;
            let previous_status = current.status;
            let transition = match saga::decide(current, event, now) {
                Decision::Ignore(why) if fresh => {
                    debug!(order_id = %self.order_id, correlation_id = %current.correlation_id, event = event.name(), why, "event ignored");
                    return Ok(Delivery::Ignored(why));
                }
                Decision::Ignore(_) => {
                    self.snapshot = None;
                    fresh = true;
                    continue;
                }
                Decision::Apply(transition) => transition,
            };
            let (outbox, direct) = self.split(envelopes(&transition.next, &transition.effects));
            match self
                .deps
                .store
                .commit(current_version, &transition.next, &outbox)
                .await
            {
                Ok(()) => {
                    let before = (current_deadline, previous_status);
                    let status = self.committed(event, transition.next, before, &outbox, &direct);
                    return Ok(Delivery::Applied(status));
                }
                Err(StoreError::VersionConflict { expected }) => {
                    metrics::counter!(m::SNAPSHOT_CONFLICTS).increment(1);
                    debug!(order_id = %self.order_id, correlation_id = %transition.next.correlation_id, expected, "snapshot moved on elsewhere; reloading");
                    self.snapshot = None;
                    fresh = true;
                }
                Err(other) => {
                    // Whether the commit landed is unknown: reload before the next decision.
                    self.snapshot = None;
                    return Err(other.into());
                }
            }
        }
        Err(SagaError::Store(StoreError::Unavailable(
            "too many concurrent writers for one order".into(),
        )))
    }

    /// What follows a committed transition, in this order: metrics, status watchers, timers,
    /// then its messages leave (never before the commit). Returns the new status.
    fn committed(
        &mut self,
        event: &SagaEvent,
        next: OrderState,
        (previous_deadline, previous_status): (Option<DateTime<Utc>>, OrderStatus),
        outbox: &[Envelope],
        direct: &[Envelope],
    ) -> OrderStatus {
        let status = next.status;
        debug!(
            order_id = %self.order_id,
            correlation_id = %next.correlation_id,
            event = event.name(),
            status = status.as_str(),
            version = next.version,
            "transition committed"
        );
        Self::record_metrics(self.snapshot.as_ref(), &next);
        self.publish_status(&next);
        if next.deadline != previous_deadline {
            self.arm(&next);
        } else if status == OrderStatus::PaymentProcessing
            && previous_status != OrderStatus::PaymentProcessing
        {
            // The charge was accepted: its outcome comes by webhook, not by asking.
            self.answered();
        }
        self.deps
            .postman
            .dispatch(outbox.iter().chain(direct), true);
        self.snapshot = Some(next);
        status
    }

    /// Counts what a committed transition means for the saga metrics.
    fn record_metrics(previous: Option<&OrderState>, next: &OrderState) {
        match previous {
            None => metrics::counter!(m::SAGA_STARTED).increment(1),
            Some(before) => {
                let step = step_of(before);
                if step != step_of(next) {
                    let seconds = (next.updated_at - step_started_at(before))
                        .num_microseconds()
                        .unwrap_or(0) as f64
                        / 1e6;
                    metrics::histogram!(m::STEP_DURATION, "step" => step).record(seconds.max(0.0));
                }
                if before.compensation.is_none() && next.compensation.is_some() {
                    metrics::counter!(m::SAGA_COMPENSATED).increment(1);
                }
                if !before.is_terminal() && next.is_terminal() {
                    let name = if next.status == OrderStatus::Completed {
                        m::SAGA_COMPLETED
                    } else {
                        m::SAGA_FAILED
                    };
                    metrics::counter!(name).increment(1);
                    let seconds =
                        (next.updated_at - next.created_at).num_milliseconds() as f64 / 1000.0;
                    metrics::histogram!(m::SAGA_DURATION).record(seconds.max(0.0));
                }
            }
        }
    }

    fn publish_status(&self, next: &OrderState) {
        if next.is_terminal() {
            debug!(
                order_id = %next.order_id,
                correlation_id = %next.correlation_id,
                status = next.status.as_str(),
                reason = next.cancel_reason.as_deref().unwrap_or(""),
                "order finished"
            );
        }
        self.deps.status_watchers.publish(next);
    }
}

/// The step a saga is in, as the `step` label of the step metrics.
pub(crate) fn step_of(state: &OrderState) -> &'static str {
    match (state.status, &state.compensation) {
        (OrderStatus::Completed | OrderStatus::Cancelled, _) => "finished",
        (_, Some(_)) => "compensation",
        (OrderStatus::Pending, None) => "inventory",
        (OrderStatus::StockReserved | OrderStatus::PaymentProcessing, None) => "payment",
    }
}

/// When the saga entered its current step.
fn step_started_at(state: &OrderState) -> DateTime<Utc> {
    match (state.status, &state.compensation) {
        (_, Some(compensation)) => compensation.started_at,
        (OrderStatus::StockReserved | OrderStatus::PaymentProcessing, None) => state
            .history
            .iter()
            .rev()
            .find(|h| h.status == OrderStatus::StockReserved)
            .map_or(state.created_at, |h| h.at),
        _ => state.created_at,
    }
}

/// Wraps each effect in an envelope stamped with the order's ids and the transition time.
fn envelopes(next: &OrderState, effects: &[Effect]) -> Vec<Envelope> {
    effects
        .iter()
        .map(|Effect::Publish(body)| {
            Envelope::new(
                next.order_id,
                next.correlation_id.clone(),
                next.updated_at,
                body.clone(),
            )
        })
        .collect()
}
