//! Job outcomes in the control plane (`fleet.job_outcomes`, migration `0650_job_outcomes.sql`).
//!
//! The runtime records one row per scheduled job (a job whose body has `schedule`, `tick` and
//! `tenant_id`): `done` right after the handler succeeded and before the ack (a crash in between
//! redelivers the job, which records it again), `failed` (a transient failure; it will be
//! retried) or `dead_lettered` after the NAK or the dead letter. A final outcome is never
//! replaced by a late `failed` (a redelivery racing the first delivery's record). Recording is
//! best effort: a record that fails is logged, and only makes the job look unfinished to
//! `overlap = "forbid"` until the jobs stream has no job of the schedule left (see the
//! scheduler's overlap docs).

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use fleet_shared::worker::Outcome;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::job::Job;

/// The stored word for an outcome.
pub fn status(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Acked => "done",
        Outcome::Retried { .. } => "failed",
        Outcome::DeadLettered { .. } => "dead_lettered",
    }
}

/// Records `outcome` of `job` if it is a scheduled job; returns whether a row was written.
pub async fn record(
    pg: &PgPool,
    worker: &str,
    job: &Job,
    delivered: i64,
    outcome: &Outcome,
) -> anyhow::Result<bool> {
    let (Some(schedule), Some(tick), Some(tenant_id)) = (&job.schedule, job.tick, job.tenant_id)
    else {
        return Ok(false);
    };
    let reason = match outcome {
        Outcome::Acked => None,
        Outcome::Retried { reason, .. } | Outcome::DeadLettered { reason } => Some(reason.as_str()),
    };
    sqlx::query(
        "INSERT INTO fleet.job_outcomes (schedule, tick, tenant_id, tenant_code, task, subject, status, attempts, reason, worker)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (schedule, tick, tenant_id) DO UPDATE SET
            status = EXCLUDED.status, attempts = GREATEST(job_outcomes.attempts, EXCLUDED.attempts),
            reason = EXCLUDED.reason, worker = EXCLUDED.worker, updated_at = now()
         WHERE job_outcomes.status = 'failed' OR EXCLUDED.status <> 'failed'",
    )
    .bind(schedule)
    .bind(tick)
    .bind(tenant_id)
    .bind(job.tenant_code.as_str())
    .bind(&job.task)
    .bind(&job.subject)
    .bind(status(outcome))
    .bind(delivered.clamp(1, i32::MAX as i64) as i32)
    .bind(reason)
    .bind(worker)
    .execute(pg)
    .await
    .context("Failed to record the job's outcome")?;
    Ok(true)
}

/// One row of `fleet.job_outcomes`.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeRow {
    pub schedule: String,
    pub tick: DateTime<Utc>,
    pub tenant_id: Uuid,
    pub tenant_code: String,
    pub task: String,
    pub status: String,
    pub attempts: i32,
    pub reason: Option<String>,
    pub worker: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
fleet_shared::from_row!(OutcomeRow {
    schedule,
    tick,
    tenant_id,
    tenant_code,
    task,
    status,
    attempts,
    reason,
    worker,
    first_seen_at,
    updated_at
});

/// A tenant's job outcomes for a schedule, newest tick first.
pub async fn for_tenant(
    pg: &PgPool,
    schedule: &str,
    tenant_code: &str,
    limit: i64,
) -> anyhow::Result<Vec<OutcomeRow>> {
    sqlx::query_as(
        "SELECT schedule, tick, tenant_id, tenant_code, task, status, attempts, reason, worker, first_seen_at, updated_at
         FROM fleet.job_outcomes WHERE schedule = $1 AND tenant_code = $2 ORDER BY tick DESC LIMIT $3",
    )
    .bind(schedule)
    .bind(tenant_code)
    .bind(limit)
    .fetch_all(pg)
    .await
    .context("Failed to read fleet.job_outcomes")
}

/// Counts of a tick's outcomes: (done, failed, dead_lettered).
pub async fn tick_counts(
    pg: &PgPool,
    schedule: &str,
    tick: DateTime<Utc>,
) -> anyhow::Result<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'failed'),
                count(*) FILTER (WHERE status = 'dead_lettered')
         FROM fleet.job_outcomes WHERE schedule = $1 AND tick = $2",
    )
    .bind(schedule)
    .bind(tick)
    .fetch_one(pg)
    .await
    .context("Failed to count job outcomes")
}

/// Outcome counts (done, failed, dead_lettered) of several ticks of a schedule.
pub async fn counts_by_tick(
    pg: &PgPool,
    schedule: &str,
    ticks: &[DateTime<Utc>],
) -> anyhow::Result<std::collections::HashMap<DateTime<Utc>, (i64, i64, i64)>> {
    let rows: Vec<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
        "SELECT tick, count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'failed'),
                count(*) FILTER (WHERE status = 'dead_lettered')
         FROM fleet.job_outcomes WHERE schedule = $1 AND tick = ANY($2) GROUP BY tick",
    )
    .bind(schedule)
    .bind(ticks)
    .fetch_all(pg)
    .await
    .context("Failed to count job outcomes")?;
    Ok(rows
        .into_iter()
        .map(|(t, d, f, x)| (t, (d, f, x)))
        .collect())
}
