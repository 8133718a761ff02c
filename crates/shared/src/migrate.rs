//! Versioned SQL migrations with a per-schema ledger.
//!
//! One runner serves the control plane (`fleet`) and every tenant schema (`tenant_<code>`). A
//! migration is a file `NNNN_name.sql`; its checksum (SHA-256 of the text) is recorded in
//! `<schema>.schema_migrations` when applied. [`apply`] runs inside the caller's transaction, so
//! a failing migration leaves nothing behind, and refuses to go on when an applied migration's
//! file has changed: re-running it silently could corrupt data, and skipping it would hide drift.

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
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration file {0:?} is not named NNNN_name.sql")]
    BadName(String),
    #[error("migration version {version} is used by both {a} and {b}")]
    DuplicateVersion { version: i64, a: String, b: String },
    #[error("cannot read migrations from {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("migration {file} was changed after it was applied to {schema} (checksum {applied} applied, {now} now); restore the file or add a new migration")]
    ChecksumMismatch {
        schema: String,
        file: String,
        applied: String,
        now: String,
    },
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
        match self {
            MigrationError::Failed { source, .. } | MigrationError::Ledger { source, .. } => {
                crate::errors::is_transient(source)
            }
            _ => false,
        }
    }
}

impl Migration {
    pub fn new(file: &str, sql: &str) -> Result<Self, MigrationError> {
        let stem = file
            .strip_suffix(".sql")
            .ok_or_else(|| MigrationError::BadName(file.into()))?;
        let (num, name) = stem
            .split_once('_')
            .ok_or_else(|| MigrationError::BadName(file.into()))?;
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
            return Err(MigrationError::BadName(file.into()));
        }
        let version = num
            .parse()
            .map_err(|_| MigrationError::BadName(file.into()))?;
        Ok(Migration {
            version,
            name: name.to_owned(),
            file: file.to_owned(),
            sql: sql.to_owned(),
            checksum: hex(&Sha256::digest(sql.as_bytes())),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a sorted, duplicate-free set from `(file name, sql)` pairs.
pub fn from_files(
    files: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Migration>, MigrationError> {
    let mut by_version: BTreeMap<i64, Migration> = BTreeMap::new();
    for (file, sql) in files {
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
    Ok(by_version.into_values().collect())
}

/// Loads every `*.sql` file of `dir`.
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

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Versions applied by this call.
    pub applied: Vec<i64>,
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

/// Applies every migration not yet in `schema`'s ledger, in version order, on `con` (pass a
/// transaction). The schema is created if missing, and statements run with `search_path` set to
/// it, so tenant migrations use unqualified table names.
pub async fn apply(
    con: &mut PgConnection,
    schema: &str,
    migrations: &[Migration],
) -> Result<ApplyReport, MigrationError> {
    if !safe_schema(schema) {
        return Err(MigrationError::BadSchema(schema.into()));
    }
    let schema_owned = schema.to_owned();
    // Plain fn pointers and owned strings only: closures or iterator adapters borrowing across
    // `.await` make the future fail `Send` for callers that spawn it.
    let ledger_err = |source: sqlx::Error| MigrationError::Ledger {
        schema: schema_owned.clone(),
        source,
    };
    // `schema` is checked above to be [a-z0-9_]+, so quoting it is enough.
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".schema_migrations (
             version    bigint PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         SET LOCAL search_path TO \"{schema}\", public;"
    );
    if let Err(e) = exec_simple(&mut *con, &setup).await {
        return Err(ledger_err(e));
    }

    let select =
        format!("SELECT version, checksum FROM \"{schema}\".schema_migrations ORDER BY version");
    let applied: Vec<(i64, String)> = match sqlx::query_as(&select).fetch_all(&mut *con).await {
        Ok(rows) => rows,
        Err(e) => return Err(ledger_err(e)),
    };
    let applied: BTreeMap<i64, String> = applied.into_iter().collect();

    for m in migrations {
        if let Some(sum) = applied.get(&m.version) {
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

    let pending: Vec<Migration> = migrations
        .iter()
        .filter(|m| !applied.contains_key(&m.version))
        .cloned()
        .collect();
    let insert = format!(
        "INSERT INTO \"{schema}\".schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"
    );
    let mut report = ApplyReport::default();
    for m in pending {
        if let Err(source) = exec_simple(&mut *con, &m.sql).await {
            return Err(MigrationError::Failed {
                schema: schema.to_owned(),
                file: m.file.clone(),
                message: crate::errors::one_line(&source.to_string()),
                source,
            });
        }
        let res = sqlx::query(&insert)
            .bind(m.version)
            .bind(m.name.clone())
            .bind(m.checksum.clone())
            .execute(&mut *con)
            .await;
        if let Err(e) = res {
            return Err(ledger_err(e));
        }
        report.applied.push(m.version);
    }
    if let Err(e) = exec_simple(&mut *con, "SET LOCAL search_path TO DEFAULT").await {
        return Err(ledger_err(e));
    }
    report.version = applied
        .keys()
        .copied()
        .chain(report.applied.iter().copied())
        .max()
        .unwrap_or(0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_sort() {
        let set = from_files([
            ("0002_b.sql".to_string(), "select 2".to_string()),
            ("0001_a.sql".to_string(), "select 1".to_string()),
        ])
        .unwrap();
        assert_eq!(set.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(set[0].name, "a");
        assert_eq!(set[0].checksum.len(), 64);
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        for bad in ["x.sql", "0001.sql", "v1_a.sql", "0001_a.txt", "_a.sql"] {
            assert!(Migration::new(bad, "").is_err(), "{bad}");
        }
        let dup = from_files([
            ("0001_a.sql".to_string(), String::new()),
            ("1_b.sql".to_string(), String::new()),
        ]);
        assert!(matches!(dup, Err(MigrationError::DuplicateVersion { .. })));
    }
}
