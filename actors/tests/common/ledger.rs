//! `ReservationLedger` in memory: stock and reservations, all or nothing per order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use actors::domain::{OrderId, Sku};
use actors::events::Envelope;
use actors::inventory::{ReservationDecision, StockLevel, decide_reservations};
use actors::ports::{
    BatchMessages, OutcomeMessages, ReleaseMessages, ReservationLedger, ReservationOutcome,
    ReservationRequest, SettleOutcome, StoreError,
};
use async_trait::async_trait;

use super::{lock, sku, unavailable};

#[derive(Debug, Clone, Copy, Default)]
pub struct Stock {
    pub on_hand: i64,
    pub reserved: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Reserved,
    OutOfStock,
    Cancelled,
}

#[derive(Default)]
struct LedgerInner {
    stock: HashMap<Sku, Stock>,
    decisions: HashMap<OrderId, Decided>,
    /// Units currently held per order (removed when committed or released).
    held: HashMap<OrderId, Vec<(Sku, i64)>>,
    /// Orders whose held units went back on sale.
    released: std::collections::HashSet<OrderId>,
    requests: Vec<ReservationRequest>,
    outbox: Vec<Envelope>,
    unavailable: bool,
    /// Set if `reserved` ever exceeded `on_hand` for some SKU.
    oversold: bool,
}

impl LedgerInner {
    /// Decides the batch against the stock as it stands now (the rule shared with Postgres),
    /// without writing anything.
    fn decide(&self, requests: &[ReservationRequest]) -> Vec<ReservationDecision> {
        let mut levels: BTreeMap<Sku, StockLevel> = self
            .stock
            .iter()
            .map(|(sku, stock)| {
                let level = StockLevel {
                    available: stock.on_hand - stock.reserved,
                    low_stock_threshold: 0,
                };
                (sku.clone(), level)
            })
            .collect();
        decide_reservations(
            requests,
            |order_id| self.decisions.contains_key(&order_id),
            &mut levels,
        )
    }

    /// Writes the batch's decisions and their messages; the outcomes in order.
    fn apply_all(
        &mut self,
        requests: &[ReservationRequest],
        decided: Vec<ReservationDecision>,
        messages: BatchMessages<'_>,
    ) -> Vec<ReservationOutcome> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for (request, decision) in requests.iter().zip(decided) {
            let outcome = self.apply(request.order_id, decision);
            let envelopes = messages(request, &outcome);
            self.outbox.extend(envelopes);
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Writes one decision: the units held, the decision recorded.
    fn apply(&mut self, order_id: OrderId, decision: ReservationDecision) -> ReservationOutcome {
        match &decision.outcome {
            ReservationOutcome::AlreadyDecided => {}
            ReservationOutcome::Reserved { .. } => {
                for (sku, quantity) in &decision.units {
                    let stock = self.stock.entry(sku.clone()).or_default();
                    stock.reserved += quantity;
                    if stock.reserved > stock.on_hand {
                        self.oversold = true;
                    }
                }
                self.held.insert(order_id, decision.units);
                self.decisions.insert(order_id, Decided::Reserved);
            }
            ReservationOutcome::OutOfStock(_) => {
                self.decisions.insert(order_id, Decided::OutOfStock);
            }
        }
        decision.outcome
    }
}

/// Stock and reservations in memory, all or nothing per order. In `racy` mode a batch's decision
/// and its write are split by an await point, so only the caller's serialisation prevents
/// overselling.
pub struct InMemoryLedger {
    inner: Mutex<LedgerInner>,
    racy: bool,
    /// The next reservation panics (a bug in a shard's dependency).
    panic_next: std::sync::atomic::AtomicBool,
    /// The size of every `release_batch` call, in call order.
    release_batches: Mutex<Vec<usize>>,
    commit_batches: Mutex<Vec<usize>>,
}

impl InMemoryLedger {
    /// The size of every `release_batch` call so far.
    pub fn release_batches(&self) -> Vec<usize> {
        lock(&self.release_batches).clone()
    }

