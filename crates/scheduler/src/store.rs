//! The scheduler's Postgres records (migration `0200_scheduler.sql`): schedule state, run history
//! with fan-out progress, and manual triggers.
//!
//! Every write that decides something is one statement or one transaction: a tick's run row and
//! the schedule's watermark commit together, so a crash leaves either both (the run is resumed by
//! the next leader) or neither (the tick is decided again). Progress is monotonic
//! (`published` only grows), so a stale leader cannot move a cursor back.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::schedule::Selector;

/// One row of `fleet.schedule_runs`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub run_id: i64,
    pub schedule: String,
    pub tick: DateTime<Utc>,
    pub trigger: String,
    pub status: String,
    pub reason: Option<String>,
    pub statuses: Vec<String>,
    pub plans: Option<Vec<String>>,
    pub tenants_matched: i64,
    pub published: i64,
    pub cursor: Option<Uuid>,
    pub spread_ms: i64,
    pub leader: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The run's last progress (creation or committed cursor): how long a resumed fan-out was
    /// stopped, compared with the duplicate window.
    pub updated_at: DateTime<Utc>,
    /// The fan-out last stopped with every published job acknowledged and committed (nothing in
    /// doubt); false while it runs and after a crash.
    pub clean_stop: bool,
}

const RUN_COLUMNS: &str = "run_id, schedule, tick, trigger, status, reason, statuses, plans, tenants_matched, published, cursor, spread_ms, leader, started_at, finished_at, updated_at, clean_stop";

/// One row of `fleet.schedules`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StateRow {
    pub name: String,
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub evaluated_until: Option<DateTime<Utc>>,
}

/// A run to start (one tick of one schedule).
pub struct NewRun<'a> {
    pub schedule: &'a str,
    pub tick: DateTime<Utc>,
    pub trigger: &'a str,
    pub selector: &'a Selector,
    pub spread_ms: i64,
    pub leader: &'a str,
}

/// Makes sure every configured schedule has a state row; a new one starts evaluating at `now`
/// (a schedule added to the file does not catch up on its past).
pub async fn ensure_states(
    pg: &PgPool,
    names: &[String],
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO fleet.schedules (name, evaluated_until) SELECT unnest($1::text[]), $2 ON CONFLICT (name) DO NOTHING",
    )
    .bind(names)
    .bind(now)
    .execute(pg)
    .await
    .context("Failed to record schedules")?;
    Ok(())
}

pub async fn states(pg: &PgPool) -> anyhow::Result<Vec<StateRow>> {
    sqlx::query_as(
        "SELECT name, paused, paused_at, evaluated_until FROM fleet.schedules ORDER BY name",
    )
    .fetch_all(pg)
    .await
    .context("Failed to read fleet.schedules")
}

/// Sets a schedule's pause flag (creating its state row if the scheduler has not yet).
pub async fn set_paused(pg: &PgPool, name: &str, paused: bool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO fleet.schedules (name, paused, paused_at, evaluated_until) VALUES ($1, $2, CASE WHEN $2 THEN now() END, now())
         ON CONFLICT (name) DO UPDATE SET paused = $2, paused_at = CASE WHEN $2 THEN now() END, updated_at = now()",
    )
    .bind(name)
    .bind(paused)
    .execute(pg)
    .await
    .context("Failed to update fleet.schedules")?;
    Ok(())
}

/// Tenants matching a selector now.
pub async fn count_matching(
    pg: &PgPool,
    statuses: &[String],
    plans: Option<&[String]>,
) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM fleet.tenants WHERE status = ANY($1) AND ($2::text[] IS NULL OR plan = ANY($2))",
    )
    .bind(statuses)
    .bind(plans)
    .fetch_one(pg)
    .await
    .context("Failed to count tenants")
}

/// The next page of matching tenants after `after`, in tenant_id order (the fan-out order).
pub async fn tenant_page(
    pg: &PgPool,
    statuses: &[String],
    plans: Option<&[String]>,
    after: Option<Uuid>,
    limit: i64,
) -> anyhow::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(
        "SELECT tenant_id, code FROM fleet.tenants
         WHERE status = ANY($1) AND ($2::text[] IS NULL OR plan = ANY($2)) AND ($3::uuid IS NULL OR tenant_id > $3)
         ORDER BY tenant_id LIMIT $4",
    )
    .bind(statuses)
    .bind(plans)
    .bind(after)
    .bind(limit)
    .fetch_all(pg)
    .await
    .context("Failed to read tenants")
}

