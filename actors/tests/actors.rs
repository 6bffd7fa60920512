//! Actor-level tests: the order supervisor and saga actors, the inventory shards and the payment
//! service, each run against small in-memory implementations of the ports.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actors::domain::{
    CorrelationId, Currency, CustomerId, Money, OrderId, OrderLine, PaymentMethod, PricedLine,
    Quantity, Sku,
};
use actors::events::{
    Envelope, EventBody, InventoryReleaseRequested, OrderCancelled, OrderConfirmed, OrderCreated,
    PaymentPending, PaymentRequested, Shortage, subjects,
};
use actors::inventory::{InventoryError, InventoryShards};
use actors::orders::{
    Delivery, OrderSupervisor, OrderSupervisorHandle, SagaDeps, SagaError, StatusChange,
};
use actors::payments::{PaymentError, PaymentService};
use actors::ports::{
    ChargeOutcome, ChargeRequest, Clock, GatewayError, OrderSnapshotStore, OutcomeMessages,
    PaymentGateway, PaymentRecords, ReservationLedger, ReservationOutcome, ReservationRequest,
    SettleOutcome, StoreError,
};
use actors::saga::{
    self, Decision, Effect, NewOrder, OrderState, OrderStatus, PaymentStatus, SagaEvent,
};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use ractor::Actor;
use tokio::sync::broadcast;
use tokio::time::Instant;

// ------------------------------------------------------------------------------------------------
// Fakes
// ------------------------------------------------------------------------------------------------

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unavailable() -> StoreError {
    StoreError::Unavailable("the fake store is switched off".into())
}

/// A clock that always answers the same instant.
struct FixedClock(DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0)
        .single()
        .unwrap_or_else(|| panic!("valid timestamp"))
}

#[derive(Default)]
struct SnapshotInner {
    orders: HashMap<OrderId, OrderState>,
    /// Every envelope committed with a snapshot write, in commit order.
    outbox: Vec<Envelope>,
    unavailable: bool,
    /// The next `load` answers "no such order" even if there is one (a concurrent placement).
    hide_next_load: bool,
    /// The next `commit` is written but reported as failed (the connection dropped after COMMIT).
    fail_after_next_commit: bool,
    /// The next `commit` panics (a bug in the store driver), crashing the calling actor.
    panic_on_next_commit: bool,
    loads: usize,
    creates_written: usize,
    commits_written: usize,
    conflicts: usize,
}

/// Order snapshots in a map, with the same optimistic-concurrency contract as Postgres.
#[derive(Default)]
struct InMemorySnapshotStore {
    inner: Mutex<SnapshotInner>,
}

impl InMemorySnapshotStore {
    fn set_unavailable(&self, unavailable: bool) {
        lock(&self.inner).unavailable = unavailable;
    }

    fn hide_next_load(&self) {
        lock(&self.inner).hide_next_load = true;
    }

    fn fail_after_next_commit(&self) {
        lock(&self.inner).fail_after_next_commit = true;
    }

    fn panic_on_next_commit(&self) {
        lock(&self.inner).panic_on_next_commit = true;
    }

    fn get(&self, order_id: OrderId) -> Option<OrderState> {
        lock(&self.inner).orders.get(&order_id).cloned()
    }

    fn stored(&self, order_id: OrderId) -> OrderState {
        self.get(order_id)
            .unwrap_or_else(|| panic!("order {order_id} is not in the store"))
    }

    fn subjects(&self, order_id: OrderId) -> Vec<&'static str> {
        lock(&self.inner)
            .outbox
            .iter()
            .filter(|e| e.order_id == order_id)
            .map(Envelope::subject)
            .collect()
    }

    fn outbox(&self, order_id: OrderId) -> Vec<Envelope> {
        lock(&self.inner)
            .outbox
            .iter()
            .filter(|e| e.order_id == order_id)
            .cloned()
            .collect()
    }

    fn loads(&self) -> usize {
        lock(&self.inner).loads
    }

    fn creates_written(&self) -> usize {
        lock(&self.inner).creates_written
    }

    fn commits_written(&self) -> usize {
        lock(&self.inner).commits_written
    }

    fn conflicts(&self) -> usize {
        lock(&self.inner).conflicts
    }
}

