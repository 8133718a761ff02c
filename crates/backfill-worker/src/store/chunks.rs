//! The chunk repository: every query on `fleet.backfill_parts` and `fleet.backfill_chunks`.
//!
//! A part is one table's key range `(lo, hi]` with a cursor `next_lo`; chunks are carved from it
//! on demand (so their size can adapt both ways) and claimed with `FOR UPDATE SKIP LOCKED` in
//! the chunk's own transaction, which also marks the chunk `done` (the runner's module docs say why
//! that makes each chunk's effect happen once). Claiming requires `state = 'pending'`, so a
//! committed chunk is never claimed again.

use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool, Row};
use uuid::Uuid;

pub use crate::plan::PartMode;
use crate::plan::PartPlan;

/// A part's chunk statements, as the lanes run them.
#[derive(Debug, Clone)]
pub struct Part {
    pub statement: String,
    pub then_statement: Option<String>,
    pub mode: PartMode,
}

/// A claimed chunk.
#[derive(Debug, Clone, Copy)]
pub struct Claimed {
    pub chunk_id: i64,
    pub part: i32,
    pub lo: i64,
    pub hi: i64,
}

/// A chunk that failed, with its error.
#[derive(Debug, Clone, Serialize)]
pub struct FailedChunk {
    pub chunk_id: i64,
    pub part: i32,
    pub lo: i64,
    pub hi: i64,
    pub attempts: i32,
    pub error: Option<String>,
}
fleet_shared::from_row!(FailedChunk {
    chunk_id,
    part,
    lo,
    hi,
    attempts,
    error
});

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

/// Stores a planned part (in the planning transaction).
pub async fn insert_part(
    tx: &mut PgConnection,
    job_id: Uuid,
    part: i32,
    p: &PartPlan,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO fleet.backfill_parts (job_id, part, name, statement, then_statement, mode, lo, hi, next_lo, rows_estimate)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, $9)",
    )
    .bind(job_id)
    .bind(part)
    .bind(&p.name)
    .bind(&p.statement)
    .bind(&p.then_statement)
    .bind(p.mode.as_str())
    .bind(p.lo)
    .bind(p.hi)
    .bind(p.rows_estimate)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The job's parts by number.
pub async fn parts(pool: &PgPool, job_id: Uuid) -> sqlx::Result<Vec<(i32, Part)>> {
    Ok(sqlx::query(
        "SELECT part, statement, then_statement, mode FROM fleet.backfill_parts WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.get::<i32, _>(0),
            Part {
                statement: r.get(1),
                then_statement: r.get(2),
                mode: PartMode::parse(&r.get::<String, _>(3)),
            },
        )
    })
    .collect())
}

/// The names (tables) of the job's parts.
pub async fn part_names(pool: &PgPool, job_id: Uuid) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT name FROM fleet.backfill_parts WHERE job_id = $1")
        .bind(job_id)
        .fetch_all(pool)
        .await
}

/// Rows the committed chunks wrote (a dry run: counted), per part name.
pub async fn rows_per_part<'e>(
    ex: impl PgExecutor<'e>,
    job_id: Uuid,
) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT p.name, coalesce(sum(c.rows) FILTER (WHERE c.state = 'done'), 0)::bigint
         FROM fleet.backfill_parts p LEFT JOIN fleet.backfill_chunks c ON c.job_id = p.job_id AND c.part = p.part
         WHERE p.job_id = $1 GROUP BY p.name",
    )
    .bind(job_id)
    .fetch_all(ex)
    .await
}

