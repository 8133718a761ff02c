//! Database health for bulk work: whether a database is fit to take more writes right now.
//!
//! Bulk writers (backfill chunks, tenant rollouts) call [`check`] every second or so and wait
//! while it returns a reason. The signals are the ones that make a primary or its replicas
//! suffer under a bulk job (the same that GitLab's batched migrations and gh-ost watch):
//!
//! - **replica lag**: how long ago the oldest WAL a replica has not replayed yet was written.
//!   `pg_stat_replication.replay_lag` alone is not enough: Postgres resets it to NULL when no new
//!   WAL arrives, so a replica stuck while the writer waits would look healthy and the writer
//!   would start again. A [`HealthMonitor`] therefore remembers the primary's WAL position at
//!   each of its checks and reports the lag as the age of the oldest remembered position the
//!   slowest replica has not replayed (or `replay_lag`, if larger); a replica that has replayed
//!   everything counts as 0;
//! - **lock waiters** on the job's tables: sessions waiting for a lock (of the table, a row, a
//!   transaction) while they hold or want a lock on one of them: the application is queued
//!   behind the bulk writes. The fleet's own sessions (`application_name = 'tenant-fleet'`) do
//!   not count: a bulk statement waiting for the application is bounded by its `lock_timeout`;
//! - **vacuum** running on one of the tables (`pg_stat_progress_vacuum`): let it finish first;
//! - **long transactions** in the database (other sessions'): they hold back vacuum, so every
//!   dead tuple the job leaves stays until they end.
//!
//! A reason reads like `replica lag 12s > 5s`; it goes into the job's state
//! (`throttled: replica lag 12s > 5s`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// WAL positions remembered per monitor (at one check a second: over an hour).
const MAX_SAMPLES: usize = 4096;

/// Checks one database against [`HealthLimits`], remembering what replica lag needs between
/// checks (see the module docs). One per bulk job and database.
#[derive(Debug)]
pub struct HealthMonitor {
    limits: HealthLimits,
    samples: Mutex<Samples>,
}

#[derive(Debug, Default)]
struct Samples {
    /// `(when, the primary's WAL position then)`, oldest first, not yet replayed everywhere.
    unreplayed: VecDeque<(Instant, f64)>,
    /// When the newest position every replica has replayed was current.
    caught_up_at: Option<Instant>,
    /// From the last `replay_lag` Postgres reported: the slowest replay position then, and when
    /// the WAL there was written. Valid while that position has not moved.
    anchor: Option<(f64, Instant)>,
}

impl HealthMonitor {
    pub fn new(limits: HealthLimits) -> Self {
        HealthMonitor {
            limits,
            samples: Mutex::new(Samples::default()),
        }
    }

    /// Why the database should not take more bulk writes now, or `None` when it may. `tables`
    /// are qualified, quoted names (`"public"."sessions"`); ones that do not exist are ignored.
    pub async fn check(&self, pool: &PgPool, tables: &[String]) -> sqlx::Result<Option<String>> {
        if let Some(max) = self.limits.max_replica_lag {
            if let Some(lag) = self.replica_lag(pool).await? {
                if lag > max {
                    return Ok(Some(format!(
                        "replica lag {} > {}",
                        crate::duration::format(Duration::from_millis(
                            (lag.as_millis() / 100 * 100) as u64
                        )),
                        crate::duration::format(max)
                    )));
                }
            }
        }
        let unlagged = HealthLimits {
            max_replica_lag: None,
            ..self.limits.clone()
        };
        check(pool, &unlagged, tables).await
    }

    /// The slowest replica's lag (`None`: no replica).
    async fn replica_lag(&self, pool: &PgPool) -> sqlx::Result<Option<Duration>> {
        let (current, replayed, replay_lag): (f64, Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8,
                    min(pg_wal_lsn_diff(coalesce(replay_lsn, '0/0'), '0/0'))::float8,
                    max(extract(epoch FROM replay_lag))::float8
             FROM pg_stat_replication",
        )
        .fetch_one(pool)
        .await?;
        tracing::debug!(current, ?replayed, ?replay_lag, "replication positions");
        let now = Instant::now();
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.unreplayed.back().is_none_or(|(_, lsn)| *lsn < current) {
            s.unreplayed.push_back((now, current));
        }
        while s.unreplayed.len() > MAX_SAMPLES {
            s.unreplayed.pop_front();
        }
        let Some(replayed) = replayed else {
            *s = Samples::default();
            return Ok(None);
        };
        // The newest position every replica has replayed: what is unreplayed was written after
        // it was current (an overestimate by at most one check interval, the safe side).
        while let Some((at, lsn)) = s.unreplayed.front().copied() {
            if lsn > replayed {
                break;
            }
            s.caught_up_at = Some(at);
            s.unreplayed.pop_front();
        }
        if replayed >= current {
            return Ok(Some(Duration::ZERO));
        }
        match replay_lag {
            Some(l) => {
                let written = now
                    .checked_sub(Duration::from_secs_f64(l.max(0.0)))
                    .unwrap_or(now);
                s.anchor = Some((replayed, written));
            }
            None if s.anchor.is_some_and(|(lsn, _)| lsn != replayed) => s.anchor = None,
            None => {}
        }
        let since = s
            .caught_up_at
            .or_else(|| s.unreplayed.front().map(|(at, _)| *at));
        let waited = since.map(|at| now.duration_since(at)).unwrap_or_default();
        let anchored = s
            .anchor
            .map(|(_, at)| now.duration_since(at))
            .unwrap_or_default();
        Ok(Some(waited.max(anchored)))
    }
}