/// Records the decision for one schedule's ticks: starts `runs` (a tick that already has a run
/// is left alone), records `skipped` ticks with their reason, and moves the watermark to
/// `watermark` (cron decisions; a manual trigger leaves it), all in one transaction. Returns the
/// runs this call created.
pub async fn decide(
    pg: &PgPool,
    schedule: &str,
    watermark: Option<DateTime<Utc>>,
    runs: &[NewRun<'_>],
    skipped: &[(DateTime<Utc>, &str, &str)],
) -> anyhow::Result<Vec<RunRow>> {
    let mut tx = pg.begin().await?;
    let mut created = Vec::new();
    for r in runs {
        let matched = {
            let plans = r.selector.plans.as_deref();
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM fleet.tenants WHERE status = ANY($1) AND ($2::text[] IS NULL OR plan = ANY($2))",
            )
            .bind(&r.selector.statuses)
            .bind(plans)
            .fetch_one(&mut *tx)
            .await?
        };
        let row: Option<RunRow> = sqlx::query_as(&format!(
            "INSERT INTO fleet.schedule_runs (schedule, tick, trigger, status, statuses, plans, tenants_matched, spread_ms, leader)
             VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8)
             ON CONFLICT (schedule, tick) DO NOTHING RETURNING {RUN_COLUMNS}"
        ))
        .bind(r.schedule)
        .bind(r.tick)
        .bind(r.trigger)
        .bind(&r.selector.statuses)
        .bind(r.selector.plans.as_deref())
        .bind(matched)
        .bind(r.spread_ms)
        .bind(r.leader)
        .fetch_optional(&mut *tx)
        .await?;
        created.extend(row);
    }
    for (tick, trigger, reason) in skipped {
        sqlx::query(
            "INSERT INTO fleet.schedule_runs (schedule, tick, trigger, status, reason, statuses, finished_at)
             VALUES ($1, $2, $3, 'skipped', $4, '{}', now()) ON CONFLICT (schedule, tick) DO NOTHING",
        )
        .bind(schedule)
        .bind(tick)
        .bind(trigger)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(w) = watermark {
        sqlx::query(
            "UPDATE fleet.schedules SET evaluated_until = GREATEST(evaluated_until, $2), updated_at = now() WHERE name = $1",
        )
        .bind(schedule)
        .bind(w)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(created)
}

/// Commits fan-out progress; returns whether the schedule is now paused (the fan-out stops).
pub async fn commit_progress(
    pg: &PgPool,
    run_id: i64,
    published: i64,
    cursor: Uuid,
) -> anyhow::Result<bool> {
    let paused: Option<bool> = sqlx::query_scalar(
        "UPDATE fleet.schedule_runs r SET published = $2, cursor = $3, clean_stop = false, updated_at = now()
         WHERE run_id = $1 AND published <= $2
         RETURNING (SELECT paused FROM fleet.schedules s WHERE s.name = r.schedule)",
    )
    .bind(run_id)
    .bind(published)
    .bind(cursor)
    .fetch_optional(pg)
    .await
    .context("Failed to record fan-out progress")?
    .flatten();
    Ok(paused.unwrap_or(false))
}

/// Finishes a once-per-tick run (`tenant.rollout`) whose one message is stored: `done`, with
/// `published = 1`.
pub async fn finish_single(pg: &PgPool, run_id: i64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE fleet.schedule_runs SET status = 'done', published = 1, finished_at = now(), updated_at = now() WHERE run_id = $1 AND status = 'running'",
    )
    .bind(run_id)
    .execute(pg)
    .await
    .context("Failed to finish the run")?;
    Ok(())
}

/// Finishes a running run. A `None` reason keeps one noted earlier (see [`note_run`]).
pub async fn finish_run(
    pg: &PgPool,
    run_id: i64,
    status: &str,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE fleet.schedule_runs SET status = $2, reason = COALESCE($3, reason), finished_at = now(), updated_at = now() WHERE run_id = $1 AND status = 'running'",
    )
    .bind(run_id)
    .bind(status)
    .bind(reason)
    .execute(pg)
    .await
    .context("Failed to finish the run")?;
    Ok(())
}

