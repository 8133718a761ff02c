//! Finalize: after the codes are filled, the structure that makes the tables multi-tenant, done
//! on a live database (`"finalize": true` on a `tenant_codes` job, or a `finalize` job).
//!
//! [`step`] names the steps and which ones a job picks, [`inspect`] reads the catalog,
//! [`engine`] runs the steps (each idempotent, under `lock_timeout` with retries) and
//! [`record`] keeps each table's step states in the control plane, for the report and for a
//! replica that resumes the run after a crash. User-facing description:
//! [docs/backfill.md](../../../docs/backfill.md#finalize).

pub mod engine;
pub mod inspect;
pub mod job;
pub mod record;
pub mod spec;
pub mod step;
