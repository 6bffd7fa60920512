//! The postman: carries a saga's commands to the actor that owns their key, and the answers back
//! to the order's actor, without a broker when both run in this process.
//!
//! Commands are addressed by key: a reservation, commit or release to the inventory shard that
//! owns the order's smallest SKU (`InventoryShards` routes inside the role), a charge to the
//! payment role, an answer to the actor that owns the order id. Each role this process runs is
//! registered here once, at start-up. A command for a registered role is handed to it directly:
//! a mailbox message, no JSON, no outbox round trip, no broker. A command for a role this process
//! does not run is left alone: it is also an outbox row (the saga commits its commands with its
//! transition), which the relay publishes to JetStream, where the process running that role takes
//! it from its durable consumer, and answers the same way. So locality is decided by the wiring,
//! and neither the saga nor the receivers know which path a message took. When key ranges get
//! owners among N instances, only the question "is this key's owner here?" changes.
//!
//! The postman guarantees nothing about delivery: the saga does. A saga commits its transition
//! before its commands leave, and re-sends the command of its pending step until the answer
//! comes (`orders::ResendPolicy`), also after a crash; receivers answer a repeated command from
//! what they decided the first time. A command already being handled here is not handed over a
//! second time (a re-send that overtakes a slow answer), which also bounds the work in flight to
//! one command per order and step.
//!
//! Backpressure: the commands in flight are counted per receiver (`postman_in_flight`), and
//! `saturated()` tells the HTTP edge to refuse new placements while they exceed the bound, so a
//! receiver that falls behind (a slow payment provider) holds orders at the door instead of in
//! memory. Charges are also handed to the payment role only so many at once: each one holds a
//! connection to the provider (two sockets when the fake runs in the process) for as long as the
//! provider takes, and a slow provider would otherwise take every file descriptor the process
//! has; the others wait their turn, counted as in flight.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Semaphore;

use tracing::{Instrument, debug, warn};

use crate::cluster::Ownership;
use crate::domain::OrderId;
use crate::events::{Envelope, EventBody, routing_sku};
use crate::inventory::InventoryShards;
use crate::orders::OrderSupervisorHandle;
use crate::payments::PaymentService;
use crate::ports::ClusterMail;
use crate::saga::SagaEvent;

/// Metric: commands handed to a receiver in this process and not answered yet.
pub const IN_FLIGHT: &str = "postman_in_flight";
/// Metric: commands and answers handed over directly, by receiver.
pub const DELIVERED: &str = "postman_delivered_total";

/// Who receives a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Receiver {
    Inventory,
    Payments,
}

impl Receiver {
    pub fn label(self) -> &'static str {
        match self {
            Receiver::Inventory => "inventory",
            Receiver::Payments => "payments",
        }
    }

    /// The receiver of a command, `None` for a message that is not one the postman carries.
    /// Refunds and charge cancellations are not carried: they are rare, nobody waits for them
    /// on an order's way to completion, and their durable consumer delivers them in every
    /// deployment.
    pub fn of(body: &EventBody) -> Option<Receiver> {
        match body {
            EventBody::OrderCreated(_)
            | EventBody::OrderConfirmed(_)
            | EventBody::OrderCancelled(_)
            | EventBody::InventoryReleaseRequested(_) => Some(Receiver::Inventory),
            EventBody::PaymentRequested(_) => Some(Receiver::Payments),
            _ => None,
        }
    }
}

/// Cheap to clone; every clone is the same postman.
#[derive(Clone)]
pub struct Postman {
    inner: Arc<Inner>,
}

struct Inner {
    orders: OnceLock<OrderSupervisorHandle>,
    /// With several instances: the order partitions owned here, and the mail to the owners of
    /// the others.
    order_owners: OnceLock<(Ownership, Arc<dyn ClusterMail>)>,
    /// With several instances: the SKU partitions owned here, and the mail to the owners of the
    /// others.
    sku_owners: OnceLock<(Ownership, Arc<dyn ClusterMail>)>,
    inventory: OnceLock<InventoryShards>,
    payments: OnceLock<PaymentService>,
    /// (order, subject) of the commands being handled now.
    in_flight: Mutex<HashSet<(OrderId, &'static str)>>,
    inventory_in_flight: AtomicUsize,
    payments_in_flight: AtomicUsize,
    /// Commands in flight (all receivers) above which `saturated()` says so.
    bound: usize,
    /// Charges being handled by the payment role at once.
    charge_slots: Arc<Semaphore>,
}

impl Default for Postman {
    /// A postman that knows no local receiver: every command takes the broker.
    fn default() -> Self {
        Self::new(usize::MAX, Self::DEFAULT_CHARGE_SLOTS)
    }
}

impl Postman {
    /// Charges handled at once when nothing else is said.
    pub const DEFAULT_CHARGE_SLOTS: usize = 1024;

