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
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run_id: i64,
    pub schedule: String,
    pub tick: DateTime<Utc>,
    pub trigger: String,
    pub status: String,
    pub reason: Option<String>,
    pub statuses: Vec<String>,
    pub plans: Option<Vec<String>>,
    /// `tenants.database`: the `[databases.<name>]` whose tenants it selects (`None`: all).
    pub databases: Option<Vec<String>>,
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
    /// `timezone = "tenant"`: the zones whose local tick this is (`None`: every tenant).
    pub zones: Option<Vec<String>>,
    /// The zone of tenants without one (with `zones`).
    pub default_zone: Option<String>,
    /// Catch-up and backfill runs: the spread counts from here, not from the (past) tick.
    pub paced_from: Option<DateTime<Utc>>,
}
fleet_shared::from_row!(RunRow {
    run_id,
    schedule,
    tick,
    trigger,
    status,
    reason,
    statuses,
    plans,
    databases,
    tenants_matched,
    published,
    cursor,
    spread_ms,
    leader,
    started_at,
    finished_at,
    updated_at,
    clean_stop,
    zones,
    default_zone,
    paced_from
});

const RUN_COLUMNS: &str = "run_id, schedule, tick, trigger, status, reason, statuses, plans, databases, tenants_matched, published, cursor, spread_ms, leader, started_at, finished_at, updated_at, clean_stop, zones, default_zone, paced_from";

/// What an encrypted `timezone` config value reads as: not an IANA name, so its tenants are
/// skipped and reported like those with an invalid zone (never fired at the default, a guess).
/// The ciphertext itself is never read here, so it cannot reach a log or a run's reason.
pub const ENCRYPTED_ZONE: &str = "(encrypted)";

/// A tenant's zone: its `timezone` config key (a JSON string; an encrypted value reads as
/// [`ENCRYPTED_ZONE`]), else the default (`$DEFAULT`). Used with a bound parameter for the
/// default, never a spliced string.
fn zone_expr(default_param: &str) -> String {
    format!(
        "COALESCE((SELECT CASE WHEN c.is_encrypted THEN '{ENCRYPTED_ZONE}' ELSE c.config_value #>> '{{}}' END
                   FROM fleet.tenant_configurations c
                   WHERE c.tenant_id = t.tenant_id AND c.config_key = 'timezone'), {default_param})"
    )
}

/// Which tenants a run fans out to.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    pub statuses: &'a [String],
    pub plans: Option<&'a [String]>,
    pub databases: Option<&'a [String]>,
    pub zones: Option<&'a [String]>,
    pub default_zone: Option<&'a str>,
}

impl<'a> Filter<'a> {
    pub fn of_run(run: &'a RunRow) -> Filter<'a> {
        Filter {
            statuses: &run.statuses,
            plans: run.plans.as_deref(),
            databases: run.databases.as_deref(),
            zones: run.zones.as_deref(),
            default_zone: run.default_zone.as_deref(),
        }
    }

    /// The condition, with the filter's values bound as `$1`..`$5` (see [`Filter::bind`]).
    fn sql(&self) -> String {
        format!(
            "t.status = ANY($1) AND ($2::text[] IS NULL OR t.plan = ANY($2)) AND ($3::text[] IS NULL OR {} = ANY($3)) AND ($5::text[] IS NULL OR t.database = ANY($5))",
            zone_expr("$4::text")
        )
    }

    /// Binds `$1`..`$5` of [`Filter::sql`].
    fn bind<'q, O>(
        &self,
        q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        q.bind(self.statuses)
            .bind(self.plans)
            .bind(self.zones)
            .bind(self.default_zone)
            .bind(self.databases)
    }
}

/// The zones of the tenants a selector matches (tenants without one count as `default_zone`),
/// with how many tenants each; the caller checks them (an invalid stored zone is skipped and
/// reported, never guessed).
pub async fn tenant_zones(
    pg: &PgPool,
    selector: &Selector,
    default_zone: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    sqlx::query_as(&format!(
        "SELECT zone, count(*) FROM (SELECT {} AS zone FROM fleet.tenants t
           WHERE t.status = ANY($1) AND ($2::text[] IS NULL OR t.plan = ANY($2))
             AND ($4::text[] IS NULL OR t.database = ANY($4))) z
         GROUP BY zone ORDER BY zone",
        zone_expr("$3::text")
    ))
    .bind(&selector.statuses)
    .bind(selector.plans.as_deref())
    .bind(default_zone)
    .bind(selector.databases.as_deref())
    .fetch_all(pg)
    .await
    .context("Failed to read the tenants' time zones")
}