#[async_trait]
impl OrderSnapshotStore for InMemorySnapshotStore {
    async fn load(&self, order_id: OrderId) -> Result<Option<OrderState>, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        inner.loads += 1;
        if std::mem::take(&mut inner.hide_next_load) {
            return Ok(None);
        }
        Ok(inner.orders.get(&order_id).cloned())
    }

    async fn create(&self, first: &OrderState, outbox: &[Envelope]) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        if inner.orders.contains_key(&first.order_id) {
            return Ok(false);
        }
        inner.orders.insert(first.order_id, first.clone());
        inner.outbox.extend_from_slice(outbox);
        inner.creates_written += 1;
        Ok(true)
    }

    async fn commit(&self, next: &OrderState, outbox: &[Envelope]) -> Result<(), StoreError> {
        let panic_now = {
            let mut inner = lock(&self.inner);
            if inner.unavailable {
                return Err(unavailable());
            }
            std::mem::take(&mut inner.panic_on_next_commit)
        };
        if panic_now {
            panic!("the fake store driver blew up (deliberately)");
        }
        let mut inner = lock(&self.inner);
        let expected = next.version - 1;
        let stored = inner.orders.get(&next.order_id).map(|o| o.version);
        if stored != Some(expected) {
            inner.conflicts += 1;
            return Err(StoreError::VersionConflict { expected });
        }
        inner.orders.insert(next.order_id, next.clone());
        inner.outbox.extend_from_slice(outbox);
        inner.commits_written += 1;
        if std::mem::take(&mut inner.fail_after_next_commit) {
            return Err(StoreError::Unavailable(
                "connection lost after COMMIT".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Stock {
    on_hand: i64,
    reserved: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Reserved,
    OutOfStock,
    Cancelled,
}

/// What a reservation check concluded, before it is written.
enum Plan {
    AlreadyDecided,
    Reserve(Vec<(Sku, i64)>),
    Refuse(Vec<Shortage>),
}

#[derive(Default)]
struct LedgerInner {
    stock: HashMap<Sku, Stock>,
    decisions: HashMap<OrderId, Decided>,
    /// Units currently held per order (removed when committed or released).
    held: HashMap<OrderId, Vec<(Sku, i64)>>,
    requests: Vec<ReservationRequest>,
    outbox: Vec<Envelope>,
    unavailable: bool,
    /// Set if `reserved` ever exceeded `on_hand` for some SKU.
    oversold: bool,
}

impl LedgerInner {
    fn plan(&self, request: &ReservationRequest) -> Plan {
        if self.decisions.contains_key(&request.order_id) {
            return Plan::AlreadyDecided;
        }
        // Merge repeated SKUs so "2 + 3 of A" is checked as "5 of A" (as Postgres does).
        let mut wanted: Vec<(Sku, i64)> = Vec::new();
        for line in &request.lines {
            let quantity = i64::from(line.quantity);
            match wanted.iter_mut().find(|(sku, _)| *sku == line.sku) {
                Some((_, q)) => *q += quantity,
                None => wanted.push((line.sku.clone(), quantity)),
            }
        }
        let shortages: Vec<Shortage> = wanted
            .iter()
            .filter_map(|(sku, want)| {
                let have = self
                    .stock
                    .get(sku)
                    .map_or(0, |s| (s.on_hand - s.reserved).max(0));
                (*want > have).then(|| Shortage {
                    sku: sku.clone(),
                    requested: u32::try_from(*want).unwrap_or(u32::MAX),
                    available: have,
                })
            })
            .collect();
        if shortages.is_empty() {
            Plan::Reserve(wanted)
        } else {
            Plan::Refuse(shortages)
        }
    }

    fn apply(&mut self, order_id: OrderId, plan: Plan) -> ReservationOutcome {
        match plan {
            Plan::AlreadyDecided => ReservationOutcome::AlreadyDecided,
            Plan::Reserve(wanted) => {
                for (sku, quantity) in &wanted {
                    let stock = self.stock.entry(sku.clone()).or_default();
                    stock.reserved += quantity;
                    if stock.reserved > stock.on_hand {
                        self.oversold = true;
                    }
                }
                self.held.insert(order_id, wanted);
                self.decisions.insert(order_id, Decided::Reserved);
                ReservationOutcome::Reserved
            }
            Plan::Refuse(shortages) => {
                self.decisions.insert(order_id, Decided::OutOfStock);
                ReservationOutcome::OutOfStock(shortages)
            }
        }
    }
}

/// Stock and reservations in memory, all or nothing per order. In `racy` mode the check and the
/// write are split by an await point, so only the caller's serialisation prevents overselling.
struct InMemoryLedger {
    inner: Mutex<LedgerInner>,
    racy: bool,
}

impl InMemoryLedger {
    fn with_stock(stock: &[(&str, i64)]) -> Self {
        let inner = LedgerInner {
            stock: stock
                .iter()
                .map(|(s, n)| {
                    (
                        sku(s),
                        Stock {
                            on_hand: *n,
                            reserved: 0,
                        },
                    )
                })
                .collect(),
            ..LedgerInner::default()
        };
        Self {
            inner: Mutex::new(inner),
            racy: false,
        }
    }

    fn racy(mut self) -> Self {
        self.racy = true;
        self
    }

    fn set_unavailable(&self, unavailable: bool) {
        lock(&self.inner).unavailable = unavailable;
    }

    fn stock(&self, raw: &str) -> Stock {
        lock(&self.inner)
            .stock
            .get(&sku(raw))
            .copied()
            .unwrap_or_default()
    }

    fn oversold(&self) -> bool {
        lock(&self.inner).oversold
    }

    fn requests(&self) -> Vec<ReservationRequest> {
        lock(&self.inner).requests.clone()
    }

    fn outbox(&self) -> Vec<Envelope> {
        lock(&self.inner).outbox.clone()
    }

    fn subjects(&self, order_id: OrderId) -> Vec<&'static str> {
        lock(&self.inner)
            .outbox
            .iter()
            .filter(|e| e.order_id == order_id)
            .map(Envelope::subject)
            .collect()
    }

    fn settle(
        &self,
        order_id: OrderId,
        messages: OutcomeMessages<'_, SettleOutcome>,
        commit: bool,
    ) -> Result<SettleOutcome, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        if !commit {
            inner
                .decisions
                .entry(order_id)
                .or_insert(Decided::Cancelled);
        }
        let held = inner.held.remove(&order_id).unwrap_or_default();
        for (sku, quantity) in &held {
            let stock = inner.stock.entry(sku.clone()).or_default();
            stock.reserved -= quantity;
            if commit {
                stock.on_hand -= quantity;
            }
        }
        let outcome = SettleOutcome {
            rows_changed: held.len() as u64,
        };
        let envelopes = messages(&outcome);
        inner.outbox.extend(envelopes);
        Ok(outcome)
    }
}

#[async_trait]
impl ReservationLedger for InMemoryLedger {
    async fn reserve(
        &self,
        request: &ReservationRequest,
        messages: OutcomeMessages<'_, ReservationOutcome>,
    ) -> Result<ReservationOutcome, StoreError> {
        let outcome = if self.racy {
            let plan = {
                let mut inner = lock(&self.inner);
                if inner.unavailable {
                    return Err(unavailable());
                }
                inner.requests.push(request.clone());
                inner.plan(request)
            };
            tokio::task::yield_now().await;
            let mut inner = lock(&self.inner);
            let outcome = inner.apply(request.order_id, plan);
            let envelopes = messages(&outcome);
            inner.outbox.extend(envelopes);
            outcome
        } else {
            let mut inner = lock(&self.inner);
            if inner.unavailable {
                return Err(unavailable());
            }
            inner.requests.push(request.clone());
            let plan = inner.plan(request);
            let outcome = inner.apply(request.order_id, plan);
            let envelopes = messages(&outcome);
            inner.outbox.extend(envelopes);
            outcome
        };
        Ok(outcome)
    }

    async fn commit(
        &self,
        order_id: OrderId,
        messages: OutcomeMessages<'_, SettleOutcome>,
    ) -> Result<SettleOutcome, StoreError> {
        self.settle(order_id, messages, true)
    }

    async fn release(
        &self,
        order_id: OrderId,
        messages: OutcomeMessages<'_, SettleOutcome>,
    ) -> Result<SettleOutcome, StoreError> {
        self.settle(order_id, messages, false)
    }
}

/// A payment provider that answers from a script, one outcome per charge.
#[derive(Default)]
struct FakeGateway {
    script: Mutex<VecDeque<Result<ChargeOutcome, GatewayError>>>,
    charges: Mutex<Vec<ChargeRequest>>,
}

impl FakeGateway {
    fn scripted(outcomes: Vec<Result<ChargeOutcome, GatewayError>>) -> Self {
        Self {
            script: Mutex::new(outcomes.into()),
            charges: Mutex::default(),
        }
    }

    fn calls(&self) -> usize {
        lock(&self.charges).len()
    }

    fn distinct_idempotency_keys(&self) -> usize {
        lock(&self.charges)
            .iter()
            .map(|c| c.idempotency_key.clone())
            .collect::<HashSet<_>>()
            .len()
    }

    fn charges(&self) -> Vec<ChargeRequest> {
        lock(&self.charges).clone()
    }
}

#[async_trait]
impl PaymentGateway for FakeGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        lock(&self.charges).push(request.clone());
        lock(&self.script)
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected charge {request:?}: the script is exhausted"))
    }
}

