//! Running finalize on a live database: each step safe while the application keeps writing,
//! idempotent, and resumable.
//!
//! Steps, per table, in this order across all the job's tables (a step of every table before
//! the next step of any, because foreign keys tie tables together):
//!
//! 1. **not_null**: `ADD CONSTRAINT … CHECK (col IS NOT NULL) NOT VALID` (a moment's exclusive
//!    lock, no scan), `VALIDATE CONSTRAINT` (scans, but holds only a lock that lets reads and
//!    writes go on), `SET NOT NULL` (Postgres proves it from the validated check: no scan under
//!    the exclusive lock), then the check is dropped. For `tenant_code`, where the table has it
//!    `organization_code`, and, for a table without a primary key, the job's key column (a NULL
//!    there refuses the run up front, with the count).
//! 2. **primary_key**, first half: `CREATE UNIQUE INDEX CONCURRENTLY` on `(tenant_code, <key>)`
//!    (`<key>`: the current primary key's columns, or the job's key when there is none). Not in a
//!    transaction; an INVALID index left by an interrupted build is dropped `CONCURRENTLY` and
//!    built again.
//! 3. **foreign_keys**: each foreign key of a job table that references another job table's old
//!    key gets a tenant-aware twin, `(tenant_code, x) REFERENCES parent (tenant_code, key)` with
//!    the same actions, added `NOT VALID` and then validated; the old key is dropped after. A
//!    row pointing at a parent of another tenant fails validation: the twin is dropped again,
//!    the old key kept, and the step fails with the count.
//! 4. **primary_key**, second half: one short transaction, `DROP CONSTRAINT <old pk>, ADD
//!    CONSTRAINT <old pk name> PRIMARY KEY USING INDEX …` (no scan: the columns are NOT NULL and
//!    the index is built; a key column that is not NOT NULL yet holds the swap back, because
//!    Postgres would prove it by a full scan under the exclusive lock).
//! 5. **indexes**: `CREATE INDEX CONCURRENTLY` on `tenant_code` and `organization_code`, unless
//!    a valid index already leads with the column (the new primary key leads with
//!    `tenant_code`).
//! 6. **citus**: `create_distributed_table(table, 'tenant_code')` when the extension is
//!    installed; otherwise skipped, saying so.
//!
//! Every statement runs on one dedicated session with statement_timeout off (a validation or an
//! index build may take minutes, and only waiting for locks is what hurts the application).
//! The lock budget is per statement: those that take a lock blocking reads or writes (ADD
//! CONSTRAINT, SET NOT NULL, DROP CONSTRAINT, the swap) run under the job's short
//! `lock_timeout`; those whose lock lets reads and writes go on (`CREATE`/`DROP INDEX
//! CONCURRENTLY`, `VALIDATE CONSTRAINT`) run with none, so an index build that waits at its end
//! for an old transaction is not thrown away and built again. A statement that gives up at
//! `lock_timeout` does not queue the application's sessions behind it; the step is run again
//! after a backoff delay from the shared [`RetryPolicy`], up to its limit, and then fails with
//! the reason. An index build that fails for another reason (duplicate keys) drops its INVALID
//! leftover at once: a unique one would go on rejecting the application's writes. Each step looks at
//! the catalog before it acts, so running it again, after a retry or a crash anywhere, finds
//! what is already done and carries on; the per-table record ([`super::record`]) is where the
//! report and the resume point come from.
//!
//! Before anything is changed the run checks what it can: rows left with a NULL code, a table
//! without `tenant_code`, a foreign key from a table outside the job that would pin the old
//! primary key. Any of these refuses the whole run with one line, and nothing is changed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use fleet_shared::errors::{is_transient, one_line, sqlstate};
use fleet_shared::retry::RetryPolicy;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::inspect::{self, ForeignKey};
use super::record;
use super::step::{Selection, Step, StepState};
use crate::catalog;
use crate::ident::{literal, qualified, Ident};

const TENANT: &str = "tenant_code";
const ORG: &str = "organization_code";

/// Between the tries of a step that gave up at `lock_timeout`: 200 ms doubling to 5 s, with
/// jitter so two finalizers do not come back in lockstep, 30 tries.
pub const LOCK_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5))
        .with_jitter()
        .with_max_times(30);

/// A table to finalize; `key` is the primary key's column when the table has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizeTable {
    pub table: Ident,
    pub key: Ident,
}

/// One finalize run of a job.
pub struct Finalize<'a> {
    /// Where the step records live.
    pub control: &'a PgPool,
    /// Where the tables are.
    pub target: &'a PgPool,
    pub job_id: Uuid,
    pub schema: &'a Ident,
    pub tables: &'a [FinalizeTable],
    pub steps: Selection,
    pub lock_timeout: Duration,
    pub retry: RetryPolicy,
    /// When given, the target's health is read before every step, and while it is bad the run
    /// waits (the job's `throttled` says why), as a job's lanes do between chunks.
    pub health: Option<Health<'a>>,
}

