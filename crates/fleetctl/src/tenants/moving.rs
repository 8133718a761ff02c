//! `fleetctl tenants move CODE --to DB`: moves a tenant's schema to another tenant home while
//! the tenant stays in use, with Postgres logical replication; `--abort` undoes a move that has
//! not cut over.
//!
//! The steps (see `moving/record.rs` for the list) are recorded in `fleet.tenant_moves` as each
//! completes, so a re-run (after a crash, an error, or `--until`) continues at the recorded
//! step, and every step is written to find its own leftovers. Copy and stream:
//! `moving/replication.rs`; the cut-over, announcements and archive: `moving/cutover.rs`; the
//! checks that refuse a move: `moving/checks.rs`; abort: `moving/undo.rs`.
//!
//! One process drives a move at a time: the run holds a session advisory lock for the tenant on
//! the control plane (`moving/driver.rs`; released when the process ends, however it ends, and
//! checked before each step), so a second `move` or an `--abort` while one runs is refused
//! instead of racing it. The record is written only while the move is `running` and at the step
//! the writer expects, and `--abort` works under the tenant's lock with the move's row locked
//! and only while the registry still names the source, so even a run that lost its lock
//! unnoticed cannot switch a move that an abort is undoing, nor an abort undo a switched one.
//!
//! While a move is recorded as running, the fleet's other paths that change the schema keep off
//! the tenant (see `provisioner::moves`): `tenant.migrate` waits, rollouts skip it,
//! `tenant.deleted` and other moves are refused.

mod checks;
mod cutover;
mod driver;
mod record;
mod replication;
mod report;
mod sides;
mod undo;

use std::time::Duration;

use anyhow::Context as _;
use fleet_shared::retry::RetryPolicy;
use fleet_shared::{Code, Settings};
use serde_json::json;
use sqlx::PgPool;

use crate::output;
use driver::Driver;
use record::{MoveRow, Step};
use report::Report;
use sides::Sides;

#[derive(clap::Args)]
pub struct Args {
    /// The tenant to move
    code: String,
    /// The [databases.<name>] to move it to (a tenant home)
    #[arg(long, required_unless_present = "abort")]
    to: Option<String>,
    /// Undo the tenant's move in flight (only before its cut-over committed)
    #[arg(long, conflicts_with_all = ["to", "until"])]
    abort: bool,
    /// Stop after this step; a re-run continues (after `copied` the subscription keeps
    /// streaming, so the cut-over can come later)
    #[arg(long, value_enum)]
    until: Option<Until>,
    /// How long the cut-over waits for the subscription to confirm the source's last write
    /// (the tenant's writes wait meanwhile); on timeout it is rolled back and tried again
    #[arg(long, value_parser = fleet_shared::duration::parse, default_value = "10s")]
    cutover_timeout: Duration,
    /// One JSON object per line (steps, copy progress, and the move's record last)
    #[arg(long)]
    json: bool,
}

/// The steps a run can stop after.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Until {
    Schema,
    Published,
    Subscribed,
    Copied,
}

impl From<Until> for Step {
    fn from(u: Until) -> Step {
        match u {
            Until::Schema => Step::Schema,
            Until::Published => Step::Published,
            Until::Subscribed => Step::Subscribed,
            Until::Copied => Step::Copied,
        }
    }
}

