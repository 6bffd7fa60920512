//! The order supervisor: routes each message to its order's saga actor, spawning (and thereby
//! rehydrating) one when none is live, and forgets actors that stop or crash. A crashed saga is
//! "restarted" lazily: the next message for that order spawns a fresh actor that reloads the last
//! committed snapshot, which is exactly the state the crash could not have corrupted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SupervisionEvent,
};
use tracing::{error, warn};

use super::deadline_timers::DeadlineTimers;
use super::saga_actor::{LiveOrder, OrderSagaActor, OrderSagaMessage};
use super::{SagaDeps, SagaError};
use crate::domain::OrderId;
use crate::metrics as m;
use crate::ports::StoreError;
use crate::saga::SagaEvent;

pub struct OrderSupervisor;

pub enum SupervisorMessage {
    Route(OrderId, OrderSagaMessage),
    /// Number of order actors currently alive (for inspection and tests of passivation).
    LiveOrders(RpcReplyPort<usize>),
    /// Deliver `DeadlinePassed` to the order when its deadline comes, instead of any deadline it
    /// had (sent by saga actors after each commit, and in bulk at start-up for every live order:
    /// crash recovery).
    Arm(Vec<(OrderId, DateTime<Utc>)>),
    /// Crash recovery: like `Arm`, and each order's pending command is re-sent soon (at a
    /// bounded rate), since its answer may have been lost with the previous process.
    Recover(Vec<(OrderId, DateTime<Utc>)>),
    /// The order waits for no deadline any more (it finished, or an operator paused it).
    Disarm(OrderId),
    /// The order's pending command was answered but its step goes on (a payment in processing
    /// waits for the provider's webhook): stop re-sending until its next deadline.
    Answered(OrderId),
    /// A timer whose handling failed (the store was down): fire it again a little later.
    RetryTimer(OrderId, DateTime<Utc>),
    /// Number of armed timers (inspection, tests).
    ArmedTimers(RpcReplyPort<usize>),
    /// The in-memory state of a live order actor; `None` if the order has no live actor.
    InspectOrder(OrderId, RpcReplyPort<Option<LiveOrder>>),
    /// Figures about the supervisor itself.
    Overview(RpcReplyPort<SupervisorOverview>),
    /// The instance gave up these orders (their partitions moved to another instance): stop
    /// their actors and drop their timers; answers how many actors were stopped.
    Relinquish(OrderFilter, RpcReplyPort<usize>),
    /// Periodic: fire due timers.
    Tick,
}

/// Which orders a `Relinquish` gives up.
pub type OrderFilter = Arc<dyn Fn(OrderId) -> bool + Send + Sync>;

/// What `GET /actors` shows about the order supervisor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SupervisorOverview {
    pub live_order_actors: usize,
    pub armed_timers: usize,
    pub next_timer: Option<DateTime<Utc>>,
    pub restarts: u64,
}

/// How often due timers are checked: the resolution of step timeouts.
const TICK: Duration = Duration::from_millis(100);

/// Most re-sends per tick. After a crash every live saga re-sends at once; this spreads them
/// (5,000 a second) so that recovery leaves room for new placements.
const RESENDS_PER_TICK: usize = 500;

/// A live order actor and the number of messages waiting in its mailbox (ractor does not
/// expose mailbox lengths, so the supervisor counts what it routes and the actor what it takes).
struct Child {
    actor: ActorRef<OrderSagaMessage>,
    queued: Arc<AtomicUsize>,
}

pub struct SupervisorState {
    deps: SagaDeps,
    children: HashMap<OrderId, Child>,
    owners: HashMap<ActorId, OrderId>,
    restarts: u64,
    /// The deadline each live order waits for.
    deadlines: DeadlineTimers,
}

