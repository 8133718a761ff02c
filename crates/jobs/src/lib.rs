//! The job runtime: a library for consumers of the scheduler's per-tenant jobs
//! (`jobs.<task>.<tenant_code>` on `FLEET_JOBS`).
//!
//! Write a [`JobHandler`], build a [`RuntimeSpec`] for the task, and call [`run_fleet`] (or
//! [`run`]). The runtime is the fleet's own worker loop (the same verdicts: ok → ack, invalid →
//! dead letter, transient → NAK with exponential backoff and jitter, in-progress acks for long
//! jobs, graceful shutdown, the `fleet_messages_*` metrics) plus:
//!
//! - **per-tenant fairness** ([`fair`], [`runtime`]): at most `per_tenant` jobs of one tenant in
//!   flight, round-robin between tenants with work, over a bounded prefetch admitted a batch at
//!   a time; the bound is in [`runtime`]'s docs and docs/scheduler.md;
//! - **job outcomes** ([`outcomes`]): `done` / `failed` / `dead_lettered` per scheduled job in
//!   `fleet.job_outcomes`, which `overlap = "forbid"` and `fleetctl schedule history NAME
//!   --tenant CODE` read; written in batches by [`writer`], each job acked only after the
//!   batch holding its outcome has committed.
//!
//! A runnable example is `examples/followups-consumer`; docs/scheduler.md shows it and a consumer
//! in another language.

pub mod backlog;
pub mod fair;
pub mod job;
pub mod outcomes;
pub mod runtime;
pub mod writer;

pub use fleet_shared::worker::HandleError;
pub use job::{Job, JobHandler};
pub use runtime::{run, run_fleet, RuntimeSpec};