#[derive(Default)]
struct RecordsInner {
    records: HashMap<(OrderId, u32), ChargeOutcome>,
    outbox: Vec<Envelope>,
    unavailable: bool,
}

#[derive(Default)]
struct InMemoryPaymentRecords {
    inner: Mutex<RecordsInner>,
}

impl InMemoryPaymentRecords {
    fn set_unavailable(&self, unavailable: bool) {
        lock(&self.inner).unavailable = unavailable;
    }

    fn record_of(&self, order_id: OrderId, attempt: u32) -> Option<ChargeOutcome> {
        lock(&self.inner).records.get(&(order_id, attempt)).cloned()
    }

    fn count(&self) -> usize {
        lock(&self.inner).records.len()
    }

    fn outbox(&self) -> Vec<Envelope> {
        lock(&self.inner).outbox.clone()
    }

    fn subjects(&self) -> Vec<&'static str> {
        lock(&self.inner)
            .outbox
            .iter()
            .map(Envelope::subject)
            .collect()
    }
}

#[async_trait]
impl PaymentRecords for InMemoryPaymentRecords {
    async fn is_recorded(&self, order_id: OrderId, attempt: u32) -> Result<bool, StoreError> {
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        Ok(inner.records.contains_key(&(order_id, attempt)))
    }

    async fn record(
        &self,
        order_id: OrderId,
        attempt: u32,
        outcome: &ChargeOutcome,
        outbox: &[Envelope],
    ) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        if inner.records.contains_key(&(order_id, attempt)) {
            return Ok(false);
        }
        inner.records.insert((order_id, attempt), outcome.clone());
        inner.outbox.extend_from_slice(outbox);
        Ok(true)
    }
}

// ------------------------------------------------------------------------------------------------
// Builders and helpers
// ------------------------------------------------------------------------------------------------

const TIMEOUT: Duration = Duration::from_secs(5);

fn sku(raw: &str) -> Sku {
    Sku::parse(raw).unwrap_or_else(|e| panic!("{e}"))
}

fn quantity(n: i64) -> Quantity {
    Quantity::try_from(n).unwrap_or_else(|e| panic!("{e}"))
}

fn eur(cents: i64) -> Money {
    let eur = Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"));
    Money::new(cents, eur).unwrap_or_else(|e| panic!("{e}"))
}

fn card() -> PaymentMethod {
    PaymentMethod::parse("pm_card_visa").unwrap_or_else(|e| panic!("{e}"))
}

fn customer(raw: &str) -> CustomerId {
    CustomerId::parse(raw).unwrap_or_else(|e| panic!("{e}"))
}

fn priced(lines: &[(&str, i64)]) -> Vec<PricedLine> {
    lines
        .iter()
        .map(|(s, n)| PricedLine {
            sku: sku(s),
            quantity: quantity(*n),
            unit_price: eur(500),
        })
        .collect()
}

fn new_order() -> NewOrder {
    NewOrder {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        customer_id: customer("c-1"),
        lines: priced(&[("SKU-1", 2)]),
        amount: eur(1000),
        payment_method: card(),
    }
}

fn succeeded(reference: &str) -> SagaEvent {
    SagaEvent::PaymentSucceeded {
        reference: reference.into(),
    }
}

fn pending(reference: &str) -> SagaEvent {
    SagaEvent::PaymentPending {
        reference: reference.into(),
    }
}

fn out_of_stock() -> SagaEvent {
    SagaEvent::OutOfStock {
        shortages: vec![Shortage {
            sku: sku("SKU-1"),
            requested: 2,
            available: 0,
        }],
    }
}

struct Orders {
    handle: OrderSupervisorHandle,
    store: Arc<InMemorySnapshotStore>,
    status_changes: broadcast::Sender<StatusChange>,
}

async fn spawn_orders() -> Orders {
    let store = Arc::new(InMemorySnapshotStore::default());
    let (status_changes, _) = broadcast::channel(64);
    let deps = SagaDeps {
        store: store.clone(),
        clock: Arc::new(FixedClock(t0())),
        status_changes: status_changes.clone(),
    };
    let (supervisor, _join) = Actor::spawn(None, OrderSupervisor, deps)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Orders {
        handle: OrderSupervisorHandle::new(supervisor, TIMEOUT),
        store,
        status_changes,
    }
}

impl Orders {
    async fn place(&self, order: NewOrder) -> OrderState {
        self.handle
            .place(order)
            .await
            .unwrap_or_else(|e| panic!("placing failed: {e}"))
    }

    async fn deliver(&self, order_id: OrderId, event: SagaEvent) -> Delivery {
        self.handle
            .deliver(order_id, event)
            .await
            .unwrap_or_else(|e| panic!("delivery failed: {e}"))
    }

    async fn live_orders(&self) -> usize {
        self.handle
            .live_orders()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits (with a deadline) until no order actor is alive any more.
    async fn wait_until_no_actor_is_live(&self) {
        eventually("every order actor to stop", || async {
            self.handle.live_orders().await == Ok(0)
        })
        .await;
    }

    /// Places an order and drives it to COMPLETED.
    async fn completed_order(&self) -> OrderId {
        let order = new_order();
        let id = order.order_id;
        self.place(order).await;
        for event in [SagaEvent::StockReserved, pending("pi_1"), succeeded("pi_1")] {
            self.deliver(id, event).await;
        }
        assert_eq!(self.store.stored(id).status, OrderStatus::Completed);
        id
    }
}

/// Polls `check` until it holds, failing the test after a deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Commits `event` on the stored snapshot the way another process would (bypassing our actors).
async fn advance_elsewhere(store: &InMemorySnapshotStore, order_id: OrderId, event: &SagaEvent) {
    let current = store.stored(order_id);
    let Decision::Apply(transition) = saga::decide(&current, event, t0()) else {
        panic!("{event:?} does not apply to {:?}", current.status);
    };
    let outbox: Vec<Envelope> = transition
        .effects
        .iter()
        .map(|Effect::Publish(body)| {
            Envelope::new(order_id, current.correlation_id.clone(), t0(), body.clone())
        })
        .collect();
    store
        .commit(&transition.next, &outbox)
        .await
        .unwrap_or_else(|e| panic!("the other process could not commit: {e}"));
}

// ------------------------------------------------------------------------------------------------
// Orders: supervisor and saga actors
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_placed_order_is_stored_pending_with_order_created_in_its_outbox() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;

