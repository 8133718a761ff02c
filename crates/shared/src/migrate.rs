//! Versioned SQL migrations with a per-schema ledger, applied one way everywhere.
//!
//! One runner serves the control plane (`fleet`) and every tenant schema (`tenant_<code>`). A
//! migration is a file `NNNN_name.sql`, optionally with a down file `NNNN_name.down.sql` beside
//! it; its checksum (SHA-256 of the up text) is recorded in `<schema>.schema_migrations` when
//! applied. [`migrate_to`] runs inside the caller's transaction, so a failing migration leaves
//! nothing behind, and refuses to go on when an applied migration's file has changed: re-running
//! it silently could corrupt data, and skipping it would hide drift.
//!
//! Whatever the caller (provisioning a fresh schema, `tenant.migrate`, a rollout up or down, the
//! control plane), the work is one [`Plan`]: a list of steps, each a file's SQL plus its ledger
//! change. The plan is sent as one simple-query batch inside a savepoint (one round trip however
//! many files); only if that batch fails for a reason other than a transient one is it rolled
//! back to the savepoint and the same steps re-sent one by one, which makes the failing step name
//! its file. That second pass is a diagnosis of an error already certain, not another way to
//! migrate: the statements, their order and the ledger rows are the same.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub file: String,
    pub sql: String,
    pub checksum: String,
    /// The down file's SQL (`NNNN_name.down.sql`), if one ships.
    pub down: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration file {0:?} is not named NNNN_name.sql or NNNN_name.down.sql (name: a-z, A-Z, 0-9, _ -)")]
    BadName(String),
    #[error("migration version {version} is used by both {a} and {b}")]
    DuplicateVersion { version: i64, a: String, b: String },
    #[error("down file {0} has no up file beside it")]
    DownWithoutUp(String),
    #[error("migration numbering has a gap: {after} is followed by {next}")]
    Gap { after: String, next: String },
    #[error("cannot read migrations from {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("migration {file} was changed after it was applied to {schema} (checksum {applied} applied, {now} now); restore the file or add a new migration")]
    ChecksumMismatch {
        schema: String,
        file: String,
        applied: String,
        now: String,
    },
    #[error("{schema} is at version {version}, which the deployed migration set does not have (it ends at {latest}); deploy the newer set first")]
    Unknown {
        schema: String,
        version: i64,
        latest: i64,
    },
    #[error("cannot roll back {file}: it has no down file ({down})")]
    NoDown { file: String, down: String },
    #[error("migration {file} failed in {schema}: {message}")]
    Failed {
        schema: String,
        file: String,
        message: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration ledger of {schema}: {source}")]
    Ledger {
        schema: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0:?} is not a schema name the migration runner accepts")]
    BadSchema(String),
}

impl MigrationError {
    /// A database error that a retry may cure (the connection dropped mid-migration).
    pub fn is_transient(&self) -> bool {
        self.sql_error().is_some_and(crate::errors::is_transient)
    }

    /// A statement gave up waiting for a lock (`lock_timeout`, SQLSTATE 55P03): someone else's
    /// traffic holds the table; retry later rather than queue behind it.
    pub fn is_lock_timeout(&self) -> bool {
        self.sql_error()
            .and_then(crate::errors::sqlstate)
            .is_some_and(|s| s == "55P03")
    }

    /// The SQLSTATE of the database error behind this one, if any.
    pub fn sqlstate(&self) -> Option<String> {
        self.sql_error().and_then(crate::errors::sqlstate)
    }

