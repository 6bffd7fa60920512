//! Property tests of the pure saga (`actors::saga::decide`) against a small simulated world.
//!
//! One order, a simulated inventory (one or two SKUs) and a simulated payment provider. The world
//! is driven only by the effects the saga emits: every `Effect::Publish` goes into an in-flight
//! pool, and the inventory and the provider answer what they receive, like the real roles do
//! (idempotently: a repeated request changes nothing). Proptest picks the stock, the order, the
//! provider's behaviour, how many times each message is delivered (1–3), the order of delivery
//! (any message in flight may go next), very late redeliveries of old messages, timers firing at
//! the current deadline or at stale ones, spurious provider events, and how far the (never
//! decreasing) clock moves between steps. After the generated steps the pool is drained, and an
//! order that is still live gets its current deadline fired until it finishes: deadlines alone
//! must bring every order to an end.
//!
//! Checked on every applied transition: one version per new history entry, history appended (never rewritten) with
//! statuses that never go backwards, a terminal status never changes, a live order has a deadline
//! and a finished one has none, and inventory never holds more than it has. Checked at quiescence:
//! the order is finished, stock is conserved and nothing is left held, COMPLETED means charged and
//! committed exactly once, CANCELLED means nothing committed and every charge refunded exactly
//! once (the saga asking for a refund at most once per charge).
//!
//! `with_an_expiry_sweeper_too` adds one thing the saga does not drive: inventory's sweeper, which
//! releases a hold past its TTL. It finds a real gap (kept as an ignored regression test at the
//! end of this file).

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use actors::domain::{
    CorrelationId, Currency, CustomerId, Money, OrderId, PaymentMethod, PricedLine, Quantity, Sku,
};
use actors::events::{
    EventBody, InventoryOutOfStock, InventoryReleased, InventoryReserved, OrderCreated,
    PaymentCanceled, PaymentFailed, PaymentPending, PaymentRefunded, PaymentSucceeded, Shortage,
};
use actors::saga::{
    Decision, Effect, NewOrder, OrderState, OrderStatus, SagaEvent, StepTimeouts, decide,
    start_with_timeouts,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const SKUS: [&str; 2] = ["SKU-A", "SKU-B"];
/// The provider's id for the order's one charge (one attempt per order).
const CHARGE: &str = "pi_1";
const REFUND: &str = "re_1";
/// The drain phase gives up (and fails the case) after this many steps.
const DRAIN_LIMIT: usize = 2_000;

// ------------------------------------------------------------------------------------------------
// What proptest generates
// ------------------------------------------------------------------------------------------------

/// How a charge turns out once it reaches the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Later {
    Succeed,
    Decline,
    /// The provider cancels the charge on its own (e.g. it expired unconfirmed).
    Cancel,
    /// Stays processing forever: only the saga's deadline ends the order.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChargePlan {
    /// Charged at once (the payment role publishes pending then succeeded, or just succeeded).
    Succeed { pending_first: bool },
    /// Declined at once, with or without a provider reference.
    Decline { with_reference: bool },
    /// Processing: pending now, the outcome arrives later by webhook.
    Processing { then: Later },
    /// The provider says nothing until its webhook (the saga never learns the reference first).
    Silent { then: Later },
    /// Spurious: declined, then a webhook says it succeeded after all (money taken).
    DeclineThenSucceed,
    /// Spurious: succeeded, then a stray failure and a stray pending for the same charge.
    SucceedThenRegress,
}

#[derive(Debug, Clone)]
enum Step {
    /// One copy of the in-flight message `pick % len` is delivered, `dt_ms` after the previous step.
    Deliver { pick: usize, dt_ms: i64 },
    /// The timer for the current deadline fires: at its deadline (`on_time`), or whenever the
    /// clock is now (possibly early).
    FireCurrent { on_time: bool, dt_ms: i64 },
    /// A timer armed for some earlier deadline fires (late, so at or after that deadline).
    FireStale { pick: usize, dt_ms: i64 },
    /// A message delivered long ago is delivered once more.
    Redeliver { pick: usize, dt_ms: i64 },
    /// A refund of some other payment reaches the saga.
    ForeignRefund { dt_ms: i64 },
    /// Inventory's expiry sweeper runs: a reservation past its TTL is released (if the scenario
    /// has a TTL), and the saga is told.
    Sweep { dt_ms: i64 },
}

#[derive(Debug, Clone)]
struct Scenario {
    /// Units on hand per SKU (one or two SKUs).
    stock: Vec<i64>,
    /// Order lines: (SKU index, quantity). The same SKU may appear twice.
    lines: Vec<(usize, i64)>,
    timeouts: StepTimeouts,
    charge: ChargePlan,
    /// Whether the provider honours a cancel request for a charge still processing.
    cancel_works: bool,
    /// Reservation TTL: inventory's sweeper releases holds older than this (`None`: no sweeper).
    reservation_ttl_ms: Option<i64>,
    /// How many times the n-th published message is delivered (cycled).
    copies: Vec<u8>,
    steps: Vec<Step>,
}

