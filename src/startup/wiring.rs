//! What every role's start-up shares: the connections, the clock, the task set the application
//! supervises, the postman; and the one way a role runs a durable consumer.
//!
//! A role module takes a `Wiring`, starts its actors and tasks in it, and hands back what the
//! HTTP layer needs; `Application::build` is the composition of those calls.

use std::future::Future;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use actors::events::Envelope;
use actors::orders::StatusWatchers;
use actors::ports::{SharedClock, SystemClock};
use actors::postman::Postman;
use actors::saga::SagaEvent;
use adapters::nats::{
    self as bus, ConsumerContext, ConsumerSpec, DeliveryCount, HandlerError, MessageHandler,
    RetryPolicy,
};
use adapters::postgres::OutboxSignal;

use super::StartupError;
use crate::configuration::Settings;

/// The application's long-running tasks: each ends with its name and how it ended.
pub(crate) type Tasks = JoinSet<(&'static str, Result<(), String>)>;

pub(crate) struct Wiring<'a> {
    pub settings: &'a Settings,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub signal: OutboxSignal,
    pub clock: SharedClock,
    pub status_watchers: StatusWatchers,
    pub postman: Postman,
    pub shutdown: CancellationToken,
    pub tasks: Tasks,
}

impl<'a> Wiring<'a> {
    /// Nothing started yet: the roles add their actors and tasks.
    pub fn new(
        settings: &'a Settings,
        pool: PgPool,
        nats: async_nats::Client,
        js: async_nats::jetstream::Context,
    ) -> Self {
        Self {
            settings,
            pool,
            nats,
            js,
            signal: OutboxSignal::new(),
            clock: Arc::new(SystemClock),
            status_watchers: StatusWatchers::default(),
            postman: Postman::new(
                settings.max_commands_in_flight as usize,
                settings.payment_concurrency as usize,
            ),
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Runs `task` until the application stops; `name` says which task ended, if one does.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), String>> + Send + 'static,
    ) {
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Runs a durable consumer. It is created now, so a misconfigured server fails the start
    /// rather than some later moment.
    pub async fn consume(
        &mut self,
        spec: ConsumerSpec,
        policy: RetryPolicy,
        handler: MessageHandler,
    ) -> Result<(), StartupError> {
        let context = ConsumerContext {
            js: self.js.clone(),
            policy,
            pool: self.pool.clone(),
        };
        bus::ensure_consumer(&context.js, &spec, &context.policy).await?;
        let token = self.shutdown.clone();
        self.spawn(spec.durable, async move {
            bus::run_consumer(context, spec, handler, token).await;
            Ok(())
        });
        Ok(())
    }
}

/// A consumer handler for a role's commands: `answer` handles one, and its answer (if the saga
/// waits for one) goes to the order's actor when the order role runs here. When it does not,
/// the answer's outbox row reaches it through the broker.
pub(crate) fn answering<F, Fut, E>(postman: &Postman, answer: F) -> MessageHandler
where
    F: Fn(Envelope, DeliveryCount) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<SagaEvent>, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let postman = postman.clone();
    let answer = Arc::new(answer);
    Arc::new(move |envelope: Envelope, delivery: DeliveryCount| {
        let order_id = envelope.order_id;
        let (postman, reply) = (postman.clone(), answer(envelope, delivery));
        Box::pin(async move {
            match reply.await {
                Ok(Some(event)) => {
                    postman.answer_order(order_id, event);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(HandlerError::Retry(e.to_string())),
            }
        })
    })
}
