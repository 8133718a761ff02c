//! `fleetctl schedule list | trigger <name> | pause <name> | resume <name> | history <name>`.
//!
//! The schedules themselves live in `FLEET_CONFIG` (read here with the scheduler's own parser, so
//! an invalid file fails the same way); their state is in Postgres. `trigger` queues a row in
//! `fleet.schedule_triggers` and nudges the leader on core NATS; the leader starts a run with the
//! pick-up second as its tick, usually within milliseconds and at most a second later. `pause`
//! and `resume` flip `fleet.schedules.paused`: a paused schedule skips its ticks, refuses
//! triggers, and an in-progress fan-out stops at its next commit and continues on resume.
//! `trigger --wait` follows the trigger to its run and returns when the run has ended, printing
//! its status and counts; a trigger that landed on a run already started in the same second
//! says it joined that run.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use scheduler::config::SchedulerConfig;
use scheduler::store::{self, RunRow, StateRow};
use serde::Serialize;

use crate::output;

#[derive(Subcommand)]
pub enum Cmd {
    /// List schedules: cron, timezone, subject, paused, next tick, last run
    List {
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
    /// A schedule's runs, newest first
    History {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Listed {
    name: String,
    cron: String,
    timezone: String,
    subject: String,
    spread_seconds: f64,
    paused: bool,
    next_tick: Option<DateTime<Utc>>,
    last_run: Option<RunRow>,
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let config = SchedulerConfig::from_file(&settings.file)?;
    let pg = output::pg(&settings).await?;
    let states: HashMap<String, StateRow> = store::states(&pg)
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let known = |name: &str| -> anyhow::Result<()> {
        if config.get(name).is_some() || states.contains_key(name) {
            return Ok(());
        }
        let names: Vec<&str> = config.schedules.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "no schedule named {name:?} (configured in FLEET_CONFIG: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )
    };

    match cmd {
        Cmd::List { json } => {
            let now = Utc::now();
            let mut rows = Vec::new();
            for s in &config.schedules {
                let last_run = store::history(&pg, &s.name, 1).await?.into_iter().next();
                rows.push(Listed {
                    name: s.name.clone(),
                    cron: s.cron.expr().to_owned(),
                    timezone: s.cron.timezone().name().to_owned(),
                    subject: s.target.display().to_owned(),
                    spread_seconds: s.spread.as_secs_f64(),
                    paused: states.get(&s.name).is_some_and(|st| st.paused),
                    next_tick: s.cron.next_after(now),
                    last_run,
                });
            }
            if json {
                return output::print_json(&rows);
            }
            if rows.is_empty() {
                match std::env::var("FLEET_CONFIG") {
                    Ok(path) if !path.trim().is_empty() => {
                        outln!("no schedules in FLEET_CONFIG ({path})")
                    }
                    _ => outln!(
                        "no schedules: FLEET_CONFIG is not set (point it at the file the scheduler runs with, e.g. deploy/local/fleet.toml)"
                    ),
                }
                return Ok(());
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
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
                })
                .collect();
            output::print_table(
                &["NAME", "CRON", "TZ", "SUBJECT", "STATE", "NEXT", "LAST RUN"],
                &table,
            )?;
            Ok(())
        }
        Cmd::Trigger {
            name,
            wait,
            timeout,
        } => {
            known(&name)?;
            if states.get(&name).is_some_and(|s| s.paused) {
                anyhow::bail!("schedule {name:?} is paused: resume it first");
            }
            let nats = output::nats(&settings).await.ok();
            let by = std::env::var("USER").unwrap_or_else(|_| "fleetctl".into());
            let id = scheduler::trigger(&pg, nats.as_ref(), &name, &by).await?;
            if !wait {
                outln!("trigger {id} queued for {name}; see `fleetctl schedule history {name}`");
                return Ok(());
            }
            wait_for_run(&pg, id, &name, timeout).await
        }
        Cmd::Pause { name } => {
            known(&name)?;
            store::set_paused(&pg, &name, true).await?;
            outln!("{name} paused");
            Ok(())
        }
        Cmd::Resume { name } => {
            known(&name)?;
            store::set_paused(&pg, &name, false).await?;
            outln!("{name} resumed");
            Ok(())
        }
        Cmd::History { name, limit, json } => {
            known(&name)?;
            let runs = store::history(&pg, &name, limit.clamp(1, 10_000)).await?;
            output::list(
                json,
                &runs,
                &format!("no runs of {name} yet"),
                &[
                    "RUN",
                    "TICK",
                    "TRIGGER",
                    "STATUS",
                    "PUBLISHED",
                    "STARTED",
                    "TOOK",
                    "REASON",
                ],
                |r| {
                    let took = r
                        .finished_at
                        .map(|f| format!("{:.1}s", (f - r.started_at).as_seconds_f64()))
                        .unwrap_or_default();
                    vec![
                        r.run_id.to_string(),
                        r.tick.to_rfc3339(),
                        r.trigger.clone(),
                        r.status.clone(),
                        format!("{}/{}", r.published, r.tenants_matched),
                        r.started_at.to_rfc3339(),
                        took,
                        r.reason.clone().unwrap_or_default(),
                    ]
                },
            )
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