    /// `bound`: commands in flight above which new work should be refused (`saturated`);
    /// `charge_slots`: charges handed to the payment role at once (at least one).
    pub fn new(bound: usize, charge_slots: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                orders: OnceLock::new(),
                order_owners: OnceLock::new(),
                sku_owners: OnceLock::new(),
                inventory: OnceLock::new(),
                payments: OnceLock::new(),
                in_flight: Mutex::new(HashSet::new()),
                inventory_in_flight: AtomicUsize::new(0),
                payments_in_flight: AtomicUsize::new(0),
                bound,
                charge_slots: Arc::new(Semaphore::new(
                    charge_slots.clamp(1, Semaphore::MAX_PERMITS),
                )),
            }),
        }
    }

    /// The order role runs here: answers go straight to the order's actor.
    pub fn serve_orders(&self, orders: OrderSupervisorHandle) {
        let _ = self.inner.orders.set(orders);
    }

    /// Answers for orders whose partition this instance does not own go to their owner through
    /// `mail`, whether or not the order role runs here.
    pub fn reach_order_owners(&self, ownership: Ownership, mail: Arc<dyn ClusterMail>) {
        let _ = self.inner.order_owners.set((ownership, mail));
    }

    /// Inventory commands whose routing SKU's partition this instance does not own go to their
    /// owner through `mail`: one shard in the cluster decides each SKU.
    pub fn reach_sku_owners(&self, ownership: Ownership, mail: Arc<dyn ClusterMail>) {
        let _ = self.inner.sku_owners.set((ownership, mail));
    }

    /// The inventory role runs here: its commands are handed to the shards.
    pub fn serve_inventory(&self, shards: InventoryShards) {
        let _ = self.inner.inventory.set(shards);
    }

    /// The payment role runs here: charges are handed to the payment service.
    pub fn serve_payments(&self, payments: PaymentService) {
        let _ = self.inner.payments.set(payments);
    }

    /// Whether commands for `receiver` are handed over here rather than through the broker.
    pub fn delivers_locally(&self, receiver: Receiver) -> bool {
        match receiver {
            Receiver::Inventory => self.inner.inventory.get().is_some(),
            Receiver::Payments => self.inner.payments.get().is_some(),
        }
    }

    /// Whether answers reach the order's actor here rather than through the broker.
    pub fn serves_orders(&self) -> bool {
        self.inner.orders.get().is_some()
    }

    /// Whether any command of a saga would be handed over here: then sagas re-send their
    /// pending commands themselves.
    pub fn delivers_any_locally(&self) -> bool {
        self.delivers_locally(Receiver::Inventory) || self.delivers_locally(Receiver::Payments)
    }

    /// Commands handed over and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.inner.inventory_in_flight.load(Ordering::Relaxed)
            + self.inner.payments_in_flight.load(Ordering::Relaxed)
    }

    /// More commands are in flight than the bound: new placements should wait.
    pub fn saturated(&self) -> bool {
        self.in_flight() > self.inner.bound
    }

    /// Hands each command among `envelopes` whose receiver runs here to it, and its answer back
    /// to the order. `first` says the commands were just committed (not a re-send): a receiver
    /// may then skip looking for an earlier answer. Returns without waiting for any answer.
    pub fn dispatch<'a>(&self, envelopes: impl IntoIterator<Item = &'a Envelope>, first: bool) {
        for envelope in envelopes {
            match Receiver::of(&envelope.body) {
                Some(Receiver::Inventory) => {
                    if let Some((ownership, mail)) = self.inner.sku_owners.get()
                        && let Some(sku) = routing_sku(&envelope.body)
                        && !ownership.owns_sku(sku)
                    {
                        metrics::counter!(DELIVERED, "receiver" => "sku_owner").increment(1);
                        mail.to_sku_owner(sku, envelope);
                    } else if let Some(shards) = self.inner.inventory.get() {
                        let (shards, env) = (shards.clone(), envelope.clone());
                        self.hand_over(Receiver::Inventory, envelope, async move {
                            shards.answer(&env).await.map_err(|e| e.to_string())
                        });
                    }
                }
                Some(Receiver::Payments) => {
                    if let Some(payments) = self.inner.payments.get() {
                        let (payments, env) = (payments.clone(), envelope.clone());
                        self.hand_over(Receiver::Payments, envelope, async move {
                            payments
                                .answer(&env, first)
                                .await
                                .map_err(|e| e.to_string())
                        });
                    }
                }
                None => {}
            }
        }
    }

    /// Whether a saga's message goes to the outbox (and on to JetStream). Every domain event
    /// does; so does every command whose receiver runs in another process. A charge request or a
    /// release request for a role that runs here is a command nobody else consumes: the postman
    /// carries it, the saga's snapshot makes it durable (re-sends), and the role's own records
    /// (`payments`, `stock_reservations`) keep what it did.
    pub fn publishes(&self, body: &EventBody) -> bool {
        match body {
            EventBody::PaymentRequested(_) => !self.delivers_locally(Receiver::Payments),
            EventBody::InventoryReleaseRequested(_) => !self.delivers_locally(Receiver::Inventory),
            _ => true,
        }
    }

    /// Gives an answer to the order's actor, if the order role runs here (else the answer's
    /// outbox row reaches it through the broker). Returns whether it was handed over.
    pub fn answer_order(&self, order_id: OrderId, event: SagaEvent) -> bool {
        if let Some((ownership, mail)) = self.inner.order_owners.get()
            && !ownership.owns_order(order_id)
        {
            metrics::counter!(DELIVERED, "receiver" => "order_owner").increment(1);
            mail.to_order_owner(order_id, event);
            return true;
        }
        let Some(orders) = self.inner.orders.get() else {
            return false;
        };
        metrics::counter!(DELIVERED, "receiver" => "orders").increment(1);
        // The actor's reply only says how the event was taken; the saga acts on it either way.
        drop(orders.enqueue(order_id, event));
        true
    }

    fn hand_over<F>(&self, receiver: Receiver, envelope: &Envelope, work: F)
    where
        F: Future<Output = Result<Option<SagaEvent>, String>> + Send + 'static,
    {
        let key = (envelope.order_id, envelope.subject());
        if !lock(&self.inner.in_flight).insert(key) {
            debug!(order_id = %envelope.order_id, subject = key.1, "command already being handled; not handed over again");
            return;
        }
        let counter = self.counter(receiver);
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(IN_FLIGHT, "receiver" => receiver.label()).increment(1.0);
        metrics::counter!(DELIVERED, "receiver" => receiver.label()).increment(1);
        let postman = self.clone();
        let correlation_id = envelope.correlation_id.clone();
        debug!(order_id = %key.0, %correlation_id, subject = key.1, receiver = receiver.label(), "command handed over");
        // Every log line of the receiver's work carries the order and correlation ids (a debug
        // span: free unless debug logging is on, and the receivers' own warnings name the order).
        let span =
            tracing::debug_span!("command", order_id = %key.0, %correlation_id, subject = key.1);
        let work = work.instrument(span);
        let slots = (receiver == Receiver::Payments).then(|| self.inner.charge_slots.clone());
        tokio::spawn(async move {
            // The semaphore is never closed: a permit always comes, in turn.
            let slot = match slots {
                Some(slots) => slots.acquire_owned().await.ok(),
                None => None,
            };
            let answer = work.await;
            drop(slot);
            lock(&postman.inner.in_flight).remove(&key);
            postman.counter(receiver).fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(IN_FLIGHT, "receiver" => receiver.label()).decrement(1.0);
            match answer {
                Ok(Some(event)) => {
                    postman.answer_order(key.0, event);
                }
                Ok(None) => {}
                // The saga re-sends its pending command; nothing else is owed here.
                Err(e) => {
                    warn!(order_id = %key.0, %correlation_id, subject = key.1, error = %e, "command failed; the saga will send it again");
                }
            }
        });
    }

    fn counter(&self, receiver: Receiver) -> &AtomicUsize {
        match receiver {
            Receiver::Inventory => &self.inner.inventory_in_flight,
            Receiver::Payments => &self.inner.payments_in_flight,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
