//! The integration tests of `fleetctl`, one module per area, linked into one binary.

mod cache;
mod cli;
mod console;
mod console_actions;
mod dlq;
mod job_outcomes;
mod migrate;
mod nats_auth;
mod observability;
mod replicas;
mod run;
mod schedule;
mod schedule_changes;
mod schedules;
mod tenant_databases;
mod tenant_lifecycle;
mod tenant_move;
mod tenant_portability;
mod up;