fn later() -> impl Strategy<Value = Later> {
    prop_oneof![
        Just(Later::Succeed),
        Just(Later::Decline),
        Just(Later::Cancel),
        Just(Later::Never)
    ]
}

fn charge_plan() -> impl Strategy<Value = ChargePlan> {
    prop_oneof![
        3 => any::<bool>().prop_map(|pending_first| ChargePlan::Succeed { pending_first }),
        2 => any::<bool>().prop_map(|with_reference| ChargePlan::Decline { with_reference }),
        2 => later().prop_map(|then| ChargePlan::Processing { then }),
        1 => later().prop_map(|then| ChargePlan::Silent { then }),
        1 => Just(ChargePlan::DeclineThenSucceed),
        1 => Just(ChargePlan::SucceedThenRegress),
    ]
}

/// Mostly small clock moves, sometimes big ones that cross step deadlines.
fn dt() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..500, 1 => 0i64..30_000]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (any::<usize>(), dt()).prop_map(|(pick, dt_ms)| Step::Deliver { pick, dt_ms }),
        1 => (any::<bool>(), dt()).prop_map(|(on_time, dt_ms)| Step::FireCurrent { on_time, dt_ms }),
        1 => (any::<usize>(), dt()).prop_map(|(pick, dt_ms)| Step::FireStale { pick, dt_ms }),
        1 => (any::<usize>(), dt()).prop_map(|(pick, dt_ms)| Step::Redeliver { pick, dt_ms }),
        1 => dt().prop_map(|dt_ms| Step::ForeignRefund { dt_ms }),
        1 => dt().prop_map(|dt_ms| Step::Sweep { dt_ms }),
    ]
}

/// Scenarios; `sweeper` adds inventory's reservation-expiry sweeper to the world.
fn scenario(sweeper: bool) -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(prop_oneof![1 => 0i64..=3, 3 => 4i64..=8], 1..=2),
        prop::collection::vec((0usize..2, 1i64..=3), 1..=2),
        (2_000u64..=20_000, 5_000u64..=30_000),
        charge_plan(),
        (any::<bool>(), 1u64..=4),
        prop::collection::vec(1u8..=3, 1..=12),
        prop::collection::vec(step(), 0..=60),
    )
        .prop_map(
            move |(
                stock,
                lines,
                (inventory_ms, payment_ms),
                charge,
                (cancel_works, ttl),
                copies,
                steps,
            )| {
                let skus = stock.len();
                Scenario {
                    lines: lines.into_iter().map(|(s, q)| (s % skus, q)).collect(),
                    stock,
                    timeouts: StepTimeouts {
                        inventory_ms,
                        payment_ms,
                    },
                    charge,
                    cancel_works,
                    // Configured at least as long as the payment step (900 s against 60 s by
                    // default); here 1 to 4 payment steps.
                    reservation_ttl_ms: sweeper.then_some((ttl * payment_ms) as i64),
                    copies,
                    steps,
                }
            },
        )
}

// ------------------------------------------------------------------------------------------------
// The simulated world
// ------------------------------------------------------------------------------------------------

/// A provider webhook that has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// The processing charge resolves.
    Resolve(Later),
    /// The declined charge succeeds after all (spurious success after a failure).
    SucceedAfterDecline,
}

#[derive(Debug, Clone, PartialEq)]
enum Msg {
    Bus(EventBody),
    Webhook(Hook),
}