/// A fan-out (re)starts publishing: from now on a crash can leave jobs in doubt. `note`, if any,
/// is recorded as the run's reason (shown by `fleetctl schedule history`); it stays through
/// [`finish_run`] with `done`.
pub async fn start_publishing(pg: &PgPool, run_id: i64, note: Option<&str>) -> anyhow::Result<()> {
    sqlx::query("UPDATE fleet.schedule_runs SET clean_stop = false, reason = COALESCE($2, reason) WHERE run_id = $1 AND status = 'running'")
        .bind(run_id)
        .bind(note)
        .execute(pg)
        .await
        .context("Failed to record that the fan-out starts")?;
    Ok(())
}

/// A fan-out stopped with every published job acknowledged and committed: nothing is in doubt,
/// however late it resumes. Leaves `updated_at` (the last progress) alone.
pub async fn stopped_cleanly(pg: &PgPool, run_id: i64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE fleet.schedule_runs SET clean_stop = true WHERE run_id = $1 AND status = 'running'",
    )
    .bind(run_id)
    .execute(pg)
    .await
    .context("Failed to record a clean stop of the fan-out")?;
    Ok(())
}

/// Runs still fanning out (or interrupted), oldest first.
pub async fn running(pg: &PgPool) -> anyhow::Result<Vec<RunRow>> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM fleet.schedule_runs WHERE status = 'running' ORDER BY run_id"
    ))
    .fetch_all(pg)
    .await
    .context("Failed to read running runs")
}

/// Whether a schedule has a run still publishing.
pub async fn has_running(pg: &PgPool, schedule: &str) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fleet.schedule_runs WHERE schedule = $1 AND status = 'running')")
        .bind(schedule)
        .fetch_one(pg)
        .await
        .context("Failed to read running runs")
}

/// The latest runs of a schedule, newest first.
pub async fn history(pg: &PgPool, schedule: &str, limit: i64) -> anyhow::Result<Vec<RunRow>> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM fleet.schedule_runs WHERE schedule = $1 ORDER BY tick DESC LIMIT $2"
    ))
    .bind(schedule)
    .bind(limit)
    .fetch_all(pg)
    .await
    .context("Failed to read fleet.schedule_runs")
}

/// Queues a manual trigger; returns its id.
pub async fn request_trigger(pg: &PgPool, schedule: &str, by: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar("INSERT INTO fleet.schedule_triggers (schedule, requested_by) VALUES ($1, $2) RETURNING trigger_id")
        .bind(schedule)
        .bind(by)
        .fetch_one(pg)
        .await
        .context("Failed to queue the trigger")
}

/// Triggers not yet picked up, oldest first.
pub async fn pending_triggers(pg: &PgPool) -> anyhow::Result<Vec<(i64, String)>> {
    sqlx::query_as("SELECT trigger_id, schedule FROM fleet.schedule_triggers WHERE picked_at IS NULL ORDER BY trigger_id LIMIT 100")
        .fetch_all(pg)
        .await
        .context("Failed to read fleet.schedule_triggers")
}

/// Marks a trigger picked up, with the run it started (if any) and what happened.
pub async fn pick_trigger(
    pg: &PgPool,
    trigger_id: i64,
    run_id: Option<i64>,
    outcome: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE fleet.schedule_triggers SET picked_at = now(), run_id = $2, outcome = $3 WHERE trigger_id = $1")
        .bind(trigger_id)
        .bind(run_id)
        .bind(outcome)
        .execute(pg)
        .await
        .context("Failed to mark the trigger")?;
    Ok(())
}

/// The run a (manual) tick of `schedule` already has, if any.
pub async fn run_at(
    pg: &PgPool,
    schedule: &str,
    tick: DateTime<Utc>,
) -> anyhow::Result<Option<RunRow>> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM fleet.schedule_runs WHERE schedule = $1 AND tick = $2"
    ))
    .bind(schedule)
    .bind(tick)
    .fetch_optional(pg)
    .await
    .context("Failed to read fleet.schedule_runs")
}