/// Attempts of the cut-over (a lock or lag timeout rolls one back; the next may get through).
const CUTOVER_ATTEMPTS: usize = 4;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let code = Code::parse(&args.code)?;
    let pg = output::pg(&settings).await?;
    let report = Report { json: args.json };
    let mut driver = Driver::lock(&settings, &code).await?;
    if args.abort {
        return abort(&settings, &pg, &code, report).await;
    }
    let to = args.to.clone().context("--to is required")?;
    let tenant = checks::tenant(&pg, &code).await?;
    let mut m = match record::running(&pg, tenant.tenant_id).await? {
        Some(m) if m.target == to => {
            report.line(
                "resumed",
                &format!(
                    "resuming move {} of {code} from {} to {} after step {}",
                    m.move_id, m.source, m.target, m.step
                ),
                json!({"move_id": m.move_id, "after": m.step}),
            )?;
            m
        }
        Some(m) => {
            let moving = provisioner::moves::InFlight {
                move_id: m.move_id,
                source: m.source,
                target: m.target,
                step: m.step,
            };
            anyhow::bail!("tenant {code} is {moving}");
        }
        None => {
            checks::active(&tenant)?;
            let (source, target) = checks::databases(&settings, &tenant, &to)?;
            let sides = Sides::new(code.clone(), source, target)?;
            checks::servers(&sides).await?;
            let m = start(&pg, &tenant, &sides).await?;
            report.line(
                "started",
                &format!("move {} of {code}: {} -> {}", m.move_id, m.source, m.target),
                json!({"move_id": m.move_id, "from": m.source, "to": m.target}),
            )?;
            if let Some(w) = checks::wal_warning(&sides).await? {
                report.line("warning", &w, json!({}))?;
            }
            m
        }
    };
    let source = settings.databases.get(&m.source)?.clone();
    let target = settings.databases.get(&m.target)?.clone();
    let sides = Sides::new(code, source, target)?;
    let res = drive(&settings, &pg, &mut driver, &sides, &mut m, &args, report).await;
    if let Err(e) = &res {
        record::set_error(&pg, m.move_id, &format!("{e:#}")).await;
    }
    res
}