    let placed = orders.place(order.clone()).await;

    assert_eq!(placed.status, OrderStatus::Pending);
    assert_eq!(placed.version, 1);
    assert_eq!(placed.order_id, id);
    assert_eq!(orders.store.get(id), Some(placed.clone()));
    assert_eq!(orders.store.subjects(id), vec![subjects::ORDER_CREATED]);
    let outbox = orders.store.outbox(id);
    let created = &outbox[0];
    assert_eq!(created.correlation_id, order.correlation_id);
    assert_eq!(
        created.body,
        EventBody::OrderCreated(OrderCreated {
            customer_id: order.customer_id,
            lines: order.lines,
            amount: order.amount,
        })
    );
    assert_eq!(
        orders.live_orders().await,
        1,
        "a live order keeps its actor"
    );
}

#[tokio::test]
async fn placing_the_same_order_twice_returns_the_first_and_writes_once() {
    let orders = spawn_orders().await;
    let first = new_order();
    let id = first.order_id;
    let first_state = orders.place(first.clone()).await;

    let mut again = first.clone();
    again.customer_id = customer("someone-else");
    again.amount = eur(1);
    let second_state = orders.place(again).await;

    assert_eq!(second_state, first_state);
    assert_eq!(orders.store.stored(id).customer_id, customer("c-1"));
    assert_eq!(orders.store.creates_written(), 1);
    assert_eq!(orders.store.subjects(id), vec![subjects::ORDER_CREATED]);
}

#[tokio::test]
async fn placing_an_order_another_process_already_stored_returns_theirs() {
    let orders = spawn_orders().await;
    let theirs = saga::start(new_order(), t0()).next;
    let id = theirs.order_id;
    let inserted = orders.store.create(&theirs, &[]).await;
    assert_eq!(inserted, Ok(true));

    let mut ours = new_order();
    ours.order_id = id;
    ours.customer_id = customer("latecomer");
    let placed = orders.place(ours).await;

    assert_eq!(placed, theirs);
    assert_eq!(orders.store.stored(id), theirs);
    assert!(
        orders.store.subjects(id).is_empty(),
        "nothing written twice"
    );
}

#[tokio::test]
async fn losing_a_placement_race_returns_the_winners_order() {
    let orders = spawn_orders().await;
    let theirs = saga::start(new_order(), t0()).next;
    let id = theirs.order_id;
    let inserted = orders.store.create(&theirs, &[]).await;
    assert_eq!(inserted, Ok(true));
    // Our first load misses their row (it was not committed yet); our insert then loses.
    orders.store.hide_next_load();

    let mut ours = new_order();
    ours.order_id = id;
    ours.customer_id = customer("latecomer");
    let placed = orders.place(ours).await;

    assert_eq!(placed, theirs);
    assert_eq!(orders.store.stored(id).customer_id, customer("c-1"));
    assert!(orders.store.subjects(id).is_empty());
}

