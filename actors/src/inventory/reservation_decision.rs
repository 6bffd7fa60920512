//! What a batch of reservations decides, given the stock it found: which orders are reserved,
//! which are refused and for what shortages, and which reservations take a product down to its
//! low-stock threshold.
//!
//! Pure, so the rule lives in one place: the Postgres ledger runs it over the `products` rows it
//! has locked, the tests' in-memory ledger over its maps, and both decide exactly alike. The
//! requests are decided one after the other, each against the stock the earlier ones left, so a
//! batch decides what the same requests would decide one transaction at a time.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::domain::{OrderId, Sku};
use crate::events::{InventoryLowStock, Shortage};
use crate::ports::{ReservationOutcome, ReservationRequest};

/// One product's stock as the batch found it (locked): what it can still reserve from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevel {
    /// On hand minus reserved.
    pub available: i64,
    /// A reservation that takes `available` from above this to at most this is reported as low
    /// stock; 0 turns the report off.
    pub low_stock_threshold: i64,
}

/// One request's decision: its outcome, and for a reservation the units to hold, by SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationDecision {
    pub outcome: ReservationOutcome,
    /// Units per SKU in SKU order, each SKU once ("2 + 3 of A" is 5 of A); empty unless
    /// reserved.
    pub units: Vec<(Sku, i64)>,
}

/// Units wanted per SKU by one order, in SKU order.
fn units_wanted(request: &ReservationRequest) -> BTreeMap<Sku, i64> {
    let mut wanted: BTreeMap<Sku, i64> = BTreeMap::new();
    for line in &request.lines {
        *wanted.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
    }
    wanted
}

/// Decides `requests` in order against `stock`, which it updates as it reserves. An order for
/// which `decided_before` holds, or which already came earlier in the batch (a redelivery), is
/// `AlreadyDecided`; a SKU absent from `stock` has nothing available.
pub fn decide_reservations(
    requests: &[ReservationRequest],
    decided_before: impl Fn(OrderId) -> bool,
    stock: &mut BTreeMap<Sku, StockLevel>,
) -> Vec<ReservationDecision> {
    let mut seen: HashSet<OrderId> = HashSet::with_capacity(requests.len());
    requests
        .iter()
        .map(|request| {
            if decided_before(request.order_id) || !seen.insert(request.order_id) {
                return ReservationDecision {
                    outcome: ReservationOutcome::AlreadyDecided,
                    units: Vec::new(),
                };
            }
            decide_one(request, stock)
        })
        .collect()
}

/// All of the order's lines or none of them.
fn decide_one(
    request: &ReservationRequest,
    stock: &mut BTreeMap<Sku, StockLevel>,
) -> ReservationDecision {
    let wanted = units_wanted(request);
    let shortages = shortages(request, &wanted, stock);
    if !shortages.is_empty() {
        return ReservationDecision {
            outcome: ReservationOutcome::OutOfStock(shortages),
            units: Vec::new(),
        };
    }
    let mut low_stock = Vec::new();
    for (sku, quantity) in &wanted {
        // Present: no shortage means every wanted SKU had stock.
        let Some(level) = stock.get_mut(sku) else {
            continue;
        };
        let before = level.available;
        level.available -= quantity;
        let threshold = level.low_stock_threshold;
        if threshold > 0 && before > threshold && level.available <= threshold {
            low_stock.push(InventoryLowStock {
                sku: sku.clone(),
                available: level.available,
                threshold,
            });
        }
    }
    ReservationDecision {
        outcome: ReservationOutcome::Reserved { low_stock },
        units: wanted.into_iter().collect(),
    }
}