/// Records a new move, under the tenant's lock: a migration or lifecycle change in flight ends
/// first, and every later one sees the move.
async fn start(pg: &PgPool, t: &checks::Tenant, s: &Sides) -> anyhow::Result<MoveRow> {
    let mut tx = pg.begin().await?;
    sqlx::raw_sql("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    provisioner::tenant_lock::lock_tenant(&mut tx, &t.code).await?;
    checks::no_copy_job(&mut tx, &s.code).await?;
    let now: Option<(String, String)> = sqlx::query_as(
        "SELECT status, database FROM fleet.tenants WHERE tenant_id = $1 AND status <> 'deleted' FOR UPDATE",
    )
    .bind(t.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    anyhow::ensure!(
        now.as_ref()
            .is_some_and(|(st, db)| st == "active" && *db == s.source.name.as_str()),
        "tenant {} changed while the move was being checked; run it again",
        t.code
    );
    let m = record::insert(
        &mut tx,
        t.tenant_id,
        &t.code,
        s.source.name.as_str(),
        s.target.name.as_str(),
        &super::wait::actor(),
    )
    .await?;
    tx.commit().await?;
    Ok(m)
}

async fn drive(
    settings: &Settings,
    pg: &PgPool,
    driver: &mut Driver,
    s: &Sides,
    m: &mut MoveRow,
    args: &Args,
    report: Report,
) -> anyhow::Result<()> {
    let stop: Option<Step> = args.until.map(Into::into);
    loop {
        let step = m.step()?;
        if let Some(stop) = stop.filter(|stop| step >= *stop) {
            report.line(
                "stopped",
                &format!(
                    "stopped after step {} (asked: --until {}); run the same command again to continue, or --abort",
                    step.as_str(),
                    stop.as_str()
                ),
                json!({"move_id": m.move_id, "after": step.as_str()}),
            )?;
            return Ok(());
        }
        driver.check().await?;
        match step {
            Step::Started => {
                let created = replication::copy_schema(s, m).await?;
                let n = sides::tables(&s.target_pg, &s.schema).await?.len();
                record::set_step(pg, m, Step::Schema).await?;
                report.line(
                    "schema",
                    &format!(
                        "schema {} {} on {} ({n} tables, no rows yet)",
                        s.schema,
                        if created {
                            "created"
                        } else {
                            "was already created"
                        },
                        s.target.name
                    ),
                    json!({"tables": n}),
                )?;
            }
            Step::Schema => {
                replication::publish(s, m).await?;
                record::set_step(pg, m, Step::Published).await?;
                report.line(
                    "published",
                    &format!(
                        "publication and replication slot {} on {}",
                        m.replication_name(),
                        s.source.name
                    ),
                    json!({"publication": m.replication_name()}),
                )?;
            }
            Step::Published => {
                let oid = replication::subscribe(s, m).await?;
                record::set_field(pg, m.move_id, "sub_oid", oid).await?;
                m.sub_oid = Some(oid);
                record::set_step(pg, m, Step::Subscribed).await?;
                report.line(
                    "subscribed",
                    &format!(
                        "subscription {} on {}: initial copy, then streaming",
                        m.replication_name(),
                        s.target.name
                    ),
                    json!({"subscription": m.replication_name()}),
                )?;
            }
            Step::Subscribed => {
                let oid = m
                    .sub_oid
                    .context("the move recorded no subscription; --abort and start again")?;
                replication::wait_copied(s, m, oid, report).await?;
                record::set_step(pg, m, Step::Copied).await?;
            }
            Step::Copied => {
                let js = output::jetstream(settings).await?;
                cutover::announce_moving(&js, s, m).await?;
                record::set_step(pg, m, Step::Cutover).await?;
                report.line(
                    "cutover",
                    "tenant.moving announced; cutting over (the tenant's writes wait)",
                    json!({}),
                )?;
            }
            Step::Cutover => {
                if cutover::guarded(s).await? {
                    report.line(
                        "cutover",
                        "the source copy is read-only since an earlier attempt; finishing the cut-over",
                        json!({}),
                    )?;
                }
                let done = cut_over(pg, driver, s, m, args.cutover_timeout, report).await?;
                *m = record::reload(pg, m.move_id).await?;
                let ms = done.took.as_millis() as i64;
                record::set_field(pg, m.move_id, "cutover_ms", ms).await?;
                m.cutover_ms = Some(ms);
                let rows: i64 = done.counts.values().sum();
                report.line(
                    "switched",
                    &format!(
                        "cut-over took {ms} ms: lag 0 at {}, {} tables with {rows} rows equal on both, {} sequences moved; the registry names {} for {}",
                        done.lsn,
                        done.counts.len(),
                        done.sequences,
                        s.target.name,
                        s.code
                    ),
                    json!({"cutover_ms": ms, "lsn": done.lsn, "rows": done.counts, "sequences": done.sequences}),
                )?;
            }
            Step::Switched => {
                let js = output::jetstream(settings).await.context(
                    "the tenant is on its new database, but tenant.moved is not announced yet: re-run the move",
                )?;
                cutover::announce_moved(&js, s, m).await?;
                record::set_step(pg, m, Step::Announced).await?;
                report.line(
                    "announced",
                    &format!("tenant.moved announced ({} on {})", s.code, s.target.name),
                    json!({"database": s.target.name.as_str()}),
                )?;
            }
            Step::Announced => {
                replication::teardown(s, m).await?;
                record::set_step(pg, m, Step::Unsubscribed).await?;
                report.line(
                    "unsubscribed",
                    "subscription, replication slots and publication dropped",
                    json!({}),
                )?;
            }
            Step::Unsubscribed => {
                let name = cutover::archive_name(s, m);
                record::set_field(pg, m.move_id, "archive_name", name.as_str()).await?;
                m.archive_name = Some(name.clone());
                cutover::archive(s, &name).await?;
                record::set_step(pg, m, Step::Archived).await?;
                report.line(
                    "archived",
                    &format!(
                        "old copy on {} archived as {name} (read-only; drop it when no longer needed)",
                        s.source.name
                    ),
                    json!({"archive": name}),
                )?;
            }
            Step::Archived => {
                record::finish(pg, m, "done").await?;
                let total = m
                    .finished_at
                    .map(|f| (f - m.started_at).num_milliseconds())
                    .unwrap_or_default();
                if report.json {
                    let mut row = serde_json::to_value(&*m)?;
                    row["total_ms"] = json!(total);
                    row["step"] = json!("done");
                    output::print_json_line(&row)?;
                } else {
                    outln!(
                        "moved {} from {} to {} in {:.1} s (cut-over {} ms)",
                        s.code,
                        m.source,
                        m.target,
                        total as f64 / 1000.0,
                        m.cutover_ms.unwrap_or_default()
                    );
                }
                return Ok(());
            }
            Step::Done => anyhow::bail!("move {} is recorded done but still running", m.move_id),
        }
    }
}

/// The cut-over, tried again after a lock or lag timeout (each attempt rolled back whole).
async fn cut_over(
    pg: &PgPool,
    driver: &mut Driver,
    s: &Sides,
    m: &MoveRow,
    lag_limit: Duration,
    report: Report,
) -> anyhow::Result<cutover::Cutover> {
    let mut delays = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2))
        .with_max_times(CUTOVER_ATTEMPTS - 1)
        .with_jitter()
        .delays();
    loop {
        match cutover::freeze_and_switch(pg, driver, s, m, &super::wait::actor(), lag_limit).await {
            Ok(c) => return Ok(c),
            Err(e) if cutover::is_retry(&e) => match delays.next() {
                Some(d) => {
                    report.line(
                        "cutover",
                        &format!(
                            "cut-over attempt rolled back ({}); the source is writable; retrying in {} ms",
                            fleet_shared::errors::one_line(&format!("{e:#}")),
                            d.as_millis()
                        ),
                        json!({"retry_in_ms": d.as_millis() as u64}),
                    )?;
                    tokio::time::sleep(d).await;
                }
                None => return Err(e.context("the cut-over did not get through; the source is writable and nothing was switched: re-run the move")),
            },
            Err(e) => return Err(e),
        }
    }
}

