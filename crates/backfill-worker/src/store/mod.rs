//! The durable queue: jobs, their mapping, parts and chunks in `fleet.backfill_*`.
//!
//! Submitting is idempotent on a submit key (the message's `Nats-Msg-Id`, else the spec's
//! `job_id`, else a fresh id): a redelivered `backfill.submit` finds its job instead of
//! creating a second one. The job row and its mapping are inserted in one transaction, so a
//! refused or failed submit leaves nothing. Control actions are state transitions guarded in
//! SQL (`WHERE state IN (...)`), so concurrent operators and replicas cannot move a job through
//! an illegal transition; repeating an action is a no-op.

use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use fleet_shared::databases::DatabasePools;

use crate::spec::{JobSpec, MappingSource, SpecError};
use crate::state::JobState;
use crate::target::Target;
use crate::validate::ValidateError;

pub mod chunks;

pub use chunks::{failed_chunks, FailedChunk};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Bad spec: refused with this reason, nothing created.
    #[error("{0}")]
    Refused(String),
    #[error("{0:#}")]
    Db(anyhow::Error),
}

impl From<SpecError> for SubmitError {
    fn from(e: SpecError) -> Self {
        SubmitError::Refused(fleet_shared::errors::one_line(&e.to_string()))
    }
}

impl From<ValidateError> for SubmitError {
    fn from(e: ValidateError) -> Self {
        match e {
            ValidateError::Refused(r) => SubmitError::Refused(r),
            ValidateError::Db(e) => {
                SubmitError::Db(anyhow::Error::new(e).context("Failed to check the spec"))
            }
        }
    }
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> SubmitError {
    move |e| SubmitError::Db(anyhow::Error::new(e).context(what))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Submitted {
    pub job_id: Uuid,
    /// False when the submit key already had a job (a redelivery).
    pub created: bool,
}

/// Parses, checks against the database and stores a job spec (see the module docs), with only
/// the control-plane database known (a spec naming another is refused).
pub async fn submit_json(
    pool: &PgPool,
    json: &[u8],
    allow_sql: bool,
    submit_key: Option<&str>,
) -> Result<Submitted, SubmitError> {
    submit_json_on(
        &DatabasePools::control_only(pool.clone()),
        json,
        allow_sql,
        submit_key,
    )
    .await
}

/// As [`submit_json`], with the configured `[databases]`: the spec is checked against the
/// database it names, the job stored in the control plane.
pub async fn submit_json_on(
    pools: &DatabasePools,
    json: &[u8],
    allow_sql: bool,
    submit_key: Option<&str>,
) -> Result<Submitted, SubmitError> {
    let spec = JobSpec::parse(json, allow_sql, MappingSource::Required)?;
    submit(pools, &spec, submit_key).await
}

pub async fn submit(
    pools: &DatabasePools,
    spec: &JobSpec,
    submit_key: Option<&str>,
) -> Result<Submitted, SubmitError> {
    let pool = pools.control();
    let target =
        Target::resolve(pools, &spec.database).map_err(|e| SubmitError::Refused(e.to_string()))?;
    let job_id = spec.job_id.unwrap_or_else(Uuid::now_v7);
    let key = submit_key
        .map(str::to_owned)
        .unwrap_or_else(|| job_id.to_string());
    // A redelivery must not be refused because the schema changed since the first delivery.
    if let Some(existing) = find_by_key(pool, &key, job_id).await? {
        return Ok(Submitted {
            job_id: existing,
            created: false,
        });
    }
    {
        let mut con = target.pool.acquire().await.map_err(|e| {
            SubmitError::Db(
                anyhow::Error::new(e)
                    .context(format!("Failed to connect to database {}", target.name)),
            )
        })?;
        spec.validate(&mut con, pools).await?;
    }
    let mut tx = pool.begin().await.map_err(db("Failed to begin"))?;
    let spec_json = serde_json::to_value(&spec.raw).map_err(|e| SubmitError::Db(e.into()))?;
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO fleet.backfill_jobs (job_id, submit_key, kind, spec, dry_run, database)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING job_id",
    )
    .bind(job_id)
    .bind(&key)
    .bind(spec.kind.name())
    .bind(&spec_json)
    .bind(spec.options.dry_run)
    .bind(spec.database.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db("Failed to insert the job"))?;
    let Some(job_id) = inserted else {
        drop(tx);
        return match find_by_key(pool, &key, job_id).await? {
            Some(id) => Ok(Submitted {
                job_id: id,
                created: false,
            }),
            None => Err(SubmitError::Db(anyhow::anyhow!(
                "job {job_id} vanished while it was submitted"
            ))),
        };
    };
    spec.kind
        .job()
        .store(&mut tx, job_id)
        .await
        .map_err(db("Failed to store the job's data"))?;
    tx.commit().await.map_err(db("Failed to commit the job"))?;
    Ok(Submitted {
        job_id,
        created: true,
    })
}

async fn find_by_key(pool: &PgPool, key: &str, job_id: Uuid) -> Result<Option<Uuid>, SubmitError> {
    sqlx::query_scalar(
        "SELECT job_id FROM fleet.backfill_jobs WHERE submit_key = $1 OR job_id = $2",
    )
    .bind(key)
    .bind(job_id)
    .fetch_optional(pool)
    .await
    .map_err(db("Failed to look up the job"))
}

/// An operator's action on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pause,
    Resume,
    Cancel,
    Retry,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "cancel" => Action::Cancel,
            "retry" => Action::Retry,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Retry => "retry",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no backfill job {0}")]
    NotFound(Uuid),
    #[error("cannot {action} job {job_id}: it is {state}")]
    Illegal {
        action: &'static str,
        job_id: Uuid,
        state: JobState,
    },
    #[error("Failed to {0} the job: {1}")]
    Db(&'static str, sqlx::Error),
}

/// Applies `action`; returns the job's state afterwards. Repeating an action is a no-op.
pub async fn control(
    pool: &PgPool,
    job_id: Uuid,
    action: Action,
) -> Result<JobState, ControlError> {
    use JobState::*;
    let dbe = |e| ControlError::Db(action.as_str(), e);
    let mut tx = pool.begin().await.map_err(dbe)?;
    let state: Option<JobState> =
        sqlx::query_scalar("SELECT state FROM fleet.backfill_jobs WHERE job_id = $1 FOR UPDATE")
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(dbe)?;
    let state = state.ok_or(ControlError::NotFound(job_id))?;
    let illegal = || ControlError::Illegal {
        action: action.as_str(),
        job_id,
        state,
    };
    let new_state = match (action, state) {
        (Action::Pause, Pending | Running) => {
            sqlx::query("UPDATE fleet.backfill_jobs SET state = 'paused', resume_state = state, updated_at = now() WHERE job_id = $1")
                .bind(job_id)
                .execute(&mut *tx)
                .await
                .map_err(dbe)?;
            Paused
        }
        (Action::Pause, Paused) => state,
        (Action::Resume, Paused) => sqlx::query_scalar(
            "UPDATE fleet.backfill_jobs SET state = coalesce(resume_state, 'pending'), resume_state = NULL, updated_at = now()
             WHERE job_id = $1 RETURNING state",
        )
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(dbe)?,
        (Action::Resume, Pending | Running) => state,
        (Action::Cancel, Pending | Running | Paused) => {
            sqlx::query(
                "UPDATE fleet.backfill_jobs SET state = 'cancelled', resume_state = NULL, finished_at = now(), updated_at = now() WHERE job_id = $1",
            )
            .bind(job_id)
            .execute(&mut *tx)
            .await
            .map_err(dbe)?;
            Cancelled
        }
        (Action::Cancel, Cancelled) => state,
        (Action::Retry, Failed | Cancelled | Running | Paused | Pending) => {
            sqlx::query("UPDATE fleet.backfill_chunks SET state = 'pending' WHERE job_id = $1 AND state = 'failed'")
                .bind(job_id)
                .execute(&mut *tx)
                .await
                .map_err(dbe)?;
            if matches!(state, Failed | Cancelled) {
                // Planned jobs continue where they stopped; a job that failed planning plans again.
                sqlx::query_scalar(
                    "UPDATE fleet.backfill_jobs SET
                        state = CASE WHEN started_at IS NOT NULL THEN 'running' ELSE 'pending' END,
                        error = NULL, finished_at = NULL, updated_at = now()
                     WHERE job_id = $1 RETURNING state",
                )
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(dbe)?
            } else {
                state
            }
        }
        _ => return Err(illegal()),
    };
    tx.commit().await.map_err(dbe)?;
    if action == Action::Cancel {
        // The rows written so far, on the job row now (no replica may be running it).
        refresh_progress(pool, job_id, None).await.map_err(dbe)?;
    }
    Ok(new_state)
}

/// A job as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub job_id: Uuid,
    pub kind: String,
    pub state: JobState,
    pub error: Option<String>,
    pub dry_run: bool,
    pub rows_done: i64,
    /// Rows the job is expected to go over (planner statistics or counts, at planning).
    pub rows_estimated: i64,
    /// Of those, the share covered by committed chunks (failed ones excluded), in rows.
    pub rows_covered: f64,
    /// Why the job's lanes wait (`replica lag 12s > 5s`), while they do.
    pub throttled: Option<String>,
    pub database: String,
    pub chunks_done: i64,
    pub chunks_failed: i64,
    pub chunks_total: i64,
    pub keys_done: f64,
    pub keys_total: f64,
    pub rows_per_sec: f64,
    pub eta_seconds: Option<f64>,
    pub chunk_size: i64,
    pub report: Option<serde_json::Value>,
    pub spec: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}