/// Up to `limit` codes of matching tenants whose stored zone is one of `zones`.
pub async fn tenants_in_zones(
    pg: &PgPool,
    selector: &Selector,
    zones: &[String],
    default_zone: &str,
    limit: i64,
) -> anyhow::Result<Vec<String>> {
    let f = Filter {
        statuses: &selector.statuses,
        plans: selector.plans.as_deref(),
        databases: selector.databases.as_deref(),
        zones: Some(zones),
        default_zone: Some(default_zone),
    };
    let sql = format!(
        "SELECT t.code FROM fleet.tenants t WHERE {} ORDER BY t.code LIMIT $6",
        f.sql()
    );
    let rows: Vec<(String,)> = f
        .bind(sqlx::query_as(&sql))
        .bind(limit)
        .fetch_all(pg)
        .await
        .context("Failed to read tenants")?;
    Ok(rows.into_iter().map(|(c,)| c).collect())
}

/// One row of `fleet.schedules`.
#[derive(Debug, Clone, Serialize)]
pub struct StateRow {
    pub name: String,
    pub paused: bool,
    pub paused_at: Option<DateTime<Utc>>,
    pub evaluated_until: Option<DateTime<Utc>>,
}
fleet_shared::from_row!(StateRow {
    name,
    paused,
    paused_at,
    evaluated_until
});

/// A run to start (one tick of one schedule).
pub struct NewRun<'a> {
    pub schedule: &'a str,
    pub tick: DateTime<Utc>,
    pub trigger: &'a str,
    pub selector: &'a Selector,
    pub spread_ms: i64,
    pub leader: &'a str,
    /// `timezone = "tenant"`: the zones whose tick this is, and the zone of tenants without one.
    pub zones: Option<Vec<String>>,
    pub default_zone: Option<String>,
    /// Queue it (catch-up, backfill): started later, one run of the schedule at a time.
    pub queued: bool,
    /// Noted on the run (e.g. tenants skipped for an invalid time zone).
    pub note: Option<String>,
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

/// Tenants a filter matches now.
pub async fn count_matching<'e, E: sqlx::PgExecutor<'e>>(
    pg: E,
    f: &Filter<'_>,
) -> anyhow::Result<i64> {
    let sql = format!("SELECT count(*) FROM fleet.tenants t WHERE {}", f.sql());
    let (n,): (i64,) = f
        .bind(sqlx::query_as(&sql))
        .fetch_one(pg)
        .await
        .context("Failed to count tenants")?;
    Ok(n)
}

