//! The order saga as a pure function: `decide(state, event, now) -> Decision`.
//!
//! No I/O, no clock, no randomness: the actor supplies `now`, persists the next state together with
//! the effects (transactional outbox) and only then lets the effects leave. That split is what
//! makes duplicate, late and out-of-order events safe to reason about: they are just rows in the
//! table tests in `tests.rs`.

mod decide;
mod state;
#[cfg(test)]
mod tests;

pub use decide::{
    Decision, Effect, SagaEvent, Transition, decide, pending_command, start, start_with_timeouts,
};
pub use state::{
    Compensation, HistoryEntry, LatePayment, NewOrder, OrderState, OrderStatus, Pause,
    PaymentFailure, PaymentInfo, PaymentStatus, StepTimeouts,
};
