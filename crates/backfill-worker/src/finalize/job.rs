//! A job's finalize, run once its chunks are done (and, for `tenant_codes`, verified): by one
//! replica at a time, outside any control-plane transaction.
//!
//! The replica that finishes the job takes a session advisory lock on the control plane, keyed
//! by the job, on a connection of its own that sits idle (no transaction, no snapshot) while the
//! steps run, and is closed at the end, which releases the lock even if the run panics. Another
//! replica that reaches the same point finds the lock taken and leaves the job alone; if the
//! holder dies (`kill -9`), Postgres drops its session and the lock with it, and the next
//! replica resumes from the step records.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::engine::{Finalize, FinalizeTable, Health, Outcome, LOCK_RETRY};
use super::record;
use super::step::Selection;
use crate::ident::Ident;

/// What a job's finalize is: its tables and steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizePlan {
    pub tables: Vec<FinalizeTable>,
    pub steps: Selection,
}

/// How [`run`] left the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFinalize {
    /// Another replica is finalizing it.
    Busy,
    /// Paused or cancelled between steps (or before): the job is left as it is.
    Stopped,
    /// Finished; `Some(error)` fails the job.
    Done(Option<String>),
}

/// Runs the job's finalize (see the module docs). `Err`: the database failed; the job stays
/// `running` and is resumed.
pub async fn run(
    control: &PgPool,
    target: &PgPool,
    job_id: Uuid,
    schema: &Ident,
    plan: &FinalizePlan,
    lock_timeout: Duration,
    health: Option<Health<'_>>,
) -> sqlx::Result<JobFinalize> {
    let mut lock = control.acquire().await?.detach();
    let got: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(('x' || substr(md5('finalize:' || $1::text), 1, 16))::bit(64)::bigint)",
    )
    .bind(job_id)
    .fetch_one(&mut lock)
    .await?;
    if !got {
        return Ok(JobFinalize::Busy);
    }
    if !record::job_running(control, job_id).await? {
        return Ok(JobFinalize::Stopped);
    }
    let outcome = Finalize {
        control,
        target,
        job_id,
        schema,
        tables: &plan.tables,
        steps: plan.steps,
        lock_timeout,
        retry: LOCK_RETRY,
        health,
    }
    .run()
    .await?;
    drop(lock);
    Ok(match outcome {
        Outcome::Finished { failed } if failed.is_empty() => JobFinalize::Done(None),
        Outcome::Finished { failed } => JobFinalize::Done(Some(format!(
            "finalize: {} step(s) did not finish (fleetctl backfill retry runs them again): {}",
            failed.len(),
            failed.join("; ")
        ))),
        Outcome::Refused(reason) => JobFinalize::Done(Some(reason)),
        Outcome::Stopped => JobFinalize::Stopped,
    })
}
