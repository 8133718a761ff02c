//! `fleetctl schedule apply FILE | set NAME … | delete NAME | backfill NAME --from T1 --to T2`:
//! changing schedules at run time.
//!
//! Every change is validated with the scheduler's own parser (the same fields and checks as a
//! `[[schedules]]` entry) before anything is written: a bad entry is one line naming the
//! schedule and the field, exit 1, and nothing of the file is applied. What would change is
//! printed as a diff first; the change and its record (who, when, old → new, shown by `schedule
//! history`) commit in one transaction, and the leader is nudged on `fleet.scheduler.wake` so it
//! picks the change up at once (within a second without the nudge). Names defined in
//! `FLEET_CONFIG` are the file's: these commands refuse them.
//!
//! `backfill` queues the ticks of a past range as runs (`trigger = backfill`); the leader starts
//! them one at a time, oldest first, paced like catch-up. A tick that already fired is not queued
//! again (its run row exists); a tick that was skipped is.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use fleet_shared::config::Settings;
use scheduler::catalog::Catalog;
use scheduler::config::SchedulerConfig;
use scheduler::defs;
use scheduler::schedule::Schedule;
use scheduler::store;

use crate::output;
use crate::schedule_catalog::who;

#[derive(Subcommand)]
pub enum EditCmd {
    /// Create or change schedules from a file (TOML [[schedules]] entries, or JSON: one object,
    /// an array, or {"schedules": [...]}): shows the diff, then applies it
    Apply {
        file: std::path::PathBuf,
        /// Show the diff and validate, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Create or change one stored schedule field by field
    Set(Box<SetArgs>),
    /// Delete a stored schedule (its runs and job outcomes stay in history)
    Delete { name: String },
    /// Fire the ticks of a past range (oldest first, paced), skipping ticks that already fired
    Backfill {
        name: String,
        /// First instant of the range (RFC 3339, e.g. 2026-03-01T00:00:00Z)
        #[arg(long)]
        from: String,
        /// Last instant of the range (RFC 3339, not in the future)
        #[arg(long)]
        to: String,
        /// Show what would be queued, queue nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
pub struct SetArgs {
    name: String,
    #[arg(long)]
    cron: Option<String>,
    /// An IANA zone, or "tenant" (each tenant's own zone; needs --default-timezone)
    #[arg(long)]
    timezone: Option<String>,
    #[arg(long)]
    default_timezone: Option<String>,
    #[arg(long)]
    subject: Option<String>,
    /// A JSON object merged into every job
    #[arg(long)]
    payload: Option<String>,
    /// Tenant statuses, comma-separated
    #[arg(long, value_delimiter = ',')]
    status: Option<Vec<String>>,
    /// Tenant plans, comma-separated
    #[arg(long, value_delimiter = ',')]
    plans: Option<Vec<String>>,
    /// Only tenants on these [databases.<name>], comma-separated
    #[arg(long, value_delimiter = ',')]
    database: Option<Vec<String>>,
    #[arg(long)]
    spread: Option<String>,
    /// skip, run_latest or catch_up
    #[arg(long)]
    missed: Option<String>,
    #[arg(long)]
    missed_deadline: Option<String>,
    #[arg(long)]
    catch_up_window: Option<String>,
    #[arg(long)]
    catch_up_max: Option<i64>,
    /// allow or forbid
    #[arg(long)]
    overlap: Option<String>,
    /// Remove a field (back to its default); repeatable
    #[arg(long)]
    unset: Vec<String>,
    #[arg(long)]
    dry_run: bool,
}

/// The lines of a change: `field: old → new` for every top-level field that differs.
pub fn diff(old: Option<&serde_json::Value>, new: Option<&serde_json::Value>) -> Vec<String> {
    let empty = serde_json::Map::new();
    let as_map = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => empty.clone(),
    };
    let (o, n) = (as_map(old), as_map(new));
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map(|v| v.to_string()).unwrap_or("-".into());
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| match (o.get(k), n.get(k)) {
            (None, v) => format!("{k}: {}", show(v)),
            (v, w) => format!("{k}: {} → {}", show(v), show(w)),
        })
        .collect()
}

fn refuse_file_schedule(config: &SchedulerConfig, name: &str) -> anyhow::Result<()> {
    if config.get(name).is_some() {
        anyhow::bail!(
            "schedule {} is defined in FLEET_CONFIG ({}): change it there (the file's definition wins over a stored one)",
            fleet_shared::errors::quoted(name),
            std::env::var("FLEET_CONFIG").unwrap_or_default()
        );
    }
    Ok(())
}

async fn nudge(settings: &Settings) {
    if let Ok(nats) = output::nats(settings).await {
        // Best effort: without it the leader reloads within a second.
        let _ = nats.publish(scheduler::WAKE_SUBJECT, "reload".into()).await;
        let _ = nats.flush().await;
    }
}

pub async fn run(cmd: EditCmd, settings: &Settings, config: SchedulerConfig) -> anyhow::Result<()> {
    match cmd {
        EditCmd::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            // `.json` is JSON, `.toml` is TOML; anything else is read as TOML, then as JSON.
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
            let entries = match ext {
                "json" => scheduler::config::entries_of(&text, true),
                "toml" => scheduler::config::entries_of(&text, false),
                _ => scheduler::config::entries_of(&text, false)
                    .or_else(|e| scheduler::config::entries_of(&text, true).map_err(|_| e)),
            }
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            // Validate everything before writing anything.
            let mut parsed: Vec<Schedule> = Vec::new();
            for entry in &entries {
                let s = scheduler::config::parse_json(entry, config.lease)?;
                if parsed.iter().any(|p| p.name == s.name) {
                    anyhow::bail!(
                        "schedule {}: defined twice in {}",
                        fleet_shared::errors::quoted(&s.name),
                        file.display()
                    );
                }
                refuse_file_schedule(&config, &s.name)?;
                s.selector
                    .check_databases(&s.name, &settings.databases)
                    .map_err(|e| anyhow::anyhow!(e))?;
                parsed.push(s);
            }
            let pg = output::pg(settings).await?;
            apply(settings, &pg, parsed, dry_run).await
        }
        EditCmd::Set(a) => {
            fleet_shared::Name::parse(&a.name).map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
            refuse_file_schedule(&config, &a.name)?;
            let pg = output::pg(settings).await?;
            let mut spec = match defs::get(&pg, &a.name).await? {
                Some(row) => row.spec,
                None => serde_json::json!({ "name": a.name }),
            };
            let obj = spec
                .as_object_mut()
                .ok_or_else(|| anyhow::anyhow!("stored schedule {} is not an object", a.name))?;
            for key in &a.unset {
                if key == "name"
                    || obj.remove(key).is_none() && !KNOWN_FIELDS.contains(&key.as_str())
                {
                    anyhow::bail!(
                        "schedule {}: --unset {}: not a field that can be unset ({})",
                        fleet_shared::errors::quoted(&a.name),
                        fleet_shared::errors::quoted(key),
                        KNOWN_FIELDS[1..].join(", ")
                    );
                }
            }
            let text = |v: &Option<String>| v.clone().map(serde_json::Value::String);
            let sets: [(&str, Option<serde_json::Value>); 11] = [
                ("cron", text(&a.cron)),
                ("timezone", text(&a.timezone)),
                ("default_timezone", text(&a.default_timezone)),
                ("subject", text(&a.subject)),
                ("spread", text(&a.spread)),
                ("missed", text(&a.missed)),
                ("missed_deadline", text(&a.missed_deadline)),
                ("catch_up_window", text(&a.catch_up_window)),
                ("catch_up_max", a.catch_up_max.map(Into::into)),
                ("overlap", text(&a.overlap)),
                (
                    "payload",
                    match &a.payload {
                        None => None,
                        Some(p) => Some(serde_json::from_str(p).map_err(|e| {
                            anyhow::anyhow!(
                                "schedule {}: --payload is not JSON: {e}",
                                fleet_shared::errors::quoted(&a.name)
                            )
                        })?),
                    },
                ),
            ];
            for (k, v) in sets {
                if let Some(v) = v {
                    obj.insert(k.to_owned(), v);
                }
            }
            if a.status.is_some() || a.plans.is_some() || a.database.is_some() {
                let tenants = obj
                    .entry("tenants")
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(t) = tenants.as_object_mut() {
                    if let Some(s) = &a.status {
                        t.insert("status".into(), serde_json::json!(s));
                    }
                    if let Some(p) = &a.plans {
                        t.insert("plans".into(), serde_json::json!(p));
                    }
                    if let Some(d) = &a.database {
                        t.insert("database".into(), serde_json::json!(d));
                    }
                }
            }
            let s = scheduler::config::parse_json(&spec, config.lease)?;
            s.selector
                .check_databases(&s.name, &settings.databases)
                .map_err(|e| anyhow::anyhow!(e))?;
            apply(settings, &pg, vec![s], a.dry_run).await
        }
        EditCmd::Delete { name } => {
            refuse_file_schedule(&config, &name)?;
            let pg = output::pg(settings).await?;
            if !defs::delete(&pg, &name, &who()).await? {
                let names: Vec<String> =
                    defs::load(&pg).await?.into_iter().map(|r| r.name).collect();
                anyhow::bail!(
                    "no stored schedule named {} (stored: {})",
                    fleet_shared::errors::quoted(&name),
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                );
            }
            nudge(settings).await;
            outln!("- {name} deleted (its runs and job outcomes stay in `fleetctl schedule history {name}`)");
            Ok(())
        }
        EditCmd::Backfill {
            name,
            from,
            to,
            dry_run,
        } => {
            let pg = output::pg(settings).await?;
            let cat = Catalog::load(config, &pg).await?;
            cat.known(&name)?;
            let Some((schedule, _)) = cat.get(&name) else {
                anyhow::bail!(
                    "schedule {} has no definition any more",
                    fleet_shared::errors::quoted(&name)
                );
            };
            let q = |s: &str| fleet_shared::errors::quoted(s);
            let parse = |flag: &str, v: &str| {
                DateTime::parse_from_rfc3339(v.trim())
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| anyhow::anyhow!("schedule {}: --{flag} {}: not an RFC 3339 time such as 2026-03-01T00:00:00Z", q(&name), q(v)))
            };
            let (from, to) = (parse("from", &from)?, parse("to", &to)?);
            let planned = scheduler::backfill::plan(&pg, &schedule, from, to, Utc::now()).await?;
            let n = planned.ticks.len();
            if n == 0 {
                outln!(
                    "{name} has no tick between {} and {}",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                );
                return Ok(());
            }
            let range = format!(
                "{n} ticks from {} to {}",
                from.to_rfc3339(),
                to.to_rfc3339()
            );
            if dry_run {
                let ticks: Vec<DateTime<Utc>> = planned.ticks.keys().copied().collect();
                let fired = store::fired_among(&pg, &name, &ticks).await?;
                outln!("{name}: {range}: {} would be queued, {fired} already fired (dry run: nothing queued)", n - fired);
                return Ok(());
            }
            let queued = scheduler::backfill::queue(
                &pg,
                &schedule,
                &planned,
                &format!("fleetctl:{}", who()),
            )
            .await?;
            nudge(settings).await;
            outln!(
                "{name}: {range}: {queued} queued, {} already fired (deduplicated); the leader fires them oldest first, paced; see `fleetctl schedule history {name}`",
                n - queued
            );
            Ok(())
        }
    }
}

