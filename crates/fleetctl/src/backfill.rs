//! `fleetctl backfill`: submit, list, status (with `--watch`), pause, resume, cancel, retry.
//!
//! Submitting and controlling go straight to Postgres through the backfill-worker library (the
//! same functions its NATS handlers call), so a bad spec is refused here with its reason on
//! stderr and a non-zero exit, and no job is created. `--watch` follows the job's
//! `backfill.progress.<job_id>` snapshots on NATS and re-reads the job row every two seconds
//! (so it also works when NATS is unreachable), drawing a progress bar until the job ends.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use backfill_worker::{Action, JobRow, Progress};
use clap::Subcommand;
use futures::StreamExt as _;
use uuid::Uuid;

use crate::output;

#[derive(Subcommand)]
pub enum Cmd {
    /// Submit a job spec (JSON file, or - for stdin); prints the job id
    Submit {
        file: String,
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first
    List {
        /// Only jobs in this state (pending, running, paused, succeeded, failed, cancelled)
        #[arg(long)]
        state: Option<String>,
        /// Only jobs created longer ago than this (e.g. 30d, 12h)
        #[arg(long, value_parser = fleet_shared::duration::parse)]
        older_than: Option<Duration>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Delete a finished job (succeeded, failed or cancelled) and its chunks
    Delete { id: Uuid },
    /// Show a job's progress, report and failed chunks
    Status {
        id: Uuid,
        /// Follow the job with a live progress bar until it ends
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Pause a job (running chunks finish; no new chunk starts)
    Pause { id: Uuid },
    /// Resume a paused job
    Resume { id: Uuid },
    /// Cancel a job (committed chunks stay)
    Cancel { id: Uuid },
    /// Re-run a job's failed chunks
    Retry { id: Uuid },
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg_existing(&settings).await?;
    let pools =
        fleet_shared::databases::DatabasePools::new(settings.databases.clone(), pg.clone(), 2);
    match cmd {
        Cmd::Submit { file, json } => {
            let body = if file == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("cannot read the spec from stdin")?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?
            };
            // A mapping_path names a file on this machine: read it here and send it inline.
            let body = backfill_worker::mapping_file::inline(
                body.as_bytes(),
                &backfill_worker::mapping_file::MappingFiles::Local,
                backfill_worker::mapping_file::DEFAULT_MAX_BYTES,
            )
            .await
            .map_err(|r| anyhow::anyhow!("spec refused: {r}"))?;
            let submitted =
                backfill_worker::submit_json_on(&pools, &body, settings.backfill_allow_sql, None)
                    .await
                    .map_err(|e| match e {
                        backfill_worker::SubmitError::Refused(r) => {
                            anyhow::anyhow!("spec refused: {r}")
                        }
                        backfill_worker::SubmitError::Db(e) => e,
                    })?;
            if json {
                return output::print_json(&submitted);
            }
            outln!("{}", submitted.job_id);
            Ok(())
        }
        Cmd::List {
            state,
            older_than,
            limit,
            json,
        } => {
            let state = match &state {
                Some(s) => Some(backfill_worker::JobState::parse(s).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--state {s:?} is not a job state (pending, running, paused, succeeded, failed, cancelled)"
                    )
                })?),
                None => None,
            };
            let jobs = backfill_worker::list_jobs(&pg, state, older_than, limit)
                .await
                .context("Failed to read fleet.backfill_jobs")?;
            if json {
                return output::print_json(&jobs.iter().map(Progress::from).collect::<Vec<_>>());
            }
            if jobs.is_empty() {
                outln!("no backfill jobs");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.job_id.to_string(),
                        if j.dry_run {
                            format!("{} (dry run)", j.kind)
                        } else {
                            j.kind.clone()
                        },
                        j.shown_state(),
                        format!("{:.1}%", j.percent()),
                        j.rows_done.to_string(),
                        format!("{}/{}", j.chunks_done, j.chunks_total.max(j.chunks_done)),
                        j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]
                })
                .collect();
            output::print_table(
                &["JOB", "KIND", "STATE", "DONE", "ROWS", "CHUNKS", "CREATED"],
                &rows,
            )?;
            Ok(())
        }
        Cmd::Status { id, watch, json } => {
            if watch {
                return watch_job(&settings, &pg, id, json).await;
            }
            let job = get(&pg, id).await?;
            let failed = backfill_worker::store::failed_chunks(&pg, id, 20).await?;
            if json {
                return output::print_json(&serde_json::json!({
                    "progress": Progress::from(&job),
                    "report": job.report,
                    "spec": job.spec,
                    "failed_chunks": failed,
                    "created_at": job.created_at,
                    "started_at": job.started_at,
                    "finished_at": job.finished_at,
                }));
            }
            print_status(&job, &failed)?;
            Ok(())
        }
        Cmd::Pause { id } => act(&pg, id, Action::Pause).await,
        Cmd::Resume { id } => act(&pg, id, Action::Resume).await,
        Cmd::Cancel { id } => act(&pg, id, Action::Cancel).await,
        Cmd::Retry { id } => act(&pg, id, Action::Retry).await,
        Cmd::Delete { id } => {
            backfill_worker::delete_job(&pools, id).await?;
            outln!("{id}: deleted");
            Ok(())
        }
    }
}

async fn get(pg: &sqlx::PgPool, id: Uuid) -> anyhow::Result<JobRow> {
    backfill_worker::get_job(pg, id)
        .await
        .context("Failed to read the job")?
        .ok_or_else(|| anyhow::anyhow!("no backfill job {id}"))
}