fleet_shared::from_row!(JobRow {
    job_id,
    kind,
    state,
    error,
    dry_run,
    rows_done,
    rows_estimated,
    rows_covered,
    throttled,
    database,
    chunks_done,
    chunks_failed,
    chunks_total,
    keys_done,
    keys_total,
    rows_per_sec,
    eta_seconds,
    chunk_size,
    report,
    spec,
    created_at,
    started_at,
    finished_at,
    updated_at
});

impl JobRow {
    /// Rows done / rows estimated, 0..=100: a failed chunk's rows are not done, and only a
    /// job that succeeded shows 100 (others stop at 99.9).
    pub fn percent(&self) -> f64 {
        if self.state == JobState::Succeeded {
            return 100.0;
        }
        let p = if self.rows_estimated > 0 {
            100.0 * self.rows_covered / self.rows_estimated as f64
        } else if self.keys_total > 0.0 {
            100.0 * self.keys_done / self.keys_total
        } else {
            0.0
        };
        p.clamp(0.0, 99.9)
    }

    /// The state as shown: `throttled: <why>` while a running job's lanes wait.
    pub fn shown_state(&self) -> String {
        match (&self.throttled, self.state) {
            (Some(why), JobState::Running) => format!("throttled: {why}"),
            _ => self.state.to_string(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }
}

const JOB_COLUMNS: &str = "job_id, kind, state, error, dry_run, rows_done, rows_estimated, rows_covered, throttled, database,
    chunks_done, chunks_failed, chunks_total,
    keys_done, keys_total, rows_per_sec, eta_seconds, chunk_size, report, spec, created_at, started_at, finished_at, updated_at";

/// The job, with its per-table report's row counts read from the committed chunks (so a
/// cancelled or failed job reports the rows actually written, a dry run the rows counted).
pub async fn get_job(pool: &PgPool, job_id: Uuid) -> sqlx::Result<Option<JobRow>> {
    let job: Option<JobRow> = sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM fleet.backfill_jobs WHERE job_id = $1"
    ))
    .bind(job_id)
    .fetch_optional(pool)
    .await?;
    let Some(mut job) = job else { return Ok(None) };
    if let Some(tables) = job
        .report
        .as_mut()
        .and_then(|r| r.get_mut("tables"))
        .and_then(|t| t.as_array_mut())
    {
        let per_part = chunks::rows_per_part(pool, job_id).await?;
        for t in tables.iter_mut() {
            let name = t.get("table").and_then(|v| v.as_str()).unwrap_or_default();
            if let Some((_, n)) = per_part.iter().find(|(p, _)| p == name) {
                let field = if job.dry_run {
                    "total_rows"
                } else {
                    "rows_updated"
                };
                t[field] = serde_json::json!(n);
            }
        }
    }
    // Finalize steps, as recorded while they run (so a running finalize shows where it is).
    let steps = crate::finalize::record::report(pool, job_id).await?;
    if !steps.is_empty() {
        let report = job.report.get_or_insert_with(|| serde_json::json!({}));
        if let Some(obj) = report.as_object_mut() {
            obj.insert(
                "finalize".into(),
                serde_json::to_value(&steps).unwrap_or_default(),
            );
        }
    }
    Ok(Some(job))
}

