//! A typed front door to the order supervisor for the adapters (HTTP, NATS consumers), so they
//! never build actor messages or deal with reply ports themselves.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use super::saga_actor::{LiveOrder, OrderSagaMessage};
use super::supervisor::SupervisorMessage;
use super::{Delivery, SagaError};
use crate::domain::OrderId;
use crate::metrics as m;
use crate::saga::{NewOrder, OrderState, SagaEvent};

#[derive(Clone)]
pub struct OrderSupervisorHandle {
    supervisor: ActorRef<SupervisorMessage>,
    /// Upper bound on one call, covering the actor's store round-trips.
    timeout: Duration,
}

impl OrderSupervisorHandle {
    pub fn new(supervisor: ActorRef<SupervisorMessage>, timeout: Duration) -> Self {
        Self {
            supervisor,
            timeout,
        }
    }

    pub fn actor(&self) -> &ActorRef<SupervisorMessage> {
        &self.supervisor
    }

    pub async fn place(&self, order: NewOrder) -> Result<OrderState, SagaError> {
        let order_id = order.order_id;
        m::mailbox_enqueued(m::ORDER_SUPERVISOR);
        let build = move |reply: RpcReplyPort<Result<OrderState, SagaError>>| {
            SupervisorMessage::Route(order_id, OrderSagaMessage::Start(order, reply))
        };
        match self.supervisor.call(build, Some(self.timeout)).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(SagaError::ActorUnavailable("timed out".into())),
            Ok(CallResult::SenderError) => Err(SagaError::ActorUnavailable(
                "the order actor stopped before answering".into(),
            )),
            Err(e) => {
                // Never delivered: it is not waiting in the mailbox.
                m::mailbox_dequeued(m::ORDER_SUPERVISOR);
                Err(SagaError::ActorUnavailable(e.to_string()))
            }
        }
    }

    pub async fn deliver(
        &self,
        order_id: OrderId,
        event: SagaEvent,
    ) -> Result<Delivery, SagaError> {
        self.enqueue(order_id, event).await
    }

    /// Enqueues the event *now* (so events enqueued one after another reach the order's actor in
    /// that order) and returns a future for the answer.
    pub fn enqueue(
        &self,
        order_id: OrderId,
        event: SagaEvent,
    ) -> impl Future<Output = Result<Delivery, SagaError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply: RpcReplyPort<Result<Delivery, SagaError>> = tx.into();
        m::mailbox_enqueued(m::ORDER_SUPERVISOR);
        let sent = self
            .supervisor
            .send_message(SupervisorMessage::Route(
                order_id,
                OrderSagaMessage::Handle(event, reply),
            ))
            .map_err(|e| {
                m::mailbox_dequeued(m::ORDER_SUPERVISOR);
                SagaError::ActorUnavailable(e.to_string())
            });
        let timeout = self.timeout;
        async move {
            sent?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(SagaError::ActorUnavailable(
                    "the order actor stopped before answering".into(),
                )),
                Err(_) => Err(SagaError::ActorUnavailable("timed out".into())),
            }
        }
    }

    pub async fn live_orders(&self) -> Result<usize, SagaError> {
        self.call(SupervisorMessage::LiveOrders).await
    }

    /// The in-memory state of the order's actor, if one is live.
    pub async fn inspect(&self, order_id: OrderId) -> Result<Option<LiveOrder>, SagaError> {
        self.call(move |reply| SupervisorMessage::InspectOrder(order_id, reply))
            .await
    }

    pub async fn overview(&self) -> Result<super::supervisor::SupervisorOverview, SagaError> {
        self.call(SupervisorMessage::Overview).await
    }

    pub async fn armed_timers(&self) -> Result<usize, SagaError> {
        self.call(SupervisorMessage::ArmedTimers).await
    }

    /// Crash recovery at start-up: arms the timers of live sagas and re-sends their pending
    /// commands (see `SupervisorMessage::Recover`).
    pub fn recover(
        &self,
        timers: Vec<(OrderId, chrono::DateTime<chrono::Utc>)>,
    ) -> Result<(), SagaError> {
        self.supervisor
            .send_message(SupervisorMessage::Recover(timers))
            .map_err(|e| SagaError::ActorUnavailable(e.to_string()))
    }

    /// Gives up the orders `gone` selects: their actors stop and their timers are dropped.
    pub async fn relinquish(
        &self,
        gone: super::supervisor::OrderFilter,
    ) -> Result<usize, SagaError> {
        self.call(move |reply| SupervisorMessage::Relinquish(gone, reply))
            .await
    }

    async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMessage,
    ) -> Result<T, SagaError> {
        match self.supervisor.call(build, Some(self.timeout)).await {
            Ok(CallResult::Success(value)) => Ok(value),
            Ok(CallResult::Timeout) => Err(SagaError::ActorUnavailable("timed out".into())),
            Ok(CallResult::SenderError) => Err(SagaError::ActorUnavailable(
                "the order actor stopped before answering".into(),
            )),
            Err(e) => Err(SagaError::ActorUnavailable(e.to_string())),
        }
    }
}