async fn act(pg: &sqlx::PgPool, id: Uuid, action: Action) -> anyhow::Result<()> {
    let state = backfill_worker::control(pg, id, action).await?;
    outln!("{id}: {state}");
    Ok(())
}

fn fmt_eta(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s.is_finite() && s >= 0.0 => {
            let s = s.round() as u64;
            format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        }
        _ => "-".into(),
    }
}

fn print_status(
    job: &JobRow,
    failed: &[backfill_worker::store::FailedChunk],
) -> anyhow::Result<()> {
    outln!("job       {}", job.job_id);
    outln!(
        "kind      {}{}",
        job.kind,
        if job.dry_run { " (dry run)" } else { "" }
    );
    if job.database != fleet_shared::databases::CONTROL {
        outln!("database  {}", job.database);
    }
    outln!("state     {}", job.shown_state());
    outln!(
        "progress  {:.1}%  {} rows {} of ~{} estimated  {}/{} chunks  {} failed",
        job.percent(),
        job.rows_done,
        if job.dry_run { "counted" } else { "written" },
        job.rows_estimated,
        job.chunks_done,
        job.chunks_total.max(job.chunks_done),
        job.chunks_failed
    );
    outln!(
        "rate      {:.0} rows/s  eta {}  chunk size {}",
        job.rows_per_sec,
        fmt_eta(job.eta_seconds),
        job.chunk_size
    );
    if let Some(e) = &job.error {
        outln!("error     {e}");
    }
    if let Some(tables) = job
        .report
        .as_ref()
        .and_then(|r| r.get("tables"))
        .and_then(|t| t.as_array())
    {
        print_report(
            tables,
            &[
                ("TABLE", "table"),
                ("VIA", "via"),
                ("STATUS", "status"),
                ("UPDATED", "rows_updated"),
                ("TOTAL", "total_rows"),
                ("NULL TENANT", "null_tenant_code"),
                ("NULL ORG", "null_organization_code"),
                ("REASON", "reason"),
            ],
        )?;
    }
    if let Some(steps) = job
        .report
        .as_ref()
        .and_then(|r| r.get("finalize"))
        .and_then(|t| t.as_array())
        .filter(|s| !s.is_empty())
    {
        print_report(
            steps,
            &[
                ("TABLE", "table"),
                ("FINALIZE", "step"),
                ("STATE", "state"),
                ("TRIES", "attempts"),
                ("DETAIL", "detail"),
            ],
        )?;
    }
    if !failed.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = failed
            .iter()
            .map(|c| {
                vec![
                    c.chunk_id.to_string(),
                    format!("({}, {}]", c.lo, c.hi),
                    c.attempts.to_string(),
                    c.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::print_table(&["CHUNK", "KEYS", "ATTEMPTS", "ERROR"], &rows)?;
    }
    Ok(())
}

/// A part of the job's report (its rows are JSON objects) as a table after a blank line: one
/// column per `(header, key)`, a string as it is, any other value as JSON, a missing key empty.
fn print_report(rows: &[serde_json::Value], columns: &[(&str, &str)]) -> anyhow::Result<()> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|&(_, key)| match row.get(key) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                })
                .collect()
        })
        .collect();
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    outln!();
    output::print_table(&header, &cells)
}

fn bar(p: &Progress) -> String {
    const WIDTH: usize = 30;
    let filled = ((p.percent / 100.0) * WIDTH as f64).round() as usize;
    format!(
        "[{}{}] {:5.1}%  {} rows  {}/{} chunks  {:.0} rows/s  eta {}  {}",
        "#".repeat(filled.min(WIDTH)),
        "-".repeat(WIDTH - filled.min(WIDTH)),
        p.percent,
        p.rows_done,
        p.chunks_done,
        p.chunks_total,
        p.rows_per_sec,
        fmt_eta(p.eta_seconds),
        p.state
    )
}

async fn watch_job(
    settings: &fleet_shared::Settings,
    pg: &sqlx::PgPool,
    id: Uuid,
    json: bool,
) -> anyhow::Result<()> {
    let mut job = get(pg, id).await?;
    // NATS is optional for watching: without it the bar follows the database alone.
    let mut sub = match output::nats(settings).await {
        Ok(n) => n
            .subscribe(fleet_shared::events::backfill_progress_subject(&id))
            .await
            .ok(),
        Err(_) => None,
    };
    let tty = std::io::stdout().is_terminal() && !json;
    let mut last_line = String::new();
    loop {
        let p = Progress::from(&job);
        if json {
            output::print_json_line(&p)?;
        } else {
            let line = bar(&p);
            if line != last_line {
                if tty {
                    out!("\r\x1b[2K{line}");
                    let _ = std::io::stdout().flush();
                } else {
                    outln!("{line}");
                }
                last_line = line;
            }
        }
        if job.is_terminal() {
            if tty {
                outln!();
            }
            return match job.state.as_str() {
                "succeeded" => Ok(()),
                other => Err(anyhow::anyhow!(
                    "job {id} ended {other}{}",
                    job.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
            };
        }
        let tick = tokio::time::sleep(Duration::from_secs(2));
        match sub.as_mut() {
            Some(s) => {
                tokio::select! {
                    _ = s.next() => {}
                    _ = tick => {}
                }
            }
            None => tick.await,
        }
        job = get(pg, id).await?;
    }
}