#[tokio::test]
async fn events_delivered_through_the_supervisor_drive_the_order_to_completed_and_the_actor_stops()
{
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    assert_eq!(orders.live_orders().await, 1);

    assert_eq!(
        orders.deliver(id, SagaEvent::StockReserved).await,
        Delivery::Applied(OrderStatus::StockReserved)
    );
    assert_eq!(
        orders.deliver(id, pending("pi_1")).await,
        Delivery::Applied(OrderStatus::PaymentProcessing)
    );
    assert_eq!(
        orders.deliver(id, succeeded("pi_1")).await,
        Delivery::Applied(OrderStatus::Completed)
    );

    let stored = orders.store.stored(id);
    assert_eq!(stored.status, OrderStatus::Completed);
    assert_eq!(stored.version, 4);
    assert_eq!(
        stored
            .payment
            .as_ref()
            .map(|p| (p.status, p.reference.clone())),
        Some((PaymentStatus::Succeeded, Some("pi_1".to_owned())))
    );
    assert_eq!(
        orders.store.subjects(id),
        vec![
            subjects::ORDER_CREATED,
            subjects::PAYMENT_REQUESTED,
            subjects::ORDER_CONFIRMED
        ]
    );
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn duplicates_queued_behind_the_final_event_are_answered_not_dropped() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;

    // Enqueue the final event and its redeliveries back to back, before any is answered.
    let answers: Vec<_> = (0..5)
        .map(|_| orders.handle.enqueue(id, succeeded("pi_1")))
        .collect();
    let mut results = Vec::new();
    for answer in answers {
        results.push(answer.await);
    }

    assert_eq!(
        results[0],
        Ok(Delivery::Applied(OrderStatus::Completed)),
        "{results:?}"
    );
    for result in &results[1..] {
        assert!(
            matches!(result, Ok(Delivery::Ignored(_))),
            "a duplicate must be acknowledged as ignored, got {result:?}"
        );
    }
    let confirmations = orders
        .store
        .subjects(id)
        .into_iter()
        .filter(|s| *s == subjects::ORDER_CONFIRMED)
        .count();
    assert_eq!(confirmations, 1);
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn a_late_event_for_a_finished_order_rehydrates_from_the_snapshot_and_is_ignored() {
    let orders = spawn_orders().await;
    let id = orders.completed_order().await;
    orders.wait_until_no_actor_is_live().await;
    let before = orders.store.stored(id);
    let loads = orders.store.loads();
    let outbox = orders.store.subjects(id);

    let delivery = orders.deliver(id, succeeded("pi_1")).await;

    assert_eq!(delivery, Delivery::Ignored("the order is finished"));
    assert_eq!(
        orders.store.loads(),
        loads + 1,
        "a fresh actor read the snapshot"
    );
    assert_eq!(orders.store.stored(id), before);
    assert_eq!(orders.store.subjects(id), outbox);
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn a_payment_succeeding_after_cancellation_is_recorded_for_refund_by_a_rehydrated_actor() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    assert_eq!(
        orders.deliver(id, out_of_stock()).await,
        Delivery::Applied(OrderStatus::Cancelled)
    );
    orders.wait_until_no_actor_is_live().await;

    let delivery = orders.deliver(id, succeeded("pi_late")).await;

    assert_eq!(delivery, Delivery::Applied(OrderStatus::Cancelled));
    let stored = orders.store.stored(id);
    assert_eq!(stored.status, OrderStatus::Cancelled);
    assert_eq!(
        stored.late_payment.map(|l| l.reference),
        Some("pi_late".to_owned())
    );
    assert_eq!(
        orders.store.subjects(id),
        vec![subjects::ORDER_CREATED, subjects::ORDER_CANCELLED]
    );
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn an_event_for_an_unknown_order_is_reported_as_unknown() {
    let orders = spawn_orders().await;
    let id = OrderId::new();

    let result = orders.handle.deliver(id, SagaEvent::StockReserved).await;

    assert_eq!(result, Err(SagaError::UnknownOrder(id)));
    assert_eq!(orders.store.get(id), None, "nothing is invented");
    assert_eq!(orders.store.commits_written(), 0);
}

#[tokio::test]
async fn an_event_for_an_unknown_order_leaves_no_actor_behind() {
    let orders = spawn_orders().await;
    for _ in 0..3 {
        let id = OrderId::new();
        let result = orders.handle.deliver(id, SagaEvent::StockReserved).await;
        assert_eq!(result, Err(SagaError::UnknownOrder(id)));
    }
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn a_version_conflict_makes_the_actor_reload_and_decide_on_the_fresh_state() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;
    // Our actor caches v2 (STOCK_RESERVED); another process moves the order on to v3.
    advance_elsewhere(&orders.store, id, &pending("pi_1")).await;
    assert_eq!(orders.store.stored(id).version, 3);

    // On the stale v2 this decides "complete as v3", which the store refuses.
    let delivery = orders.deliver(id, succeeded("pi_1")).await;

    assert_eq!(delivery, Delivery::Applied(OrderStatus::Completed));
    assert_eq!(orders.store.conflicts(), 1);
    let stored = orders.store.stored(id);
    assert_eq!(stored.status, OrderStatus::Completed);
    assert_eq!(stored.version, 4, "decided on the fresh v3");
    let history: Vec<OrderStatus> = stored.history.iter().map(|h| h.status).collect();
    assert_eq!(
        history,
        vec![
            OrderStatus::Pending,
            OrderStatus::StockReserved,
            OrderStatus::PaymentProcessing,
            OrderStatus::Completed
        ],
        "the other process's transition was kept, not overwritten"
    );
    assert_eq!(
        orders.store.subjects(id),
        vec![
            subjects::ORDER_CREATED,
            subjects::PAYMENT_REQUESTED,
            subjects::ORDER_CONFIRMED
        ]
    );
}

#[tokio::test]
async fn a_conflicting_stale_decision_is_dropped_when_the_fresh_state_has_finished() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    orders.deliver(id, SagaEvent::StockReserved).await;
    // Another process completes the order while our actor still caches STOCK_RESERVED.
    advance_elsewhere(&orders.store, id, &succeeded("pi_1")).await;
    let completed = orders.store.stored(id);

    // On the stale snapshot this would move the order to PAYMENT_PROCESSING.
    let delivery = orders.deliver(id, pending("pi_1")).await;

    assert_eq!(delivery, Delivery::Ignored("the order is finished"));
    assert_eq!(orders.store.conflicts(), 1);
    assert_eq!(orders.store.stored(id), completed);
    orders.wait_until_no_actor_is_live().await;
}

#[tokio::test]
async fn an_event_ignored_on_a_cached_snapshot_is_judged_again_on_a_fresh_read() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;
    let loads = orders.store.loads();
    // Our actor caches v1 (PENDING); another process records the reservation.
    advance_elsewhere(&orders.store, id, &SagaEvent::StockReserved).await;

    // PAYMENT_PENDING means nothing to a PENDING order, but fits the fresh STOCK_RESERVED.
    let delivery = orders.deliver(id, pending("pi_1")).await;

    assert_eq!(delivery, Delivery::Applied(OrderStatus::PaymentProcessing));
    assert_eq!(orders.store.loads(), loads + 1);
    let stored = orders.store.stored(id);
    assert_eq!(stored.version, 3);
    assert_eq!(stored.status, OrderStatus::PaymentProcessing);
}