/// The fields of a schedule (as `--unset` accepts them, after `name`).
const KNOWN_FIELDS: &[&str] = &[
    "name",
    "timezone",
    "default_timezone",
    "payload",
    "tenants",
    "spread",
    "missed",
    "missed_deadline",
    "catch_up_window",
    "catch_up_max",
    "overlap",
];

async fn apply(
    settings: &Settings,
    pg: &sqlx::PgPool,
    schedules: Vec<Schedule>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let stored = defs::load(pg).await?;
    for s in &schedules {
        let old = stored.iter().find(|r| r.name == s.name).map(|r| &r.spec);
        let lines = diff(old, Some(&s.spec));
        match (old, lines.is_empty()) {
            (None, _) => outln!("+ {} (new)", s.name),
            (Some(_), true) => outln!("= {} (unchanged)", s.name),
            (Some(_), false) => outln!("~ {}", s.name),
        }
        for l in lines {
            outln!("    {l}");
        }
    }
    if dry_run {
        outln!("dry run: nothing applied");
        return Ok(());
    }
    let specs: Vec<(String, serde_json::Value)> = schedules
        .iter()
        .map(|s| (s.name.clone(), s.spec.clone()))
        .collect();
    let actions = defs::put_all(pg, &specs, &who()).await?;
    nudge(settings).await;
    let count = |a: &str| actions.iter().filter(|x| **x == a).count();
    outln!(
        "applied: {} created, {} updated, {} unchanged",
        count("create"),
        count("update"),
        count("unchanged")
    );
    Ok(())
}