/// Claims the job's first pending chunk in `tx` (held until `tx` ends), skipping those
/// other lanes hold.
pub async fn claim(tx: &mut PgConnection, job_id: Uuid) -> sqlx::Result<Option<Claimed>> {
    let c: Option<(i64, i32, i64, i64)> = sqlx::query_as(
        "SELECT chunk_id, part, lo, hi FROM fleet.backfill_chunks
         WHERE job_id = $1 AND state = 'pending' ORDER BY part, lo LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(c.map(|(chunk_id, part, lo, hi)| Claimed {
        chunk_id,
        part,
        lo,
        hi,
    }))
}

/// The checkpoint: the claimed chunk is done with `rows`, in the chunk's transaction.
pub async fn mark_done(
    tx: &mut PgConnection,
    chunk_id: i64,
    rows: i64,
    elapsed: Duration,
    worker: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_chunks SET state = 'done', rows = $2, attempts = attempts + 1, error = NULL,
                duration_ms = $3, worker = $4, finished_at = clock_timestamp() WHERE chunk_id = $1",
    )
    .bind(chunk_id)
    .bind(rows)
    .bind(elapsed.as_secs_f64() * 1000.0)
    .bind(worker)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Marks a pending chunk failed, keeping `msg` as its error (`retry` re-runs it).
pub async fn fail(pool: &PgPool, chunk_id: i64, msg: &str, worker: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_chunks SET state = 'failed', attempts = attempts + 1, error = $2, worker = $3, finished_at = now()
         WHERE chunk_id = $1 AND state = 'pending'",
    )
    .bind(chunk_id)
    .bind(msg)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(())
}

/// Splits the pending chunk `(lo, hi]` at `mid` into two pending chunks, both keeping `why`.
/// Nothing happens when another lane already moved the chunk.
pub async fn split(pool: &PgPool, chunk_id: i64, mid: i64, hi: i64, why: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE fleet.backfill_chunks SET hi = $2, attempts = attempts + 1, error = $4
         WHERE chunk_id = $1 AND state = 'pending' AND hi = $3",
    )
    .bind(chunk_id)
    .bind(mid)
    .bind(hi)
    .bind(why)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 1 {
        sqlx::query(
            "INSERT INTO fleet.backfill_chunks (job_id, part, lo, hi, error)
             SELECT job_id, part, $2, $3, $4 FROM fleet.backfill_chunks WHERE chunk_id = $1",
        )
        .bind(chunk_id)
        .bind(mid)
        .bind(hi)
        .bind(why)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Carves the next chunk of `size` keys from the first part with uncarved keys that no other
/// lane is carving; its id, or `None` when none could be carved.
pub async fn carve(pool: &PgPool, job_id: Uuid, size: i64) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "WITH p AS (
            SELECT part, next_lo FROM fleet.backfill_parts
            WHERE job_id = $1 AND next_lo < hi ORDER BY part LIMIT 1 FOR UPDATE SKIP LOCKED),
         u AS (
            UPDATE fleet.backfill_parts bp
            SET next_lo = CASE WHEN bp.hi - bp.next_lo <= $2 THEN bp.hi ELSE bp.next_lo + $2 END
            FROM p WHERE bp.job_id = $1 AND bp.part = p.part
            RETURNING bp.part, p.next_lo AS lo, bp.next_lo AS hi)
         INSERT INTO fleet.backfill_chunks (job_id, part, lo, hi)
         SELECT $1, part, lo, hi FROM u RETURNING chunk_id",
    )
    .bind(job_id)
    .bind(size)
    .fetch_optional(pool)
    .await
}

/// Whether some part still has keys no chunk covers.
pub async fn uncarved<'e>(ex: impl PgExecutor<'e>, job_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM fleet.backfill_parts WHERE job_id = $1 AND next_lo < hi)",
    )
    .bind(job_id)
    .fetch_one(ex)
    .await
}

/// Whether the job has work left: a pending chunk or uncarved keys.
pub async fn open(tx: &mut PgConnection, job_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'pending')
             OR EXISTS (SELECT 1 FROM fleet.backfill_parts WHERE job_id = $1 AND next_lo < hi)",
    )
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await
}

/// The failed chunks' ranges and errors, in key order.
pub async fn failed_ranges(
    tx: &mut PgConnection,
    job_id: Uuid,
) -> sqlx::Result<Vec<(i64, i64, Option<String>)>> {
    sqlx::query_as(
        "SELECT lo, hi, error FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'failed' ORDER BY part, lo",
    )
    .bind(job_id)
    .fetch_all(&mut *tx)
    .await
}