/// The health check finalize waits on (see [`fleet_shared::health::HealthMonitor`]).
pub struct Health<'a> {
    pub monitor: &'a fleet_shared::health::HealthMonitor,
    pub interval: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every selected step was run; `failed` names the ones that failed or could not run.
    Finished { failed: Vec<String> },
    /// Refused before anything was changed.
    Refused(String),
    /// The job was paused or cancelled between two steps.
    Stopped,
}

/// What a step did.
enum Did {
    Done(String),
    /// The first half of primary_key: the step stays `running` until the swap.
    Halfway(String),
    Skipped(String),
    /// Cannot run yet (another step has to go first); it stays `pending` with the reason.
    Waiting(String),
}

enum StepError {
    /// Gave up at `lock_timeout` (or lost a deadlock): try again after a delay.
    Lock(sqlx::Error),
    /// Another backend is still at work on what the step would change: try again after a delay.
    Busy(String),
    /// The step cannot be done as things are: the reason, one line.
    Failed(String),
    /// The connection or the server failed: the run stops, the job resumes later.
    Db(sqlx::Error),
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        match sqlstate(&e).as_deref() {
            Some("55P03") | Some("40P01") => StepError::Lock(e),
            _ if is_transient(&e) => StepError::Db(e),
            _ => StepError::Failed(db_message(&e)),
        }
    }
}

fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => one_line(d.message()),
        other => one_line(&other.to_string()),
    }
}

/// A table of the run, with the key its new primary key extends.
#[derive(Debug, Clone)]
struct Tab {
    table: Ident,
    /// The old primary key's columns (without `tenant_code`), or the job's key.
    base: Vec<Ident>,
    /// The table has no primary key: `base` is the job's key, which may still be nullable.
    own_key: bool,
}

/// `<base>_<suffix>`, cut to Postgres' 63 bytes.
fn derived(base: &str, suffix: &str) -> Result<Ident, StepError> {
    let room = 63 - suffix.len() - 1;
    let cut = &base[..base.len().min(room)];
    Ident::parse("name", &format!("{cut}_{suffix}")).map_err(|e| StepError::Failed(e.to_string()))
}

fn ident(what: &str, s: &str) -> Result<Ident, StepError> {
    Ident::parse(what, s).map_err(|e| {
        StepError::Failed(format!(
            "{e}; finalize quotes only plain identifiers (rename it or finalize this table by hand)"
        ))
    })
}

