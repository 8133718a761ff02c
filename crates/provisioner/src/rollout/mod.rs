//! Rollouts: bringing every selected tenant to a target version of the deployed tenant
//! migration set as one durable, resumable operation (the workflow is in docs/migrations.md).
//!
//! - [`spec`]: the request (`fleetctl migrate rollout` flags, the `tenant.rollout` body), parsed
//!   once for both.
//! - [`create`]: every check before anything is written, then the rollout and its tenants
//!   (canary = wave 0, then the waves) in one transaction; one rollout moves tenants at a time.
//! - [`run`] and [`step`]: the loop each provisioner replica runs; one transaction per tenant
//!   that claims it (`FOR UPDATE SKIP LOCKED`), migrates it under `lock_timeout` and records
//!   the outcome, so a killed replica loses nothing and applies nothing twice.
//! - [`control`]: pause, resume, cancel, retry. [`status`]: what `fleetctl migrate` shows.
//!
//! State lives in `fleet.rollouts` and `fleet.rollout_tenants`; replicas coordinate only through
//! them (row locks and advisory locks), never through messages.

pub mod control;
pub mod create;
pub mod event;
pub mod metrics;
pub mod run;
pub mod runner;
pub mod spec;
pub mod status;
pub mod step;

pub use control::{control, Control};
pub use create::{create, CreateError, Options, Prepared};
pub use runner::Runner;
pub use spec::{Direction, RolloutRequest};
