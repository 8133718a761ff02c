//! The integration tests of `fleetctl`, one module per area, linked into one binary.

mod cli;
mod dlq;
mod migrate;
mod nats_auth;
mod replicas;
mod run;
mod tenant_lifecycle;
mod tenant_portability;
mod up;
