//! The fake's memory: intents, idempotent responses, and the ledger tests read.
//! One std mutex guards it all; it is never held across an await.

use std::collections::{HashMap, HashSet};
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

#[derive(Debug, Default)]
pub struct Inner {
    pub intents: HashMap<String, Value>,
    pub idempotency: HashMap<String, Stored>,
    pub failed_first: HashSet<String>,
    pub charges: Vec<Charge>,
    pub refunds: Vec<RefundRecord>,
    pub creates: Vec<CreateRecord>,
    pub deliveries: Vec<DeliveryRecord>,
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
