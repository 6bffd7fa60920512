//! Adapters: the only code that talks to servers. Each module implements ports from the `actors`
//! crate (or feeds actors with what arrives from outside) for one technology:
//! `postgres` (snapshots, stock, outbox, payments, catalog), `nats` (JetStream streams, consumers,
//! the outbox relay) and `stripe` (the Stripe client and webhook verifier).

pub mod nats;
pub mod postgres;
pub mod stripe;
