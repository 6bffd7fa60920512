//! Pure rules for which messages inventory emits for each ledger outcome. The ledger commits
//! these in the same transaction as the stock change.

use chrono::{DateTime, Utc};

use crate::domain::{CorrelationId, OrderId};
use crate::events::{
    Envelope, EventBody, InventoryOutOfStock, InventoryReleased, InventoryReserved,
};
use crate::ports::{ReservationOutcome, ReservationRequest, SettleOutcome};

/// Why stock is being released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseCause {
    /// The saga is compensating and waits for `inventory.released.v1`: always answer, even when a
    /// duplicate request finds nothing left to release, or the saga would wait forever.
    Requested(String),
    /// The order was cancelled; release anything left behind (a late reservation) and say so
    /// only if something was actually released.
    OrderCancelled(String),
    /// The reservation outlived its TTL (found by the sweeper). Said only if something was
    /// released, so the owning saga learns its stock is gone.
    Expired,
}

pub fn reservation_messages(
    request: &ReservationRequest,
    outcome: &ReservationOutcome,
    now: DateTime<Utc>,
) -> Vec<Envelope> {
    let body = match outcome {
        ReservationOutcome::Reserved { low_stock } => {
            let reserved = EventBody::InventoryReserved(InventoryReserved {
                lines: request.lines.clone(),
                expires_at: request.expires_at,
            });
            return std::iter::once(reserved)
                .chain(low_stock.iter().cloned().map(EventBody::InventoryLowStock))
                .map(|body| {
                    Envelope::new(request.order_id, request.correlation_id.clone(), now, body)
                })
                .collect();
        }
        ReservationOutcome::OutOfStock(shortages) => {
            EventBody::InventoryOutOfStock(InventoryOutOfStock {
                shortages: shortages.clone(),
            })
        }
        ReservationOutcome::AlreadyDecided => return Vec::new(),
    };
    vec![Envelope::new(
        request.order_id,
        request.correlation_id.clone(),
        now,
        body,
    )]
}

pub fn release_messages(
    order_id: OrderId,
    correlation_id: &CorrelationId,
    cause: &ReleaseCause,
    outcome: &SettleOutcome,
    now: DateTime<Utc>,
) -> Vec<Envelope> {
    let reason = match cause {
        ReleaseCause::Requested(reason) => reason.clone(),
        ReleaseCause::OrderCancelled(reason) if outcome.rows_changed > 0 => reason.clone(),
        ReleaseCause::Expired if outcome.rows_changed > 0 => "reservation expired".to_owned(),
        ReleaseCause::OrderCancelled(_) | ReleaseCause::Expired => return Vec::new(),
    };
    let body = EventBody::InventoryReleased(InventoryReleased { reason });
    vec![Envelope::new(order_id, correlation_id.clone(), now, body)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_release_is_always_answered_but_a_cancellation_only_when_it_freed_stock() {
        let id = OrderId::new();
        let corr = CorrelationId::new();
        let nothing = SettleOutcome { rows_changed: 0 };
        let some = SettleOutcome { rows_changed: 2 };
        let now = Utc::now();
        let requested = ReleaseCause::Requested("payment failed".into());
        let cancelled = ReleaseCause::OrderCancelled("out of stock".into());
        assert_eq!(
            release_messages(id, &corr, &requested, &nothing, now).len(),
            1
        );
        assert_eq!(
            release_messages(id, &corr, &cancelled, &nothing, now).len(),
            0
        );
        let msgs = release_messages(id, &corr, &cancelled, &some, now);
        assert_eq!(
            msgs.iter().map(Envelope::subject).collect::<Vec<_>>(),
            vec!["inventory.released.v1"]
        );
    }
}