    fn sql_error(&self) -> Option<&sqlx::Error> {
        match self {
            MigrationError::Failed { source, .. } | MigrationError::Ledger { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// Names are spliced into the ledger insert as literals, so they are kept to a plain alphabet.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `(version, name, is_down)` of a migration file name.
fn parse_name(file: &str) -> Result<(i64, String, bool), MigrationError> {
    let bad = || MigrationError::BadName(file.into());
    let (stem, down) = match file.strip_suffix(".down.sql") {
        Some(stem) => (stem, true),
        None => (file.strip_suffix(".sql").ok_or_else(bad)?, false),
    };
    let (num, name) = stem.split_once('_').ok_or_else(bad)?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || !plain_name(name) {
        return Err(bad());
    }
    Ok((num.parse().map_err(|_| bad())?, name.to_owned(), down))
}

impl Migration {
    pub fn new(file: &str, sql: &str) -> Result<Self, MigrationError> {
        let (version, name, down) = parse_name(file)?;
        if down {
            return Err(MigrationError::DownWithoutUp(file.into()));
        }
        Ok(Migration {
            version,
            name,
            file: file.to_owned(),
            sql: sql.to_owned(),
            checksum: hex(&Sha256::digest(sql.as_bytes())),
            down: None,
        })
    }

    /// The down file's name, shipped or not (`NNNN_name.down.sql`).
    pub fn down_file(&self) -> String {
        match self.file.strip_suffix(".sql") {
            Some(stem) => format!("{stem}.down.sql"),
            None => format!("{}.down.sql", self.file),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a sorted, duplicate-free set from `(file name, sql)` pairs; down files attach to the
/// up file of their version and name.
pub fn from_files(
    files: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Migration>, MigrationError> {
    let mut by_version: BTreeMap<i64, Migration> = BTreeMap::new();
    let mut downs: Vec<(String, i64, String, String)> = Vec::new();
    for (file, sql) in files {
        let (version, name, down) = parse_name(&file)?;
        if down {
            downs.push((file, version, name, sql));
            continue;
        }
        let m = Migration::new(&file, &sql)?;
        if let Some(prev) = by_version.get(&m.version) {
            return Err(MigrationError::DuplicateVersion {
                version: m.version,
                a: prev.file.clone(),
                b: m.file,
            });
        }
        by_version.insert(m.version, m);
    }
    for (file, version, name, sql) in downs {
        match by_version.get_mut(&version) {
            Some(up) if up.name == name && up.down.is_none() => up.down = Some(sql),
            Some(up) if up.name == name => {
                return Err(MigrationError::DuplicateVersion {
                    version,
                    a: up.down_file(),
                    b: file,
                })
            }
            _ => return Err(MigrationError::DownWithoutUp(file)),
        }
    }
    Ok(by_version.into_values().collect())
}

/// Refuses a set whose versions skip a number (a file lost in packaging would otherwise be
/// skipped silently on every tenant).
pub fn check_contiguous(set: &[Migration]) -> Result<(), MigrationError> {
    for w in set.windows(2) {
        if w[1].version != w[0].version + 1 {
            return Err(MigrationError::Gap {
                after: w[0].file.clone(),
                next: w[1].file.clone(),
            });
        }
    }
    Ok(())
}

/// Loads every `*.sql` file of `dir` (up and down files).
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let io = |source| MigrationError::Io {
        dir: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| MigrationError::BadName(path.display().to_string()))?
            .to_owned();
        files.push((name, std::fs::read_to_string(&path).map_err(io)?));
    }
    from_files(files)
}

/// The highest version of a set (0 when empty).
pub fn latest_version(migrations: &[Migration]) -> i64 {
    migrations.last().map(|m| m.version).unwrap_or(0)
}

/// A digest of the set up to `version` (versions and checksums): two processes agree on what a
/// version means exactly when their digests match.
pub fn set_digest(migrations: &[Migration], version: i64) -> String {
    let mut h = Sha256::new();
    for m in migrations.iter().filter(|m| m.version <= version) {
        let down = m
            .down
            .as_deref()
            .map(|d| hex(&Sha256::digest(d.as_bytes())));
        h.update(format!(
            "{}:{}:{};",
            m.version,
            m.checksum,
            down.unwrap_or_default()
        ));
    }
    hex(&h.finalize())[..16].to_owned()
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Versions applied by this call (up), in order.
    pub applied: Vec<i64>,
    /// Versions rolled back by this call (down), in order.
    pub reverted: Vec<i64>,
    /// The schema's version before.
    pub before: i64,
    /// The schema's version afterwards.
    pub version: i64,
}

/// Runs SQL (possibly several statements) with the simple-query protocol.
///
/// `sqlx::raw_sql(..).execute(..)` does the same, but its future fails the `Send` check inside
/// `tokio::spawn` (sqlx issue #3150); `Executor::execute` with a plain `&str` (no arguments) takes
/// the same protocol path and is `Send`.
pub async fn exec_simple(con: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(con, sql).await.map(|_| ())
}

fn safe_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Where the schema stands before a plan: brand new (this transaction creates it, so there is no
/// ledger to read) or existing (its ledger is read and checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Fresh,
    Existing,
}

/// One file's worth of work: its SQL and the ledger change that records it.
#[derive(Debug, Clone)]
struct Step {
    version: i64,
    file: String,
    sql: String,
}

/// What [`migrate_to`] will send, decided from the ledger and the set before any DDL runs.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    steps: Vec<Step>,
    up: bool,
    before: i64,
}

impl Plan {
    /// Versions the plan applies (up) or reverts (down), in execution order.
    pub fn versions(&self) -> Vec<i64> {
        self.steps.iter().map(|s| s.version).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Decides the steps that bring a schema whose ledger holds `applied` (version → checksum) to
/// `target`: pending ups `<= target` in order, or downs of applied versions `> target` in reverse.
pub fn plan(
    schema: &str,
    migrations: &[Migration],
    applied: &BTreeMap<i64, String>,
    target: i64,
) -> Result<Plan, MigrationError> {
    if !safe_schema(schema) {
        return Err(MigrationError::BadSchema(schema.into()));
    }
    let by_version: BTreeMap<i64, &Migration> = migrations.iter().map(|m| (m.version, m)).collect();
    for (v, sum) in applied {
        if let Some(m) = by_version.get(v) {
            if *sum != m.checksum {
                return Err(MigrationError::ChecksumMismatch {
                    schema: schema.to_owned(),
                    file: m.file.clone(),
                    applied: sum[..12.min(sum.len())].to_owned(),
                    now: m.checksum[..12].to_owned(),
                });
            }
        }
    }
    let before = applied.keys().next_back().copied().unwrap_or(0);
    let ledger = format!("\"{schema}\".schema_migrations");
    let mut steps = Vec::new();
    let up = target >= before;
    if up {
        for m in migrations
            .iter()
            .filter(|m| m.version <= target && !applied.contains_key(&m.version))
        {
            steps.push(Step {
                version: m.version,
                file: m.file.clone(),
                // Names are plain and checksums hex (checked when parsed), so literals are safe.
                sql: format!(
                    "{}\n;\nINSERT INTO {ledger} (version, name, checksum) VALUES ({}, '{}', '{}');",
                    m.sql, m.version, m.name, m.checksum
                ),
            });
        }
    } else {
        for v in applied.keys().rev().filter(|v| **v > target) {
            let Some(m) = by_version.get(v) else {
                return Err(MigrationError::Unknown {
                    schema: schema.to_owned(),
                    version: *v,
                    latest: latest_version(migrations),
                });
            };
            let Some(down) = &m.down else {
                return Err(MigrationError::NoDown {
                    file: m.file.clone(),
                    down: m.down_file(),
                });
            };
            steps.push(Step {
                version: m.version,
                file: m.down_file(),
                sql: format!(
                    "{down}\n;\nDELETE FROM {ledger} WHERE version = {};",
                    m.version
                ),
            });
        }
    }
    Ok(Plan { steps, up, before })
}

/// The ledger table, the same definition for every schema.
fn ledger_ddl(schema: &str, if_not_exists: bool) -> String {
    let ine = if if_not_exists { "IF NOT EXISTS " } else { "" };
    format!(
        "CREATE TABLE {ine}\"{schema}\".schema_migrations (
             version    bigint PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    )
}

/// Brings `schema` to `target` on `con` (pass a transaction): reads and checks the ledger (unless
/// [`Start::Fresh`]), plans, and runs the plan (see the module docs). Statements run with
/// `search_path` set to the schema, so migrations use unqualified table names. An existing
/// schema without a ledger is given one (the control plane's first start).
pub async fn migrate_to(
    con: &mut PgConnection,
    schema: &str,
    migrations: &[Migration],
    target: i64,
    start: Start,
) -> Result<ApplyReport, MigrationError> {
    if !safe_schema(schema) {
        return Err(MigrationError::BadSchema(schema.into()));
    }
    let ledger_err = |source: sqlx::Error| MigrationError::Ledger {
        schema: schema.to_owned(),
        source,
    };
    // `schema` is checked above to be [a-z0-9_]+, so quoting it is enough.
    let (prelude, applied) = match start {
        Start::Fresh => (
            format!(
                "CREATE SCHEMA \"{schema}\"; {} SET LOCAL search_path TO \"{schema}\", public;",
                ledger_ddl(schema, false)
            ),
            BTreeMap::new(),
        ),
        Start::Existing => {
            let setup = format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; {}",
                ledger_ddl(schema, true)
            );
            exec_simple(&mut *con, &setup).await.map_err(ledger_err)?;
            let select = format!("SELECT version, checksum FROM \"{schema}\".schema_migrations");
            let rows: Vec<(i64, String)> = sqlx::query_as(&select)
                .fetch_all(&mut *con)
                .await
                .map_err(ledger_err)?;
            (
                format!("SET LOCAL search_path TO \"{schema}\", public;"),
                rows.into_iter().collect(),
            )
        }
    };
    let plan = plan(schema, migrations, &applied, target)?;
    if !(plan.is_empty() && start == Start::Existing) {
        run_plan(con, schema, &prelude, &plan).await?;
    }
    let mut report = ApplyReport {
        before: plan.before,
        ..Default::default()
    };
    let versions = plan.versions();
    let mut now: std::collections::BTreeSet<i64> = applied.keys().copied().collect();
    if plan.up {
        now.extend(versions.iter().copied());
        report.applied = versions;
    } else {
        for v in &versions {
            now.remove(v);
        }
        report.reverted = versions;
    }
    report.version = now.last().copied().unwrap_or(0);
    Ok(report)
}

/// Applies every migration not yet in `schema`'s ledger: [`migrate_to`] the set's latest version.
pub async fn apply(
    con: &mut PgConnection,
    schema: &str,
    migrations: &[Migration],
) -> Result<ApplyReport, MigrationError> {
    migrate_to(
        con,
        schema,
        migrations,
        latest_version(migrations),
        Start::Existing,
    )
    .await
}

const SAVEPOINT: &str = "fleet_migrate_plan";

async fn run_plan(
    con: &mut PgConnection,
    schema: &str,
    prelude: &str,
    plan: &Plan,
) -> Result<(), MigrationError> {
    let failed = |step: &Step, source: sqlx::Error| MigrationError::Failed {
        schema: schema.to_owned(),
        file: step.file.clone(),
        message: crate::errors::one_line(&source.to_string()),
        source,
    };
    let ledger_err = |source: sqlx::Error| MigrationError::Ledger {
        schema: schema.to_owned(),
        source,
    };
    let size: usize = plan.steps.iter().map(|s| s.sql.len() + 2).sum();
    let mut batch = String::with_capacity(prelude.len() + size + 128);
    batch.push_str(prelude);
    batch.push_str(&format!("\nSAVEPOINT {SAVEPOINT};\n"));
    // Where each step starts, in characters (Postgres reports syntax error positions so).
    let mut starts = Vec::with_capacity(plan.steps.len());
    let mut chars = batch.chars().count();
    for s in &plan.steps {
        starts.push(chars);
        batch.push_str(&s.sql);
        batch.push('\n');
        chars += s.sql.chars().count() + 1;
    }
    batch.push_str(&format!(
        "RELEASE SAVEPOINT {SAVEPOINT};\nSET LOCAL search_path TO DEFAULT;"
    ));
    let err = match exec_simple(&mut *con, &batch).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    // Which step failed is unknown. A syntax error fails the whole string before any statement
    // runs, and carries its position: that names the step. A transient error or a lock timeout
    // is returned as it is (the caller retries the whole transaction); with one step it is that
    // step; otherwise roll back to the savepoint and send the steps one at a time so the failure
    // names its file.
    if let Some(pos) = error_position(&err) {
        if let Some(i) = starts.iter().rposition(|s| *s < pos) {
            return Err(failed(&plan.steps[i], err));
        }
        return Err(ledger_err(err));
    }
    let transient = crate::errors::is_transient(&err)
        || crate::errors::sqlstate(&err).as_deref() == Some("55P03");
    match plan.steps.as_slice() {
        [] => return Err(ledger_err(err)),
        [only] => return Err(failed(only, err)),
        [first, .., last] if transient => {
            return Err(MigrationError::Failed {
                schema: schema.to_owned(),
                file: format!("{}..{}", first.file, last.file),
                message: crate::errors::one_line(&err.to_string()),
                source: err,
            })
        }
        _ => {}
    }
    if let Err(e) = exec_simple(&mut *con, &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")).await {
        // The savepoint did not exist: the prelude itself failed (e.g. the schema exists).
        return Err(ledger_err(
            if crate::errors::sqlstate(&e).as_deref() == Some("3B001") {
                err
            } else {
                e
            },
        ));
    }
    for s in &plan.steps {
        if let Err(e) = exec_simple(&mut *con, &s.sql).await {
            return Err(failed(s, e));
        }
    }
    // The batch failed but every step passed alone: report the batch's error on the last step
    // rather than commit something that did not run as planned.
    let last = plan.steps.last().expect("two or more steps");
    Err(failed(last, err))
}

/// The 1-based character position of a syntax error in the statement sent, if reported.
fn error_position(e: &sqlx::Error) -> Option<usize> {
    let db = e.as_database_error()?;
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    match pg.position()? {
        sqlx::postgres::PgErrorPosition::Original(p) => Some(p),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_sort() {
        let set = from_files([
            ("0002_b.sql".to_string(), "select 2".to_string()),
            ("0001_a.sql".to_string(), "select 1".to_string()),
            ("0002_b.down.sql".to_string(), "select -2".to_string()),
        ])
        .unwrap();
        assert_eq!(set.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(set[0].name, "a");
        assert_eq!(set[0].checksum.len(), 64);
        assert_eq!(set[1].down.as_deref(), Some("select -2"));
        assert_eq!(set[1].down_file(), "0002_b.down.sql");
    }

    #[test]
    fn bad_names_duplicates_orphan_downs_and_gaps_are_refused() {
        for bad in [
            "x.sql",
            "0001.sql",
            "v1_a.sql",
            "0001_a.txt",
            "_a.sql",
            "0001_it's.sql",
        ] {
            assert!(Migration::new(bad, "").is_err(), "{bad}");
        }
        let dup = from_files([
            ("0001_a.sql".to_string(), String::new()),
            ("1_b.sql".to_string(), String::new()),
        ]);
        assert!(matches!(dup, Err(MigrationError::DuplicateVersion { .. })));
        let orphan = from_files([
            ("0001_a.sql".to_string(), String::new()),
            ("0002_b.down.sql".to_string(), String::new()),
        ]);
        assert!(matches!(orphan, Err(MigrationError::DownWithoutUp(f)) if f == "0002_b.down.sql"));
        let gap = from_files([
            ("0001_a.sql".to_string(), String::new()),
            ("0003_c.sql".to_string(), String::new()),
        ])
        .unwrap();
        let err = check_contiguous(&gap).unwrap_err().to_string();
        assert!(
            err.contains("0001_a.sql is followed by 0003_c.sql"),
            "{err}"
        );
    }

    #[test]
    fn plans_go_up_and_down_and_refuse_what_they_cannot_do() {
        let set = from_files([
            ("0001_a.sql".to_string(), "A".to_string()),
            ("0002_b.sql".to_string(), "B".to_string()),
            ("0002_b.down.sql".to_string(), "-B".to_string()),
            ("0003_c.sql".to_string(), "C".to_string()),
            ("0003_c.down.sql".to_string(), "-C".to_string()),
        ])
        .unwrap();
        let none = BTreeMap::new();
        assert_eq!(plan("s", &set, &none, 3).unwrap().versions(), [1, 2, 3]);
        assert_eq!(plan("s", &set, &none, 2).unwrap().versions(), [1, 2]);
        let all: BTreeMap<i64, String> = set
            .iter()
            .map(|m| (m.version, m.checksum.clone()))
            .collect();
        assert!(plan("s", &set, &all, 3).unwrap().is_empty());
        let down = plan("s", &set, &all, 1).unwrap();
        assert_eq!(down.versions(), [3, 2]);
        assert!(down.steps[0].sql.starts_with("-C"));
        let err = plan("s", &set, &all, 0).unwrap_err().to_string();
        assert!(err.contains("0001_a.down.sql"), "{err}");
        let mut changed = all.clone();
        changed.insert(2, "0".repeat(64));
        assert!(matches!(
            plan("s", &set, &changed, 3),
            Err(MigrationError::ChecksumMismatch { .. })
        ));
        let mut ahead = all;
        ahead.insert(4, "x".into());
        assert!(matches!(
            plan("s", &set, &ahead, 2),
            Err(MigrationError::Unknown { version: 4, .. })
        ));
    }
}