/// Jobs, newest first: in `state` if given, created longer than `older_than` ago if given.
pub async fn list_jobs(
    pool: &PgPool,
    state: Option<JobState>,
    older_than: Option<std::time::Duration>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM fleet.backfill_jobs WHERE ($1::text IS NULL OR state = $1)
           AND ($3::float8 IS NULL OR created_at < now() - make_interval(secs => $3))
         ORDER BY created_at DESC LIMIT $2"
    ))
    .bind(state)
    .bind(limit)
    .bind(older_than.map(|d| d.as_secs_f64()))
    .fetch_all(pool)
    .await
}

/// Deletes a finished job (succeeded, failed or cancelled) with its parts, chunks and mapping,
/// and what it left on its target database. A job that may still run is refused.
pub async fn delete_job(pools: &DatabasePools, job_id: Uuid) -> Result<(), ControlError> {
    let dbe = |e| ControlError::Db("delete", e);
    let pool = pools.control();
    let mut tx = pool.begin().await.map_err(dbe)?;
    let row: Option<(JobState, String, serde_json::Value)> = sqlx::query_as(
        "SELECT state, database, spec FROM fleet.backfill_jobs WHERE job_id = $1 FOR UPDATE",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(dbe)?;
    let (state, database, spec) = row.ok_or(ControlError::NotFound(job_id))?;
    if !state.is_terminal() {
        return Err(ControlError::Illegal {
            action: "delete",
            job_id,
            state,
        });
    }
    sqlx::query("DELETE FROM fleet.backfill_jobs WHERE job_id = $1")
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(dbe)?;
    tx.commit().await.map_err(dbe)?;
    // Best effort: the markers of a deleted job are never read again. They are on the job's
    // database, or where its kind writes (a copy_to_tenant job: the tenant's database).
    let mut targets: Vec<PgPool> = pools.get(&database).into_iter().collect();
    if let (Ok(spec), Ok(name)) = (
        JobSpec::from_value(spec, true, MappingSource::Stored),
        fleet_shared::Name::parse(&database),
    ) {
        targets.extend(spec.kind.job().written_databases(pools, &name).await);
    }
    for target in targets {
        if let Err(e) = crate::target::forget(&target, job_id).await {
            tracing::warn!(job.id = %job_id, error = %e, "cannot clean the job's markers on its database");
        }
    }
    Ok(())
}

/// Recomputes the job's progress from its chunks and parts, stores it on the job row and
/// returns the row. `chunk_size` is the replica's current adaptive size, if it has one.
pub async fn refresh_progress(
    pool: &PgPool,
    job_id: Uuid,
    chunk_size: Option<i64>,
) -> sqlx::Result<Option<JobRow>> {
    let row = sqlx::query(
        "WITH c AS (
            SELECT count(*) FILTER (WHERE state = 'done') AS done,
                   count(*) FILTER (WHERE state = 'failed') AS failed,
                   count(*) AS carved,
                   coalesce(sum(rows) FILTER (WHERE state = 'done'), 0)::bigint AS rows,
                   coalesce(sum((hi - lo)::float8) FILTER (WHERE state = 'done'), 0) AS keys_done,
                   coalesce(sum(rows) FILTER (WHERE state = 'done' AND finished_at > now() - interval '10 seconds'), 0)::float8 AS win_rows,
                   coalesce(sum((hi - lo)::float8) FILTER (WHERE state <> 'pending' AND finished_at > now() - interval '10 seconds'), 0) AS win_keys
            FROM fleet.backfill_chunks WHERE job_id = $1),
         p AS (
            SELECT coalesce(sum((hi - lo)::float8), 0) AS keys_total,
                   coalesce(sum((hi - next_lo)::float8), 0) AS uncarved
            FROM fleet.backfill_parts WHERE job_id = $1),
         pc AS (
            SELECT greatest(bp.hi - bp.lo, 1)::float8 AS keys,
                   coalesce(bp.rows_estimate, bp.hi - bp.lo)::float8 AS est,
                   coalesce((SELECT sum((ch.hi - ch.lo)::float8) FROM fleet.backfill_chunks ch
                             WHERE ch.job_id = bp.job_id AND ch.part = bp.part AND ch.state = 'done'), 0) AS done_keys
            FROM fleet.backfill_parts bp WHERE bp.job_id = $1),
         pe AS (
            SELECT coalesce(sum(est), 0)::bigint AS est,
                   coalesce(sum(est * least(done_keys / keys, 1)), 0) AS covered FROM pc)
         UPDATE fleet.backfill_jobs j SET
            rows_done = c.rows, chunks_done = c.done, chunks_failed = c.failed,
            rows_estimated = pe.est, rows_covered = pe.covered,
            chunk_size = coalesce($2, j.chunk_size),
            chunks_total = c.carved + ceil(p.uncarved / greatest(coalesce($2, j.chunk_size), 1))::bigint,
            keys_done = c.keys_done, keys_total = p.keys_total,
            rows_per_sec = CASE
                WHEN j.started_at IS NULL THEN 0
                WHEN j.finished_at IS NOT NULL THEN c.rows / greatest(extract(epoch FROM j.finished_at - j.started_at)::float8, 0.001)
                ELSE c.win_rows / greatest(least(10, extract(epoch FROM now() - j.started_at)::float8), 0.001) END,
            eta_seconds = CASE
                WHEN j.finished_at IS NOT NULL THEN 0
                WHEN c.win_keys > 0 THEN (p.keys_total - c.keys_done)
                     / (c.win_keys / greatest(least(10, extract(epoch FROM now() - j.started_at)::float8), 0.001))
                END,
            updated_at = now()
         FROM c, p, pe WHERE j.job_id = $1 RETURNING j.job_id",
    )
    .bind(job_id)
    .bind(chunk_size)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(r) => get_job(pool, r.get::<Uuid, _>(0)).await,
        None => Ok(None),
    }
}

