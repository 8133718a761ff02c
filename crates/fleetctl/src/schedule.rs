//! `fleetctl schedule list | show | trigger | pause | resume | history` (reading and operating
//! schedules); `apply | set | delete | backfill` (changing them) are in [`crate::schedule_edit`].
//!
//! Schedules come from two places, read with the scheduler's own parser so an invalid one fails
//! the same way: `[[schedules]]` in `FLEET_CONFIG` (source `file`) and the control plane
//! (`fleet.schedule_definitions`, source `stored`, written by `schedule apply|set`). A name in
//! the file wins. Their state is in Postgres. `trigger` queues a row in
//! `fleet.schedule_triggers` and nudges the leader on core NATS; the leader starts a run with the
//! pick-up second as its tick, usually within milliseconds and at most a second later. `pause`
//! and `resume` flip `fleet.schedules.paused`: a paused schedule skips its ticks, refuses
//! triggers, and an in-progress fan-out stops at its next commit and continues on resume.
//! `trigger --wait` follows the trigger to its run and returns when the run has ended, printing
//! its status and counts; a trigger that landed on a run already started in the same second
//! says it joined that run. A deleted stored schedule keeps its runs, outcomes and change log:
//! `history` still reads them and `show` says when and by whom it was deleted.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use scheduler::catalog::{deletion, Catalog};
use scheduler::config::SchedulerConfig;
use scheduler::defs;
use scheduler::store::{self, RunRow};
use serde::Serialize;

use crate::output;
use crate::schedule_catalog::who;
use crate::schedule_edit::{self, EditCmd};

#[derive(Subcommand)]
pub enum Cmd {
    /// List schedules: source, cron, timezone, subject, paused, next tick, last run
    List {
        #[arg(long)]
        json: bool,
    },
    /// One schedule: its definition, source, state, next ticks and last run
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a tick of a schedule now
    Trigger {
        name: String,
        /// Wait until the run has ended (or the trigger was refused) and print its outcome
        #[arg(long)]
        wait: bool,
        /// How long --wait waits
        #[arg(long, default_value = "10m", value_parser = fleet_shared::duration::parse)]
        timeout: Duration,
    },
    /// Pause a schedule: its ticks are skipped until it is resumed
    Pause { name: String },
    /// Resume a paused schedule
    Resume { name: String },
    /// A schedule's runs (newest first, with their jobs' outcomes) and its changes; with
    /// --tenant, that tenant's job outcomes
    History {
        name: String,
        /// Show this tenant's jobs of the schedule and their outcomes (done, failed, dead_lettered)
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Edit(EditCmd),
}

#[derive(Serialize)]
struct Listed {
    name: String,
    source: &'static str,
    cron: String,
    timezone: String,
    subject: String,
    spread_seconds: f64,
    paused: bool,
    next_tick: Option<DateTime<Utc>>,
    last_run: Option<RunRow>,
}

#[derive(Serialize)]
struct Shown {
    name: String,
    source: &'static str,
    spec: serde_json::Value,
    version: Option<i64>,
    updated_at: Option<DateTime<Utc>>,
    updated_by: Option<String>,
    paused: bool,
    evaluated_until: Option<DateTime<Utc>>,
    /// The next ticks, per zone for `timezone = "tenant"` (`zone` null otherwise).
    next_ticks: Vec<NextTick>,
    last_run: Option<RunRow>,
}

/// `schedule show` of a deleted schedule: its tombstone and last run.
#[derive(Serialize)]
struct ShownDeleted {
    name: String,
    source: &'static str,
    deleted_at: DateTime<Utc>,
    deleted_by: Option<String>,
    /// The definition it had when it was deleted.
    last_spec: Option<serde_json::Value>,
    last_run: Option<RunRow>,
}

#[derive(Serialize)]
struct NextTick {
    zone: Option<String>,
    tick: DateTime<Utc>,
}

#[derive(Serialize)]
struct RunWithOutcomes {
    #[serde(flatten)]
    run: RunRow,
    jobs_done: i64,
    jobs_failed: i64,
    jobs_dead_lettered: i64,
}

#[derive(Serialize)]
struct History {
    runs: Vec<RunWithOutcomes>,
    changes: Vec<defs::ChangeRow>,
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let config = SchedulerConfig::from_file(&settings.file)?;
    if let Cmd::Edit(edit) = cmd {
        return schedule_edit::run(edit, &settings, config).await;
    }
    let pg = output::pg(&settings).await?;
    let cat = Catalog::load(config, &pg).await?;