impl Actor for OrderSupervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SagaDeps;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        deps: SagaDeps,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(TICK, || SupervisorMessage::Tick);
        Ok(SupervisorState {
            deps,
            children: HashMap::new(),
            owners: HashMap::new(),
            restarts: 0,
            deadlines: DeadlineTimers::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Route(order_id, msg) => {
                m::mailbox_dequeued(m::ORDER_SUPERVISOR);
                state.route(&myself, order_id, msg).await
            }
            SupervisorMessage::LiveOrders(reply) => {
                let _ = reply.send(state.children.len());
            }
            SupervisorMessage::Arm(timers) => state.arm(timers),
            SupervisorMessage::Recover(timers) => state.recover(timers),
            SupervisorMessage::Disarm(order) => state.deadlines.disarm(order),
            SupervisorMessage::Answered(order) => state.deadlines.answered(order),
            SupervisorMessage::RetryTimer(order, deadline) => {
                let retry_at = state.deps.clock.now() + chrono::Duration::seconds(1);
                state.deadlines.retry(order, deadline, retry_at);
            }
            SupervisorMessage::ArmedTimers(reply) => {
                let _ = reply.send(state.deadlines.len());
            }
            SupervisorMessage::InspectOrder(order_id, reply) => state.inspect(order_id, reply),
            SupervisorMessage::Overview(reply) => {
                let _ = reply.send(SupervisorOverview {
                    live_order_actors: state.children.len(),
                    armed_timers: state.deadlines.len(),
                    next_timer: state.deadlines.next(),
                    restarts: state.restarts,
                });
            }
            SupervisorMessage::Relinquish(gone, reply) => {
                let stopped = state.relinquish(gone.as_ref());
                let _ = reply.send(stopped);
            }
            SupervisorMessage::Tick => state.tick(&myself).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Unlike ractor's default, a child's death must never take the supervisor down.
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state.restarts += 1;
                metrics::counter!(m::ACTOR_RESTARTS, "actor" => m::ORDER_SAGA).increment(1);
                if let Some(order_id) = state.forget(cell.get_id()) {
                    error!(%order_id, error = %err, "order actor crashed; it will rehydrate from its snapshot on the next message");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    /// Arms the timers of transitions just committed, and the first re-send of each new step.
    fn arm(&mut self, timers: Vec<(OrderId, DateTime<Utc>)>) {
        let now = self.deps.clock.now();
        for (order, deadline) in timers {
            if self.deadlines.arm(order, deadline) {
                self.schedule_resend(order, deadline, now, 1);
            }
        }
    }

    /// Arms the timers of recovered sagas, and a re-send of each one's pending command.
    fn recover(&mut self, timers: Vec<(OrderId, DateTime<Utc>)>) {
        let now = self.deps.clock.now();
        for (order, deadline) in timers {
            self.deadlines.arm(order, deadline);
            if self.deps.postman.delivers_any_locally() {
                self.deadlines.arm_resend(order, deadline, now, 1);
            }
        }
    }

    /// Asks a live actor for its state, behind what its mailbox holds; `None` if not live.
    fn inspect(&self, order_id: OrderId, reply: RpcReplyPort<Option<LiveOrder>>) {
        let Some(child) = self.children.get(&order_id) else {
            let _ = reply.send(None);
            return;
        };
        child.queued.fetch_add(1, Ordering::Relaxed);
        m::mailbox_enqueued(m::ORDER_SAGA);
        if let Err(MessagingErr::SendErr(OrderSagaMessage::Inspect(reply))) =
            child.actor.send_message(OrderSagaMessage::Inspect(reply))
        {
            child.queued.fetch_sub(1, Ordering::Relaxed);
            m::mailbox_dequeued(m::ORDER_SAGA);
            let _ = reply.send(None);
        }
    }

    /// Fires the deadlines that are due and the re-sends that are due, a bounded number a tick.
    async fn tick(&mut self, myself: &ActorRef<SupervisorMessage>) {
        let now = self.deps.clock.now();
        for (order_id, deadline) in self.deadlines.take_due(now) {
            // Nobody waits for the answer: the saga asks for a retry if it could not handle the
            // timer, and ignores a stale one.
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let event = SagaEvent::DeadlinePassed { deadline };
            self.route(myself, order_id, OrderSagaMessage::Handle(event, tx.into()))
                .await;
        }
        for (order_id, deadline, nth) in self.deadlines.take_due_resends(now, RESENDS_PER_TICK) {
            self.schedule_resend(order_id, deadline, now, nth + 1);
            self.route(myself, order_id, OrderSagaMessage::Resend { deadline })
                .await;
        }
    }

    /// Schedules the `nth` re-send of the order's pending command, when some command of a saga
    /// is handed over in this process (a broker's durable consumer redelivers the others).
    fn schedule_resend(
        &mut self,
        order: OrderId,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
        nth: u32,
    ) {
        if self.deps.postman.delivers_any_locally() {
            let at = now + self.deps.resend.delay(order, nth);
            self.deadlines.arm_resend(order, deadline, at, nth);
        }
    }

    /// Stops the actors and drops the timers of the orders `gone` selects. An actor stops after
    /// the message it is handling, whose commit has either landed or not: the next owner
    /// recovers from whichever snapshot is there.
    fn relinquish(&mut self, gone: &(dyn Fn(OrderId) -> bool + Send + Sync)) -> usize {
        let leaving: Vec<OrderId> = self.children.keys().copied().filter(|o| gone(*o)).collect();
        for order_id in &leaving {
            if let Some(child) = self.children.get(order_id) {
                self.owners.remove(&child.actor.get_id());
                child
                    .actor
                    .stop(Some("its partition moved to another instance".into()));
            }
            self.remove_child(*order_id);
        }
        self.deadlines.disarm_where(gone);
        leaving.len()
    }

    fn forget(&mut self, actor: ActorId) -> Option<OrderId> {
        let order_id = self.owners.remove(&actor)?;
        if self
            .children
            .get(&order_id)
            .is_some_and(|c| c.actor.get_id() == actor)
        {
            self.remove_child(order_id);
        }
        Some(order_id)
    }

    /// Drops a child; messages still counted in its mailbox died with it.
    fn remove_child(&mut self, order_id: OrderId) {
        if let Some(child) = self.children.remove(&order_id) {
            let lost = child.queued.swap(0, Ordering::Relaxed);
            if lost > 0 {
                metrics::gauge!(m::MAILBOX_DEPTH, "actor" => m::ORDER_SAGA).decrement(lost as f64);
            }
        }
        metrics::gauge!(m::ORDER_ACTORS_LIVE).set(self.children.len() as f64);
    }

    async fn route(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        order_id: OrderId,
        msg: OrderSagaMessage,
    ) {
        let mut msg = msg;
        if !self.children.contains_key(&order_id)
            && let Some(ownership) = &self.deps.ownership
            && !ownership.owns_order(order_id)
        {
            // Another instance owns it (or nobody does, for a moment): its owner re-drives it
            // from the snapshot, and a second actor here would only race it.
            let owned_elsewhere = format!("order {order_id} is run by another instance");
            return refuse(msg, SagaError::Store(StoreError::NotOwner(owned_elsewhere)));
        }
        // Two rounds: the cached actor may have stopped since we last looked.
        for _ in 0..2 {
            let (child, queued) = match self.children.get(&order_id) {
                Some(child) => (child.actor.clone(), child.queued.clone()),
                None => match self.spawn(myself, order_id).await {
                    Ok(child) => child,
                    Err(reason) => return fail(msg, reason),
                },
            };
            queued.fetch_add(1, Ordering::Relaxed);
            m::mailbox_enqueued(m::ORDER_SAGA);
            match child.send_message(msg) {
                Ok(()) => return,
                Err(MessagingErr::SendErr(back)) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    m::mailbox_dequeued(m::ORDER_SAGA);
                    self.owners.remove(&child.get_id());
                    self.remove_child(order_id);
                    msg = back;
                }
                Err(other) => {
                    warn!(%order_id, error = %other, "order actor unreachable");
                    return;
                }
            }
        }
        fail(msg, "order actor kept stopping".into());
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        order_id: OrderId,
    ) -> Result<(ActorRef<OrderSagaMessage>, Arc<AtomicUsize>), String> {
        let queued = Arc::new(AtomicUsize::new(0));
        let (child, _join) = Actor::spawn_linked(
            None,
            OrderSagaActor,
            (order_id, self.deps.clone(), queued.clone()),
            myself.get_cell(),
        )
        .await
        .map_err(|e| e.to_string())?;
        self.owners.insert(child.get_id(), order_id);
        self.children.insert(
            order_id,
            Child {
                actor: child.clone(),
                queued: queued.clone(),
            },
        );
        metrics::gauge!(m::ORDER_ACTORS_LIVE).set(self.children.len() as f64);
        Ok((child, queued))
    }
}

/// Answers the caller of a message that could not be delivered, so nobody waits for a timeout.
fn fail(msg: OrderSagaMessage, reason: String) {
    refuse(msg, SagaError::ActorUnavailable(reason));
}

/// Answers the caller of a message with `error`.
fn refuse(msg: OrderSagaMessage, error: SagaError) {
    match msg {
        OrderSagaMessage::Start(_, reply) => {
            let _ = reply.send(Err(error));
        }
        OrderSagaMessage::Handle(_, reply) => {
            let _ = reply.send(Err(error));
        }
        OrderSagaMessage::Inspect(reply) => {
            let _ = reply.send(None);
        }
        OrderSagaMessage::Resend { .. } => {}
    }
}
