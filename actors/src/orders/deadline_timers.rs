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
//!
//! The same structure schedules re-sends: while an order waits for the answer to its step's
//! command, a second heap holds when to send that command again. A re-send entry belongs to the
//! deadline armed when it was scheduled and is stale as soon as the order arms another deadline
//! (the step moved on, so its command was answered) or finishes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Utc};

use crate::domain::OrderId;

/// (when to fire, order, the deadline to report), ordered by firing time.
type Entry = (DateTime<Utc>, OrderId, DateTime<Utc>);

/// Stale entries tolerated before the heap is rebuilt (besides one per armed timer).
const STALE_SLACK: usize = 4096;

/// (when to re-send, order, the deadline of the step being re-sent, which re-send this is).
type ResendEntry = (DateTime<Utc>, OrderId, DateTime<Utc>, u32);

#[derive(Debug, Default)]
pub(crate) struct DeadlineTimers {
    heap: BinaryHeap<Reverse<Entry>>,
    resends: BinaryHeap<Reverse<ResendEntry>>,
    /// The deadline each order is waiting for; a heap entry for any other deadline is stale.
    armed: HashMap<OrderId, DateTime<Utc>>,
    /// Orders whose step's command was answered although the step goes on (a payment in
    /// processing waits for the provider's webhook): no re-send until they arm a new deadline.
    answered: HashMap<OrderId, DateTime<Utc>>,
}

impl DeadlineTimers {
    /// The order now waits for `deadline` (replacing any deadline it had). Returns whether
    /// that is news (arming the deadline already armed changes nothing).
    pub(crate) fn arm(&mut self, order: OrderId, deadline: DateTime<Utc>) -> bool {
        let new = self.armed.insert(order, deadline) != Some(deadline);
        if new {
            self.heap.push(Reverse((deadline, order, deadline)));
            self.answered.remove(&order);
        }
        new
    }

    /// The order's pending command was answered: its re-sends stop until the next deadline.
    pub(crate) fn answered(&mut self, order: OrderId) {
        if let Some(deadline) = self.armed.get(&order) {
            self.answered.insert(order, *deadline);
        }
    }

    /// The order waits for no deadline any more (finished, or paused).
    pub(crate) fn disarm(&mut self, order: OrderId) {
        self.armed.remove(&order);
        self.answered.remove(&order);
    }

    /// Disarms every order `gone` says this process no longer runs (its partition moved to
    /// another instance); returns how many. Their heap and re-send entries go stale.
    pub(crate) fn disarm_where(&mut self, gone: impl Fn(OrderId) -> bool) -> usize {
        let before = self.armed.len();
        self.armed.retain(|order, _| !gone(*order));
        self.answered.retain(|order, _| !gone(*order));
        before - self.armed.len()
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
                self.answered.remove(&order);
                due.push((order, deadline));
            }
        }
        self.compact();
        due
    }

    /// Schedules the `nth` re-send of the command of the step that ends at `deadline`.
    pub(crate) fn arm_resend(
        &mut self,
        order: OrderId,
        deadline: DateTime<Utc>,
        at: DateTime<Utc>,
        nth: u32,
    ) {
        if at < deadline && self.resend_wanted(order, deadline) {
            self.resends.push(Reverse((at, order, deadline, nth)));
        }
    }

    /// Takes at most `max` re-sends due at `now` whose step is still the order's current one,
    /// oldest first, as (order, step deadline, nth). Due ones beyond `max` stay for the next call,
    /// so a recovery that schedules every live saga at once re-sends at a bounded rate.
    pub(crate) fn take_due_resends(
        &mut self,
        now: DateTime<Utc>,
        max: usize,
    ) -> Vec<(OrderId, DateTime<Utc>, u32)> {
        let mut due = Vec::new();
        while due.len() < max
            && let Some(Reverse((at, order, deadline, nth))) = self.resends.peek().copied()
        {
            if at > now {
                break;
            }
            self.resends.pop();
            if self.resend_wanted(order, deadline) {
                due.push((order, deadline, nth));
            }
        }
        due
    }

    /// The order still waits on the step ending at `deadline`, and its command is unanswered.
    fn resend_wanted(&self, order: OrderId, deadline: DateTime<Utc>) -> bool {
        self.armed.get(&order) == Some(&deadline) && self.answered.get(&order) != Some(&deadline)
    }

    /// Re-sends scheduled, stale ones included (tests).
    #[cfg(test)]
    fn resends_len(&self) -> usize {
        self.resends.len()
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
        let armed = &self.armed;
        if self.heap.len() > armed.len() * 2 + STALE_SLACK {
            self.heap
                .retain(|Reverse((_, order, deadline))| armed.get(order) == Some(deadline));
        }
        if self.resends.len() > armed.len() * 2 + STALE_SLACK {
            let answered = &self.answered;
            self.resends.retain(|Reverse((_, order, deadline, _))| {
                armed.get(order) == Some(deadline) && answered.get(order) != Some(deadline)
            });
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
    fn a_resend_fires_while_its_step_lasts_and_never_after_the_order_moved_on() {
        let mut timers = DeadlineTimers::default();
        timers.arm(order(1), at(30));
        timers.arm(order(2), at(30));
        timers.arm_resend(order(1), at(30), at(2), 1);
        timers.arm_resend(order(2), at(30), at(2), 1);
        // A re-send at or after the deadline is pointless: the deadline decides then.
        timers.arm_resend(order(1), at(30), at(30), 2);
        // Order 2 got its answer: its step (and deadline) changed.
        timers.arm(order(2), at(90));
        assert!(timers.take_due_resends(at(1), 10).is_empty());
        assert_eq!(
            timers.take_due_resends(at(2), 10),
            vec![(order(1), at(30), 1)]
        );
        assert_eq!(timers.resends_len(), 0);
        timers.arm_resend(order(1), at(30), at(5), 2);
        timers.disarm(order(1));
        assert!(timers.take_due_resends(at(10), 10).is_empty());
    }

    #[test]
    fn an_answered_step_stops_resending_until_the_next_deadline() {
        let mut timers = DeadlineTimers::default();
        timers.arm(order(1), at(30));
        timers.arm_resend(order(1), at(30), at(2), 1);
        timers.answered(order(1));
        assert!(timers.take_due_resends(at(2), 10).is_empty());
        timers.arm_resend(order(1), at(30), at(4), 2);
        assert!(timers.take_due_resends(at(4), 10).is_empty());
        // The next step re-sends again.
        timers.arm(order(1), at(60));
        timers.arm_resend(order(1), at(60), at(32), 1);
        assert_eq!(
            timers.take_due_resends(at(32), 10),
            vec![(order(1), at(60), 1)]
        );
        assert_eq!(timers.take_due(at(30)), vec![]);
    }

    #[test]
    fn due_resends_beyond_the_budget_wait_for_the_next_round() {
        let mut timers = DeadlineTimers::default();
        for n in 0..5 {
            timers.arm(order(n), at(30));
            timers.arm_resend(order(n), at(30), at(1), 1);
        }
        assert_eq!(timers.take_due_resends(at(1), 3).len(), 3);
        assert_eq!(timers.take_due_resends(at(1), 3).len(), 2);
        assert!(timers.take_due_resends(at(1), 3).is_empty());
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