    match cmd {
        Cmd::Edit(_) => unreachable!("handled above"),
        Cmd::List { json } => {
            let now = Utc::now();
            let mut rows = Vec::new();
            for (s, source) in cat.all() {
                let last_run = store::history(&pg, &s.name, 1).await?.into_iter().next();
                rows.push(Listed {
                    timezone: match s.zone {
                        scheduler::schedule::Zone::Fixed => s.cron.timezone().name().to_owned(),
                        scheduler::schedule::Zone::Tenant => {
                            format!("tenant (default {})", s.cron.timezone().name())
                        }
                    },
                    next_tick: s.cron.next_after(now),
                    paused: cat.states.get(&s.name).is_some_and(|st| st.paused),
                    name: s.name.clone(),
                    source,
                    cron: s.cron.expr().to_owned(),
                    subject: s.target.display().to_owned(),
                    spread_seconds: s.spread.as_secs_f64(),
                    last_run,
                });
            }
            let empty = match std::env::var("FLEET_CONFIG") {
                Ok(path) if !path.trim().is_empty() => format!(
                    "no schedules in FLEET_CONFIG ({path}) or the control plane (fleetctl schedule apply FILE adds some)"
                ),
                _ => "no schedules: FLEET_CONFIG is not set and none are stored (point FLEET_CONFIG at the file the scheduler runs with, e.g. deploy/local/fleet.toml, or use fleetctl schedule apply FILE)".to_owned(),
            };
            output::list(
                json,
                &rows,
                &empty,
                &[
                    "NAME", "SOURCE", "CRON", "TZ", "SUBJECT", "STATE", "NEXT", "LAST RUN",
                ],
                |r| {
                    vec![
                        r.name.clone(),
                        r.source.to_owned(),
                        r.cron.clone(),
                        r.timezone.clone(),
                        r.subject.clone(),
                        if r.paused { "paused" } else { "" }.to_owned(),
                        r.next_tick.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        r.last_run
                            .as_ref()
                            .map(|l| {
                                format!(
                                    "{} {} {}/{}",
                                    l.tick.to_rfc3339(),
                                    l.status,
                                    l.published,
                                    l.tenants_matched
                                )
                            })
                            .unwrap_or_default(),
                    ]
                },
            )
        }
        Cmd::Show { name, json } => {
            if let Some(tomb) = cat.known_or_deleted(&name)? {
                let shown = ShownDeleted {
                    name: name.clone(),
                    source: "deleted",
                    deleted_at: tomb.changed_at,
                    deleted_by: tomb.changed_by.clone(),
                    last_spec: tomb.old.clone(),
                    last_run: store::history(&pg, &name, 1).await?.into_iter().next(),
                };
                if json {
                    return output::print_json(&shown);
                }
                outln!("name:     {}", shown.name);
                outln!(
                    "state:    {} (runs, outcomes and changes: fleetctl schedule history {name})",
                    deletion(tomb)
                );
                if let Some(serde_json::Value::Object(m)) = &shown.last_spec {
                    outln!("last definition:");
                    for (k, v) in m {
                        outln!("  {k} = {v}");
                    }
                }
                if let Some(l) = &shown.last_run {
                    print_last_run(l)?;
                }
                return Ok(());
            }
            let Some((schedule, source)) = cat.get(&name) else {
                anyhow::bail!(
                    "schedule {} has runs but no definition any more (deleted or removed from FLEET_CONFIG)",
                    fleet_shared::errors::quoted(&name)
                );
            };
            let row = cat
                .stored
                .iter()
                .find(|r| r.name == name && source == "stored");
            let state = cat.states.get(&name);
            let (clocks, _) = scheduler::live::clocks_of(&pg, &schedule).await?;
            let now = Utc::now();
            let mut next_ticks = Vec::new();
            for (zone, clock) in clocks {
                let mut t = now;
                for _ in 0..3 {
                    let Some(n) = clock.next_after(t) else { break };
                    next_ticks.push(NextTick {
                        zone: zone.clone(),
                        tick: n,
                    });
                    t = n;
                }
            }
            next_ticks.sort_by_key(|n| n.tick);
            let shown = Shown {
                name: name.clone(),
                source,
                spec: schedule.spec.clone(),
                version: row.map(|r| r.version),
                updated_at: row.map(|r| r.updated_at),
                updated_by: row.and_then(|r| r.updated_by.clone()),
                paused: state.is_some_and(|s| s.paused),
                evaluated_until: state.and_then(|s| s.evaluated_until),
                next_ticks,
                last_run: store::history(&pg, &name, 1).await?.into_iter().next(),
            };
            if json {
                return output::print_json(&shown);
            }
            outln!("name:     {}", shown.name);
            match row {
                Some(r) => outln!(
                    "source:   control plane (version {}, {} by {})",
                    r.version,
                    r.updated_at.to_rfc3339(),
                    r.updated_by.as_deref().unwrap_or("?")
                ),
                None => outln!("source:   FLEET_CONFIG"),
            }
            outln!(
                "state:    {}{}",
                if shown.paused { "paused" } else { "active" },
                shown
                    .evaluated_until
                    .map(|t| format!(", evaluated until {}", t.to_rfc3339()))
                    .unwrap_or_default()
            );
            outln!("definition:");
            if let serde_json::Value::Object(m) = &shown.spec {
                for (k, v) in m {
                    outln!("  {k} = {v}");
                }
            }
            outln!("next ticks:");
            for n in &shown.next_ticks {
                match &n.zone {
                    Some(z) => outln!("  {} ({z})", n.tick.to_rfc3339()),
                    None => outln!("  {}", n.tick.to_rfc3339()),
                }
            }
            if let Some(l) = &shown.last_run {
                print_last_run(l)?;
            }
            Ok(())
        }
        Cmd::Trigger {
            name,
            wait,
            timeout,
        } => {
            cat.known(&name)?;
            if cat.states.get(&name).is_some_and(|s| s.paused) {
                anyhow::bail!("schedule {name:?} is paused: resume it first");
            }
            let nats = output::nats(&settings).await.ok();
            let id = scheduler::trigger(&pg, nats.as_ref(), &name, &who()).await?;
            if !wait {
                outln!("trigger {id} queued for {name}; see `fleetctl schedule history {name}`");
                return Ok(());
            }
            wait_for_run(&pg, id, &name, timeout).await
        }
        Cmd::Pause { name } => {
            cat.known(&name)?;
            store::set_paused(&pg, &name, true).await?;
            outln!("{name} paused");
            Ok(())
        }
        Cmd::Resume { name } => {
            cat.known(&name)?;
            store::set_paused(&pg, &name, false).await?;
            outln!("{name} resumed");
            Ok(())
        }
        Cmd::History {
            name,
            tenant,
            limit,
            json,
        } => {
            // A deleted schedule's runs, outcomes and changes stay readable.
            cat.known_or_deleted(&name)?;
            let limit = limit.clamp(1, 10_000);
            if let Some(code) = tenant {
                let code = fleet_shared::Code::parse(&code)
                    .map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
                let rows =
                    fleet_jobs::outcomes::for_tenant(&pg, &name, code.as_str(), limit).await?;
                return output::list(
                    json,
                    &rows,
                    &format!(
                        "no job outcomes of {name} for tenant {code} (outcomes are recorded by consumers on the job runtime)"
                    ),
                    &["TICK", "STATUS", "ATTEMPTS", "WORKER", "UPDATED", "REASON"],
                    |o| {
                        vec![
                            o.tick.to_rfc3339(),
                            o.status.clone(),
                            o.attempts.to_string(),
                            o.worker.clone().unwrap_or_default(),
                            o.updated_at.to_rfc3339(),
                            o.reason.clone().unwrap_or_default(),
                        ]
                    },
                );
            }
            let runs = store::history(&pg, &name, limit).await?;
            let ticks: Vec<DateTime<Utc>> = runs.iter().map(|r| r.tick).collect();
            let counts = fleet_jobs::outcomes::counts_by_tick(&pg, &name, &ticks).await?;
            let runs: Vec<RunWithOutcomes> = runs
                .into_iter()
                .map(|run| {
                    let (d, f, x) = counts.get(&run.tick).copied().unwrap_or_default();
                    RunWithOutcomes {
                        run,
                        jobs_done: d,
                        jobs_failed: f,
                        jobs_dead_lettered: x,
                    }
                })
                .collect();
            let changes = defs::changes(&pg, &name, limit).await?;
            if json {
                return output::print_json(&History { runs, changes });
            }
            output::list(
                false,
                &runs,
                &format!("no runs of {name} yet"),
                &[
                    "RUN",
                    "TICK",
                    "TRIGGER",
                    "STATUS",
                    "PUBLISHED",
                    "JOBS DONE/FAILED/DLQ",
                    "STARTED",
                    "TOOK",
                    "REASON",
                ],
                |r| {
                    let took = r
                        .run
                        .finished_at
                        .map(|f| format!("{:.1}s", (f - r.run.started_at).as_seconds_f64()))
                        .unwrap_or_default();
                    vec![
                        r.run.run_id.to_string(),
                        r.run.tick.to_rfc3339(),
                        r.run.trigger.clone(),
                        r.run.status.clone(),
                        format!("{}/{}", r.run.published, r.run.tenants_matched),
                        format!("{}/{}/{}", r.jobs_done, r.jobs_failed, r.jobs_dead_lettered),
                        r.run.started_at.to_rfc3339(),
                        took,
                        r.run.reason.clone().unwrap_or_default(),
                    ]
                },
            )?;
            if !changes.is_empty() {
                outln!();
                outln!("changes:");
                output::print_table(
                    &["WHEN", "WHO", "ACTION", "CHANGE"],
                    &changes
                        .iter()
                        .map(|c| {
                            vec![
                                c.changed_at.to_rfc3339(),
                                c.changed_by.clone().unwrap_or_default(),
                                c.action.clone(),
                                schedule_edit::diff(c.old.as_ref(), c.new.as_ref()).join("; "),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )?;
            }
            Ok(())
        }
    }
}

/// Follows trigger `id` to its run and prints how the run ended.
async fn wait_for_run(
    pg: &sqlx::PgPool,
    id: i64,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let too_late = |what: &str| {
        anyhow::anyhow!(
            "trigger {id} for {name}: {what} within {}",
            fleet_shared::duration::format(timeout)
        )
    };
    let (outcome, run_id) = loop {
        let row: (Option<String>, Option<i64>) = sqlx::query_as(
            "SELECT outcome, run_id FROM fleet.schedule_triggers WHERE trigger_id = $1",
        )
        .bind(id)
        .fetch_one(pg)
        .await
        .context("Failed to read the trigger")?;
        if let (Some(outcome), run_id) = row {
            break (outcome, run_id);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(too_late("not picked up (is a scheduler running?)"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(run_id) = run_id else {
        anyhow::bail!("trigger {id} for {name}: {outcome}");
    };
    let joined = outcome.starts_with("joined");
    loop {
        let row: (String, Option<String>, i64, i64) = sqlx::query_as(
            "SELECT status, reason, tenants_matched, published FROM fleet.schedule_runs WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_one(pg)
        .await
        .context("Failed to read the run")?;
        let (status, reason, matched, published) = row;
        if status != "running" {
            let how = if joined {
                format!("joined run {run_id} (already started at this second)")
            } else {
                format!("started run {run_id}")
            };
            let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
            outln!(
                "trigger {id} for {name}: {how}; run {status}{why}, {published} job(s) published for {matched} tenant(s)"
            );
            if status == "failed" {
                anyhow::bail!("run {run_id} of {name} failed");
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(too_late(&format!("run {run_id} still running")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `last run:` line of `schedule show`.
fn print_last_run(l: &RunRow) -> anyhow::Result<()> {
    outln!(
        "last run: {} {} {} {}/{}",
        l.run_id,
        l.tick.to_rfc3339(),
        l.status,
        l.published,
        l.tenants_matched
    );
    Ok(())
}