/// Undoes the move in flight. Under the tenant's lock, with the move's row locked, and only
/// while the registry names the move's source: a cut-over that committed (even by a run that
/// lost its driver lock) is seen and refused, and one still trying waits for the lock and then
/// finds the move no longer running. The undo runs inside that transaction, which records the
/// move `aborted` when both sides are clean.
async fn abort(
    settings: &Settings,
    pg: &PgPool,
    code: &Code,
    report: Report,
) -> anyhow::Result<()> {
    let mut tx = pg.begin().await?;
    sqlx::raw_sql("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    provisioner::tenant_lock::lock_tenant(&mut tx, code.as_str()).await?;
    let mut m = record::running_for_update(&mut tx, code.as_str())
        .await?
        .with_context(|| format!("tenant {code} has no move in flight"))?;
    let registry: Option<String> = sqlx::query_scalar(
        "SELECT database FROM fleet.tenants WHERE tenant_id = $1 AND status <> 'deleted' FOR UPDATE",
    )
    .bind(m.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    anyhow::ensure!(
        !m.step()?.switched() && registry.as_deref() == Some(m.source.as_str()),
        "the cut-over of move {} committed: tenant {code} is on database {} now; run fleetctl tenants move {code} --to {} to finish it (moving back is a new move)",
        m.move_id,
        registry.as_deref().unwrap_or(m.target.as_str()),
        m.target
    );
    let source = settings.databases.get(&m.source)?.clone();
    let target = settings.databases.get(&m.target)?.clone();
    let s = Sides::new(code.clone(), source, target)?;
    let at = m.step.clone();
    if let Err(e) = undo::undo(&s, &m).await {
        tx.rollback().await.ok();
        record::set_error(pg, m.move_id, &format!("abort: {e:#}")).await;
        return Err(e);
    }
    record::finish(&mut *tx, &mut m, "aborted").await?;
    tx.commit().await?;
    report.line(
        "aborted",
        &format!(
            "move {} aborted after step {at}: subscription, replication slots, publication and the copy on {} dropped; tenant {code} stays on {}",
            m.move_id, m.target, m.source
        ),
        json!({"move_id": m.move_id, "after": at}),
    )
}