impl Msg {
    fn name(&self) -> String {
        match self {
            Msg::Bus(body) => body.subject().to_owned(),
            Msg::Webhook(hook) => format!("webhook {hook:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    msg: Msg,
    left: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Reserved,
    OutOfStock,
    Cancelled,
}

/// Stock of one or two SKUs and this order's reservation, decided once per order (as the ledger
/// does: a repeated or late `order.created` finds the order already decided).
#[derive(Debug)]
struct Inventory {
    initial: Vec<i64>,
    on_hand: Vec<i64>,
    reserved: Vec<i64>,
    committed: Vec<i64>,
    /// The order's wanted units per SKU (repeated SKUs merged).
    wanted: Vec<i64>,
    decided: Option<Decided>,
    held: Vec<(usize, i64)>,
    ttl: Duration,
    expires_at: Option<DateTime<Utc>>,
    /// Whether the expiry sweeper runs.
    sweeper: bool,
    /// Commits that actually moved units.
    commits: u32,
    /// What the sweeper released, so a late confirmation can take it again.
    expired: Vec<(usize, i64)>,
}

impl Inventory {
    fn new(stock: &[i64], lines: &[(usize, i64)], ttl_ms: Option<i64>) -> Self {
        let mut wanted = vec![0; stock.len()];
        for (sku, quantity) in lines {
            wanted[*sku] += quantity;
        }
        Self {
            initial: stock.to_vec(),
            on_hand: stock.to_vec(),
            reserved: vec![0; stock.len()],
            committed: vec![0; stock.len()],
            wanted,
            decided: None,
            held: Vec::new(),
            ttl: Duration::milliseconds(ttl_ms.unwrap_or(900_000)),
            expires_at: None,
            sweeper: ttl_ms.is_some(),
            commits: 0,
            expired: Vec::new(),
        }
    }

    fn on_created(&mut self, created: &OrderCreated, now: DateTime<Utc>) -> Vec<EventBody> {
        if self.decided.is_some() {
            return Vec::new();
        }
        let shortages: Vec<Shortage> = self
            .wanted
            .iter()
            .enumerate()
            .filter(|(_, want)| **want > 0)
            .filter_map(|(s, want)| {
                let have = (self.on_hand[s] - self.reserved[s]).max(0);
                (*want > have).then(|| Shortage {
                    sku: sku(SKUS[s]),
                    requested: u32::try_from(*want).unwrap_or(u32::MAX),
                    available: have,
                })
            })
            .collect();
        if !shortages.is_empty() {
            self.decided = Some(Decided::OutOfStock);
            return vec![EventBody::InventoryOutOfStock(InventoryOutOfStock {
                shortages,
            })];
        }
        for (s, want) in self.wanted.iter().enumerate() {
            if *want > 0 {
                self.reserved[s] += want;
                self.held.push((s, *want));
            }
        }
        self.decided = Some(Decided::Reserved);
        let expires_at = now + self.ttl;
        self.expires_at = Some(expires_at);
        vec![EventBody::InventoryReserved(InventoryReserved {
            lines: created.order_lines(),
            expires_at,
        })]
    }

    /// The expiry sweeper: releases a hold past its TTL and says so.
    fn sweep(&mut self, now: DateTime<Utc>) -> Vec<EventBody> {
        let due = self.sweeper && self.expires_at.is_some_and(|at| now >= at);
        if due {
            self.expired.extend(self.held.iter().copied());
        }
        if due && self.settle(false) > 0 {
            Self::released("reservation expired")
        } else {
            Vec::new()
        }
    }

    /// Releases (or commits) whatever the order still holds; returns the rows that changed.
    fn settle(&mut self, commit: bool) -> usize {
        if !commit {
            self.decided.get_or_insert(Decided::Cancelled);
        }
        let mut held = std::mem::take(&mut self.held);
        // Like the Postgres ledger: a confirmation that finds its reservation expired takes the
        // units again if they are still available.
        if commit && held.is_empty() && self.commits == 0 {
            let expired = std::mem::take(&mut self.expired);
            let available = expired
                .iter()
                .all(|(s, q)| self.on_hand[*s] - self.reserved[*s] >= *q);
            if available {
                for (s, quantity) in &expired {
                    self.reserved[*s] += quantity;
                }
                held = expired;
            }
        }
        for (s, quantity) in &held {
            self.reserved[*s] -= quantity;
            if commit {
                self.on_hand[*s] -= quantity;
                self.committed[*s] += quantity;
            }
        }
        if commit && !held.is_empty() {
            self.commits += 1;
        }
        held.len()
    }

    fn released(reason: &str) -> Vec<EventBody> {
        vec![EventBody::InventoryReleased(InventoryReleased {
            reason: reason.to_owned(),
        })]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChargeStatus {
    Processing,
    Succeeded,
    Failed,
    Canceled,
}

/// The payment provider plus the payment role in front of it: one charge per order (idempotency
/// key), one refund per charge, cancels only a charge that is still processing.
#[derive(Debug)]
struct Provider {
    plan: ChargePlan,
    cancel_works: bool,
    charge: Option<ChargeStatus>,
    /// Money was taken (a success was reported) at some point.
    money_taken: bool,
    refunds: u32,
}

fn pending_body() -> EventBody {
    EventBody::PaymentPending(PaymentPending {
        payment_reference: CHARGE.into(),
    })
}
fn succeeded_body() -> EventBody {
    EventBody::PaymentSucceeded(PaymentSucceeded {
        payment_reference: CHARGE.into(),
    })
}
fn canceled_body() -> EventBody {
    EventBody::PaymentCanceled(PaymentCanceled {
        payment_reference: CHARGE.into(),
    })
}
fn failed_body(reference: Option<&str>) -> EventBody {
    EventBody::PaymentFailed(PaymentFailed {
        payment_reference: reference.map(str::to_owned),
        code: "card_declined".into(),
        message: "Your card was declined.".into(),
    })
}

impl Provider {
    fn on_requested(&mut self) -> Vec<Msg> {
        if self.charge.is_some() {
            return Vec::new(); // the same attempt again: already recorded
        }
        let bus = |bodies: Vec<EventBody>| bodies.into_iter().map(Msg::Bus).collect::<Vec<_>>();
        match self.plan {
            ChargePlan::Succeed { pending_first } => {
                self.charge = Some(ChargeStatus::Succeeded);
                self.money_taken = true;
                if pending_first {
                    bus(vec![pending_body(), succeeded_body()])
                } else {
                    bus(vec![succeeded_body()])
                }
            }
            ChargePlan::Decline { with_reference } => {
                self.charge = Some(ChargeStatus::Failed);
                bus(vec![failed_body(with_reference.then_some(CHARGE))])
            }
            ChargePlan::Processing { then } => {
                self.charge = Some(ChargeStatus::Processing);
                let mut out = bus(vec![pending_body()]);
                if then != Later::Never {
                    out.push(Msg::Webhook(Hook::Resolve(then)));
                }
                out
            }
            ChargePlan::Silent { then } => {
                self.charge = Some(ChargeStatus::Processing);
                if then == Later::Never {
                    Vec::new()
                } else {
                    vec![Msg::Webhook(Hook::Resolve(then))]
                }
            }
            ChargePlan::DeclineThenSucceed => {
                self.charge = Some(ChargeStatus::Failed);
                vec![
                    Msg::Bus(failed_body(Some(CHARGE))),
                    Msg::Webhook(Hook::SucceedAfterDecline),
                ]
            }
            ChargePlan::SucceedThenRegress => {
                self.charge = Some(ChargeStatus::Succeeded);
                self.money_taken = true;
                bus(vec![
                    succeeded_body(),
                    failed_body(Some(CHARGE)),
                    pending_body(),
                ])
            }
        }
    }

    fn on_webhook(&mut self, hook: Hook) -> Vec<Msg> {
        match (hook, self.charge) {
            (Hook::Resolve(Later::Succeed), Some(ChargeStatus::Processing))
            | (Hook::SucceedAfterDecline, Some(ChargeStatus::Failed)) => {
                self.charge = Some(ChargeStatus::Succeeded);
                self.money_taken = true;
                vec![Msg::Bus(succeeded_body())]
            }
            (Hook::Resolve(Later::Decline), Some(ChargeStatus::Processing)) => {
                self.charge = Some(ChargeStatus::Failed);
                vec![Msg::Bus(failed_body(Some(CHARGE)))]
            }
            (Hook::Resolve(Later::Cancel), Some(ChargeStatus::Processing)) => {
                self.charge = Some(ChargeStatus::Canceled);
                vec![Msg::Bus(canceled_body())]
            }
            // Duplicates and regressions are not applied.
            _ => Vec::new(),
        }
    }

    fn on_cancel(&mut self, reference: Option<&str>) -> Vec<Msg> {
        // Without a reference the payment role has nothing to cancel (a later success is refunded).
        if reference == Some(CHARGE)
            && self.cancel_works
            && self.charge == Some(ChargeStatus::Processing)
        {
            self.charge = Some(ChargeStatus::Canceled);
            return vec![Msg::Bus(canceled_body())];
        }
        Vec::new()
    }
}

fn rank(status: OrderStatus) -> u8 {
    match status {
        OrderStatus::Pending => 0,
        OrderStatus::StockReserved => 1,
        OrderStatus::PaymentProcessing => 2,
        OrderStatus::Completed | OrderStatus::Cancelled => 3,
    }
}

fn sku(raw: &str) -> Sku {
    Sku::parse(raw).unwrap()
}

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0)
        .single()
        .expect("valid timestamp")
}

fn new_order(lines: &[(usize, i64)]) -> NewOrder {
    let eur = Currency::parse("EUR").unwrap();
    let unit = Money::new(500, eur).unwrap();
    let units: i64 = lines.iter().map(|(_, q)| q).sum();
    NewOrder {
        order_id: OrderId::new(),
        correlation_id: CorrelationId::new(),
        customer_id: CustomerId::parse("c-1").unwrap(),
        lines: lines
            .iter()
            .map(|(s, q)| PricedLine {
                sku: sku(SKUS[*s]),
                quantity: Quantity::try_from(*q).unwrap(),
                unit_price: unit,
            })
            .collect(),
        amount: Money::new(500 * units, eur).unwrap(),
        payment_method: PaymentMethod::parse("pm_card_visa").unwrap(),
    }
}

/// Fails the case with the message and the trace of everything that happened so far.
macro_rules! check {
    ($world:expr, $cond:expr, $($fmt:tt)+) => {
        prop_assert!(
            $cond,
            "{}\n--- trace ---\n{}",
            format!($($fmt)+),
            $world.trace.join("\n")
        )
    };
}

struct World {
    state: OrderState,
    clock: DateTime<Utc>,
    pool: Vec<InFlight>,
    /// Every message delivered so far (for very late redeliveries).
    delivered: Vec<Msg>,
    inventory: Inventory,
    provider: Provider,
    copies: Vec<u8>,
    published: usize,
    /// Every deadline the saga has armed.
    armed: Vec<DateTime<Utc>>,
    applied: i64,
    first_terminal: Option<OrderStatus>,
    /// Refund requests the saga published, per charge reference.
    refund_requests: BTreeMap<String, u32>,
    trace: Vec<String>,
}

impl World {
    fn new(s: &Scenario) -> Self {
        let started = start_with_timeouts(new_order(&s.lines), s.timeouts, t0());
        let mut world = World {
            state: started.next.clone(),
            clock: t0(),
            pool: Vec::new(),
            delivered: Vec::new(),
            inventory: Inventory::new(&s.stock, &s.lines, s.reservation_ttl_ms),
            provider: Provider {
                plan: s.charge,
                cancel_works: s.cancel_works,
                charge: None,
                money_taken: false,
                refunds: 0,
            },
            copies: s.copies.clone(),
            published: 0,
            armed: started.next.deadline.into_iter().collect(),
            applied: 0,
            first_terminal: None,
            refund_requests: BTreeMap::new(),
            trace: vec![format!(
                "start: PENDING v1, deadline {:?}",
                started.next.deadline
            )],
        };
        for Effect::Publish(body) in started.effects {
            world.publish(Msg::Bus(body));
        }
        world
    }

    fn ms(&self) -> i64 {
        (self.clock - t0()).num_milliseconds()
    }

    fn tick(&mut self, dt_ms: i64) {
        self.clock += Duration::milliseconds(dt_ms);
    }

    fn publish(&mut self, msg: Msg) {
        let left = self
            .copies
            .get(self.published % self.copies.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        self.published += 1;
        self.pool.push(InFlight { msg, left });
    }

    fn publish_all(&mut self, msgs: Vec<Msg>) {
        for msg in msgs {
            self.publish(msg);
        }
    }

    fn check_stock(&self) -> Result<(), TestCaseError> {
        for (s, name) in SKUS.iter().enumerate().take(self.inventory.on_hand.len()) {
            let (on_hand, reserved) = (self.inventory.on_hand[s], self.inventory.reserved[s]);
            check!(
                self,
                0 <= reserved && reserved <= on_hand,
                "oversell or negative stock on {name}: on_hand {on_hand}, reserved {reserved}"
            );
        }
        Ok(())
    }

    /// Delivers one copy of the in-flight message at `index`.
    fn deliver(&mut self, index: usize) -> Result<(), TestCaseError> {
        let Some(slot) = self.pool.get_mut(index) else {
            return Ok(());
        };
        slot.left = slot.left.saturating_sub(1);
        let msg = slot.msg.clone();
        if slot.left == 0 {
            self.pool.remove(index);
        }
        self.route(msg)
    }

    fn route(&mut self, msg: Msg) -> Result<(), TestCaseError> {
        self.delivered.push(msg.clone());
        let now = self.clock;
        let ms = self.ms();
        match &msg {
            Msg::Webhook(hook) => {
                let out = self.provider.on_webhook(*hook);
                self.trace
                    .push(format!("t+{ms}ms provider <- {hook:?}: {:?}", names(&out)));
                self.publish_all(out);
            }
            Msg::Bus(body) => {
                let out: Option<Vec<Msg>> = match body {
                    EventBody::OrderCreated(created) => Some(
                        self.inventory
                            .on_created(created, now)
                            .into_iter()
                            .map(Msg::Bus)
                            .collect(),
                    ),
                    EventBody::InventoryReleaseRequested(r) => {
                        self.inventory.settle(false);
                        Some(
                            Inventory::released(&r.reason)
                                .into_iter()
                                .map(Msg::Bus)
                                .collect(),
                        )
                    }
                    EventBody::OrderCancelled(c) => {
                        let rows = self.inventory.settle(false);
                        Some(if rows > 0 {
                            Inventory::released(&c.reason)
                                .into_iter()
                                .map(Msg::Bus)
                                .collect()
                        } else {
                            Vec::new()
                        })
                    }
                    EventBody::OrderConfirmed(_) => {
                        self.inventory.settle(true);
                        Some(Vec::new())
                    }
                    EventBody::PaymentRequested(_) => Some(self.provider.on_requested()),
                    EventBody::PaymentCancelRequested(c) => {
                        Some(self.provider.on_cancel(c.payment_reference.as_deref()))
                    }
                    EventBody::PaymentRefundRequested(r) => {
                        check!(
                            self,
                            r.payment_reference == CHARGE && self.provider.money_taken,
                            "refund requested for a charge that took no money: {r:?}"
                        );
                        if self.provider.refunds > 0 {
                            Some(Vec::new()) // already refunded: the payment role does nothing
                        } else {
                            self.provider.refunds += 1;
                            Some(vec![Msg::Bus(EventBody::PaymentRefunded(
                                PaymentRefunded {
                                    payment_reference: CHARGE.into(),
                                    refund_id: REFUND.into(),
                                },
                            ))])
                        }
                    }
                    _ => None,
                };
                match out {
                    Some(out) => {
                        self.trace.push(format!(
                            "t+{ms}ms world <- {}: {:?}",
                            body.subject(),
                            names(&out)
                        ));
                        self.publish_all(out);
                        self.check_stock()?;
                    }
                    None => match SagaEvent::from_body(body) {
                        Some(event) => self.saga(&event)?,
                        None => check!(self, false, "nobody consumes {}", body.subject()),
                    },
                }
            }
        }
        Ok(())
    }

    /// Feeds one event to the saga and checks the transition.
    fn saga(&mut self, event: &SagaEvent) -> Result<(), TestCaseError> {
        let now = self.clock;
        let ms = self.ms();
        let before = self.state.clone();
        let tr = match decide(&before, event, now) {
            Decision::Ignore(why) => {
                self.trace.push(format!(
                    "t+{ms}ms saga <- {}: ignored ({why}) in {}",
                    event.name(),
                    before.status.as_str()
                ));
                return Ok(());
            }
            Decision::Apply(tr) => tr,
        };
        let next = tr.next;
        let effects: Vec<EventBody> = tr.effects.into_iter().map(|Effect::Publish(b)| b).collect();
        self.trace.push(format!(
            "t+{ms}ms saga <- {}: {} -> {} v{} deadline {:?} publishes {:?}",
            event.name(),
            before.status.as_str(),
            next.status.as_str(),
            next.version,
            next.deadline.map(|d| (d - t0()).num_milliseconds()),
            effects.iter().map(EventBody::subject).collect::<Vec<_>>()
        ));
        self.applied += 1;

        // 4. version and history
        // One version per history entry: a transition may add several (a success reported at
        // once records PAYMENT_PROCESSING and COMPLETED), never none.
        check!(
            self,
            next.version > before.version
                && next.version - before.version
                    == (next.history.len() - before.history.len()) as i64,
            "version {} -> {} with {} new history entries",
            before.version,
            next.version,
            next.history.len().saturating_sub(before.history.len())
        );
        check!(
            self,
            next.history.len() > before.history.len()
                && next.history[..before.history.len()] == before.history[..],
            "history not appended to"
        );
        let ranks: Vec<u8> = next.history.iter().map(|h| rank(h.status)).collect();
        check!(
            self,
            ranks.windows(2).all(|w| w[0] <= w[1]),
            "statuses in history go backwards: {:?}",
            next.history.iter().map(|h| h.status).collect::<Vec<_>>()
        );
        check!(
            self,
            rank(next.status) >= rank(before.status),
            "status went back from {:?} to {:?}",
            before.status,
            next.status
        );
        check!(
            self,
            next.history.last().map(|h| h.status) == Some(next.status),
            "the last history entry does not match the status"
        );
        // 5. terminal is forever
        if before.is_terminal() {
            check!(
                self,
                next.status == before.status,
                "a finished order changed status: {:?} -> {:?}",
                before.status,
                next.status
            );
        }
        // 1. (per step) live orders have a deadline, finished ones none
        check!(
            self,
            next.deadline.is_some() != next.is_terminal(),
            "status {:?} with deadline {:?}",
            next.status,
            next.deadline
        );
        // 3. refund requested at most once per charge
        for body in &effects {
            if let EventBody::PaymentRefundRequested(r) = body {
                let n = self
                    .refund_requests
                    .entry(r.payment_reference.clone())
                    .or_insert(0);
                *n += 1;
                let n = *n;
                check!(
                    self,
                    n == 1,
                    "refund of {} requested {n} times",
                    r.payment_reference
                );
            }
        }

        if let Some(d) = next.deadline
            && next.deadline != before.deadline
        {
            self.armed.push(d);
        }
        if next.is_terminal() {
            let first = *self.first_terminal.get_or_insert(next.status);
            check!(
                self,
                first == next.status,
                "terminal status changed from {first:?} to {:?}",
                next.status
            );
        }
        self.state = next;
        for body in effects {
            self.publish(Msg::Bus(body));
        }
        Ok(())
    }

    fn fire(&mut self, deadline: DateTime<Utc>) -> Result<(), TestCaseError> {
        self.saga(&SagaEvent::DeadlinePassed { deadline })
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::Deliver { pick, dt_ms } => {
                self.tick(*dt_ms);
                if !self.pool.is_empty() {
                    let i = pick % self.pool.len();
                    self.deliver(i)?;
                }
            }
            Step::FireCurrent { on_time, dt_ms } => {
                self.tick(*dt_ms);
                if let Some(deadline) = self.state.deadline {
                    if *on_time {
                        self.clock = self.clock.max(deadline);
                    }
                    self.fire(deadline)?;
                }
            }
            Step::FireStale { pick, dt_ms } => {
                self.tick(*dt_ms);
                if !self.armed.is_empty() {
                    let deadline = self.armed[pick % self.armed.len()];
                    self.clock = self.clock.max(deadline);
                    self.fire(deadline)?;
                }
            }
            Step::Redeliver { pick, dt_ms } => {
                self.tick(*dt_ms);
                if !self.delivered.is_empty() {
                    let msg = self.delivered[pick % self.delivered.len()].clone();
                    self.route(msg)?;
                }
            }
            Step::Sweep { dt_ms } => {
                self.tick(*dt_ms);
                let out: Vec<Msg> = self
                    .inventory
                    .sweep(self.clock)
                    .into_iter()
                    .map(Msg::Bus)
                    .collect();
                if !out.is_empty() {
                    self.trace
                        .push(format!("t+{}ms sweeper: {:?}", self.ms(), names(&out)));
                }
                self.publish_all(out);
            }
            Step::ForeignRefund { dt_ms } => {
                self.tick(*dt_ms);
                self.saga(&SagaEvent::PaymentRefunded {
                    reference: "pi_other".into(),
                    refund_id: "re_other".into(),
                })?;
            }
        }
        Ok(())
    }

    /// Delivers everything in flight (oldest first); a live order with nothing in flight gets its
    /// current deadline fired, with the clock moved past it.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..DRAIN_LIMIT {
            if !self.pool.is_empty() {
                self.tick(1);
                self.deliver(0)?;
            } else if let Some(deadline) = self.state.deadline {
                self.clock = self.clock.max(deadline) + Duration::milliseconds(1);
                self.trace
                    .push(format!("t+{}ms quiet: firing the deadline", self.ms()));
                self.fire(deadline)?;
            } else {
                return Ok(());
            }
        }
        check!(
            self,
            false,
            "no quiescence after {DRAIN_LIMIT} drain steps: {:?} in flight, status {:?}",
            self.pool.iter().map(|f| f.msg.name()).collect::<Vec<_>>(),
            self.state.status
        );
        Ok(())
    }

    fn check_quiescent(&self) -> Result<(), TestCaseError> {
        let state = &self.state;
        // 1. finished, no deadline
        check!(
            self,
            state.is_terminal() && state.deadline.is_none(),
            "not finished at quiescence: {:?}, deadline {:?}",
            state.status,
            state.deadline
        );
        // 4. one version per history entry, at least one per applied transition
        check!(
            self,
            state.version == state.history.len() as i64 && state.version > self.applied,
            "version {} after {} transitions and {} history entries",
            state.version,
            self.applied,
            state.history.len()
        );
        check!(
            self,
            state.history.len() as i64 > self.applied,
            "history has {} entries after {} transitions",
            state.history.len(),
            self.applied
        );
        // 2. stock conserved and nothing left held
        let inv = &self.inventory;
        for (s, name) in SKUS.iter().enumerate().take(inv.on_hand.len()) {
            check!(
                self,
                inv.on_hand[s] + inv.committed[s] == inv.initial[s] && inv.reserved[s] == 0,
                "{name}: initial {}, on_hand {}, committed {}, reserved {}",
                inv.initial[s],
                inv.on_hand[s],
                inv.committed[s],
                inv.reserved[s]
            );
        }
        check!(
            self,
            inv.held.is_empty(),
            "units still held: {:?}",
            inv.held
        );
        // 3. money and stock agree with the outcome
        let pay = &self.provider;
        match state.status {
            OrderStatus::Completed => {
                check!(
                    self,
                    pay.money_taken,
                    "COMPLETED without a successful charge"
                );
                check!(
                    self,
                    pay.refunds == 0,
                    "COMPLETED but the charge was refunded"
                );
                check!(
                    self,
                    inv.commits == 1 && inv.committed == inv.wanted,
                    "COMPLETED: {} commits, committed {:?}, ordered {:?}",
                    inv.commits,
                    inv.committed,
                    inv.wanted
                );
                let payment = state.payment.as_ref();
                check!(
                    self,
                    payment.and_then(|p| p.reference.as_deref()) == Some(CHARGE),
                    "COMPLETED without the charge's reference: {payment:?}"
                );
            }
            OrderStatus::Cancelled => {
                check!(
                    self,
                    inv.commits == 0 && inv.committed.iter().all(|c| *c == 0),
                    "CANCELLED but units were committed: {:?}",
                    inv.committed
                );
                if pay.money_taken {
                    check!(
                        self,
                        pay.refunds == 1,
                        "CANCELLED with a successful charge refunded {} times",
                        pay.refunds
                    );
                    let late = state.late_payment.as_ref();
                    check!(
                        self,
                        late.is_some_and(
                            |l| l.reference == CHARGE && l.refund_id.as_deref() == Some(REFUND)
                        ),
                        "CANCELLED with a charge, but the refund is not recorded: {late:?}"
                    );
                } else {
                    check!(
                        self,
                        pay.refunds == 0,
                        "refunded a charge that took no money"
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn names(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().map(Msg::name).collect()
}

/// Runs a scenario to quiescence and checks every property; returns the final world.
fn run(s: &Scenario) -> Result<World, TestCaseError> {
    let mut world = World::new(s);
    for step in &s.steps {
        world.step(step)?;
        world.check_stock()?;
    }
    world.drain()?;
    world.check_quiescent()?;
    Ok(world)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_interleaving_ends_finished_consistent_and_conserving_stock(s in scenario(false)) {
        run(&s)?;
    }

    #[test]
    fn with_an_expiry_sweeper_too(s in scenario(true)) {
        run(&s)?;
    }
}

// ------------------------------------------------------------------------------------------------
// Fixed scenarios: the model itself reaches each outcome
// ------------------------------------------------------------------------------------------------

fn deliver_all(n: usize) -> Vec<Step> {
    (0..n)
        .map(|_| Step::Deliver { pick: 0, dt_ms: 10 })
        .collect()
}

fn fixed(charge: ChargePlan, stock: i64) -> Scenario {
    Scenario {
        stock: vec![stock],
        lines: vec![(0, 2)],
        timeouts: StepTimeouts {
            inventory_ms: 1_000,
            payment_ms: 2_000,
        },
        charge,
        cancel_works: true,
        reservation_ttl_ms: None,
        copies: vec![1],
        steps: deliver_all(20),
    }
}

fn outcome(s: &Scenario) -> World {
    run(s).unwrap()
}

#[test]
fn the_model_completes_a_paid_order_and_commits_its_units() {
    let world = outcome(&fixed(
        ChargePlan::Succeed {
            pending_first: true,
        },
        5,
    ));
    assert_eq!(world.state.status, OrderStatus::Completed);
    assert_eq!(world.inventory.on_hand, vec![3]);
    assert_eq!(world.inventory.commits, 1);
}

#[test]
fn the_model_cancels_a_declined_order_and_puts_the_units_back() {
    let world = outcome(&fixed(
        ChargePlan::Decline {
            with_reference: true,
        },
        5,
    ));
    assert_eq!(world.state.status, OrderStatus::Cancelled);
    assert_eq!(world.inventory.on_hand, vec![5]);
}

#[test]
fn the_model_cancels_when_out_of_stock() {
    let world = outcome(&fixed(
        ChargePlan::Succeed {
            pending_first: true,
        },
        1,
    ));
    assert_eq!(world.state.status, OrderStatus::Cancelled);
    assert!(!world.provider.money_taken);
}

#[test]
fn the_model_refunds_a_success_after_a_decline() {
    let world = outcome(&fixed(ChargePlan::DeclineThenSucceed, 5));
    assert_eq!(world.state.status, OrderStatus::Cancelled);
    assert!(world.provider.money_taken);
    assert_eq!(world.provider.refunds, 1);
}

#[test]
fn the_model_ends_a_charge_that_never_resolves_by_its_deadline() {
    let world = outcome(&fixed(ChargePlan::Processing { then: Later::Never }, 5));
    assert_eq!(world.state.status, OrderStatus::Cancelled);
    assert_eq!(
        world.state.cancel_reason.as_deref(),
        Some("payment failed: payment_timeout: payment step timed out after 2s")
    );
    assert_eq!(world.provider.charge, Some(ChargeStatus::Canceled));
}

/// Found by `with_an_expiry_sweeper_too` (shrunk, then written out by hand). Payment step 5 s,
/// reservation TTL 5 s (at least the payment step, as configured by default: 60 s against 900 s).
/// The payment succeeds in time at the provider, but the saga processes the success 1 ms after its
/// payment deadline, before the deadline's timer: `decide` accepts a `PaymentSucceeded` without
/// looking at `now` against `state.deadline`, and COMPLETES. Meanwhile the sweeper released the
/// expired hold; its `inventory.released.v1` reaches a COMPLETED order and is ignored ("the order is
/// finished"), and `order.confirmed.v1` then commits nothing. The order is COMPLETED and charged,
/// but its units went back on sale: they can be sold twice.
#[test]
fn a_late_success_does_not_complete_an_order_whose_reservation_expired() {
    let deliver = |dt_ms| Step::Deliver { pick: 0, dt_ms };
    let s = Scenario {
        stock: vec![4],
        lines: vec![(0, 1)],
        timeouts: StepTimeouts {
            inventory_ms: 2_000,
            payment_ms: 5_000,
        },
        charge: ChargePlan::Processing {
            then: Later::Succeed,
        },
        cancel_works: false,
        reservation_ttl_ms: Some(5_000),
        copies: vec![1],
        steps: vec![
            // t+0: order.created is reserved; the hold expires at t+5 s.
            deliver(0),
            // inventory.reserved: STOCK_RESERVED, payment deadline t+5 s.
            deliver(0),
            // payment.requested: pending now, the success comes by webhook.
            deliver(0),
            // t+4 s: payment.pending: PAYMENT_PROCESSING.
            deliver(4_000),
            // t+4.5 s: the webhook: payment.succeeded is published.
            deliver(500),
            // t+5 s: the sweeper releases the expired hold; inventory.released is published.
            Step::Sweep { dt_ms: 500 },
            // t+5.001 s: payment.succeeded reaches the saga before the deadline's timer: COMPLETED.
            deliver(1),
        ],
    };
    // Drains: inventory.released is ignored (COMPLETED), order.confirmed commits nothing.
    run(&s).unwrap();
}
