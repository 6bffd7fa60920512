//! When a saga sends the command of its pending step again.
//!
//! A command handed straight to an actor in this process leaves no trace in any broker: if the
//! process dies before the answer is committed, only the saga's snapshot knows the step is still
//! pending. So the saga, not the transport, owns delivery: while a step waits for its answer, its
//! command is re-sent with exponential backoff until the answer comes or the step's deadline
//! decides; at start-up every live saga's command is re-sent once (crash recovery). Receivers are
//! idempotent by order id, so a re-send that crosses the first answer changes nothing.
//!
//! The delays are jittered per order (from the order id, so no randomness is needed and a test
//! can predict them) so that orders placed in the same millisecond do not re-send in lockstep.

use std::time::Duration;

use crate::domain::OrderId;

/// How a pending step's command is re-sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendPolicy {
    /// Delay before the first re-send (before jitter). Longer than a normal answer takes, so a
    /// healthy step is never re-sent.
    pub first: Duration,
    /// The longest delay between two re-sends.
    pub max: Duration,
}

impl Default for ResendPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(2),
            max: Duration::from_secs(30),
        }
    }
}

impl ResendPolicy {
    /// The delay before the `nth` re-send (1-based): `first`, doubled each time up to `max`,
    /// plus up to half of it again, by the order id.
    pub fn delay(&self, order: OrderId, nth: u32) -> chrono::Duration {
        let doublings = nth.saturating_sub(1).min(16);
        let base = self
            .first
            .saturating_mul(1 << doublings)
            .min(self.max)
            .max(Duration::from_millis(1));
        let spread = jitter(order, nth);
        let delay = base + base.mul_f64(spread / 2.0);
        chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::seconds(30))
    }
}

/// A number in [0, 1) fixed by the order id and the re-send's rank.
fn jitter(order: OrderId, nth: u32) -> f64 {
    // FNV-1a over the id's bytes and the rank: cheap, and well spread for v7 ids whose leading
    // bytes are a timestamp.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in order
        .as_uuid()
        .as_bytes()
        .iter()
        .chain(nth.to_le_bytes().iter())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_at_most_half_again_of_jitter() {
        let policy = ResendPolicy {
            first: Duration::from_secs(2),
            max: Duration::from_secs(10),
        };
        let order = OrderId::new();
        for (nth, base) in [
            (1, 2_000),
            (2, 4_000),
            (3, 8_000),
            (4, 10_000),
            (40, 10_000),
        ] {
            let delay = policy.delay(order, nth).num_milliseconds();
            assert!(
                (base..=base * 3 / 2).contains(&delay),
                "re-send {nth}: {delay} ms, expected {base}..={} ms",
                base * 3 / 2
            );
        }
    }

    #[test]
    fn orders_placed_together_do_not_resend_in_lockstep() {
        let policy = ResendPolicy::default();
        let delays: std::collections::BTreeSet<i64> = (0..50)
            .map(|_| policy.delay(OrderId::new(), 1).num_milliseconds())
            .collect();
        assert!(delays.len() > 25, "{delays:?}");
    }
}