/// The thresholds; `None` (or `false`) leaves a signal unchecked.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthLimits {
    pub max_replica_lag: Option<Duration>,
    /// Sessions waiting for a lock on the tables, at most.
    pub max_lock_waiters: Option<u32>,
    pub throttle_on_vacuum: bool,
    pub max_transaction_age: Option<Duration>,
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthLimits {
            max_replica_lag: Some(Duration::from_secs(10)),
            max_lock_waiters: Some(0),
            throttle_on_vacuum: true,
            max_transaction_age: Some(Duration::from_secs(600)),
        }
    }
}

fn secs(d: f64) -> String {
    crate::duration::format(Duration::from_millis((d.max(0.0) * 1000.0).round() as u64))
}

/// One check without memory: replica lag is `replay_lag` as Postgres reports it (NULL, so 0,
/// while no new WAL arrives); prefer a [`HealthMonitor`].
pub async fn check(
    pool: &PgPool,
    limits: &HealthLimits,
    tables: &[String],
) -> sqlx::Result<Option<String>> {
    if let Some(max) = limits.max_replica_lag {
        let lag: Option<f64> = sqlx::query_scalar(
            "SELECT max(CASE WHEN replay_lsn IS NOT NULL AND replay_lsn >= pg_current_wal_lsn() THEN 0
                             ELSE extract(epoch FROM coalesce(replay_lag, write_lag, interval '0'))::float8 END)
             FROM pg_stat_replication",
        )
        .fetch_one(pool)
        .await?;
        if let Some(lag) = lag.filter(|l| *l > max.as_secs_f64()) {
            return Ok(Some(format!(
                "replica lag {} > {}",
                secs(lag),
                crate::duration::format(max)
            )));
        }
    }
    let oids: Vec<i64> = if tables.is_empty() {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "SELECT oid::bigint FROM (SELECT to_regclass(t)::oid AS oid FROM unnest($1::text[]) t) x WHERE oid IS NOT NULL",
        )
        .bind(tables)
        .fetch_all(pool)
        .await?
    };
    if !oids.is_empty() {
        if let Some(max) = limits.max_lock_waiters {
            let (waiters, table): (i64, Option<String>) = sqlx::query_as(
                "SELECT count(DISTINCT a.pid), min(l.relation::regclass::text)
                 FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
                 WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()
                   AND a.application_name IS DISTINCT FROM 'tenant-fleet'
                   AND l.relation::bigint = ANY($1)",
            )
            .bind(&oids)
            .fetch_one(pool)
            .await?;
            if waiters > i64::from(max) {
                return Ok(Some(format!(
                    "{waiters} lock waiter(s) on {} > {max}",
                    table.unwrap_or_default()
                )));
            }
        }
        if limits.throttle_on_vacuum {
            let vacuumed: Option<String> = sqlx::query_scalar(
                "SELECT min(relid::regclass::text) FROM pg_stat_progress_vacuum WHERE relid::bigint = ANY($1)",
            )
            .bind(&oids)
            .fetch_one(pool)
            .await?;
            if let Some(t) = vacuumed {
                return Ok(Some(format!("vacuum running on {t}")));
            }
        }
    }
    if let Some(max) = limits.max_transaction_age {
        let age: Option<f64> = sqlx::query_scalar(
            "SELECT max(extract(epoch FROM clock_timestamp() - xact_start))::float8 FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
               AND backend_type = 'client backend'",
        )
        .fetch_one(pool)
        .await?;
        if let Some(age) = age.filter(|a| *a > max.as_secs_f64()) {
            return Ok(Some(format!(
                "a transaction open for {} > {}",
                secs(age),
                crate::duration::format(max)
            )));
        }
    }
    Ok(None)
}