    /// The size of every `commit_batch` call so far.
    pub fn commit_batches(&self) -> Vec<usize> {
        lock(&self.commit_batches).clone()
    }

    /// Makes the next reservation panic inside the shard that handles it.
    pub fn panic_on_next_reserve(&self) {
        self.panic_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn with_stock(stock: &[(&str, i64)]) -> Self {
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
            panic_next: std::sync::atomic::AtomicBool::new(false),
            release_batches: Mutex::new(Vec::new()),
            commit_batches: Mutex::new(Vec::new()),
        }
    }

    pub fn racy(mut self) -> Self {
        self.racy = true;
        self
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        lock(&self.inner).unavailable = unavailable;
    }

    pub fn stock(&self, raw: &str) -> Stock {
        lock(&self.inner)
            .stock
            .get(&sku(raw))
            .copied()
            .unwrap_or_default()
    }

    pub fn oversold(&self) -> bool {
        lock(&self.inner).oversold
    }

    pub fn requests(&self) -> Vec<ReservationRequest> {
        lock(&self.inner).requests.clone()
    }

    pub fn outbox(&self) -> Vec<Envelope> {
        lock(&self.inner).outbox.clone()
    }

    pub fn subjects(&self, order_id: OrderId) -> Vec<&'static str> {
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
        if !commit && !held.is_empty() {
            inner.released.insert(order_id);
        }
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
    async fn prior_decision(
        &self,
        order_id: OrderId,
    ) -> Result<Option<actors::ports::PriorReservation>, StoreError> {
        use actors::ports::PriorReservation as P;
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        Ok(inner.decisions.get(&order_id).map(|decided| match decided {
            Decided::Reserved if inner.released.contains(&order_id) => P::Released,
            Decided::Reserved => P::Reserved,
            Decided::OutOfStock => P::OutOfStock,
            Decided::Cancelled => P::Released,
        }))
    }

    async fn due_for_expiry(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> Result<Vec<actors::ports::ExpiredReservation>, StoreError> {
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(unavailable());
        }
        Ok(inner
            .requests
            .iter()
            .filter(|r| r.expires_at <= now && inner.held.contains_key(&r.order_id))
            .map(|r| actors::ports::ExpiredReservation {
                order_id: r.order_id,
                correlation_id: r.correlation_id.clone(),
                routing_sku: r.lines.iter().map(|l| l.sku.clone()).min(),
                finished: None,
            })
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }

    async fn reserve_batch(
        &self,
        requests: &[ReservationRequest],
        messages: BatchMessages<'_>,
    ) -> Result<Vec<ReservationOutcome>, StoreError> {
        if self
            .panic_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("the ledger blew up (deliberately)");
        }
        let decided = {
            let mut inner = lock(&self.inner);
            if inner.unavailable {
                return Err(unavailable());
            }
            inner.requests.extend(requests.iter().cloned());
            let decided = inner.decide(requests);
            if !self.racy {
                // Decided and written under one lock, as one transaction would.
                return Ok(inner.apply_all(requests, decided, messages));
            }
            decided
        };
        // Racy: the decision and its write split by an await point, the lock let go between.
        tokio::task::yield_now().await;
        Ok(lock(&self.inner).apply_all(requests, decided, messages))
    }

    async fn commit_batch(&self, order_ids: &[OrderId]) -> Result<Vec<SettleOutcome>, StoreError> {
        lock(&self.commit_batches).push(order_ids.len());
        order_ids
            .iter()
            .map(|order_id| self.settle(*order_id, &|_| Vec::new(), true))
            .collect()
    }

    async fn release_batch(
        &self,
        order_ids: &[OrderId],
        messages: ReleaseMessages<'_>,
    ) -> Result<Vec<SettleOutcome>, StoreError> {
        lock(&self.release_batches).push(order_ids.len());
        order_ids
            .iter()
            .enumerate()
            .map(|(i, order_id)| self.settle(*order_id, &|o| messages(i, o), false))
            .collect()
    }
}