/// What one order lacks, in the order of its lines (each SKU once), against the stock left by
/// the orders decided before it.
fn shortages(
    request: &ReservationRequest,
    wanted: &BTreeMap<Sku, i64>,
    stock: &BTreeMap<Sku, StockLevel>,
) -> Vec<Shortage> {
    let mut reported = BTreeSet::new();
    request
        .lines
        .iter()
        .filter(|line| reported.insert(&line.sku))
        .filter_map(|line| {
            let have = stock.get(&line.sku).map_or(0, |s| s.available.max(0));
            let want = wanted.get(&line.sku).copied().unwrap_or(0);
            (want > have).then(|| Shortage {
                sku: line.sku.clone(),
                requested: u32::try_from(want).unwrap_or(u32::MAX),
                available: have,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CorrelationId, OrderLine, Quantity};

    fn sku(raw: &str) -> Sku {
        Sku::parse(raw).unwrap()
    }

    fn request(lines: &[(&str, u32)]) -> ReservationRequest {
        ReservationRequest {
            order_id: OrderId::new(),
            correlation_id: CorrelationId::default(),
            lines: lines
                .iter()
                .map(|(s, q)| OrderLine {
                    sku: sku(s),
                    quantity: Quantity::try_from(i64::from(*q)).unwrap(),
                })
                .collect(),
            expires_at: chrono::Utc::now(),
        }
    }

    fn stock(levels: &[(&str, i64, i64)]) -> BTreeMap<Sku, StockLevel> {
        levels
            .iter()
            .map(|(s, available, threshold)| {
                let level = StockLevel {
                    available: *available,
                    low_stock_threshold: *threshold,
                };
                (sku(s), level)
            })
            .collect()
    }

    fn never(_: OrderId) -> bool {
        false
    }

    #[test]
    fn requests_are_decided_in_order_each_against_what_the_earlier_ones_left() {
        let mut levels = stock(&[("A", 5, 0)]);
        let batch = [
            request(&[("A", 3)]),
            request(&[("A", 3)]),
            request(&[("A", 2)]),
        ];
        let decided = decide_reservations(&batch, never, &mut levels);
        let reserved =
            |d: &ReservationDecision| matches!(d.outcome, ReservationOutcome::Reserved { .. });
        assert!(reserved(&decided[0]));
        assert_eq!(
            decided[1].outcome,
            ReservationOutcome::OutOfStock(vec![Shortage {
                sku: sku("A"),
                requested: 3,
                available: 2,
            }])
        );
        assert!(decided[1].units.is_empty());
        assert!(reserved(&decided[2]));
        assert_eq!(levels[&sku("A")].available, 0);
    }

    #[test]
    fn an_order_is_all_or_nothing_and_repeated_skus_count_together() {
        let mut levels = stock(&[("A", 5, 0), ("B", 1, 0)]);
        let short_of_b = request(&[("A", 2), ("B", 1), ("B", 1), ("A", 1)]);
        let decided = decide_reservations(&[short_of_b], never, &mut levels);
        assert_eq!(
            decided[0].outcome,
            ReservationOutcome::OutOfStock(vec![Shortage {
                sku: sku("B"),
                requested: 2,
                available: 1,
            }])
        );
        assert_eq!(levels[&sku("A")].available, 5, "nothing of A taken");

        let fits = request(&[("B", 1), ("A", 2), ("A", 1)]);
        let decided = decide_reservations(&[fits], never, &mut levels);
        assert_eq!(decided[0].units, vec![(sku("A"), 3), (sku("B"), 1)]);
    }

    #[test]
    fn an_unknown_sku_is_short_of_everything_it_asks_for() {
        let mut levels = stock(&[("A", 5, 0)]);
        let decided = decide_reservations(&[request(&[("A", 1), ("Z", 2)])], never, &mut levels);
        assert_eq!(
            decided[0].outcome,
            ReservationOutcome::OutOfStock(vec![Shortage {
                sku: sku("Z"),
                requested: 2,
                available: 0,
            }])
        );
    }

    #[test]
    fn low_stock_is_reported_once_by_the_reservation_that_crosses_the_threshold() {
        let mut levels = stock(&[("A", 10, 5), ("B", 10, 0)]);
        let batch = [
            request(&[("A", 4), ("B", 9)]),
            request(&[("A", 1)]),
            request(&[("A", 1)]),
        ];
        let decided = decide_reservations(&batch, never, &mut levels);
        let low = |d: &ReservationDecision| match &d.outcome {
            ReservationOutcome::Reserved { low_stock } => low_stock.clone(),
            other => panic!("not reserved: {other:?}"),
        };
        assert!(
            low(&decided[0]).is_empty(),
            "10 -> 6 stays above 5; B has no threshold"
        );
        assert_eq!(
            low(&decided[1]),
            vec![InventoryLowStock {
                sku: sku("A"),
                available: 5,
                threshold: 5,
            }]
        );
        assert!(
            low(&decided[2]).is_empty(),
            "already below: not reported again"
        );
    }

    #[test]
    fn an_order_decided_before_or_earlier_in_the_batch_is_already_decided() {
        let mut levels = stock(&[("A", 10, 0)]);
        let old = request(&[("A", 1)]);
        let new = request(&[("A", 1)]);
        let old_id = old.order_id;
        let batch = [old, new.clone(), new];
        let decided = decide_reservations(&batch, |id| id == old_id, &mut levels);
        let outcomes: Vec<_> = decided.iter().map(|d| &d.outcome).collect();
        assert_eq!(outcomes[0], &ReservationOutcome::AlreadyDecided);
        assert!(matches!(outcomes[1], ReservationOutcome::Reserved { .. }));
        assert_eq!(outcomes[2], &ReservationOutcome::AlreadyDecided);
        assert_eq!(
            levels[&sku("A")].available,
            9,
            "the redelivery took nothing"
        );
    }
}
