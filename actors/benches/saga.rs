//! Micro-benchmarks of the pure parts of an order's life: the transition function over a whole
//! saga, and the snapshot codec (the JSON every transition writes and every rehydration reads).
//! Run with `cargo bench -p actors --bench saga`; figures are in docs/performance.md.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

use actors::domain::{
    CorrelationId, Currency, CustomerId, Money, OrderId, PaymentMethod, PricedLine, Quantity, Sku,
};
use actors::saga::{Decision, NewOrder, OrderState, SagaEvent, decide, start};

fn new_order(lines: usize) -> NewOrder {
    let eur = Currency::parse("EUR").unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<PricedLine> = (0..lines)
        .map(|i| PricedLine {
            sku: Sku::parse(&format!("SKU-{i}")).unwrap_or_else(|e| panic!("{e}")),
            quantity: Quantity::try_from(2).unwrap_or_else(|e| panic!("{e}")),
            unit_price: Money::new(500, eur).unwrap_or_else(|e| panic!("{e}")),
        })
        .collect();
    NewOrder {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        customer_id: CustomerId::parse("customer-1").unwrap_or_else(|e| panic!("{e}")),
        amount: Money::new(1000 * lines.len() as i64, eur).unwrap_or_else(|e| panic!("{e}")),
        lines,
        payment_method: PaymentMethod::parse("pm_card_visa").unwrap_or_else(|e| panic!("{e}")),
    }
}

/// The happy path's events after placement.
fn happy_path() -> Vec<SagaEvent> {
    vec![
        SagaEvent::StockReserved,
        SagaEvent::PaymentPending {
            reference: "pi_1".into(),
        },
        SagaEvent::PaymentSucceeded {
            reference: "pi_1".into(),
        },
    ]
}

fn run_saga(order: NewOrder, events: &[SagaEvent]) -> OrderState {
    let t0 = Utc
        .timestamp_opt(1_800_000_000, 0)
        .single()
        .unwrap_or_default();
    let mut state = start(order, t0).next;
    for (i, event) in events.iter().enumerate() {
        let at = t0 + chrono::Duration::milliseconds(i as i64 + 1);
        if let Decision::Apply(t) = decide(&state, event, at) {
            state = t.next;
        }
    }
    state
}

fn state_machine(c: &mut Criterion) {
    let events = happy_path();
    c.bench_function("saga/happy_path_4_transitions", |b| {
        b.iter_batched(
            || new_order(1),
            |order| black_box(run_saga(order, &events)),
            BatchSize::SmallInput,
        )
    });
    let reserved = run_saga(new_order(1), &events[..1]);
    c.bench_function("saga/decide_duplicate_ignored", |b| {
        let now = reserved.updated_at;
        b.iter(|| black_box(decide(&reserved, &SagaEvent::StockReserved, now)))
    });
}

fn snapshot_codec(c: &mut Criterion) {
    for lines in [1, 10] {
        let state = run_saga(new_order(lines), &happy_path());
        let json = serde_json::to_vec(&state).unwrap_or_default();
        c.bench_function(
            &format!("snapshot/encode_{lines}_lines_{}B", json.len()),
            |b| b.iter(|| black_box(serde_json::to_vec(&state).unwrap_or_default())),
        );
        c.bench_function(
            &format!("snapshot/decode_{lines}_lines_{}B", json.len()),
            |b| b.iter(|| black_box(serde_json::from_slice::<OrderState>(&json).ok())),
        );
    }
}

criterion_group!(benches, state_machine, snapshot_codec);
criterion_main!(benches);
