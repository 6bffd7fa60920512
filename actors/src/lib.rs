//! The inside of ordersaga: domain types, the pure saga state machine, the actors that run it, and
//! the ports (small traits) through which those actors reach the outside world.
//!
//! This crate deliberately depends on no I/O crate (no sqlx, async-nats, axum or reqwest). The
//! compiler thereby enforces the ports-and-adapters shape: every decision about an order can be
//! tested in microseconds, and the adapters crate is the only place that knows about servers.

pub mod cluster;
pub mod domain;
pub mod events;
pub mod inventory;
pub mod metrics;
pub mod orders;
pub mod payments;
pub mod ports;
pub mod postman;
pub mod saga;
