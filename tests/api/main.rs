//! End-to-end tests: the real application (or the real binary) over HTTP, against a fresh
//! PostgreSQL database and a private JetStream server per test.

// A panic in a test or its helpers is the test failing, with its location: unwrap freely here
// (clippy.toml allows it inside test functions; this extends it to the helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod bad_input;
mod charge_records;
mod cluster;
mod direct_path;
mod edge;
mod faults;
mod inspection;
mod inventory;
mod load_smoke;
mod monitoring_bundle;
mod nats_cluster;
mod openapi;
mod operator_experience;
mod order_events;
mod orders;
mod payments;
mod processes;
mod stores;
mod stripe_client;
mod timeouts;
mod validation;
