//! The payment records' group commit against a real PostgreSQL: many orders' charges written
//! together, each recorded once with its messages, however many copies of a request arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;

use actors::domain::{CorrelationId, OrderId};
use actors::events::{Envelope, EventBody, PaymentSucceeded};
use actors::ports::{ChargeMessages, ChargeOutcome, PaymentRecords};
use adapters::postgres as pg;

use crate::helpers::TestDb;

fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.unwrap()
}

#[tokio::test]
async fn concurrent_charges_are_each_recorded_once_with_their_messages() {
    let db = TestDb::create().await;
    let pool = ok(pg::connect_and_migrate(&db.url, 4).await);
    // Two writers: concurrent records of one order must still meet in one writer.
    let records = Arc::new(pg::PgPaymentRecords::new(
        pool.clone(),
        pg::OutboxSignal::new(),
        2,
    ));
    let built = Arc::new(AtomicUsize::new(0));

    // 40 orders, each answer recorded twice at once (a redelivery racing the first handling).
    let orders: Vec<(OrderId, CorrelationId)> = (0..40)
        .map(|_| (OrderId::new(), CorrelationId::new()))
        .collect();
    let calls = orders
        .iter()
        .cycle()
        .take(80)
        .enumerate()
        .map(|(i, (order_id, correlation))| {
            let records = records.clone();
            let built = built.clone();
            let (order_id, correlation) = (*order_id, correlation.clone());
            async move {
                let reference = format!("pi_{}", order_id.as_uuid().simple());
                let outcome = ChargeOutcome::Succeeded {
                    reference: reference.clone(),
                };
                let for_messages = correlation.clone();
                let messages: ChargeMessages = Box::new(move |_| {
                    built.fetch_add(1, Ordering::SeqCst);
                    let body = EventBody::PaymentSucceeded(PaymentSucceeded {
                        payment_reference: reference,
                    });
                    vec![Envelope::new(order_id, for_messages, Utc::now(), body)]
                });
                let new = ok(records
                    .record(order_id, 1, &correlation, &outcome, messages)
                    .await);
                (i, order_id, new)
            }
        });
    let results = futures::future::join_all(calls).await;

    for (order_id, _) in &orders {
        let new: Vec<bool> = results
            .iter()
            .filter(|(_, id, _)| id == order_id)
            .map(|(_, _, new)| *new)
            .collect();
        assert_eq!(
            new.iter().filter(|n| **n).count(),
            1,
            "exactly one of the two records of {order_id} is new: {new:?}"
        );
    }
    assert_eq!(
        built.load(Ordering::SeqCst),
        40,
        "messages built for new records only"
    );
    let rows: i64 = ok(sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE status = 'SUCCEEDED'",
    )
    .fetch_one(&pool)
    .await);
    assert_eq!(rows, 40);
    let messages: Vec<(uuid::Uuid, String)> = ok(sqlx::query_as(
        "SELECT order_id, subject FROM outbox ORDER BY id",
    )
    .fetch_all(&pool)
    .await);
    assert_eq!(messages.len(), 40);
    assert!(messages.iter().all(|(_, s)| s == "payment.succeeded.v1"));
    for (order_id, _) in &orders {
        assert_eq!(
            messages
                .iter()
                .filter(|(id, _)| *id == order_id.as_uuid())
                .count(),
            1,
            "one message for {order_id}"
        );
    }
}
