//! The order supervisor's step timers: one deadline per live order, fired when it comes.
//!
//! Timers are small entries, not actors: an order waiting for its deadline needs no actor in
//! memory (it is rehydrated when the timer fires). Each order has at most one *armed* deadline,
//! kept in a map; the heap orders firing times. A saga that moves to another step (or finishes)
//! re-arms (or disarms) its order, and the heap entry of the old deadline becomes stale: it is
//! skipped when it comes up, without touching the order. Without that map, every finished order
//! woke up once per deadline it ever had (30 s and 60 s after placement by default), spawning an
//! actor and reading its snapshot only to ignore the timer: at a few thousand orders per second
//! that was as much work as the orders themselves.
//!
//! Stale heap entries are dropped lazily when they come up, and in bulk when they outnumber the
//! armed ones, so memory follows the orders in flight rather than the orders placed recently.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Utc};

use crate::domain::OrderId;

/// (when to fire, order, the deadline to report), ordered by firing time.
type Entry = (DateTime<Utc>, OrderId, DateTime<Utc>);

/// Stale entries tolerated before the heap is rebuilt (besides one per armed timer).
const STALE_SLACK: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct DeadlineTimers {
    heap: BinaryHeap<Reverse<Entry>>,
    /// The deadline each order is waiting for; a heap entry for any other deadline is stale.
    armed: HashMap<OrderId, DateTime<Utc>>,
}

impl DeadlineTimers {
    /// The order now waits for `deadline` (replacing any deadline it had).
    pub(crate) fn arm(&mut self, order: OrderId, deadline: DateTime<Utc>) {
        if self.armed.insert(order, deadline) != Some(deadline) {
            self.heap.push(Reverse((deadline, order, deadline)));
        }
    }

    /// The order waits for no deadline any more (finished, or paused).
    pub(crate) fn disarm(&mut self, order: OrderId) {
        self.armed.remove(&order);
    }

    /// A fired timer whose handling failed: fire it again at `at`, unless the order has armed
    /// another deadline since.
    pub(crate) fn retry(&mut self, order: OrderId, deadline: DateTime<Utc>, at: DateTime<Utc>) {
        let current = self.armed.entry(order).or_insert(deadline);
        if *current == deadline {
            self.heap.push(Reverse((at, order, deadline)));
        }
    }

    /// Takes the timers due at `now`: each is disarmed (a failure re-arms it through `retry`).
    pub(crate) fn take_due(&mut self, now: DateTime<Utc>) -> Vec<(OrderId, DateTime<Utc>)> {
        let mut due = Vec::new();
        while let Some(Reverse((fire_at, order, deadline))) = self.heap.peek().copied() {
            if fire_at > now {
                break;
            }
            self.heap.pop();
            if self.armed.get(&order) == Some(&deadline) {
                self.armed.remove(&order);
                due.push((order, deadline));
            }
        }
        self.compact();
        due
    }

    /// Orders waiting for a deadline.
    pub(crate) fn len(&self) -> usize {
        self.armed.len()
    }

    /// When the next armed timer fires.
    pub(crate) fn next(&mut self) -> Option<DateTime<Utc>> {
        while let Some(Reverse((fire_at, order, deadline))) = self.heap.peek().copied() {
            if self.armed.get(&order) == Some(&deadline) {
                return Some(fire_at);
            }
            self.heap.pop();
        }
        None
    }

    fn compact(&mut self) {
        if self.heap.len() > self.armed.len() * 2 + STALE_SLACK {
            let armed = &self.armed;
            self.heap
                .retain(|Reverse((_, order, deadline))| armed.get(order) == Some(deadline));
        }
    }

    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn order(n: u128) -> OrderId {
        OrderId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_timer_fires_once_when_due() {
        let mut timers = DeadlineTimers::default();
        timers.arm(order(1), at(10));
        assert!(timers.take_due(at(9)).is_empty());
        assert_eq!(timers.take_due(at(10)), vec![(order(1), at(10))]);
        assert!(timers.take_due(at(20)).is_empty());
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn a_replaced_or_disarmed_deadline_never_fires() {
        let mut timers = DeadlineTimers::default();
        timers.arm(order(1), at(10));
        timers.arm(order(1), at(30));
        timers.arm(order(2), at(10));
        timers.disarm(order(2));
        assert!(timers.take_due(at(20)).is_empty());
        assert_eq!(timers.next(), Some(at(30)));
        assert_eq!(timers.take_due(at(30)), vec![(order(1), at(30))]);
    }

    #[test]
    fn arming_the_same_deadline_twice_fires_it_once() {
        let mut timers = DeadlineTimers::default();
        timers.arm(order(1), at(10));
        timers.arm(order(1), at(10));
        assert_eq!(timers.take_due(at(10)), vec![(order(1), at(10))]);
        assert_eq!(timers.heap_len(), 0);
    }

    #[test]
    fn a_failed_timer_is_retried_unless_the_order_moved_on() {
        let mut timers = DeadlineTimers::default();
        timers.arm(order(1), at(10));
        timers.arm(order(2), at(10));
        assert_eq!(timers.take_due(at(10)).len(), 2);
        timers.retry(order(1), at(10), at(11));
        timers.retry(order(2), at(10), at(11));
        // Order 2's saga moved to another step before its retry came up.
        timers.arm(order(2), at(50));
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.take_due(at(11)), vec![(order(1), at(10))]);
        assert_eq!(timers.next(), Some(at(50)));
    }

    #[test]
    fn stale_entries_do_not_accumulate() {
        let mut timers = DeadlineTimers::default();
        for n in 0..20_000 {
            timers.arm(order(n), at(100));
            timers.disarm(order(n));
        }
        timers.arm(order(0), at(200));
        assert!(timers.take_due(at(1)).is_empty());
        assert!(
            timers.heap_len() <= STALE_SLACK + 2,
            "{}",
            timers.heap_len()
        );
        assert_eq!(timers.len(), 1);
    }
}