#[tokio::test]
async fn a_store_outage_is_reported_and_the_next_delivery_succeeds() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    let placed = orders.place(order).await;

    orders.store.set_unavailable(true);
    let failed = orders.handle.deliver(id, SagaEvent::StockReserved).await;
    assert!(
        matches!(failed, Err(SagaError::Store(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    assert_eq!(orders.store.stored(id), placed, "nothing was written");

    orders.store.set_unavailable(false);
    let retried = orders.handle.deliver(id, SagaEvent::StockReserved).await;

    assert_eq!(retried, Ok(Delivery::Applied(OrderStatus::StockReserved)));
    assert_eq!(orders.store.stored(id).version, 2);
    assert_eq!(
        orders.store.subjects(id),
        vec![subjects::ORDER_CREATED, subjects::PAYMENT_REQUESTED]
    );
}

#[tokio::test]
async fn placing_during_a_store_outage_fails_and_a_retry_places_the_order() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;

    orders.store.set_unavailable(true);
    let failed = orders.handle.place(order.clone()).await;
    assert!(
        matches!(failed, Err(SagaError::Store(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    assert_eq!(orders.store.get(id), None);

    orders.store.set_unavailable(false);
    let placed = orders.place(order).await;
    assert_eq!(placed.status, OrderStatus::Pending);
    assert_eq!(orders.store.subjects(id), vec![subjects::ORDER_CREATED]);
}

#[tokio::test]
async fn after_a_commit_of_unknown_outcome_the_actor_rereads_instead_of_trusting_its_cache() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;

    // The commit lands, but the actor is told it failed.
    orders.store.fail_after_next_commit();
    let failed = orders.handle.deliver(id, SagaEvent::StockReserved).await;
    assert!(
        matches!(failed, Err(SagaError::Store(StoreError::Unavailable(_)))),
        "{failed:?}"
    );
    let loads = orders.store.loads();

    // The broker redelivers: the fresh read shows it was already applied.
    let redelivered = orders.deliver(id, SagaEvent::StockReserved).await;

    assert!(
        matches!(redelivered, Delivery::Ignored(_)),
        "{redelivered:?}"
    );
    assert_eq!(orders.store.loads(), loads + 1, "reloaded before deciding");
    assert_eq!(orders.store.conflicts(), 0, "never decided on the stale v1");
    assert_eq!(
        orders.store.subjects(id),
        vec![subjects::ORDER_CREATED, subjects::PAYMENT_REQUESTED],
        "payment requested exactly once"
    );
}

#[tokio::test]
async fn a_crashed_order_actor_is_forgotten_and_the_next_message_rehydrates_a_new_one() {
    let orders = spawn_orders().await;
    let order = new_order();
    let id = order.order_id;
    orders.place(order).await;

    orders.store.panic_on_next_commit();
    let crashed = orders.handle.deliver(id, SagaEvent::StockReserved).await;
    assert!(
        matches!(crashed, Err(SagaError::ActorUnavailable(_))),
        "{crashed:?}"
    );
    orders.wait_until_no_actor_is_live().await;

    let retried = orders.handle.deliver(id, SagaEvent::StockReserved).await;

    assert_eq!(retried, Ok(Delivery::Applied(OrderStatus::StockReserved)));
    assert_eq!(orders.live_orders().await, 1, "the supervisor survived");
}

#[tokio::test]
async fn each_order_gets_its_own_actor() {
    let orders = spawn_orders().await;
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let order = new_order();
        ids.push(order.order_id);
        let handle = orders.handle.clone();
        tasks.spawn(async move { handle.place(order).await });
    }
    while let Some(joined) = tasks.join_next().await {
        let placed = joined.unwrap_or_else(|e| panic!("{e}"));
        assert!(placed.is_ok(), "{placed:?}");
    }

    assert_eq!(orders.live_orders().await, 20);
    for id in ids {
        assert_eq!(orders.store.stored(id).status, OrderStatus::Pending);
    }
}

#[tokio::test]
async fn status_changes_are_broadcast_for_waiters() {
    let orders = spawn_orders().await;
    let mut waiter = orders.status_changes.subscribe();
    let order = new_order();
    let id = order.order_id;

    async fn next(rx: &mut broadcast::Receiver<StatusChange>) -> StatusChange {
        match tokio::time::timeout(TIMEOUT, rx.recv()).await {
            Ok(Ok(change)) => change,
            other => panic!("no status change: {other:?}"),
        }
    }

    orders.place(order.clone()).await;
    assert_eq!(
        next(&mut waiter).await,
        StatusChange {
            order_id: id,
            status: OrderStatus::Pending
        }
    );
    orders.deliver(id, SagaEvent::StockReserved).await;
    assert_eq!(
        next(&mut waiter).await,
        StatusChange {
            order_id: id,
            status: OrderStatus::StockReserved
        }
    );

    // Neither an ignored duplicate nor an idempotent re-placement changes anything.
    let duplicate = orders.deliver(id, SagaEvent::StockReserved).await;
    assert!(matches!(duplicate, Delivery::Ignored(_)), "{duplicate:?}");
    orders.place(order).await;
    assert_eq!(
        waiter.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    );

    orders.deliver(id, succeeded("pi_1")).await;
    assert_eq!(
        next(&mut waiter).await,
        StatusChange {
            order_id: id,
            status: OrderStatus::Completed
        }
    );
}

// ------------------------------------------------------------------------------------------------
// Inventory shards
// ------------------------------------------------------------------------------------------------

const TTL: Duration = Duration::from_secs(15 * 60);

async fn spawn_shards(count: usize, ledger: &Arc<InMemoryLedger>) -> InventoryShards {
    InventoryShards::spawn(count, ledger.clone(), Arc::new(FixedClock(t0())), TTL)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn envelope(order_id: OrderId, correlation_id: &CorrelationId, body: EventBody) -> Envelope {
    Envelope::new(order_id, correlation_id.clone(), t0(), body)
}

fn order_created(order_id: OrderId, lines: &[(&str, i64)]) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::OrderCreated(OrderCreated {
            customer_id: customer("c-1"),
            lines: priced(lines),
            amount: eur(1000),
        }),
    )
}

fn order_cancelled(order_id: OrderId) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::OrderCancelled(OrderCancelled {
            reason: "customer changed their mind".into(),
        }),
    )
}

fn release_requested(order_id: OrderId) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::InventoryReleaseRequested(InventoryReleaseRequested {
            reason: "payment failed".into(),
        }),
    )
}

async fn on_message(shards: &InventoryShards, envelope: &Envelope) {
    shards
        .on_message(envelope)
        .await
        .unwrap_or_else(|e| panic!("inventory failed: {e}"));
}

#[tokio::test]
async fn reserving_an_order_emits_inventory_reserved_with_its_lines_and_expiry() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5), ("SKU-B", 5)]));
    let shards = spawn_shards(4, &ledger).await;
    let id = OrderId::new();
    let created = order_created(id, &[("SKU-B", 1), ("SKU-A", 2)]);

    on_message(&shards, &created).await;

    let expected_lines = vec![
        OrderLine {
            sku: sku("SKU-B"),
            quantity: quantity(1),
        },
        OrderLine {
            sku: sku("SKU-A"),
            quantity: quantity(2),
        },
    ];
    let expires_at = t0() + chrono::Duration::minutes(15);
    let requests = ledger.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].order_id, id);
    assert_eq!(requests[0].correlation_id, created.correlation_id);
    assert_eq!(requests[0].lines, expected_lines);
    assert_eq!(requests[0].expires_at, expires_at);

    let outbox = ledger.outbox();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].order_id, id);
    assert_eq!(outbox[0].correlation_id, created.correlation_id);
    match &outbox[0].body {
        EventBody::InventoryReserved(reserved) => {
            assert_eq!(reserved.lines, expected_lines);
            assert_eq!(reserved.expires_at, expires_at);
        }
        other => panic!("expected inventory.reserved.v1, got {other:?}"),
    }
    assert_eq!(ledger.stock("SKU-A").reserved, 2);
    assert_eq!(ledger.stock("SKU-B").reserved, 1);
}

#[tokio::test]
async fn an_order_that_does_not_fit_the_stock_emits_out_of_stock_and_reserves_nothing() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5), ("SKU-B", 1)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();

    on_message(&shards, &order_created(id, &[("SKU-A", 2), ("SKU-B", 3)])).await;

    assert_eq!(ledger.subjects(id), vec![subjects::INVENTORY_OUT_OF_STOCK]);
    match &ledger.outbox()[0].body {
        EventBody::InventoryOutOfStock(e) => assert_eq!(
            e.shortages,
            vec![Shortage {
                sku: sku("SKU-B"),
                requested: 3,
                available: 1
            }]
        ),
        other => panic!("expected inventory.out_of_stock.v1, got {other:?}"),
    }
    assert_eq!(ledger.stock("SKU-A").reserved, 0, "all or nothing");
    assert_eq!(ledger.stock("SKU-B").reserved, 0);
}

