//! What slows a job down: the target database's health and `max_rows_per_sec`.
//!
//! **Health.** Each replica running a job checks the job's target database every
//! `[backfill] health_interval` (1 s) with [`fleet_shared::health::check`] (replica lag, lock
//! waiters on the job's tables, vacuum on them, long transactions; thresholds from `[backfill]`
//! or the spec). While it reports a reason, the job's lanes start no chunk and the job row says
//! why (`throttled`, shown as `throttled: replica lag 12s > 5s`); the first healthy check lets
//! them go again. Nothing needs an operator.
//!
//! **Rate.** `max_rows_per_sec` is one token bucket per job in the control plane
//! (`fleet.backfill_rate`), shared by every replica: before a claimed chunk runs, its lane
//! reserves the chunk's key count (an upper bound of the rows it can write) and sleeps until the
//! reservation is covered; after the commit the unused part is given back. The bucket gives no
//! credit for idle time (it never holds more than zero tokens), and with a rate the chunk size is
//! capped at a tenth of a second's rows per lane, so commits are paced evenly and no one-second
//! window exceeds the limit by more than the chunks in flight, however many replicas share the
//! job.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// Largest chunk (in keys) under a rate limit, for `lanes` lanes of this replica.
pub fn max_chunk_for_rate(rate: f64, lanes: usize) -> i64 {
    ((rate / 10.0) / lanes.max(1) as f64).floor().max(1.0) as i64
}

/// Reserves `n` tokens of the job's bucket; returns how long to wait before using them.
pub async fn reserve(pool: &PgPool, job_id: Uuid, rate: f64, n: f64) -> sqlx::Result<Duration> {
    let tokens = take(pool, job_id, rate, n).await?;
    Ok(if tokens < 0.0 {
        Duration::from_secs_f64(-tokens / rate)
    } else {
        Duration::ZERO
    })
}

/// Gives `n` unused tokens back (or takes more, when `n` is negative).
pub async fn give_back(pool: &PgPool, job_id: Uuid, rate: f64, n: f64) -> sqlx::Result<()> {
    if n != 0.0 {
        take(pool, job_id, rate, -n).await?;
    }
    Ok(())
}

async fn take(pool: &PgPool, job_id: Uuid, rate: f64, n: f64) -> sqlx::Result<f64> {
    let cap = rate / 10.0;
    sqlx::query_scalar(
        "INSERT INTO fleet.backfill_rate AS b (job_id, tokens, updated_at) VALUES ($1, $3 - $4, clock_timestamp())
         ON CONFLICT (job_id) DO UPDATE SET
            tokens = least($3, b.tokens + $2 * extract(epoch FROM clock_timestamp() - b.updated_at)::float8) - $4,
            updated_at = clock_timestamp()
         RETURNING tokens",
    )
    .bind(job_id)
    .bind(rate)
    .bind(cap)
    .bind(n)
    .fetch_one(pool)
    .await
}

/// Records (and logs) a change of the job's throttle reason.
pub async fn set_reason(pool: &PgPool, job_id: Uuid, reason: Option<&str>) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE fleet.backfill_jobs SET throttled = $2, updated_at = now() WHERE job_id = $1 AND throttled IS DISTINCT FROM $2",
    )
    .bind(job_id)
    .bind(reason)
    .execute(pool)
    .await?;
    match reason {
        Some(r) => tracing::info!(reason = r, "backfill job throttled"),
        None => tracing::info!("backfill job no longer throttled"),
    }
    Ok(())
}