/// Jobs some replica should be running (pending or running), oldest first.
pub async fn runnable_jobs(pool: &PgPool) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT job_id FROM fleet.backfill_jobs WHERE state IN ('pending', 'running') ORDER BY created_at LIMIT 64",
    )
    .fetch_all(pool)
    .await
}

/// What a replica needs to start running a job: its state, stored spec and chunk size.
pub async fn job_to_run(
    pool: &PgPool,
    job_id: Uuid,
) -> sqlx::Result<Option<(JobState, serde_json::Value, i64)>> {
    sqlx::query_as("SELECT state, spec, chunk_size FROM fleet.backfill_jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(pool)
        .await
}

/// The job's state (`None`: deleted), read in `ex`'s snapshot.
pub async fn job_state<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    job_id: Uuid,
) -> sqlx::Result<Option<JobState>> {
    sqlx::query_scalar("SELECT state FROM fleet.backfill_jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(ex)
        .await
}

/// Fails a job that is still in `from`, with `reason`.
pub async fn fail_job(
    pool: &PgPool,
    job_id: Uuid,
    from: JobState,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_jobs SET state = 'failed', error = $3, finished_at = now(), updated_at = now()
         WHERE job_id = $1 AND state = $2",
    )
    .bind(job_id)
    .bind(from)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Locks the job row for planning; `None` when another replica holds it (or it is gone).
pub async fn lock_to_plan(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
) -> sqlx::Result<Option<JobState>> {
    sqlx::query_scalar(
        "SELECT state FROM fleet.backfill_jobs WHERE job_id = $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await
}

/// A planned job runs, with its initial chunk size and planned report.
pub async fn mark_planned(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    chunk_size: i64,
    report: Option<&serde_json::Value>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_jobs SET state = 'running', started_at = coalesce(started_at, now()), chunk_size = $2,
                report = $3, updated_at = now() WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(chunk_size)
    .bind(report)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Why a pending job waits (its database does not answer).
pub async fn set_waiting(pool: &PgPool, job_id: Uuid, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_jobs SET error = $2, updated_at = now() WHERE job_id = $1 AND state = 'pending'",
    )
    .bind(job_id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Locks the job row to finish it: its state, report and whether it is a dry run.
pub async fn lock_to_finish(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
) -> sqlx::Result<Option<(JobState, Option<serde_json::Value>, bool)>> {
    sqlx::query_as(
        "SELECT state, report, dry_run FROM fleet.backfill_jobs WHERE job_id = $1 FOR UPDATE",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await
}

/// Stores the report of a job whose chunks are done and verified, leaving it `running` for its
/// finalize (which runs outside the job row's lock).
pub async fn keep_report(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    report: Option<&serde_json::Value>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_jobs SET report = $2, throttled = NULL, updated_at = now() WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(report)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// How a job with `error` (or none) ends: `failed` with one, `succeeded` without.
fn ended_as(error: Option<&str>) -> JobState {
    if error.is_some() {
        JobState::Failed
    } else {
        JobState::Succeeded
    }
}

/// Ends a finalized job (if it is still `running`): `succeeded` without an error, `failed`
/// with one.
pub async fn finish_finalized(
    pool: &PgPool,
    job_id: Uuid,
    error: Option<&str>,
) -> sqlx::Result<JobState> {
    let state = ended_as(error);
    sqlx::query(
        "UPDATE fleet.backfill_jobs SET state = $2, error = $3, finished_at = now(), updated_at = now()
         WHERE job_id = $1 AND state = 'running'",
    )
    .bind(job_id)
    .bind(state)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(state)
}

/// Ends a job: `succeeded` without an error, `failed` with one.
pub async fn finish_job(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    error: Option<&str>,
    report: Option<&serde_json::Value>,
) -> sqlx::Result<JobState> {
    let state = ended_as(error);
    sqlx::query(
        "UPDATE fleet.backfill_jobs SET state = $2, error = $3, report = $4, throttled = NULL, finished_at = now(), updated_at = now() WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(state)
    .bind(error)
    .bind(report)
    .execute(&mut *tx)
    .await?;
    Ok(state)
}