#[tokio::test]
async fn a_redelivered_order_created_reserves_once_and_emits_once() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();
    let created = order_created(id, &[("SKU-A", 2)]);

    on_message(&shards, &created).await;
    on_message(&shards, &created).await;

    assert_eq!(ledger.subjects(id), vec![subjects::INVENTORY_RESERVED]);
    assert_eq!(ledger.stock("SKU-A").reserved, 2);
}

#[tokio::test]
async fn a_release_request_is_always_answered_with_inventory_released() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(3, &ledger).await;
    let id = OrderId::new();
    on_message(&shards, &order_created(id, &[("SKU-A", 2)])).await;

    on_message(&shards, &release_requested(id)).await;
    assert_eq!(ledger.stock("SKU-A").reserved, 0, "units are back on sale");
    // A duplicate finds nothing left to release but must still be answered.
    on_message(&shards, &release_requested(id)).await;

    assert_eq!(
        ledger.subjects(id),
        vec![
            subjects::INVENTORY_RESERVED,
            subjects::INVENTORY_RELEASED,
            subjects::INVENTORY_RELEASED
        ]
    );
    let released = ledger.outbox();
    assert!(
        matches!(&released[1].body, EventBody::InventoryReleased(r) if r.reason == "payment failed"),
        "{:?}",
        released[1]
    );
}

#[tokio::test]
async fn an_order_cancelled_only_announces_a_release_when_something_was_released() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(3, &ledger).await;

    // Nothing reserved: the cancellation is silent.
    let refused = OrderId::new();
    on_message(&shards, &order_created(refused, &[("SKU-A", 9)])).await;
    on_message(&shards, &order_cancelled(refused)).await;
    assert_eq!(
        ledger.subjects(refused),
        vec![subjects::INVENTORY_OUT_OF_STOCK]
    );

    // A reservation left behind: it is released and announced, once.
    let reserved = OrderId::new();
    on_message(&shards, &order_created(reserved, &[("SKU-A", 2)])).await;
    on_message(&shards, &order_cancelled(reserved)).await;
    on_message(&shards, &order_cancelled(reserved)).await;
    assert_eq!(
        ledger.subjects(reserved),
        vec![subjects::INVENTORY_RESERVED, subjects::INVENTORY_RELEASED]
    );
    assert_eq!(ledger.stock("SKU-A").reserved, 0);
}

#[tokio::test]
async fn a_reservation_arriving_after_the_cancellation_reserves_nothing() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();

    on_message(&shards, &order_cancelled(id)).await;
    on_message(&shards, &order_created(id, &[("SKU-A", 2)])).await;

    assert!(ledger.subjects(id).is_empty(), "{:?}", ledger.subjects(id));
    assert_eq!(ledger.stock("SKU-A").reserved, 0);
}

#[tokio::test]
async fn a_confirmed_order_takes_its_units_out_of_stock_silently() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();
    on_message(&shards, &order_created(id, &[("SKU-A", 2)])).await;

    let confirmed = envelope(
        id,
        &CorrelationId::new(),
        EventBody::OrderConfirmed(OrderConfirmed {
            amount: eur(1000),
            payment_reference: Some("pi_1".into()),
        }),
    );
    on_message(&shards, &confirmed).await;

    let stock = ledger.stock("SKU-A");
    assert_eq!((stock.on_hand, stock.reserved), (3, 0));
    assert_eq!(ledger.subjects(id), vec![subjects::INVENTORY_RESERVED]);
}

#[tokio::test]
async fn messages_inventory_does_not_handle_are_accepted_and_ignored() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();
    let pending = envelope(
        id,
        &CorrelationId::new(),
        EventBody::PaymentPending(PaymentPending {
            payment_reference: "pi_1".into(),
        }),
    );

    on_message(&shards, &pending).await;

    assert!(ledger.requests().is_empty());
    assert!(ledger.outbox().is_empty());
}

#[tokio::test]
async fn a_ledger_outage_is_reported_to_the_consumer() {
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-A", 5)]));
    let shards = spawn_shards(2, &ledger).await;
    let id = OrderId::new();

    ledger.set_unavailable(true);
    let result = shards.on_message(&order_created(id, &[("SKU-A", 2)])).await;
    assert!(
        matches!(
            result,
            Err(InventoryError::Store(StoreError::Unavailable(_)))
        ),
        "{result:?}"
    );
    let result = shards.on_message(&release_requested(id)).await;
    assert!(
        matches!(
            result,
            Err(InventoryError::Store(StoreError::Unavailable(_)))
        ),
        "{result:?}"
    );
    assert!(ledger.outbox().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_of_one_sku_through_the_shards_never_exceed_the_stock() {
    // The racy ledger only stays correct if requests for one SKU are serialised by its shard.
    let ledger = Arc::new(InMemoryLedger::with_stock(&[("SKU-HOT", 10)]).racy());
    let shards = spawn_shards(4, &ledger).await;
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    for _ in 0..40 {
        let id = OrderId::new();
        ids.push(id);
        let shards = shards.clone();
        tasks.spawn(async move {
            shards
                .on_message(&order_created(id, &[("SKU-HOT", 1)]))
                .await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| panic!("{e}"));
        assert!(result.is_ok(), "{result:?}");
    }

    let stock = ledger.stock("SKU-HOT");
    assert!(!ledger.oversold(), "oversold: {stock:?}");
    assert_eq!(stock.reserved, 10);
    let mut reserved = 0;
    let mut refused = 0;
    for id in ids {
        match ledger.subjects(id).as_slice() {
            [subjects::INVENTORY_RESERVED] => reserved += 1,
            [subjects::INVENTORY_OUT_OF_STOCK] => refused += 1,
            other => panic!("order {id} got {other:?}"),
        }
    }
    assert_eq!((reserved, refused), (10, 30));
}

// ------------------------------------------------------------------------------------------------
// Payment service
// ------------------------------------------------------------------------------------------------

struct Payments {
    service: PaymentService,
    gateway: Arc<FakeGateway>,
    records: Arc<InMemoryPaymentRecords>,
}

fn payments(script: Vec<Result<ChargeOutcome, GatewayError>>) -> Payments {
    let gateway = Arc::new(FakeGateway::scripted(script));
    let records = Arc::new(InMemoryPaymentRecords::default());
    let service = PaymentService::new(gateway.clone(), records.clone(), Arc::new(FixedClock(t0())));
    Payments {
        service,
        gateway,
        records,
    }
}

fn payment_requested(order_id: OrderId, attempt: u32) -> Envelope {
    envelope(
        order_id,
        &CorrelationId::new(),
        EventBody::PaymentRequested(PaymentRequested {
            amount: eur(1000),
            payment_method: card(),
            attempt,
        }),
    )
}

fn charge_succeeded(reference: &str) -> Result<ChargeOutcome, GatewayError> {
    Ok(ChargeOutcome::Succeeded {
        reference: reference.into(),
    })
}

fn charge_declined() -> Result<ChargeOutcome, GatewayError> {
    Ok(ChargeOutcome::Declined {
        reference: Some("pi_declined".into()),
        code: "card_declined".into(),
        message: "Your card was declined.".into(),
    })
}

impl Payments {
    async fn on_message(&self, envelope: &Envelope) {
        self.service
            .on_message(envelope)
            .await
            .unwrap_or_else(|e| panic!("payment failed: {e}"));
    }
}

#[tokio::test]
async fn a_successful_charge_emits_payment_pending_then_payment_succeeded() {
    let p = payments(vec![charge_succeeded("pi_1")]);
    let id = OrderId::new();
    let request = payment_requested(id, 1);

    p.on_message(&request).await;

    let charges = p.gateway.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].order_id, id);
    assert_eq!(charges[0].correlation_id, request.correlation_id);
    assert_eq!(charges[0].amount, eur(1000));
    assert_eq!(charges[0].payment_method, card());
    assert_eq!(
        charges[0].idempotency_key,
        format!("ordersaga-{id}-payment-1")
    );

    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_PENDING, subjects::PAYMENT_SUCCEEDED]
    );
    let outbox = p.records.outbox();
    assert!(
        outbox
            .iter()
            .all(|e| e.order_id == id && e.correlation_id == request.correlation_id)
    );
    assert_eq!(
        SagaEvent::from_body(&outbox[1].body),
        Some(succeeded("pi_1"))
    );
    assert_eq!(p.records.record_of(id, 1), charge_succeeded("pi_1").ok());
}

