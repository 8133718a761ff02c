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

use crate::spec::{JobSpec, Kind, MappingSource, SpecError};
use crate::target::Target;
use crate::validate::{self, ValidateError};

pub const STATES: &[&str] = &[
    "pending",
    "running",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
];

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
        validate::check(&mut con, spec).await?;
    }
    let mut tx = pool.begin().await.map_err(db("Failed to begin"))?;
    let spec_json = serde_json::to_value(&spec.raw).map_err(|e| SubmitError::Db(e.into()))?;
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO fleet.backfill_jobs (job_id, submit_key, kind, spec, dry_run)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING job_id",
    )
    .bind(job_id)
    .bind(&key)
    .bind(spec.kind.name())
    .bind(&spec_json)
    .bind(spec.options.dry_run)
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
    if let Kind::TenantCodes(t) = &spec.kind {
        let mapping = t
            .mapping
            .as_ref()
            .ok_or_else(|| SubmitError::Refused("tenant_codes job: no mapping".into()))?;
        let (ids, orgs, tenants): (Vec<&str>, Vec<&str>, Vec<&str>) = mapping
            .iter()
            .map(|(id, c)| {
                (
                    id.as_str(),
                    c.organization_code.as_str(),
                    c.tenant_code.as_str(),
                )
            })
            .fold((vec![], vec![], vec![]), |mut acc, (a, b, c)| {
                acc.0.push(a);
                acc.1.push(b);
                acc.2.push(c);
                acc
            });
        sqlx::query(
            "INSERT INTO fleet.backfill_org_map (job_id, organization_id, organization_code, tenant_code)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])",
        )
        .bind(job_id)
        .bind(&ids)
        .bind(&orgs)
        .bind(&tenants)
        .execute(&mut *tx)
        .await
        .map_err(db("Failed to store the mapping"))?;
    }
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
        state: String,
    },
    #[error("Failed to {0} the job: {1}")]
    Db(&'static str, sqlx::Error),
}

/// Applies `action`; returns the job's state afterwards. Repeating an action is a no-op.
pub async fn control(pool: &PgPool, job_id: Uuid, action: Action) -> Result<String, ControlError> {
    let dbe = |e| ControlError::Db(action.as_str(), e);
    let mut tx = pool.begin().await.map_err(dbe)?;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM fleet.backfill_jobs WHERE job_id = $1 FOR UPDATE")
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(dbe)?;
    let state = state.ok_or(ControlError::NotFound(job_id))?;
    let illegal = || ControlError::Illegal {
        action: action.as_str(),
        job_id,
        state: state.clone(),
    };
    let new_state: String = match (action, state.as_str()) {
        (Action::Pause, "pending" | "running") => {
            sqlx::query("UPDATE fleet.backfill_jobs SET state = 'paused', resume_state = state, updated_at = now() WHERE job_id = $1")
                .bind(job_id)
                .execute(&mut *tx)
                .await
                .map_err(dbe)?;
            "paused".into()
        }
        (Action::Pause, "paused") => state.clone(),
        (Action::Resume, "paused") => sqlx::query_scalar(
            "UPDATE fleet.backfill_jobs SET state = coalesce(resume_state, 'pending'), resume_state = NULL, updated_at = now()
             WHERE job_id = $1 RETURNING state",
        )
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(dbe)?,
        (Action::Resume, "pending" | "running") => state.clone(),
        (Action::Cancel, "pending" | "running" | "paused") => {
            sqlx::query(
                "UPDATE fleet.backfill_jobs SET state = 'cancelled', resume_state = NULL, finished_at = now(), updated_at = now() WHERE job_id = $1",
            )
            .bind(job_id)
            .execute(&mut *tx)
            .await
            .map_err(dbe)?;
            "cancelled".into()
        }
        (Action::Cancel, "cancelled") => state.clone(),
        (Action::Retry, "failed" | "cancelled" | "running" | "paused" | "pending") => {
            sqlx::query("UPDATE fleet.backfill_chunks SET state = 'pending' WHERE job_id = $1 AND state = 'failed'")
                .bind(job_id)
                .execute(&mut *tx)
                .await
                .map_err(dbe)?;
            if matches!(state.as_str(), "failed" | "cancelled") {
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
                state.clone()
            }
        }
        _ => return Err(illegal()),
    };
    tx.commit().await.map_err(dbe)?;
    Ok(new_state)
}

/// A job as operators see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub job_id: Uuid,
    pub kind: String,
    pub state: String,
    pub error: Option<String>,
    pub dry_run: bool,
    pub rows_done: i64,
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

impl JobRow {
    /// Share of the key space covered by finished chunks, 0..=100.
    pub fn percent(&self) -> f64 {
        if self.state == "succeeded" {
            return 100.0;
        }
        if self.keys_total > 0.0 {
            (100.0 * self.keys_done / self.keys_total).clamp(0.0, 100.0)
        } else {
            0.0
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

const JOB_COLUMNS: &str = "job_id, kind, state, error, dry_run, rows_done, chunks_done, chunks_failed, chunks_total,
    keys_done, keys_total, rows_per_sec, eta_seconds, chunk_size, report, spec, created_at, started_at, finished_at, updated_at";

pub async fn get_job(pool: &PgPool, job_id: Uuid) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM fleet.backfill_jobs WHERE job_id = $1"
    ))
    .bind(job_id)
    .fetch_optional(pool)
    .await
}

pub async fn list_jobs(
    pool: &PgPool,
    state: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM fleet.backfill_jobs WHERE ($1::text IS NULL OR state = $1) ORDER BY created_at DESC LIMIT $2"
    ))
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A chunk that failed, with its error.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailedChunk {
    pub chunk_id: i64,
    pub part: i32,
    pub lo: i64,
    pub hi: i64,
    pub attempts: i32,
    pub error: Option<String>,
}

pub async fn failed_chunks(
    pool: &PgPool,
    job_id: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<FailedChunk>> {
    sqlx::query_as(
        "SELECT chunk_id, part, lo, hi, attempts, error FROM fleet.backfill_chunks
         WHERE job_id = $1 AND state = 'failed' ORDER BY part, lo LIMIT $2",
    )
    .bind(job_id)
    .bind(limit)
    .fetch_all(pool)
    .await
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
                   coalesce(sum((hi - lo)::float8) FILTER (WHERE state <> 'pending'), 0) AS keys_done,
                   coalesce(sum(rows) FILTER (WHERE state = 'done' AND finished_at > now() - interval '10 seconds'), 0)::float8 AS win_rows,
                   coalesce(sum((hi - lo)::float8) FILTER (WHERE state <> 'pending' AND finished_at > now() - interval '10 seconds'), 0) AS win_keys
            FROM fleet.backfill_chunks WHERE job_id = $1),
         p AS (
            SELECT coalesce(sum((hi - lo)::float8), 0) AS keys_total,
                   coalesce(sum((hi - next_lo)::float8), 0) AS uncarved
            FROM fleet.backfill_parts WHERE job_id = $1)
         UPDATE fleet.backfill_jobs j SET
            rows_done = c.rows, chunks_done = c.done, chunks_failed = c.failed,
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
         FROM c, p WHERE j.job_id = $1 RETURNING j.job_id",
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
