//! The reservation ledger against a real PostgreSQL: one transaction per reservation versus one
//! per batch, on one hot SKU (the flash-sale case) and spread over many. Needs a server at
//! `BENCH_DATABASE_URL` (default the local one); it creates its own database.
//! Run with `cargo bench -p adapters --bench ledger`; figures are in docs/performance.md.

use std::sync::Arc;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use actors::domain::{CorrelationId, OrderId, OrderLine, Quantity, Sku};
use actors::ports::{ReservationLedger, ReservationRequest};
use adapters::postgres::{self as pg, PgReservationLedger};

const BATCH: usize = 64;

fn request(sku: &Sku) -> ReservationRequest {
    ReservationRequest {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        lines: vec![OrderLine {
            sku: sku.clone(),
            quantity: Quantity::try_from(1).unwrap_or_else(|e| panic!("{e}")),
        }],
        expires_at: Utc::now() + chrono::Duration::minutes(15),
    }
}

fn ledger_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let base = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let url = format!("{base}/ordersaga_bench_ledger?sslmode=disable");
    let (ledger, skus) = runtime.block_on(async {
        let pool = pg::connect_and_migrate(&url, 16)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is needed for this bench: {e}"));
        sqlx::query("TRUNCATE products, stock_reservations, inventory_decisions, outbox")
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut skus = Vec::new();
        for i in 0..BATCH {
            let sku = format!("BENCH-{i}");
            sqlx::query("INSERT INTO products (sku, name, unit_price_cents, currency, on_hand) VALUES ($1, 'bench', 1, 'EUR', 1000000000000)")
                .bind(&sku)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            skus.push(Sku::parse(&sku).unwrap_or_else(|e| panic!("{e}")));
        }
        (
            Arc::new(PgReservationLedger::new(pool, adapters::postgres::OutboxSignal::new())),
            skus,
        )
    });

    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for (name, spread) in [("hot_sku", false), ("64_skus", true)] {
        let pick = |i: usize| if spread { &skus[i] } else { &skus[0] };
        group.bench_function(format!("{name}/one_transaction_per_reservation"), |b| {
            b.to_async(&runtime).iter(|| async {
                for i in 0..BATCH {
                    let outcome = ledger.reserve(&request(pick(i)), &|_| Vec::new()).await;
                    assert!(outcome.is_ok());
                }
            })
        });
        group.bench_function(format!("{name}/one_transaction_per_batch"), |b| {
            b.to_async(&runtime).iter(|| async {
                let batch: Vec<ReservationRequest> = (0..BATCH).map(|i| request(pick(i))).collect();
                let outcome = ledger.reserve_batch(&batch, &|_, _| Vec::new()).await;
                assert!(outcome.is_ok());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ledger_benches);
criterion_main!(benches);
