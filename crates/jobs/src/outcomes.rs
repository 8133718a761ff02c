//! Job outcomes in the control plane (`fleet.job_outcomes`, migration `0650_job_outcomes.sql`).
//!
//! The runtime records one row per scheduled job (a job whose body has `schedule`, `tick` and
//! `tenant_id`): `done` (the handler succeeded), `failed` (a transient failure; it will be
//! retried) or `dead_lettered` (bad input or attempts spent; the letter is in `FLEET_DLQ`).
//! Records are written in batches by the runtime's outcome writer ([`crate::writer`]), and a
//! job's ack (or NAK, or TERM) is sent only after the batch holding its record has committed: a
//! crash in between redelivers the job, which is handled and recorded again, so no outcome is
//! lost. A final outcome is never replaced by a late `failed` (a redelivery racing the first
//! delivery's record).

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

/// One outcome to store: a row of `fleet.job_outcomes` before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub schedule: String,
    pub tick: DateTime<Utc>,
    pub tenant_id: Uuid,
    pub tenant_code: String,
    pub task: String,
    pub subject: String,
    pub status: &'static str,
    pub attempts: i32,
    pub reason: Option<String>,
    pub worker: String,
}

impl Record {
    /// The record of `outcome` of `job`, if it is a scheduled job (`schedule`, `tick` and
    /// `tenant_id` in its body); other jobs have none.
    pub fn of(worker: &str, job: &Job, delivered: i64, outcome: &Outcome) -> Option<Record> {
        let (Some(schedule), Some(tick), Some(tenant_id)) =
            (&job.schedule, job.tick, job.tenant_id)
        else {
            return None;
        };
        let reason = match outcome {
            Outcome::Acked => None,
            Outcome::Retried { reason, .. } | Outcome::DeadLettered { reason } => {
                Some(reason.clone())
            }
        };
        Some(Record {
            schedule: schedule.clone(),
            tick,
            tenant_id,
            tenant_code: job.tenant_code.as_str().to_owned(),
            task: job.task.clone(),
            subject: job.subject.clone(),
            status: status(outcome),
            attempts: delivered.clamp(1, i32::MAX as i64) as i32,
            reason,
            worker: worker.to_owned(),
        })
    }

    fn key(&self) -> (&str, DateTime<Utc>, Uuid) {
        (&self.schedule, self.tick, self.tenant_id)
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
    let Some(r) = Record::of(worker, job, delivered, outcome) else {
        return Ok(false);
    };
    record_many(pg, std::slice::from_ref(&r)).await?;
    Ok(true)
}

/// Stores `records` in one statement (a multi-row upsert over `UNNEST` arrays), with the same
/// rule per row as one at a time: a final outcome (`done`, `dead_lettered`) is never replaced by
/// a `failed`, attempts only grow. Several records of one job (a redelivery in the same batch)
/// collapse to the one that statement order would have left.
pub async fn record_many(pg: &PgPool, records: &[Record]) -> anyhow::Result<()> {
    let rows = collapse(records);
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Record) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let ticks: Vec<DateTime<Utc>> = rows.iter().map(|r| r.tick).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.tenant_id).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let reasons: Vec<Option<String>> = rows.iter().map(|r| r.reason.clone()).collect();
    sqlx::query(
        "INSERT INTO fleet.job_outcomes (schedule, tick, tenant_id, tenant_code, task, subject, status, attempts, reason, worker)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int4[], $9::text[], $10::text[])
         ON CONFLICT (schedule, tick, tenant_id) DO UPDATE SET
            status = EXCLUDED.status, attempts = GREATEST(job_outcomes.attempts, EXCLUDED.attempts),
            reason = EXCLUDED.reason, worker = EXCLUDED.worker, updated_at = now()
         WHERE job_outcomes.status = 'failed' OR EXCLUDED.status <> 'failed'",
    )
    .bind(col(|r| r.schedule.clone()))
    .bind(ticks)
    .bind(ids)
    .bind(col(|r| r.tenant_code.clone()))
    .bind(col(|r| r.task.clone()))
    .bind(col(|r| r.subject.clone()))
    .bind(col(|r| r.status.to_owned()))
    .bind(attempts)
    .bind(reasons)
    .bind(col(|r| r.worker.clone()))
    .execute(pg)
    .await
    .context("Failed to record the jobs' outcomes")?;
    Ok(())
}

/// One record per job (an upsert cannot touch a row twice): the records applied in order with
/// the upsert's rule, keeping the most attempts seen.
fn collapse(records: &[Record]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::with_capacity(records.len());
    let mut at = std::collections::HashMap::with_capacity(records.len());
    for r in records {
        match at.get(&r.key()) {
            None => {
                at.insert(r.key(), out.len());
                out.push(r.clone());
            }
            Some(&i) => {
                let seen: &mut Record = &mut out[i];
                let attempts = seen.attempts.max(r.attempts);
                if seen.status == "failed" || r.status != "failed" {
                    *seen = r.clone();
                }
                seen.attempts = attempts;
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tenant: u128, status: &'static str, attempts: i32) -> Record {
        Record {
            schedule: "s".into(),
            tick: DateTime::from_timestamp(0, 0).unwrap(),
            tenant_id: Uuid::from_u128(tenant),
            tenant_code: "acme".into(),
            task: "t".into(),
            subject: "jobs.t.acme".into(),
            status,
            attempts,
            reason: None,
            worker: "w".into(),
        }
    }

    #[test]
    fn a_batch_keeps_one_record_per_job_and_a_late_failed_never_wins() {
        let got = collapse(&[
            rec(1, "failed", 1),
            rec(2, "done", 2),
            rec(1, "done", 2),
            rec(2, "failed", 3),
        ]);
        let got: Vec<_> = got
            .iter()
            .map(|r| (r.tenant_id.as_u128(), r.status, r.attempts))
            .collect();
        assert_eq!(got, [(1, "done", 2), (2, "done", 3)]);
    }
}
