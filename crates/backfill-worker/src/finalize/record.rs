//! Where each table's finalize steps stand, in the control plane
//! (`fleet.backfill_finalize_steps`). Every write is its own short statement: the DDL on the
//! target never waits for a control-plane transaction, and no control-plane transaction stays
//! open while `CREATE INDEX CONCURRENTLY` runs (on the control-plane database it would wait for
//! that transaction forever).

use std::collections::HashMap;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::step::{Step, StepState};

/// One row of the per-table finalize report.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct StepRow {
    pub table: String,
    pub step: Step,
    pub state: StepState,
    /// What was done, why it was skipped, or the one-line error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Statements that gave up at `lock_timeout` and were tried again.
    #[serde(default)]
    pub attempts: i32,
}

/// Creates the rows of a run (idempotent: a resumed run keeps the states it finds).
pub async fn init(
    pool: &PgPool,
    job_id: Uuid,
    rows: &[(String, Step, StepState, Option<String>)],
) -> sqlx::Result<()> {
    let mut tables = Vec::new();
    let mut steps = Vec::new();
    let mut ords = Vec::new();
    let mut states = Vec::new();
    let mut details = Vec::new();
    for (i, (t, s, st, d)) in rows.iter().enumerate() {
        tables.push(t.as_str());
        steps.push(s.as_str());
        ords.push(i as i32);
        states.push(st.as_str());
        details.push(d.clone());
    }
    sqlx::query(
        "INSERT INTO fleet.backfill_finalize_steps (job_id, table_name, step, ord, state, detail)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::text[], $6::text[])
         ON CONFLICT (job_id, table_name, step) DO NOTHING",
    )
    .bind(job_id)
    .bind(&tables)
    .bind(&steps)
    .bind(&ords)
    .bind(&states)
    .bind(&details)
    .execute(pool)
    .await?;
    Ok(())
}

/// The states recorded so far, by (table, step).
pub async fn states(
    pool: &PgPool,
    job_id: Uuid,
) -> sqlx::Result<HashMap<(String, Step), StepState>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name, step, state FROM fleet.backfill_finalize_steps WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, s, st)| Some(((t, Step::parse(&s)?), StepState::parse(&st)?)))
        .collect())
}

pub async fn set(
    pool: &PgPool,
    job_id: Uuid,
    table: &str,
    step: Step,
    state: StepState,
    detail: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_finalize_steps SET state = $4, detail = $5, updated_at = now()
         WHERE job_id = $1 AND table_name = $2 AND step = $3",
    )
    .bind(job_id)
    .bind(table)
    .bind(step.as_str())
    .bind(state.as_str())
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// Counts one statement that gave up at `lock_timeout`.
pub async fn attempt(pool: &PgPool, job_id: Uuid, table: &str, step: Step) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_finalize_steps SET attempts = attempts + 1, updated_at = now()
         WHERE job_id = $1 AND table_name = $2 AND step = $3",
    )
    .bind(job_id)
    .bind(table)
    .bind(step.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// The report, in display order (empty for a job without finalize).
pub async fn report(pool: &PgPool, job_id: Uuid) -> sqlx::Result<Vec<StepRow>> {
    let rows: Vec<(String, String, String, Option<String>, i32)> = sqlx::query_as(
        "SELECT table_name, step, state, detail, attempts FROM fleet.backfill_finalize_steps
         WHERE job_id = $1 ORDER BY ord",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(table, step, state, detail, attempts)| {
            Some(StepRow {
                table,
                step: Step::parse(&step)?,
                state: StepState::parse(&state)?,
                detail,
                attempts,
            })
        })
        .collect())
}

/// Whether the job is still `running` (a paused or cancelled job stops between steps).
pub async fn job_running(pool: &PgPool, job_id: Uuid) -> sqlx::Result<bool> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM fleet.backfill_jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
    Ok(state.as_deref() == Some("running"))
}
