//! The fake's memory: intents, idempotent responses, and the ledger tests read.
//! One std mutex guards it all; it is never held across an await.
//!
//! Bounded: it keeps the most recent `RETAIN` intents, idempotency keys and ledger entries and
//! forgets older ones (Stripe itself forgets idempotency keys after 24 hours). Without a bound the
//! fake that `serve` starts in-process grew by about 6 KiB per order, forever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use serde_json::{Value, json};

use crate::FakeConfig;

/// A response stored under an idempotency key, replayed for a repeat with the same parameters.
#[derive(Debug, Clone)]
pub struct Stored {
    pub fingerprint: String,
    pub status: u16,
    pub body: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Charge {
    pub payment_intent: String,
    pub amount: i64,
    pub currency: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefundRecord {
    pub id: String,
    pub payment_intent: String,
    pub amount: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreateRecord {
    pub idempotency_key: Option<String>,
    pub status: u16,
    pub replayed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    pub event_id: String,
    pub event_type: String,
    pub payment_intent: Option<String>,
    pub attempts: u32,
    pub delivered: bool,
}

/// How many of each kind of record the fake keeps.
pub const RETAIN: usize = 10_000;

#[derive(Debug, Default)]
pub struct Inner {
    pub intents: HashMap<String, Value>,
    /// Intent ids, oldest first (what `trim` forgets first).
    intent_order: VecDeque<String>,
    pub idempotency: HashMap<String, Stored>,
    key_order: VecDeque<String>,
    pub failed_first: HashSet<String>,
    pub charges: Vec<Charge>,
    pub refunds: Vec<RefundRecord>,
    pub creates: Vec<CreateRecord>,
    pub deliveries: Vec<DeliveryRecord>,
}

impl Inner {
    /// Stores an intent (new or updated); a new one may push the oldest out.
    pub fn put_intent(&mut self, id: String, intent: Value) {
        if self.intents.insert(id.clone(), intent).is_none() {
            self.intent_order.push_back(id);
        }
        self.trim(RETAIN);
    }

    /// Stores an idempotent response; a new key may push the oldest out.
    pub fn put_idempotent(&mut self, key: String, stored: Stored) {
        if self.idempotency.insert(key.clone(), stored).is_none() {
            self.key_order.push_back(key);
        }
        self.trim(RETAIN);
    }

    /// Forgets the oldest records beyond `keep` of each kind (in steps of an eighth, so the cost
    /// is amortised).
    pub fn trim(&mut self, keep: usize) {
        let slack = keep / 8 + 1;
        if self.intent_order.len() > keep + slack {
            for id in self.intent_order.drain(..self.intent_order.len() - keep) {
                self.intents.remove(&id);
            }
        }
        if self.key_order.len() > keep + slack {
            for key in self.key_order.drain(..self.key_order.len() - keep) {
                self.idempotency.remove(&key);
                self.failed_first.remove(&key);
            }
        }
        fn cut<T>(records: &mut Vec<T>, keep: usize, slack: usize) {
            if records.len() > keep + slack {
                records.drain(..records.len() - keep);
            }
        }
        cut(&mut self.charges, keep, slack);
        cut(&mut self.refunds, keep, slack);
        cut(&mut self.creates, keep, slack);
        cut(&mut self.deliveries, keep, slack);
    }
}

pub struct FakeState {
    pub inner: Mutex<Inner>,
    pub config: RwLock<FakeConfig>,
    pub http: reqwest::Client,
}

impl FakeState {
    pub fn new(config: FakeConfig) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            config: RwLock::new(config),
            http: reqwest::Client::new(),
        })
    }

    /// Runs `f` with the state locked. A poisoned lock (a panic elsewhere) still yields the data:
    /// the fake keeps serving rather than failing every later request.
    pub fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub fn config(&self) -> FakeConfig {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_webhook_url(&self, url: Option<String>) {
        let mut config = match self.config.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        config.webhook_url = url;
    }

    pub fn ledger(&self) -> Value {
        self.with(|inner| {
            let mut intents: Vec<&Value> = inner.intents.values().collect();
            intents.sort_by_key(|i| i["created"].as_i64().unwrap_or(0));
            json!({
                "intents": intents,
                "charges": inner.charges,
                "refunds": inner.refunds,
                "creates": inner.creates,
                "deliveries": inner.deliveries,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_forgets_the_oldest_records_and_keeps_the_newest() {
        let mut inner = Inner::default();
        for i in 0..30 {
            inner.put_intent(format!("pi_{i}"), json!({"n": i}));
            // An update of an existing intent is not a new record.
            inner.put_intent(format!("pi_{i}"), json!({"n": i, "updated": true}));
            inner.put_idempotent(
                format!("key_{i}"),
                Stored {
                    fingerprint: String::new(),
                    status: 200,
                    body: json!({}),
                },
            );
            inner.creates.push(CreateRecord {
                idempotency_key: None,
                status: 200,
                replayed: false,
            });
        }
        inner.trim(10);
        assert_eq!(inner.intents.len(), 10);
        assert!(inner.intents.contains_key("pi_29") && !inner.intents.contains_key("pi_19"));
        assert_eq!(inner.idempotency.len(), 10);
        assert!(inner.idempotency.contains_key("key_20"));
        assert_eq!(inner.creates.len(), 10);
        // Within the slack nothing is dropped (trimming is amortised).
        inner.put_intent("pi_30".into(), json!({}));
        inner.trim(10);
        assert_eq!(inner.intents.len(), 11);
    }
}
