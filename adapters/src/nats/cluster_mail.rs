//! Mail between the instances of a cluster, to the owner of a key's partition: an answer for an
//! order that another instance owns (a Stripe webhook that arrived here, a stock answer from
//! this instance's shard), an inventory command for a SKU that another instance owns.
//!
//! Core NATS, not JetStream: one subject per partition and key space
//! (`ordersaga.mail.orders.<partition>`, `ordersaga.mail.skus.<partition>`), listened to by the
//! partition's owner only while it owns it. Nothing needs the broker to keep a letter: the saga
//! that waits for an answer re-sends its command until answered and its deadline ends the wait,
//! so a letter lost during a hand-off costs a re-send, never an order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::Client;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use actors::cluster::{KeySpace, PartitionCount, PartitionId};
use actors::domain::{OrderId, Sku};
use actors::events::Envelope;
use actors::ports::ClusterMail;
use actors::saga::SagaEvent;

/// The subject of a partition's mail in `space`.
pub fn mail_subject(space: KeySpace, partition: PartitionId) -> String {
    format!("ordersaga.mail.{}.{partition}", space.as_str())
}

/// An answer on its way to the order's owner.
#[derive(Serialize, Deserialize)]
struct Letter {
    order_id: OrderId,
    event: SagaEvent,
}

/// Reads an answer posted to an order partition's mail.
pub fn read_answer(bytes: &[u8]) -> Option<(OrderId, SagaEvent)> {
    serde_json::from_slice::<Letter>(bytes)
        .ok()
        .map(|l| (l.order_id, l.event))
}

/// Posts to the owners of the partitions this instance does not own.
pub struct NatsClusterMail {
    client: Client,
    count: PartitionCount,
}

impl NatsClusterMail {
    pub fn new(client: Client, count: PartitionCount) -> Self {
        Self { client, count }
    }

    fn post(&self, subject: String, payload: Vec<u8>, order_id: OrderId) {
        let client = self.client.clone();
        // Publishing only queues the bytes for the connection's writer; it waits when that
        // queue is full, which the caller (an actor or a consumer) must not.
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, payload.into()).await {
                warn!(%order_id, error = %e, "cannot post to a partition's owner; the saga re-sends");
            }
        });
    }
}

impl ClusterMail for NatsClusterMail {
    fn to_order_owner(&self, order_id: OrderId, event: SagaEvent) {
        let subject = mail_subject(KeySpace::Orders, self.count.of_order(order_id));
        match serde_json::to_vec(&Letter { order_id, event }) {
            Ok(payload) => self.post(subject, payload, order_id),
            Err(e) => warn!(%order_id, error = %e, "cannot encode a letter to the order's owner"),
        }
    }

    fn to_sku_owner(&self, sku: &Sku, command: &Envelope) {
        let subject = mail_subject(KeySpace::Skus, self.count.of_sku(sku));
        self.post(subject, command.to_json(), command.order_id);
    }
}

/// Takes one letter's bytes (and drops what it cannot read).
pub type Deliver = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Takes one message as it came (requests need their reply subject and headers).
pub type Receive = Arc<dyn Fn(async_nats::Message) + Send + Sync>;

/// Where this instance listens to the partitions it owns in one key space: one subscription per
/// partition, opened when the partition is gained and closed when it is given up. Mail uses it
/// (`mail_subject`), and so do the HTTP requests forwarded to a partition's owner.
#[derive(Clone)]
pub struct PartitionMailbox {
    client: Client,
    space: KeySpace,
    subject: fn(KeySpace, PartitionId) -> String,
    receive: Receive,
    listening: Arc<Listening>,
}

/// The subscription task of each partition listened to. When the last clone of the mailbox goes
/// (its process stops, or a test's instance is dropped as if it crashed), they all stop.
#[derive(Default)]
struct Listening(Mutex<HashMap<PartitionId, tokio::task::JoinHandle<()>>>);

impl Drop for Listening {
    fn drop(&mut self) {
        for task in lock(&self.0).values() {
            task.abort();
        }
    }
}

impl PartitionMailbox {
    /// The partitions' mail; `deliver` takes each letter's bytes (and drops what it cannot read).
    pub fn new(client: Client, space: KeySpace, deliver: Deliver) -> Self {
        Self::listening_to(
            client,
            space,
            mail_subject,
            Arc::new(move |message| deliver(&message.payload)),
        )
    }

    /// The partitions' messages on `subject(space, partition)`, each given to `receive`.
    pub fn listening_to(
        client: Client,
        space: KeySpace,
        subject: fn(KeySpace, PartitionId) -> String,
        receive: Receive,
    ) -> Self {
        Self {
            client,
            space,
            subject,
            receive,
            listening: Arc::default(),
        }
    }

    /// Starts listening to `partitions`' mail (before their work is recovered, so no answer to
    /// a recovered saga's re-send is missed).
    pub async fn open(&self, partitions: &[PartitionId]) -> Result<(), String> {
        for partition in partitions {
            let subject = (self.subject)(self.space, *partition);
            let mut letters = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| format!("subscribe {subject}: {e}"))?;
            let receive = self.receive.clone();
            let task = tokio::spawn(async move {
                while let Some(message) = letters.next().await {
                    receive(message);
                }
                debug!(%subject, "mail subscription ended");
            });
            if let Some(old) = lock(&self.listening.0).insert(*partition, task) {
                old.abort();
            }
        }
        Ok(())
    }

    /// Stops listening to `partitions`' mail (dropping the subscription unsubscribes).
    pub fn close(&self, partitions: &[PartitionId]) {
        let mut listening = lock(&self.listening.0);
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
