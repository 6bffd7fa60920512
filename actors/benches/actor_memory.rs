//! What one live order costs in memory: spawns N order actors under the real supervisor, each
//! left waiting in PAYMENT_PROCESSING with its deadline armed (an order waiting for its
//! webhook, the longest-lived state), and divides the process's RSS growth by N. Then every order
//! completes and the actors stop, which shows whether finished orders give the memory back.
//!
//! The snapshot store keeps nothing (it acknowledges every write and forgets it), so the figure
//! is the actor, its mailbox, its `OrderState`, the supervisor's bookkeeping and the armed
//! deadline, and not a store's copy of the snapshots. The allocator is mimalloc, as in the
//! `ordersaga` binary. Figures for the soak scenario's "bytes per live actor" (an upper bound
//! that includes everything else a loaded server holds) are in docs/performance.md.
//!
//! Run with `cargo bench -p actors --bench actor_memory` (100,000 orders) or
//! `cargo bench -p actors --bench actor_memory -- 500000`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};

use actors::domain::{
    CorrelationId, Currency, CustomerId, Money, OrderId, PaymentMethod, PricedLine, Quantity, Sku,
};
use actors::events::Envelope;
use actors::orders::{OrderSupervisor, OrderSupervisorHandle, SagaDeps, StatusWatchers};
use actors::ports::{ManualClock, OrderSnapshotStore, StoreError};
use actors::saga::{NewOrder, OrderState, OrderStatus, SagaEvent, StepTimeouts};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Accepts every write and keeps nothing: only the actors' own memory is measured.
struct ForgetfulSnapshotStore;

#[async_trait]
impl OrderSnapshotStore for ForgetfulSnapshotStore {
    async fn load(&self, _order_id: OrderId) -> Result<Option<OrderState>, StoreError> {
        Ok(None)
    }

    async fn create(&self, _first: &OrderState, _outbox: &[Envelope]) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn commit(
        &self,
        _expected: i64,
        _next: &OrderState,
        _outbox: &[Envelope],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn live_deadlines(&self) -> Result<Vec<(OrderId, Option<DateTime<Utc>>)>, StoreError> {
        Ok(Vec::new())
    }
}

fn new_order() -> NewOrder {
    let eur = Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"));
    NewOrder {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        customer_id: CustomerId::parse("customer-1").unwrap_or_else(|e| panic!("{e}")),
        lines: vec![PricedLine {
            sku: Sku::parse("SKU-1").unwrap_or_else(|e| panic!("{e}")),
            quantity: Quantity::try_from(2).unwrap_or_else(|e| panic!("{e}")),
            unit_price: Money::new(500, eur).unwrap_or_else(|e| panic!("{e}")),
        }],
        amount: Money::new(1000, eur).unwrap_or_else(|e| panic!("{e}")),
        payment_method: PaymentMethod::parse("pm_card_visa").unwrap_or_else(|e| panic!("{e}")),
    }
}

/// The resident set of this process, in bytes (Linux; `None` elsewhere).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Places `n` orders and leaves each in PAYMENT_PROCESSING; returns their ids.
async fn orders_waiting_for_payment(orders: &OrderSupervisorHandle, n: usize) -> Vec<OrderId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let order = new_order();
        let id = order.order_id;
        orders
            .place(order)
            .await
            .unwrap_or_else(|e| panic!("placing failed: {e}"));
        for event in [
            SagaEvent::StockReserved,
            SagaEvent::PaymentPending {
                reference: format!("pi_{i}"),
            },
        ] {
            orders
                .deliver(id, event)
                .await
                .unwrap_or_else(|e| panic!("delivery failed: {e}"));
        }
        ids.push(id);
    }
    ids
}

async fn complete(orders: &OrderSupervisorHandle, ids: &[OrderId]) {
    for (i, id) in ids.iter().enumerate() {
        orders
            .deliver(
                *id,
                SagaEvent::PaymentSucceeded {
                    reference: format!("pi_{i}"),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("delivery failed: {e}"));
    }
}

/// Waits, with a deadline, until the supervisor reports `expected` live orders.
async fn wait_for_live(orders: &OrderSupervisorHandle, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = orders.live_orders().await.unwrap_or(usize::MAX);
        if live == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{live} live orders, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(n: usize) {
    let t0 = Utc
        .timestamp_opt(1_800_000_000, 0)
        .single()
        .unwrap_or_else(|| panic!("valid timestamp"));
    let deps = SagaDeps {
        store: Arc::new(ForgetfulSnapshotStore),
        clock: Arc::new(ManualClock::at(t0)),
        status_watchers: StatusWatchers::default(),
        // Long enough that no deadline fires while the orders wait.
        timeouts: StepTimeouts {
            inventory_ms: 3_600_000,
            payment_ms: 3_600_000,
        },
        postman: actors::postman::Postman::default(),
        resend: actors::orders::ResendPolicy::default(),
        ownership: None,
    };
    let (supervisor, _join) = ractor::Actor::spawn(None, OrderSupervisor, deps)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let orders = OrderSupervisorHandle::new(supervisor, Duration::from_secs(30));

    // Warm-up: the runtime, the allocator's first pages and the supervisor's maps at their
    // working size are not what one order costs.
    let warm = orders_waiting_for_payment(&orders, n / 10).await;
    complete(&orders, &warm).await;
    wait_for_live(&orders, 0).await;

    let Some(before) = rss_bytes() else {
        println!("actor_memory: RSS is read from /proc/self/status, which this system lacks");
        return;
    };
    let started = Instant::now();
    let ids = orders_waiting_for_payment(&orders, n).await;
    let elapsed = started.elapsed();
    wait_for_live(&orders, n).await;
    let live = rss_bytes().unwrap_or(before);
    let sample = orders.inspect(ids[0]).await.ok().flatten().map(|o| o.state);
    assert_eq!(
        sample.as_ref().map(|s| s.status),
        Some(OrderStatus::PaymentProcessing)
    );
    let snapshot_json = sample
        .and_then(|s| serde_json::to_vec(&s).ok())
        .map_or(0, |v| v.len());

    complete(&orders, &ids).await;
    wait_for_live(&orders, 0).await;
    let after = rss_bytes().unwrap_or(live);

    let per_actor = live.saturating_sub(before) as f64 / n as f64;
    println!("actor_memory: {n} live orders in PAYMENT_PROCESSING, each with its deadline armed");
    println!(
        "  placed and advanced in {:.2} s ({:.0} orders/s, 3 supervisor round trips each)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  RSS {:.1} MiB before, {:.1} MiB with {n} live, {:.1} MiB after they completed",
        mib(before),
        mib(live),
        mib(after)
    );
    println!(
        "  {per_actor:.0} bytes per live order actor (its OrderState is {snapshot_json} bytes as JSON)"
    );
    println!(
        "  after completion {:.0} bytes per order still held ({:.1} % of the growth)",
        after.saturating_sub(before) as f64 / n as f64,
        100.0 * after.saturating_sub(before) as f64 / live.saturating_sub(before).max(1) as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; the first plain number, if any, is the order count.
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(100_000)
        .max(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(run(n));
}
