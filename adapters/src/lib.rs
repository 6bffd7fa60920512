//! Adapters: the only code that talks to servers. Each module implements ports from the `actors`
//! crate (or feeds actors with what arrives from outside) for one technology:
//! `postgres` (snapshots, stock, outbox, payments, catalog), `nats` (JetStream streams, consumers,
//! the outbox relay) and `payment` (payment gateways).

pub mod nats;
pub mod payment;
pub mod postgres;
