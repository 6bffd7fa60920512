//! Retry policy of one consumer (one saga step): exponential backoff with jitter between
//! redeliveries, a bound on attempts, after which the message is parked as a dead letter.
//! Written as `initial=100ms,multiplier=2,max=10s,attempts=20,jitter=0.2` in configuration.
//!
//! Hand-written rather than a backoff crate's: those (backon, backoff) drive a retry loop in
//! this process, while here the policy only computes the delay of a redelivery that JetStream
//! schedules (a `nak` with that delay) and the attempt at which the message is parked; what is
//! left is a few lines of arithmetic and the configuration syntax.

use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub multiplier: f64,
    pub max_interval: Duration,
    /// Deliveries before the message is parked (the first delivery counts).
    pub max_attempts: u32,
    /// Fraction of each delay that is randomised (0 = none, 1 = all), so retries of many
    /// messages that failed together do not come back together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_secs(10),
            max_attempts: 20,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Delay before the next delivery after `delivered` failed deliveries (1-based).
    pub fn delay(&self, delivered: u32) -> Duration {
        let exponent = i32::try_from(delivered.saturating_sub(1))
            .unwrap_or(i32::MAX)
            .min(64);
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max_interval.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let random = if jitter > 0.0 {
            rand::rng().random_range(0.0..=jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64((capped * (1.0 - jitter + random)).max(0.0))
    }

    /// Whether `delivered` deliveries exhaust the policy.
    pub fn exhausted(&self, delivered: u32) -> bool {
        delivered >= self.max_attempts
    }
}

fn duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => raw.split_at(i),
        None => (raw, "ms"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{raw}' is not a duration such as 250ms or 5s"))?;
    if !(0.0..=86_400.0 * 1000.0).contains(&value) {
        return Err(format!("'{raw}' is out of range"));
    }
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("'{raw}': unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

impl FromStr for RetryPolicy {
    type Err = String;

    /// Keys not given keep their defaults, so `attempts=5` alone is a valid policy.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut policy = RetryPolicy::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            match key.trim() {
                "initial" => policy.initial = duration(value)?,
                "max" => policy.max_interval = duration(value)?,
                "multiplier" => {
                    policy.multiplier = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|m: &f64| (1.0..=10.0).contains(m))
                        .ok_or("multiplier must be from 1 to 10")?
                }
                "attempts" => {
                    policy.max_attempts = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|a: &u32| (1..=1000).contains(a))
                        .ok_or("attempts must be from 1 to 1000")?
                }
                "jitter" => {
                    policy.jitter = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|j: &f64| (0.0..=1.0).contains(j))
                        .ok_or("jitter must be from 0 to 1")?
                }
                other => {
                    return Err(format!(
                        "unknown retry setting '{other}' (initial, multiplier, max, attempts, jitter)"
                    ));
                }
            }
        }
        if policy.initial > policy.max_interval {
            return Err("initial must not exceed max".into());
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_with_defaults_for_missing_keys() {
        let p: RetryPolicy = "initial=50ms,multiplier=3,max=2s,attempts=5,jitter=0"
            .parse()
            .unwrap_or_default();
        assert_eq!(p.initial, Duration::from_millis(50));
        assert_eq!(p.max_attempts, 5);
        let partial: RetryPolicy = "attempts=3".parse().unwrap_or_default();
        assert_eq!(
            (partial.max_attempts, partial.initial),
            (3, Duration::from_millis(100))
        );
        for bad in [
            "attempts=0",
            "jitter=2",
            "initial=5s,max=1s",
            "speed=1",
            "initial=fast",
            "attempts",
        ] {
            assert!(bad.parse::<RetryPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap_without_jitter() {
        let p: RetryPolicy = "initial=100ms,multiplier=2,max=1s,jitter=0"
            .parse()
            .unwrap_or_default();
        let ms: Vec<u128> = (1..=6).map(|d| p.delay(d).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert!(p.exhausted(20) && !p.exhausted(19));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p: RetryPolicy = "initial=1s,max=1s,jitter=0.5".parse().unwrap_or_default();
        for _ in 0..100 {
            let d = p.delay(1).as_millis();
            assert!((500..=1000).contains(&d), "{d}");
        }
    }
}
