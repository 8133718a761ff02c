//! `fleetctl migrate …`: fleet-wide tenant migrations (rollouts), and `fleetctl migration new`.
//!
//! Creating and controlling a rollout go straight to Postgres through the provisioner library
//! (the same functions the `tenant.rollout` handler calls), so a bad request is refused here
//! with one line on stderr and exit 1, and nothing is written; the provisioner replicas then run
//! it. `status` is one query over the registry. `--watch` re-reads the rollout every half second
//! and draws done / failed / per second / ETA until it ends, exiting non-zero unless it
//! succeeded. The workflow is in docs/migrations.md.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fleet_shared::migrate::{self, Migration};
use fleet_shared::Code;
use provisioner::rollout::{self, status, Control, Direction, Options, RolloutRequest};
use uuid::Uuid;

use crate::output;

#[derive(Subcommand)]
pub enum Cmd {
    /// The fleet at a glance: tenants per schema version, behind, ahead, last rollout, drift
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Bring the selected tenants to a version (default: the deployed set's latest)
    Rollout {
        /// Target version
        #[arg(long)]
        to: Option<i64>,
        #[command(flatten)]
        c: Controls,
    },
    /// Roll tenants back to version V (applies down files in reverse, one transaction per tenant)
    Rollback {
        /// The version to go back to
        #[arg(long)]
        to: i64,
        #[command(flatten)]
        c: Controls,
    },
    /// Move exactly the tenants a rollout moved back to the versions they had
    Undo {
        id: Uuid,
        #[command(flatten)]
        c: Controls,
    },
    /// List rollouts, newest first
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// A rollout in detail: per tenant, version before/after, duration, error
    Show {
        id: Uuid,
        /// Only tenants in this state (pending, done, failed, skipped)
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop claiming new tenants (those in flight finish)
    Pause { id: Uuid },
    /// Continue a paused or halted rollout
    Resume { id: Uuid },
    /// Stop a rollout for good (tenants done stay done)
    Cancel { id: Uuid },
    /// Run a rollout's failed tenants again (only those)
    Retry {
        id: Uuid,
        /// Follow it until it ends
        #[arg(long)]
        watch: bool,
    },
    /// Drift: each tenant's ledger against the deployed files, and the tables it says exist
    Verify {
        #[arg(long)]
        json: bool,
    },
}

/// The controls every rollout takes (rollout, rollback, undo).
#[derive(Args, Clone)]
pub struct Controls {
    /// Only tenants on this plan
    #[arg(long)]
    plan: Option<String>,
    /// Only these tenants (comma-separated codes)
    #[arg(long, value_delimiter = ',')]
    codes: Option<Vec<String>>,
    /// Canary first: N tenants, or comma-separated codes; any failure there halts [default: 1]
    #[arg(long)]
    canary: Option<String>,
    /// Cumulative wave sizes after the canary, ending at 100% (e.g. 1,10%,100%) [default: 100%]
    #[arg(long)]
    waves: Option<String>,
    /// Tenants migrated at once across all provisioner replicas [default: 8]
    #[arg(long)]
    concurrency: Option<u32>,
    /// Failures tolerated before halting: N or X% of the tenants moved [default: 0]
    #[arg(long)]
    max_failures: Option<String>,
    /// lock_timeout of each tenant's transaction (e.g. 2s, 500ms) [default: 2s]
    #[arg(long)]
    lock_timeout: Option<String>,
    /// List what would run per tenant and check the files; touch nothing
    #[arg(long)]
    dry_run: bool,
    /// Follow the rollout with a live progress bar; exit non-zero unless it succeeds
    #[arg(long)]
    watch: bool,
    #[arg(long)]
    json: bool,
}

impl Controls {
    fn request(
        &self,
        direction: Direction,
        to: Option<i64>,
        undo: Option<Uuid>,
    ) -> anyhow::Result<RolloutRequest> {
        let codes = match &self.codes {
            Some(c) => Some(
                c.iter()
                    .map(|c| Code::parse(c.trim()).map_err(|e| anyhow::anyhow!("--codes: {e}")))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
            None => None,
        };
        Ok(RolloutRequest {
            direction,
            to,
            plan: self.plan.clone(),
            codes,
            canary: self.canary.clone(),
            waves: self.waves.clone(),
            concurrency: self.concurrency,
            max_failures: self.max_failures.clone(),
            lock_timeout: self.lock_timeout.clone(),
            undo,
        })
    }
}

/// `fleetctl migration new NAME`
#[derive(Subcommand)]
pub enum MigrationCmd {
    /// Write the next numbered NNNN_name.sql and NNNN_name.down.sql into FLEET_TENANT_MIGRATIONS
    New { name: String },
}

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let set = provisioner::migrations::load(&settings)?;
    let pg = output::pg(&settings).await?;
    let latest = migrate::latest_version(&set);
    match cmd {
        Cmd::Status { json } => {
            let s = status::fleet_status(&pg, latest)
                .await
                .context("Failed to read the fleet's migration status")?;
            if json {
                return output::print_json(&s);
            }
            print_status(&provisioner::migrations::source(&settings), &s)?;
            Ok(())
        }
        Cmd::Rollout { to, c } => {
            let req = c.request(Direction::Up, to, None)?;
            start(&settings, &pg, &set, &req, &c).await
        }
        Cmd::Rollback { to, c } => {
            let req = c.request(Direction::Down, Some(to), None)?;
            start(&settings, &pg, &set, &req, &c).await
        }
        Cmd::Undo { id, c } => {
            let req = c.request(Direction::Up, None, Some(id))?;
            start(&settings, &pg, &set, &req, &c).await
        }
        Cmd::List { limit, json } => {
            let rows = status::list(&pg, limit)
                .await
                .context("Failed to list rollouts")?;
            output::list(
                json,
                &rows,
                "no rollouts",
                &["ID", "TO", "STATE", "DONE", "FAILED", "SKIPPED", "CREATED"],
                |r| {
                    vec![
                        r.rollout_id.to_string(),
                        format!("{} {}", r.direction, r.target_version),
                        r.state.clone(),
                        format!("{}/{}", r.done, r.total - r.skipped),
                        r.failed.to_string(),
                        r.skipped.to_string(),
                        r.created_at.clone(),
                    ]
                },
            )
        }
        Cmd::Show { id, state, json } => {
            if let Some(s) = &state {
                anyhow::ensure!(
                    ["pending", "done", "failed", "skipped"].contains(&s.as_str()),
                    "--state {s:?}: use pending, done, failed or skipped"
                );
            }
            let s = get(&pg, id).await?;
            let tenants = status::tenants(&pg, id, state.as_deref()).await?;
            if json {
                return output::print_json(&serde_json::json!({"rollout": s, "tenants": tenants}));
            }
            print_summary(&s)?;
            if tenants.is_empty() {
                return Ok(());
            }
            outln!();
            let table: Vec<Vec<String>> = tenants
                .iter()
                .map(|t| {
                    vec![
                        t.code.clone(),
                        if t.wave == 0 {
                            "canary".into()
                        } else {
                            t.wave.to_string()
                        },
                        t.state.clone(),
                        t.version_before.to_string(),
                        t.version_after
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                        t.attempts.to_string(),
                        t.duration_ms.map(|d| format!("{d}ms")).unwrap_or_default(),
                        t.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            output::print_table(
                &[
                    "CODE", "WAVE", "STATE", "BEFORE", "AFTER", "ATTEMPTS", "TOOK", "ERROR",
                ],
                &table,
            )?;
            Ok(())
        }
        Cmd::Pause { id } => controlled(&pg, id, Control::Pause).await,
        Cmd::Resume { id } => controlled(&pg, id, Control::Resume).await,
        Cmd::Cancel { id } => controlled(&pg, id, Control::Cancel).await,
        Cmd::Retry { id, watch } => {
            controlled(&pg, id, Control::Retry).await?;
            if watch {
                return watch_rollout(&pg, id, false).await;
            }
            Ok(())
        }
        Cmd::Verify { json } => {
            let pools = fleet_shared::databases::DatabasePools::new(
                settings.databases.clone(),
                pg.clone(),
                2,
            )
            .with_tenant_pools(settings.tenant_pools);
            crate::verify::run(&pools, &set, json).await
        }
    }
}

async fn get(pg: &sqlx::PgPool, id: Uuid) -> anyhow::Result<status::RolloutSummary> {
    status::summary(pg, id)
        .await
        .context("Failed to read the rollout")?
        .with_context(|| format!("no rollout {id}"))
}

async fn controlled(pg: &sqlx::PgPool, id: Uuid, c: Control) -> anyhow::Result<()> {
    let state = rollout::control(pg, id, c).await?;
    outln!("rollout {id} {state}");
    Ok(())
}

async fn start(
    settings: &fleet_shared::Settings,
    pg: &sqlx::PgPool,
    set: &[Migration],
    req: &RolloutRequest,
    c: &Controls,
) -> anyhow::Result<()> {
    let plans = provisioner::plans::Plans::from_settings(settings)?;
    let opts = Options {
        dry_run: c.dry_run,
        request_key: None,
        known_plans: Some(plans.names().map(str::to_owned).collect()),
    };
    let p = rollout::create(pg, set, req, &opts).await?;
    if c.json && (c.dry_run || !c.watch) {
        return output::print_json(&p);
    }
    let skipped = p.items.len() - p.pending();
    let canary = p
        .items
        .iter()
        .filter(|i| i.skipped.is_none() && i.wave == 0)
        .count();
    if c.dry_run {
        outln!(
            "dry run: {} to version {} ({} tenants to move, canary {canary}, {} waves after it; {} up to date, {skipped} skipped); nothing was written",
            p.direction.as_str(),
            p.target_version,
            p.pending(),
            p.waves - 1,
            p.up_to_date
        );
        outln!("files checked (names, order, checksums):");
        for f in &p.files {
            outln!("  {f}");
        }
        if p.items.is_empty() {
            return Ok(());
        }
        outln!();
        let table: Vec<Vec<String>> = p
            .items
            .iter()
            .map(|i| {
                let runs = match &i.skipped {
                    Some(why) => format!("skipped: {why}"),
                    None => i
                        .versions
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                };
                vec![
                    i.code.clone(),
                    if i.wave == 0 && i.skipped.is_none() {
                        "canary".into()
                    } else {
                        i.wave.to_string()
                    },
                    i.version_before.to_string(),
                    i.target_version.to_string(),
                    runs,
                ]
            })
            .collect();
        output::print_table(&["CODE", "WAVE", "FROM", "TO", "RUNS"], &table)?;
        return Ok(());
    }
    outln!(
        "rollout {} created: {} to version {}, {} tenants to move (canary {canary}, {} waves after it), {} up to date, {skipped} skipped; {}",
        p.rollout_id,
        p.direction.as_str(),
        p.target_version,
        p.pending(),
        p.waves - 1,
        p.up_to_date,
        p.state
    );
    if c.watch {
        return watch_rollout(pg, p.rollout_id, c.json).await;
    }
    Ok(())
}

fn fmt_eta(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn bar(s: &status::RolloutSummary, rate: f64) -> String {
    let total = (s.total - s.skipped).max(0);
    let finished = s.done + s.failed;
    let width = 30usize;
    let filled = if total == 0 {
        width
    } else {
        (finished as usize * width) / total as usize
    };
    let eta = if rate > 0.0 {
        s.pending as f64 / rate
    } else {
        f64::INFINITY
    };
    format!(
        "[{}{}] {finished}/{total}  done {}  failed {}  skipped {}  {rate:.1}/s  ETA {}  wave {}/{}  {}",
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width)),
        s.done,
        s.failed,
        s.skipped,
        if s.pending == 0 { "0s".into() } else { fmt_eta(eta) },
        s.current_wave,
        (s.waves - 1).max(0),
        s.state
    )
}

async fn watch_rollout(pg: &sqlx::PgPool, id: Uuid, json: bool) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal() && !json;
    let started = Instant::now();
    let mut first: Option<i64> = None;
    let mut last_line = String::new();
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        let s = get(pg, id).await?;
        let finished = s.done + s.failed;
        let base = *first.get_or_insert(finished);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = (finished - base) as f64 / secs;
        let ended = s.is_finished() || s.state == "halted";
        if json {
            output::print_json_line(&s)?;
        } else {
            let line = bar(&s, rate);
            if tty {
                if line != last_line {
                    out!("\r\x1b[2K{line}");
                    let _ = std::io::stdout().flush();
                }
            } else if ended || last_print.elapsed() >= Duration::from_secs(2) {
                outln!("{line}");
                last_print = Instant::now();
            }
            last_line = line;
        }
        if ended {
            if tty {
                outln!();
            }
            return match s.state.as_str() {
                "succeeded" => Ok(()),
                other => Err(anyhow::anyhow!(
                    "rollout {id} {other}{}",
                    s.reason
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_summary(s: &status::RolloutSummary) -> anyhow::Result<()> {
    outln!("rollout:      {}", s.rollout_id);
    outln!(
        "direction:    {} to version {}",
        s.direction,
        s.target_version
    );
    if let Some(u) = s.undo_of {
        outln!("undo of:      {u}");
    }
    outln!("state:        {}", s.state);
    if let Some(r) = &s.reason {
        outln!("reason:       {r}");
    }
    outln!(
        "tenants:      {} ({} done, {} failed, {} skipped, {} pending)",
        s.total,
        s.done,
        s.failed,
        s.skipped,
        s.pending
    );
    outln!(
        "wave:         {} of {} (0 = canary)",
        s.current_wave,
        (s.waves - 1).max(0)
    );
    outln!(
        "controls:     concurrency {}, max failures {}, lock timeout {}ms",
        s.concurrency,
        s.max_failures,
        s.lock_timeout_ms
    );
    outln!("created:      {}", s.created_at);
    if let Some(f) = &s.finished_at {
        outln!("finished:     {f}");
    }
    Ok(())
}

fn print_status(source: &str, s: &status::FleetStatus) -> anyhow::Result<()> {
    outln!(
        "deployed set: {source}, latest version {}",
        s.latest_version
    );
    let total: i64 = s.histogram.iter().map(|h| h.tenants).sum();
    outln!("tenants per schema version ({total} not deleted):");
    if s.histogram.is_empty() {
        outln!("  (no tenants)");
    }
    let max = s
        .histogram
        .iter()
        .map(|h| h.tenants)
        .max()
        .unwrap_or(1)
        .max(1);
    for h in &s.histogram {
        let mark = match h.version.cmp(&s.latest_version) {
            std::cmp::Ordering::Less => "behind",
            std::cmp::Ordering::Equal => "latest",
            std::cmp::Ordering::Greater => "AHEAD",
        };
        outln!(
            "  v{:<5} {:>8}  {:<40} {mark}",
            h.version,
            h.tenants,
            "#".repeat(((h.tenants * 40) / max).max(1) as usize)
        );
    }
    let statuses: Vec<String> = s.statuses.iter().map(|(k, v)| format!("{k} {v}")).collect();
    outln!("statuses: {}", statuses.join(", "));
    outln!(
        "behind: {} active{}",
        s.behind,
        if s.behind_inactive > 0 {
            format!(" (+{} not active, skipped by rollouts)", s.behind_inactive)
        } else {
            String::new()
        }
    );
    if s.ahead > 0 {
        outln!(
            "warning: {} tenants are ahead of the deployed set (migrated by newer code); deploy that code or roll them back with it",
            s.ahead
        );
    }
    match &s.last_rollout {
        Some(r) => {
            outln!(
                "last rollout: {} {} to {} {} ({} done, {} failed, {} skipped, {} pending; created {})",
                r.rollout_id, r.direction, r.target_version, r.state, r.done, r.failed, r.skipped, r.pending, r.created_at
            );
            if let Some(reason) = &r.reason {
                outln!("  reason: {reason}");
            }
            for f in &s.last_failed {
                outln!("  failed {}: {}", f.code, f.error.as_deref().unwrap_or(""));
            }
        }
        None => outln!("last rollout: none"),
    }
    match &s.drift.checked_at {
        Some(at) if s.drift.tenants > 0 => outln!(
            "drift: {} tenants at the last verify ({at}); fleetctl migrate verify for details",
            s.drift.tenants
        ),
        Some(at) => outln!("drift: none at the last verify ({at})"),
        None => outln!("drift: not checked yet (fleetctl migrate verify)"),
    }
    Ok(())
}

/// `fleetctl migration new NAME`
pub async fn run_migration(cmd: MigrationCmd) -> anyhow::Result<()> {
    let MigrationCmd::New { name } = cmd;
    let settings = output::settings()?;
    let dir = settings.tenant_migrations_dir.clone().context(
        "FLEET_TENANT_MIGRATIONS is unset: migration new writes into that directory (copy the built-in set there first to extend it)",
    )?;
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 60
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "migration name {name:?}: use a-z, 0-9 and _ (at most 60)"
    );
    let set = migrate::load_dir(&dir)
        .with_context(|| format!("FLEET_TENANT_MIGRATIONS: {}", dir.display()))?;
    let next = migrate::latest_version(&set) + 1;
    let up = dir.join(format!("{next:04}_{name}.sql"));
    let down = dir.join(format!("{next:04}_{name}.down.sql"));
    std::fs::write(
        &up,
        format!(
            "-- {next:04}_{name}: runs in each tenant's schema (unqualified names), in one transaction\n-- per tenant under lock_timeout. Use CREATE INDEX on empty tables only; big tables take a\n-- backfill (docs/backfill.md).\n"
        ),
    )
    .with_context(|| format!("Failed to write {}", up.display()))?;
    std::fs::write(
        &down,
        format!(
            "-- Reverts {next:04}_{name}.sql (fleetctl migrate rollback --to {}).\n",
            next - 1
        ),
    )
    .with_context(|| format!("Failed to write {}", down.display()))?;
    outln!("{}", up.display());
    outln!("{}", down.display());
    Ok(())
}