/// The next page of matching tenants after `after`, in tenant_id order (the fan-out order).
pub async fn tenant_page(
    pg: &PgPool,
    f: &Filter<'_>,
    after: Option<Uuid>,
    limit: i64,
) -> anyhow::Result<Vec<(Uuid, String)>> {
    let sql = format!(
        "SELECT t.tenant_id, t.code FROM fleet.tenants t
         WHERE {} AND ($6::uuid IS NULL OR t.tenant_id > $6)
         ORDER BY t.tenant_id LIMIT $7",
        f.sql()
    );
    f.bind(sqlx::query_as(&sql))
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
        let matched = count_matching(
            &mut *tx,
            &Filter {
                statuses: &r.selector.statuses,
                plans: r.selector.plans.as_deref(),
                databases: r.selector.databases.as_deref(),
                zones: r.zones.as_deref(),
                default_zone: r.default_zone.as_deref(),
            },
        )
        .await?;
        let row: Option<RunRow> = sqlx::query_as(&format!(
            "INSERT INTO fleet.schedule_runs (schedule, tick, trigger, status, statuses, plans, tenants_matched, spread_ms, leader, zones, default_zone, reason, databases)
             VALUES ($1, $2, $3, CASE WHEN $9 THEN 'queued' ELSE 'running' END, $4, $5, $6, $7, $8, $10, $11, $12, $13)
             ON CONFLICT (schedule, tick) DO UPDATE SET status = 'queued', trigger = EXCLUDED.trigger,
                 reason = NULL, statuses = EXCLUDED.statuses, plans = EXCLUDED.plans, databases = EXCLUDED.databases, zones = EXCLUDED.zones,
                 default_zone = EXCLUDED.default_zone, spread_ms = EXCLUDED.spread_ms, finished_at = NULL,
                 started_at = now(), updated_at = now()
               WHERE $9 AND EXCLUDED.trigger = 'backfill' AND schedule_runs.status = 'skipped'
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(r.schedule)
        .bind(r.tick)
        .bind(r.trigger)
        .bind(&r.selector.statuses)
        .bind(r.selector.plans.as_deref())
        .bind(matched)
        .bind(r.spread_ms)
        .bind(r.leader)
        .bind(r.queued)
        .bind(r.zones.as_deref())
        .bind(r.default_zone.as_deref())
        .bind(r.note.as_deref())
        .bind(r.selector.databases.as_deref())
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

/// The oldest queued run of every schedule that has no run `running` (catch-up and backfill
/// runs go one at a time per schedule, oldest first).
pub async fn next_queued(pg: &PgPool) -> anyhow::Result<Vec<RunRow>> {
    sqlx::query_as(&format!(
        "SELECT DISTINCT ON (schedule) {RUN_COLUMNS} FROM fleet.schedule_runs q
         WHERE status = 'queued' AND NOT EXISTS (
             SELECT 1 FROM fleet.schedule_runs r WHERE r.schedule = q.schedule AND r.status = 'running')
         ORDER BY schedule, tick"
    ))
    .fetch_all(pg)
    .await
    .context("Failed to read queued runs")
}

/// Fails every queued run of a schedule (it was deleted), with `reason`.
pub async fn drop_queued(pg: &PgPool, schedule: &str, reason: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE fleet.schedule_runs SET status = 'failed', reason = $2, finished_at = now(), updated_at = now()
         WHERE schedule = $1 AND status = 'queued'",
    )
    .bind(schedule)
    .bind(reason)
    .execute(pg)
    .await
    .context("Failed to drop queued runs")?;
    Ok(())
}

/// Starts a queued run: `running`, paced from now, with the tenants it matches now.
pub async fn start_queued(
    pg: &PgPool,
    run: &RunRow,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<RunRow>> {
    let matched = count_matching(pg, &Filter::of_run(run)).await?;
    sqlx::query_as(&format!(
        "UPDATE fleet.schedule_runs SET status = 'running', paced_from = $3, started_at = now(), updated_at = now(), tenants_matched = $2
         WHERE run_id = $1 AND status = 'queued' RETURNING {RUN_COLUMNS}"
    ))
    .bind(run.run_id)
    .bind(matched)
    .bind(now)
    .fetch_optional(pg)
    .await
    .context("Failed to start a queued run")
}

/// When the schedule's latest catch-up or backfill run started (its `paced_from`).
pub async fn last_paced(pg: &PgPool, schedule: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT max(paced_from) FROM fleet.schedule_runs WHERE schedule = $1 AND status IN ('running', 'done', 'failed')",
    )
    .bind(schedule)
    .fetch_one(pg)
    .await
    .context("Failed to read fleet.schedule_runs")
}

/// How many of `ticks` already have a run that is not `skipped` (what a backfill leaves alone).
pub async fn fired_among(
    pg: &PgPool,
    schedule: &str,
    ticks: &[DateTime<Utc>],
) -> anyhow::Result<usize> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet.schedule_runs WHERE schedule = $1 AND tick = ANY($2) AND status <> 'skipped'",
    )
    .bind(schedule)
    .bind(ticks)
    .fetch_one(pg)
    .await
    .context("Failed to read fleet.schedule_runs")?;
    Ok(n as usize)
}

/// The schedule's latest tick that fired (a run that is not `skipped`).
pub async fn last_fired(pg: &PgPool, schedule: &str) -> anyhow::Result<Option<RunRow>> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM fleet.schedule_runs WHERE schedule = $1 AND status NOT IN ('skipped', 'queued') ORDER BY tick DESC LIMIT 1"
    ))
    .bind(schedule)
    .fetch_optional(pg)
    .await
    .context("Failed to read fleet.schedule_runs")
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
