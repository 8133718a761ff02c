//! The integration tests of `provisioner`, one module per area, linked into one binary.

mod bad_input;
mod common;
mod dlq_refused;
mod example_config;
mod faults;
mod happy_path;
mod idempotency;
mod lifecycle;
mod migrations;
mod own_database;
mod placement;
mod production;
mod rollouts;
mod signals;
mod warm_pool;
