//! The integration tests of `fleet-jobs`, one module per area, linked into one binary.

mod common;
mod fairness;
mod metrics;
mod outage;
mod shutdown;
mod verdicts;