fn list(cols: &[Ident]) -> String {
    cols.iter()
        .map(Ident::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

fn plain(cols: &[Ident]) -> String {
    cols.iter()
        .map(Ident::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn same_set(a: &[String], b: &[Ident]) -> bool {
    let a: BTreeSet<&str> = a.iter().map(String::as_str).collect();
    let b: BTreeSet<&str> = b.iter().map(Ident::as_str).collect();
    a == b
}

async fn exec(con: &mut PgConnection, sql: &str) -> Result<(), StepError> {
    fleet_shared::migrate::exec_simple(con, sql)
        .await
        .map_err(StepError::from)
}

/// `DROP CONSTRAINT IF EXISTS` on `tsql` (quoted): the way back from a check or key that a step
/// added and that must not stay.
async fn drop_constraint(
    con: &mut PgConnection,
    tsql: &str,
    constraint: &Ident,
) -> Result<(), StepError> {
    exec(
        con,
        &format!(
            "ALTER TABLE {tsql} DROP CONSTRAINT IF EXISTS {}",
            constraint.quoted()
        ),
    )
    .await
}

/// The SQLSTATE `VALIDATE CONSTRAINT` fails with when rows break a check.
const CHECK_VIOLATION: &str = "23514";
/// The SQLSTATE `VALIDATE CONSTRAINT` fails with when rows break a foreign key.
const FOREIGN_KEY_VIOLATION: &str = "23503";

/// `SET lock_timeout` to `budget` (0: none) for the session.
fn set_lock_timeout(budget: Duration) -> String {
    format!("SET lock_timeout = {}", budget.as_millis())
}

impl Finalize<'_> {
    /// Runs (or resumes) finalize; an `Err` is a database failure (the job resumes later).
    pub async fn run(&self) -> sqlx::Result<Outcome> {
        // A session of its own, closed at the end (never handed back to the pool with its
        // settings): CREATE INDEX CONCURRENTLY cannot run in a transaction, so the settings are
        // the session's.
        let mut con = self.target.acquire().await?.detach();
        for set in [
            "SET statement_timeout = 0".to_owned(),
            set_lock_timeout(self.short_budget()),
        ] {
            fleet_shared::migrate::exec_simple(&mut con, &set).await?;
        }
        // A worker killed mid-statement leaves its backend running (a build, a validation, a
        // queued ALTER TABLE) until the backend notices its client is gone; this makes it look
        // every second instead of only when the statement ends (Postgres 14 and later).
        if let Err(e) = fleet_shared::migrate::exec_simple(
            &mut con,
            "SET client_connection_check_interval = '1s'",
        )
        .await
        {
            tracing::debug!(error = %db_message(&e), "client_connection_check_interval not available");
        }
        let schema = self.schema;
        let mut rows = Vec::new();
        let mut present = Vec::new();
        for t in self.tables {
            if !catalog::table_exists(&mut con, schema, &t.table).await? {
                for s in Step::ALL {
                    rows.push((
                        t.table.to_string(),
                        s,
                        StepState::Skipped,
                        Some(format!("table {schema}.{} does not exist", t.table)),
                    ));
                }
                continue;
            }
            for s in Step::ALL {
                let on = self.steps.has(s);
                rows.push((
                    t.table.to_string(),
                    s,
                    if on {
                        StepState::Pending
                    } else {
                        StepState::Skipped
                    },
                    (!on).then(|| "not selected".to_owned()),
                ));
            }
            present.push(t.clone());
        }
        let tabs = match self.preflight(&mut con, &present).await? {
            Ok(tabs) => tabs,
            Err(reason) => return Ok(Outcome::Refused(reason)),
        };
        record::init(self.control, self.job_id, &rows).await?;
        let mut states = record::states(self.control, self.job_id).await?;
        let mut blocked: HashSet<String> = HashSet::new();
        // Steps that already ended failed or waiting in this run: their record keeps the reason.
        let mut held: HashSet<(String, Step)> = HashSet::new();
        let watched: Vec<String> = tabs.iter().map(|t| self.table_sql(&t.table)).collect();
        let mut failed = Vec::new();
        let order = [
            (Step::NotNull, false),
            (Step::PrimaryKey, false),
            (Step::ForeignKeys, false),
            (Step::PrimaryKey, true),
            (Step::Indexes, false),
            (Step::Citus, false),
        ];
        for (step, swap) in order {
            if !self.steps.has(step) {
                continue;
            }
            for t in &tabs {
                let name = t.table.to_string();
                let key = (name.clone(), step);
                if states.get(&key).is_some_and(|s| s.is_final()) {
                    continue;
                }
                if held.contains(&key) {
                    continue;
                }
                if blocked.contains(&name) {
                    record::set(
                        self.control,
                        self.job_id,
                        &name,
                        step,
                        StepState::Pending,
                        Some("not run: an earlier step of this table did not finish"),
                    )
                    .await?;
                    continue;
                }
                if !self.wait_healthy(&watched).await? {
                    return Ok(Outcome::Stopped);
                }
                record::set(
                    self.control,
                    self.job_id,
                    &name,
                    step,
                    StepState::Running,
                    None,
                )
                .await?;
                let (state, detail) = match self.run_step(&mut con, t, step, swap, &tabs).await {
                    Ok(Did::Done(d)) => (StepState::Done, d),
                    Ok(Did::Halfway(d)) => (StepState::Running, d),
                    Ok(Did::Skipped(d)) => (StepState::Skipped, d),
                    Ok(Did::Waiting(d)) => {
                        blocked.insert(name.clone());
                        failed.push(format!("{name} {step}: {d}"));
                        (StepState::Pending, d)
                    }
                    Err(StepError::Failed(d)) | Err(StepError::Busy(d)) => {
                        blocked.insert(name.clone());
                        failed.push(format!("{name} {step}: {d}"));
                        tracing::warn!(table = %name, %step, error = %d, "finalize step failed");
                        (StepState::Failed, d)
                    }
                    Err(StepError::Db(e)) | Err(StepError::Lock(e)) => return Err(e),
                };
                tracing::info!(table = %name, %step, state = state.as_str(), detail = %detail, "finalize step");
                record::set(self.control, self.job_id, &name, step, state, Some(&detail)).await?;
                if matches!(state, StepState::Failed | StepState::Pending) {
                    held.insert(key.clone());
                }
                states.insert(key, state);
            }
        }
        Ok(Outcome::Finished { failed })
    }

    /// Waits while the target is unhealthy; false when the job stopped running meanwhile.
    async fn wait_healthy(&self, tables: &[String]) -> sqlx::Result<bool> {
        let mut shown = false;
        loop {
            if !record::job_running(self.control, self.job_id).await? {
                return Ok(false);
            }
            let Some(h) = &self.health else {
                return Ok(true);
            };
            let reason = match h.monitor.check(self.target, tables).await {
                Ok(r) => r,
                Err(e) => {
                    // An unreadable target counts as healthy: the step's own errors handle it.
                    tracing::debug!(error = %db_message(&e), "cannot read the target's health");
                    None
                }
            };
            crate::throttle::set_reason(self.control, self.job_id, reason.as_deref()).await?;
            match reason {
                None => return Ok(true),
                Some(r) => {
                    if !shown {
                        tracing::info!(reason = %r, "finalize waits for the target's health");
                        shown = true;
                    }
                    tokio::time::sleep(h.interval).await;
                }
            }
        }
    }

    /// The checks made before anything is changed; `Ok(Err(reason))` refuses the run.
    async fn preflight(
        &self,
        con: &mut PgConnection,
        present: &[FinalizeTable],
    ) -> sqlx::Result<Result<Vec<Tab>, String>> {
        preflight(con, self.schema, self.steps, present).await
    }

    /// One step of one table, tried again after a delay while it gives up at `lock_timeout`.
    async fn run_step(
        &self,
        con: &mut PgConnection,
        t: &Tab,
        step: Step,
        swap: bool,
        tabs: &[Tab],
    ) -> Result<Did, StepError> {
        let mut delays = self.retry.delays();
        let mut tries = 0u32;
        loop {
            let res = match (step, swap) {
                (Step::NotNull, _) => self.not_null(con, t).await,
                (Step::PrimaryKey, false) => self.unique_index(con, t).await,
                (Step::PrimaryKey, true) => self.swap_primary_key(con, t).await,
                (Step::ForeignKeys, _) => self.foreign_keys(con, t, tabs).await,
                (Step::Indexes, _) => self.indexes(con, t).await,
                (Step::Citus, _) => self.citus(con, t).await,
            };
            let why = match res {
                Err(StepError::Lock(e)) => db_message(&e),
                Err(StepError::Busy(why)) => why,
                other => return other,
            };
            tries += 1;
            record::attempt(self.control, self.job_id, t.table.as_str(), step)
                .await
                .map_err(StepError::Db)?;
            match delays.next() {
                Some(d) => {
                    tracing::info!(table = %t.table, %step, tries, retry_in = ?d, error = %why, "finalize step has to wait; trying again");
                    tokio::time::sleep(d).await;
                }
                None => {
                    return Err(StepError::Failed(format!(
                        "gave up after {tries} tries, each waiting at most lock_timeout {}: {why}",
                        fleet_shared::duration::format(self.lock_timeout),
                    )))
                }
            }
        }
    }

    fn table_sql(&self, t: &Ident) -> String {
        qualified(self.schema, t)
    }

    /// The lock budget of statements whose lock blocks the application (never 0: none).
    fn short_budget(&self) -> Duration {
        self.lock_timeout.max(Duration::from_millis(1))
    }

    /// Runs a statement whose lock lets reads and writes go on (`CREATE`/`DROP INDEX
    /// CONCURRENTLY`, `VALIDATE CONSTRAINT`) without a lock budget, then puts the short one back.
    async fn exec_unbounded(&self, con: &mut PgConnection, sql: &str) -> sqlx::Result<()> {
        fleet_shared::migrate::exec_simple(con, &set_lock_timeout(Duration::ZERO)).await?;
        let res = fleet_shared::migrate::exec_simple(con, sql).await;
        fleet_shared::migrate::exec_simple(con, &set_lock_timeout(self.short_budget())).await?;
        res
    }

    /// `VALIDATE CONSTRAINT` (see [`Self::exec_unbounded`]): `false` when rows break it
    /// (`violation`, the SQLSTATE its kind of constraint fails with); any other error is itself.
    async fn validate(
        &self,
        con: &mut PgConnection,
        tsql: &str,
        constraint: &Ident,
        violation: &str,
    ) -> sqlx::Result<bool> {
        let sql = format!(
            "ALTER TABLE {tsql} VALIDATE CONSTRAINT {}",
            constraint.quoted()
        );
        match self.exec_unbounded(con, &sql).await {
            Ok(()) => Ok(true),
            Err(e) if sqlstate(&e).as_deref() == Some(violation) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn not_null(&self, con: &mut PgConnection, t: &Tab) -> Result<Did, StepError> {
        let tsql = self.table_sql(&t.table);
        let mut set = Vec::new();
        let mut already = Vec::new();
        let mut cols = vec![TENANT, ORG];
        if t.own_key && self.steps.has(Step::PrimaryKey) {
            for k in &t.base {
                if !cols.contains(&k.as_str()) {
                    cols.push(k.as_str());
                }
            }
        }
        for col in cols {
            let Some(not_null) = inspect::column_not_null(con, self.schema, &t.table, col).await?
            else {
                continue;
            };
            let c = ident("column", col)?;
            let check = derived(t.table.as_str(), &format!("{col}_not_null"))?;
            let has_check = inspect::has_constraint(con, self.schema, &t.table, &check).await?;
            if not_null {
                if has_check {
                    // A run stopped between SET NOT NULL and dropping the check.
                    drop_constraint(con, &tsql, &check).await?;
                }
                already.push(col);
                continue;
            }
            if !has_check {
                exec(
                    con,
                    &format!(
                        "ALTER TABLE {tsql} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID",
                        check.quoted(),
                        c.quoted()
                    ),
                )
                .await?;
            }
            if !self.validate(con, &tsql, &check, CHECK_VIOLATION).await? {
                let n = inspect::nulls(con, self.schema, &t.table, col).await?;
                drop_constraint(con, &tsql, &check).await?;
                return Err(StepError::Failed(format!(
                    "{n} row(s) of {} have a NULL {col} (written since the fill?); the check was dropped again and the column left as it was",
                    t.table
                )));
            }
            exec(
                con,
                &format!(
                    "ALTER TABLE {tsql} ALTER COLUMN {} SET NOT NULL",
                    c.quoted()
                ),
            )
            .await?;
            drop_constraint(con, &tsql, &check).await?;
            set.push(col);
        }
        Ok(Did::Done(match (set.is_empty(), already.is_empty()) {
            (false, true) => format!("{} set NOT NULL through a validated check", set.join(", ")),
            (false, false) => format!(
                "{} set NOT NULL through a validated check; {} already NOT NULL",
                set.join(", "),
                already.join(", ")
            ),
            _ => format!("{} already NOT NULL", already.join(", ")),
        }))
    }

    /// `(tenant_code, <base>)`.
    fn new_key(t: &Tab) -> Result<Vec<Ident>, StepError> {
        let mut cols = vec![ident("column", TENANT)?];
        cols.extend(t.base.iter().cloned());
        Ok(cols)
    }

    fn pk_index(t: &Tab) -> Result<Ident, StepError> {
        derived(t.table.as_str(), "tenant_pkey")
    }

    /// Builds index `name` with `create` (a `CREATE … INDEX CONCURRENTLY`), first dropping an
    /// invalid leftover of an interrupted build. False when a valid one was there.
    async fn ensure_index(
        &self,
        con: &mut PgConnection,
        name: &Ident,
        create: &str,
    ) -> Result<bool, StepError> {
        let drop = format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}",
            qualified(self.schema, name)
        );
        match inspect::index_valid(con, self.schema, name).await? {
            Some(true) => return Ok(false),
            Some(false) => {
                // Left by a build that was cut short, unless its backend is still at it (that
                // of a worker killed mid-build ends once it notices its client is gone).
                if let Some(pid) = inspect::index_builder(con, self.schema, name).await? {
                    return Err(StepError::Busy(format!(
                        "index {name} is INVALID but still being built by backend {pid}"
                    )));
                }
                self.exec_unbounded(con, &drop).await?
            }
            None => {}
        }
        match self
            .exec_unbounded(con, create)
            .await
            .map_err(StepError::from)
        {
            Ok(()) => Ok(true),
            Err(StepError::Failed(why)) => {
                // Left INVALID, but a unique one still rejects the application's duplicates.
                if let Err(e) = self.exec_unbounded(con, &drop).await {
                    tracing::warn!(index = %name, error = %db_message(&e), "cannot drop the INVALID index a failed build left; the next try drops it");
                }
                Err(StepError::Failed(why))
            }
            Err(e) => Err(e),
        }
    }

    async fn pk_has_tenant(
        &self,
        con: &mut PgConnection,
        table: &Ident,
    ) -> Result<Option<(String, Vec<String>)>, StepError> {
        Ok(inspect::primary_key(con, self.schema, table).await?)
    }

    async fn unique_index(&self, con: &mut PgConnection, t: &Tab) -> Result<Did, StepError> {
        if let Some((_, cols)) = self.pk_has_tenant(con, &t.table).await? {
            if cols.iter().any(|c| c == TENANT) {
                return Ok(Did::Done(format!(
                    "primary key already ({})",
                    cols.join(", ")
                )));
            }
        }
        if inspect::column_not_null(con, self.schema, &t.table, TENANT).await? != Some(true) {
            return Ok(Did::Waiting(
                "tenant_code must be NOT NULL first (the not_null step)".into(),
            ));
        }
        let idx = Self::pk_index(t)?;
        let cols = Self::new_key(t)?;
        let built = self
            .ensure_index(
                con,
                &idx,
                &format!(
                    "CREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({})",
                    idx.quoted(),
                    self.table_sql(&t.table),
                    list(&cols)
                ),
            )
            .await?;
        Ok(Did::Halfway(format!(
            "unique index {idx} on ({}) {}; the primary key moves once foreign keys are tenant-aware",
            plain(&cols),
            if built { "built CONCURRENTLY" } else { "found built" }
        )))
    }

    async fn swap_primary_key(&self, con: &mut PgConnection, t: &Tab) -> Result<Did, StepError> {
        let pk = self.pk_has_tenant(con, &t.table).await?;
        if let Some((_, cols)) = &pk {
            if cols.iter().any(|c| c == TENANT) {
                return Ok(Did::Done(format!("primary key ({})", cols.join(", "))));
            }
        }
        let idx = Self::pk_index(t)?;
        if inspect::index_valid(con, self.schema, &idx).await? != Some(true) {
            return Ok(Did::Waiting(format!("unique index {idx} is not built")));
        }
        let pinned: Vec<ForeignKey> = inspect::referencing(con, self.schema, &t.table)
            .await?
            .into_iter()
            .filter(|fk| same_set(&fk.parent_columns, &t.base))
            .collect();
        if let Some(fk) = pinned.first() {
            return Err(StepError::Failed(format!(
                "foreign key {} of {} still references {} ({}); the foreign_keys step of {} has to move it first",
                fk.name, fk.child, t.table, plain(&t.base), fk.child
            )));
        }
        let cols = Self::new_key(t)?;
        for c in &cols {
            if inspect::column_not_null(con, self.schema, &t.table, c.as_str()).await? != Some(true)
            {
                return Ok(Did::Waiting(format!(
                    "{c} must be NOT NULL first (the not_null step): otherwise the swap proves it by a full scan under its exclusive lock"
                )));
            }
        }
        let tsql = self.table_sql(&t.table);
        let (sql, was) = match &pk {
            Some((old, old_cols)) => {
                let old = ident("constraint", old)?;
                (
                    format!(
                        "ALTER TABLE {tsql} DROP CONSTRAINT {o}, ADD CONSTRAINT {o} PRIMARY KEY USING INDEX {}",
                        idx.quoted(),
                        o = old.quoted()
                    ),
                    format!("was ({})", old_cols.join(", ")),
                )
            }
            None => (
                format!(
                    "ALTER TABLE {tsql} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}",
                    derived(t.table.as_str(), "pkey")?.quoted(),
                    idx.quoted()
                ),
                "there was none".to_owned(),
            ),
        };
        // One short transaction: the table is never without a primary key.
        let mut tx = sqlx::Connection::begin(&mut *con).await?;
        exec(&mut tx, &sql).await?;
        tx.commit().await?;
        Ok(Did::Done(format!(
            "primary key ({}) through the unique index built CONCURRENTLY; {was}",
            plain(&cols)
        )))
    }

    async fn foreign_keys(
        &self,
        con: &mut PgConnection,
        t: &Tab,
        tabs: &[Tab],
    ) -> Result<Did, StepError> {
        let by_name: HashMap<&str, &Tab> = tabs.iter().map(|t| (t.table.as_str(), t)).collect();
        let mut moved = Vec::new();
        let mut already = Vec::new();
        let tsql = self.table_sql(&t.table);
        for fk in inspect::foreign_keys_of(con, self.schema, &t.table).await? {
            if fk.parent_schema != self.schema.as_str() {
                continue;
            }
            let Some(parent) = by_name.get(fk.parent.as_str()) else {
                continue;
            };
            if fk.parent_columns.iter().any(|c| c == TENANT) {
                already.push(fk.name.clone());
                continue;
            }
            if !same_set(&fk.parent_columns, &parent.base) {
                continue;
            }
            let parent_ready = match self.pk_has_tenant(con, &parent.table).await? {
                Some((_, cols)) if cols.iter().any(|c| c == TENANT) => true,
                _ => {
                    inspect::index_valid(con, self.schema, &Self::pk_index(parent)?).await?
                        == Some(true)
                }
            };
            if !parent_ready {
                return Ok(Did::Waiting(format!(
                    "{} has no unique index on (tenant_code, {}) yet (its primary_key step)",
                    parent.table,
                    plain(&parent.base)
                )));
            }
            let old = ident("constraint", &fk.name)?;
            let new = derived(&fk.name, "tenant")?;
            let child_cols = fk
                .child_columns
                .iter()
                .map(|c| ident("column", c))
                .collect::<Result<Vec<_>, _>>()?;
            let parent_cols = fk
                .parent_columns
                .iter()
                .map(|c| ident("column", c))
                .collect::<Result<Vec<_>, _>>()?;
            if !inspect::has_constraint(con, self.schema, &t.table, &new).await? {
                let on_update = match fk.on_update.as_str() {
                    "c" => "CASCADE",
                    "r" => "RESTRICT",
                    "a" => "NO ACTION",
                    _ => {
                        return Err(StepError::Failed(format!(
                            "foreign key {} has ON UPDATE SET NULL/DEFAULT, which would clear tenant_code too; make it tenant-aware by hand",
                            fk.name
                        )))
                    }
                };
                let on_delete = match fk.on_delete.as_str() {
                    "c" => "CASCADE".to_owned(),
                    "r" => "RESTRICT".to_owned(),
                    "n" => format!("SET NULL ({})", list(&child_cols)),
                    "d" => format!("SET DEFAULT ({})", list(&child_cols)),
                    _ => "NO ACTION".to_owned(),
                };
                let deferrable = match (fk.deferrable, fk.deferred) {
                    (true, true) => " DEFERRABLE INITIALLY DEFERRED",
                    (true, false) => " DEFERRABLE",
                    _ => "",
                };
                let full = if fk.match_type == "f" {
                    " MATCH FULL"
                } else {
                    ""
                };
                exec(
                    con,
                    &format!(
                        "ALTER TABLE {tsql} ADD CONSTRAINT {} FOREIGN KEY (\"tenant_code\", {}) REFERENCES {} (\"tenant_code\", {}){full} \
                         ON UPDATE {on_update} ON DELETE {on_delete}{deferrable} NOT VALID",
                        new.quoted(),
                        list(&child_cols),
                        self.table_sql(&parent.table),
                        list(&parent_cols)
                    ),
                )
                .await?;
            }
            if !self
                .validate(con, &tsql, &new, FOREIGN_KEY_VIOLATION)
                .await?
            {
                let same = child_cols
                    .iter()
                    .zip(&parent_cols)
                    .map(|(c, p)| format!("p.{} = c.{}", p.quoted(), c.quoted()))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let set = child_cols
                    .iter()
                    .map(|c| format!("c.{} IS NOT NULL", c.quoted()))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let n: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM {tsql} AS c WHERE {set} AND NOT EXISTS \
                     (SELECT 1 FROM {} AS p WHERE p.\"tenant_code\" = c.\"tenant_code\" AND {same})",
                    self.table_sql(&parent.table)
                ))
                .fetch_one(&mut *con)
                .await?;
                drop_constraint(con, &tsql, &new).await?;
                return Err(StepError::Failed(format!(
                    "{n} row(s) of {} point through {} at a {} row of another tenant; the tenant-aware key was dropped again and {} kept",
                    t.table, fk.name, parent.table, fk.name
                )));
            }
            drop_constraint(con, &tsql, &old).await?;
            moved.push(format!(
                "{new} (tenant_code, {}) REFERENCES {} (tenant_code, {}) replaces {old}",
                plain(&child_cols),
                parent.table,
                plain(&parent_cols)
            ));
        }
        if moved.is_empty() && already.is_empty() {
            return Ok(Did::Skipped(
                "no foreign key to another table of the job".into(),
            ));
        }
        let mut parts = Vec::new();
        if !moved.is_empty() {
            parts.push(format!("validated {}", moved.join("; ")));
        }
        if !already.is_empty() {
            parts.push(format!("already tenant-aware: {}", already.join(", ")));
        }
        Ok(Did::Done(parts.join("; ")))
    }

    async fn indexes(&self, con: &mut PgConnection, t: &Tab) -> Result<Did, StepError> {
        let mut notes = Vec::new();
        for col in [TENANT, ORG] {
            if inspect::column_not_null(con, self.schema, &t.table, col)
                .await?
                .is_none()
            {
                continue;
            }
            let idx = derived(t.table.as_str(), &format!("{col}_idx"))?;
            // Our own index counts only once it is valid; any other valid one leading with the
            // column serves the same lookups.
            if inspect::index_valid(con, self.schema, &idx).await? != Some(false) {
                if let Some(by) =
                    inspect::index_leading_with(con, self.schema, &t.table, col).await?
                {
                    notes.push(format!("{col}: {by}"));
                    continue;
                }
            }
            let c = ident("column", col)?;
            self.ensure_index(
                con,
                &idx,
                &format!(
                    "CREATE INDEX CONCURRENTLY {} ON {} ({})",
                    idx.quoted(),
                    self.table_sql(&t.table),
                    c.quoted()
                ),
            )
            .await?;
            notes.push(format!("{col}: {idx} built CONCURRENTLY"));
        }
        Ok(Did::Done(notes.join("; ")))
    }

    async fn citus(&self, con: &mut PgConnection, t: &Tab) -> Result<Did, StepError> {
        if !inspect::citus_installed(con).await? {
            return Ok(Did::Skipped(
                "the citus extension is not installed in this database".into(),
            ));
        }
        if inspect::citus_distributed(con, self.schema, &t.table).await? {
            return Ok(Did::Done("already distributed".into()));
        }
        exec(
            con,
            &format!(
                "SELECT create_distributed_table({}, 'tenant_code')",
                literal(&self.table_sql(&t.table))
            ),
        )
        .await?;
        Ok(Did::Done("distributed by tenant_code".into()))
    }
}

/// Why finalize would refuse these tables (rows with NULL codes, no `tenant_code`, a foreign key
/// from outside onto a primary key that is to move), checked without changing anything: at
/// submit of a `finalize` job, and before every run.
pub async fn refusal(
    con: &mut PgConnection,
    schema: &Ident,
    steps: Selection,
    tables: &[FinalizeTable],
) -> sqlx::Result<Option<String>> {
    let mut present = Vec::new();
    for t in tables {
        if catalog::table_exists(con, schema, &t.table).await? {
            present.push(t.clone());
        }
    }
    Ok(preflight(con, schema, steps, &present).await?.err())
}

async fn preflight(
    con: &mut PgConnection,
    schema: &Ident,
    steps: Selection,
    present: &[FinalizeTable],
) -> sqlx::Result<Result<Vec<Tab>, String>> {
    let mut problems = Vec::new();
    let mut nulls = Vec::new();
    let mut tabs = Vec::new();
    for t in present {
        for col in [TENANT, ORG] {
            match inspect::column_not_null(con, schema, &t.table, col).await? {
                None if col == TENANT => {
                    problems.push(format!("{} has no tenant_code column", t.table))
                }
                Some(false) => {
                    let n = inspect::nulls(con, schema, &t.table, col).await?;
                    if n > 0 {
                        nulls.push(format!("{} has {n} row(s) with NULL {col}", t.table));
                    }
                }
                _ => {}
            }
        }
        let pk = inspect::primary_key(con, schema, &t.table).await?;
        let own_key = pk.is_none();
        let base = match pk {
            Some((_, cols)) => cols
                .iter()
                .filter(|c| c.as_str() != TENANT)
                .map(|c| Ident::parse("column", c))
                .collect::<Result<Vec<_>, _>>(),
            None => Ok(vec![t.key.clone()]),
        };
        if own_key && steps.has(Step::PrimaryKey) && t.key.as_str() != TENANT {
            // The key becomes NOT NULL on the way to the primary key: a NULL there would make
            // the run fail halfway, so it refuses now.
            let key = t.key.as_str();
            match inspect::column_not_null(con, schema, &t.table, key).await? {
                None => problems.push(format!(
                    "{} has no column {key} (the job's key for its primary key)",
                    t.table
                )),
                Some(false) => {
                    let n = inspect::nulls(con, schema, &t.table, key).await?;
                    if n > 0 {
                        problems.push(format!(
                            "{} has {n} row(s) with NULL {key} (the key of its new primary key)",
                            t.table
                        ));
                    }
                }
                Some(true) => {}
            }
        }
        match base {
            Ok(base) if base.is_empty() => {
                problems.push(format!("{}: its primary key is tenant_code alone", t.table))
            }
            Ok(base) => tabs.push(Tab {
                table: t.table.clone(),
                base,
                own_key,
            }),
            Err(e) => problems.push(format!("{}: primary key column {e}", t.table)),
        }
    }
    if !nulls.is_empty() {
        return Ok(Err(format!(
            "finalize refused: rows without codes are left: {}; nothing was changed",
            nulls.join(", ")
        )));
    }
    if steps.has(Step::PrimaryKey) {
        let names: HashSet<&str> = tabs.iter().map(|t| t.table.as_str()).collect();
        for t in &tabs {
            for fk in inspect::referencing(con, schema, &t.table).await? {
                let inside =
                    fk.child_schema == schema.as_str() && names.contains(fk.child.as_str());
                if !inside && same_set(&fk.parent_columns, &t.base) {
                    problems.push(format!(
                        "foreign key {} of {}.{} references {} ({}) and {}.{} is not in this job, so the primary key cannot move (add the table to the job)",
                        fk.name, fk.child_schema, fk.child, t.table, plain(&t.base), fk.child_schema, fk.child
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Ok(Err(format!(
            "finalize refused: {}; nothing was changed",
            problems.join("; ")
        )));
    }
    Ok(Ok(tabs))
}
