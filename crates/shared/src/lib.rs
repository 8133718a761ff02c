//! Shared runtime of the tenant fleet.
//!
//! Every worker is a library with a `run(fleet, shutdown)` entry point built from the pieces here:
//! [`config::Settings`] (validated environment), [`codes::Code`] (the validated tenant/org code
//! newtype), [`events`] (typed payloads), [`topology`] (JetStream streams and consumers, ensured
//! idempotently), [`worker`] (the message loop: bounded concurrency, ack/NAK/dead-letter decisions,
//! graceful shutdown), [`http`] (`/healthz`, `/readyz`, `/metrics`), [`telemetry`], [`db`]
//! (Postgres pool and versioned migrations) and [`fleet::Fleet`] (the connections, built once).

pub mod cli;
pub mod codes;
pub mod config;
pub mod config_keys;
pub mod databases;
pub mod db;
pub mod dlq;
pub mod dlq_replay;
pub mod duration;
pub mod errors;
pub mod events;
pub mod fleet;
pub mod fleet_gauges;
pub mod health;
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod names;
pub mod nats_settings;
pub mod publish;
pub mod redis_target;
pub mod retry;
pub mod secret;
pub mod telemetry;
pub mod topology;
pub mod worker;

pub use codes::Code;
pub use config::Settings;
pub use fleet::Fleet;
pub use names::Name;
pub use worker::{HandleError, Handler, Incoming, WorkerSpec};
