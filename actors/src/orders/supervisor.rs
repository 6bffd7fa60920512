//! The order supervisor: routes each message to its order's saga actor, spawning (and thereby
//! rehydrating) one when none is live, and forgets actors that stop or crash. A crashed saga is
//! "restarted" lazily: the next message for that order spawns a fresh actor that reloads the last
//! committed snapshot, which is exactly the state the crash could not have corrupted.

use std::collections::HashMap;

use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SupervisionEvent,
};
use tracing::{error, warn};

use super::saga_actor::{OrderSagaActor, OrderSagaMessage};
use super::{SagaDeps, SagaError};
use crate::domain::OrderId;

pub struct OrderSupervisor;

pub enum SupervisorMessage {
    Route(OrderId, OrderSagaMessage),
    /// Number of order actors currently alive (for inspection and tests of passivation).
    LiveOrders(RpcReplyPort<usize>),
}

pub struct SupervisorState {
    deps: SagaDeps,
    children: HashMap<OrderId, ActorRef<OrderSagaMessage>>,
    owners: HashMap<ActorId, OrderId>,
    restarts: u64,
}

impl Actor for OrderSupervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SagaDeps;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        deps: SagaDeps,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            deps,
            children: HashMap::new(),
            owners: HashMap::new(),
            restarts: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Route(order_id, msg) => state.route(&myself, order_id, msg).await,
            SupervisorMessage::LiveOrders(reply) => {
                let _ = reply.send(state.children.len());
            }
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
    fn forget(&mut self, actor: ActorId) -> Option<OrderId> {
        let order_id = self.owners.remove(&actor)?;
        if self
            .children
            .get(&order_id)
            .is_some_and(|c| c.get_id() == actor)
        {
            self.children.remove(&order_id);
        }
        Some(order_id)
    }

    async fn route(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        order_id: OrderId,
        msg: OrderSagaMessage,
    ) {
        let mut msg = msg;
        // Two rounds: the cached actor may have stopped since we last looked.
        for _ in 0..2 {
            let child = match self.children.get(&order_id) {
                Some(child) => child.clone(),
                None => match self.spawn(myself, order_id).await {
                    Ok(child) => child,
                    Err(reason) => return fail(msg, reason),
                },
            };
            match child.send_message(msg) {
                Ok(()) => return,
                Err(MessagingErr::SendErr(back)) => {
                    self.children.remove(&order_id);
                    self.owners.remove(&child.get_id());
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
    ) -> Result<ActorRef<OrderSagaMessage>, String> {
        let (child, _join) = Actor::spawn_linked(
            None,
            OrderSagaActor,
            (order_id, self.deps.clone()),
            myself.get_cell(),
        )
        .await
        .map_err(|e| e.to_string())?;
        self.owners.insert(child.get_id(), order_id);
        self.children.insert(order_id, child.clone());
        Ok(child)
    }
}

/// Answers the caller of a message that could not be delivered, so nobody waits for a timeout.
fn fail(msg: OrderSagaMessage, reason: String) {
    match msg {
        OrderSagaMessage::Start(_, reply) => {
            let _ = reply.send(Err(SagaError::ActorUnavailable(reason)));
        }
        OrderSagaMessage::Handle(_, reply) => {
            let _ = reply.send(Err(SagaError::ActorUnavailable(reason)));
        }
    }
}