#[tokio::test]
async fn a_charge_still_processing_emits_only_payment_pending() {
    let p = payments(vec![Ok(ChargeOutcome::Processing {
        reference: "pi_2".into(),
    })]);
    let id = OrderId::new();

    p.on_message(&payment_requested(id, 1)).await;

    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_PENDING]);
    assert_eq!(
        SagaEvent::from_body(&p.records.outbox()[0].body),
        Some(pending("pi_2"))
    );
}

#[tokio::test]
async fn a_declined_charge_emits_payment_failed_with_the_providers_code() {
    let p = payments(vec![charge_declined()]);
    let id = OrderId::new();

    p.on_message(&payment_requested(id, 1)).await;

    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_FAILED]);
    assert_eq!(
        SagaEvent::from_body(&p.records.outbox()[0].body),
        Some(SagaEvent::PaymentFailed {
            reference: Some("pi_declined".into()),
            code: "card_declined".into(),
            message: "Your card was declined.".into(),
        })
    );
    assert_eq!(p.records.count(), 1);
}

#[tokio::test]
async fn a_redelivered_payment_request_does_not_charge_again() {
    let p = payments(vec![charge_succeeded("pi_1")]);
    let id = OrderId::new();
    let request = payment_requested(id, 1);

    p.on_message(&request).await;
    p.on_message(&request).await;

    assert_eq!(p.gateway.calls(), 1);
    assert_eq!(p.records.count(), 1);
    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_PENDING, subjects::PAYMENT_SUCCEEDED]
    );
}

#[tokio::test]
async fn a_transient_gateway_error_is_returned_for_redelivery_without_recording() {
    let p = payments(vec![
        Err(GatewayError::Transient("503".into())),
        charge_succeeded("pi_1"),
    ]);
    let id = OrderId::new();
    let request = payment_requested(id, 1);

    let first = p.service.on_message(&request).await;
    assert_eq!(
        first,
        Err(PaymentError::Gateway(GatewayError::Transient("503".into())))
    );
    assert_eq!(p.records.count(), 0);
    assert!(p.records.outbox().is_empty());

    p.on_message(&request).await;

    assert_eq!(p.gateway.calls(), 2);
    assert_eq!(
        p.gateway.distinct_idempotency_keys(),
        1,
        "the retry reuses the key"
    );
    assert_eq!(
        p.records.subjects(),
        vec![subjects::PAYMENT_PENDING, subjects::PAYMENT_SUCCEEDED]
    );
}

#[tokio::test]
async fn a_permanent_gateway_error_fails_the_payment_with_payment_provider_error() {
    let p = payments(vec![Err(GatewayError::Permanent("invalid api key".into()))]);
    let id = OrderId::new();

    p.on_message(&payment_requested(id, 1)).await;

    assert_eq!(p.records.subjects(), vec![subjects::PAYMENT_FAILED]);
    assert_eq!(
        SagaEvent::from_body(&p.records.outbox()[0].body),
        Some(SagaEvent::PaymentFailed {
            reference: None,
            code: "payment_provider_error".into(),
            message: "invalid api key".into(),
        })
    );
    assert!(p.records.record_of(id, 1).is_some());
}

#[tokio::test]
async fn a_new_payment_attempt_gets_a_fresh_idempotency_key() {
    let p = payments(vec![charge_declined(), charge_succeeded("pi_2")]);
    let id = OrderId::new();

    p.on_message(&payment_requested(id, 1)).await;
    p.on_message(&payment_requested(id, 2)).await;

    assert_eq!(p.gateway.calls(), 2);
    assert_eq!(p.gateway.distinct_idempotency_keys(), 2);
    assert_eq!(p.records.count(), 2);
    assert_eq!(
        p.records.subjects(),
        vec![
            subjects::PAYMENT_FAILED,
            subjects::PAYMENT_PENDING,
            subjects::PAYMENT_SUCCEEDED
        ]
    );
}

#[tokio::test]
async fn a_records_outage_fails_before_anything_is_charged() {
    let p = payments(vec![]);
    p.records.set_unavailable(true);

    let result = p
        .service
        .on_message(&payment_requested(OrderId::new(), 1))
        .await;

    assert!(
        matches!(result, Err(PaymentError::Store(StoreError::Unavailable(_)))),
        "{result:?}"
    );
    assert_eq!(p.gateway.calls(), 0);
}

#[tokio::test]
async fn messages_other_than_payment_requested_are_ignored_by_the_payment_role() {
    let p = payments(vec![]);

    p.on_message(&order_created(OrderId::new(), &[("SKU-A", 1)]))
        .await;

    assert_eq!(p.gateway.calls(), 0);
    assert!(p.records.outbox().is_empty());
}
