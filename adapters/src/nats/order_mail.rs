//! Mail to the owner of an order's partition, for an answer that reaches an instance which does
//! not own the order (a Stripe webhook that arrived here, a stock answer for another instance's
//! order).
//!
//! Core NATS, not JetStream: one subject per partition (`ordersaga.mail.orders.<partition>`),
//! listened to by the partition's owner only while it owns it. Nothing needs the broker to keep
//! a letter: the saga that waits for the answer re-sends its command until answered, and its
//! deadline ends the wait, so a letter lost during a hand-off costs a re-send, never an order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::Client;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use actors::cluster::{PartitionCount, PartitionId};
use actors::domain::OrderId;
use actors::ports::OrderMail;
use actors::saga::SagaEvent;

/// The subject of a partition's mail.
pub fn order_mail_subject(partition: PartitionId) -> String {
    format!("ordersaga.mail.orders.{partition}")
}

#[derive(Serialize, Deserialize)]
struct Letter {
    order_id: OrderId,
    event: SagaEvent,
}

/// Posts answers to the owners of their orders' partitions.
pub struct NatsOrderMail {
    client: Client,
    count: PartitionCount,
}

impl NatsOrderMail {
    pub fn new(client: Client, count: PartitionCount) -> Self {
        Self { client, count }
    }
}

impl OrderMail for NatsOrderMail {
    fn post(&self, order_id: OrderId, event: SagaEvent) {
        let subject = order_mail_subject(self.count.of_order(order_id));
        let payload = match serde_json::to_vec(&Letter { order_id, event }) {
            Ok(payload) => payload,
            Err(e) => {
                warn!(%order_id, error = %e, "cannot encode a letter to the order's owner");
                return;
            }
        };
        let client = self.client.clone();
        // Publishing only queues the bytes for the connection's writer; it waits when that
        // queue is full, which the caller (an actor or a consumer) must not.
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, payload.into()).await {
                warn!(%order_id, error = %e, "cannot post to the order's owner; its saga re-sends");
            }
        });
    }
}

/// Where this instance listens for the mail of the order partitions it owns: one subscription
/// per partition, opened when the partition is gained and closed when it is given up.
#[derive(Clone)]
pub struct OrderMailbox {
    client: Client,
    deliver: Arc<dyn Fn(OrderId, SagaEvent) + Send + Sync>,
    listening: Arc<Mutex<HashMap<PartitionId, tokio::task::JoinHandle<()>>>>,
}

impl OrderMailbox {
    /// `deliver` hands a letter to the order's actor.
    pub fn new(client: Client, deliver: Arc<dyn Fn(OrderId, SagaEvent) + Send + Sync>) -> Self {
        Self {
            client,
            deliver,
            listening: Arc::default(),
        }
    }

    /// Starts listening to `partitions`' mail (before their sagas are recovered, so no answer to
    /// a recovered saga's re-send is missed).
    pub async fn open(&self, partitions: &[PartitionId]) -> Result<(), String> {
        for partition in partitions {
            let subject = order_mail_subject(*partition);
            let mut letters = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| format!("subscribe {subject}: {e}"))?;
            let deliver = self.deliver.clone();
            let task = tokio::spawn(async move {
                while let Some(message) = letters.next().await {
                    match serde_json::from_slice::<Letter>(&message.payload) {
                        Ok(letter) => deliver(letter.order_id, letter.event),
                        Err(e) => debug!(%subject, error = %e, "unreadable letter dropped"),
                    }
                }
            });
            if let Some(old) = lock(&self.listening).insert(*partition, task) {
                old.abort();
            }
        }
        Ok(())
    }

    /// Stops listening to `partitions`' mail (dropping the subscription unsubscribes).
    pub fn close(&self, partitions: &[PartitionId]) {
        let mut listening = lock(&self.listening);
        for partition in partitions {
            if let Some(task) = listening.remove(partition) {
                task.abort();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
