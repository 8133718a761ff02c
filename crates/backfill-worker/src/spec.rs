//! Job specs: the JSON an operator submits (`fleetctl backfill submit job.json` or a
//! `backfill.submit` message), parsed into a typed [`JobSpec`].
//!
//! This module checks everything that can be checked without a database: the kind, unknown
//! fields (a typo like `chunksize` must not silently run with defaults), identifiers
//! ([`Ident`]), the `$1`/`$2` bounds of a `sql` statement, option ranges and the mapping CSV.
//! [`crate::validate`] then checks the spec against the target database's catalog. Every
//! error is one line that says what to fix.

use std::time::Duration;

use fleet_shared::Code;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::BackfillConfig;
use crate::ident::{BadIdent, Ident};
use crate::mapping::{self, Mapping, MappingError};

pub const KINDS: &[&str] = &["sql", "tenant_codes", "copy_to_tenant"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("job spec is not valid JSON: {0}")]
    Json(String),
    #[error("unknown kind {0} (accepted: sql, tenant_codes, copy_to_tenant)")]
    UnknownKind(String),
    #[error("{kind} job: missing field {field:?}")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} job: field {field:?} does not apply to this kind")]
    NotForKind {
        kind: &'static str,
        field: &'static str,
    },
    #[error(transparent)]
    Ident(#[from] BadIdent),
    #[error("sql job: the statement must use both range bounds $1 (exclusive lower) and $2 (inclusive upper) on the key; {0}")]
    Bounds(String),
    #[error(
        "sql jobs are not enabled (set FLEET_BACKFILL_ALLOW_SQL=1 on the workers and fleetctl)"
    )]
    SqlNotAllowed,
    #[error("option {0}")]
    Option(String),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("tenant_codes job: give the mapping either inline (mapping_csv) or as a file (mapping_path), not both")]
    MappingTwice,
    #[error("tenant_codes job: cannot read mapping_path {path}: {problem}")]
    MappingFile { path: String, problem: String },
    #[error("copy_to_tenant job: tenant_code: {0}")]
    TenantCode(String),
    #[error("{0}")]
    Tables(String),
    #[error("database: {0}")]
    Database(String),
}

/// A table linked to its organization by its own column (the default org-direct tables are
/// listed in docs/backfill.md#tenant_codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgTableSpec {
    pub table: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub org_column: Option<String>,
}

/// A table linked through a user (`user_column` → `user_extensions.user_id`) or through a
/// session (`session_column` → `sessions.id` → `sessions.created_by`) (defaults: docs/backfill.md#tenant_codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTableSpec {
    pub table: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub user_column: Option<String>,
    #[serde(default)]
    pub session_column: Option<String>,
}

/// The wire form, kept (normalized) in `fleet.backfill_jobs.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// A `[databases.<name>]` entry the job's statements run on (default: the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    // options
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_chunk: Option<serde_json::Value>,
    /// Deprecated spelling of `target_chunk` in milliseconds; read for one more release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_chunk_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_sec: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    // throttle thresholds (see fleet_shared::health)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_lag: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lock_waiters: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_on_vacuum: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_transaction_age: Option<serde_json::Value>,
    // sql + copy_to_tenant
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    // sql
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    // tenant_codes
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_csv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_tables: Option<Vec<OrgTableSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_tables: Option<Vec<UserTableSpec>>,
    // copy_to_tenant
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_value: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_source: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_target: Option<bool>,
}

/// Options as given (unset ones take the `[backfill]` defaults when the job runs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub chunk_size: Option<i64>,
    pub target_chunk: Option<Duration>,
    pub max_rows_per_sec: Option<f64>,
    pub parallelism: Option<usize>,
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub dry_run: bool,
    pub max_replica_lag: Option<Duration>,
    pub max_lock_waiters: Option<u32>,
    pub throttle_on_vacuum: Option<bool>,
    pub max_transaction_age: Option<Duration>,
}

/// Options with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub chunk_size: i64,
    pub target_chunk: Duration,
    pub min_chunk_size: i64,
    pub max_chunk_size: i64,
    pub max_rows_per_sec: Option<f64>,
    pub parallelism: usize,
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub dry_run: bool,
    /// When the lanes wait for the target database.
    pub health: fleet_shared::health::HealthLimits,
}

impl Options {
    pub fn effective(&self, cfg: &BackfillConfig) -> Effective {
        Effective {
            chunk_size: self
                .chunk_size
                .unwrap_or(cfg.chunk_size)
                .clamp(cfg.min_chunk_size, cfg.max_chunk_size),
            target_chunk: self.target_chunk.unwrap_or(cfg.target_chunk),
            min_chunk_size: cfg.min_chunk_size,
            max_chunk_size: cfg.max_chunk_size,
            max_rows_per_sec: self.max_rows_per_sec.or(cfg.max_rows_per_sec),
            parallelism: self.parallelism.unwrap_or(cfg.parallelism),
            lock_timeout: self.lock_timeout.or(cfg.lock_timeout),
            statement_timeout: self.statement_timeout.or(cfg.statement_timeout),
            dry_run: self.dry_run,
            health: fleet_shared::health::HealthLimits {
                max_replica_lag: self.max_replica_lag.or(cfg.health.max_replica_lag),
                max_lock_waiters: self.max_lock_waiters.or(cfg.health.max_lock_waiters),
                throttle_on_vacuum: self
                    .throttle_on_vacuum
                    .unwrap_or(cfg.health.throttle_on_vacuum),
                max_transaction_age: self.max_transaction_age.or(cfg.health.max_transaction_age),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqlJob {
    pub table: Ident,
    pub key: Ident,
    pub statement: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgTable {
    pub table: Ident,
    pub key: Ident,
    pub org_column: Ident,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// `user_extensions.user_id = t.<column>`
    User(Ident),
    /// `sessions.id = t.<column>`, then the session's creator.
    Session(Ident),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTable {
    pub table: Ident,
    pub key: Ident,
    pub link: Link,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantCodesJob {
    /// `None` once stored: the mapping then lives in `fleet.backfill_org_map`.
    pub mapping: Option<Mapping>,
    pub org_tables: Vec<OrgTable>,
    pub user_tables: Vec<UserTable>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopyJob {
    pub table: Ident,
    pub key: Ident,
    pub tenant_column: Ident,
    pub tenant_code: Code,
    /// What the tenant column holds for this tenant (default: the tenant code).
    pub tenant_value: String,
    pub delete_source: bool,
    pub create_target: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Sql(SqlJob),
    TenantCodes(TenantCodesJob),
    CopyToTenant(CopyJob),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Sql(_) => "sql",
            Kind::TenantCodes(_) => "tenant_codes",
            Kind::CopyToTenant(_) => "copy_to_tenant",
        }
    }
}

/// A parsed, statically valid job spec.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub job_id: Option<Uuid>,
    /// The database the job works on (`control`: the control plane's own).
    pub database: fleet_shared::Name,
    pub schema: Ident,
    pub options: Options,
    pub kind: Kind,
    /// The normalized wire form (mapping removed; it is stored separately).
    pub raw: RawSpec,
}

/// The default org-direct tables of a `tenant_codes` job: the mentoring tables linked by their
/// own `organization_id` (docs/backfill.md#tenant_codes).
pub const SEED_ORG_TABLES: &[&str] = &[
    "availabilities",
    "default_rules",
    "entity_types",
    "file_uploads",
    "forms",
    "notification_templates",
    "organization_extension",
    "report_queries",
    "reports",
    "role_extensions",
];

/// The default user-linked tables: through a user column or, for `post_session_details`, a
/// session (docs/backfill.md#tenant_codes).
pub const SEED_USER_TABLES: &[(&str, &str, &str)] = &[
    ("user_extensions", "user_id", "user_id"),
    ("sessions", "id", "created_by"),
    ("session_attendees", "id", "mentee_id"),
    ("feedbacks", "id", "user_id"),
    ("connection_requests", "id", "created_by"),
    ("connections", "id", "created_by"),
    ("entities", "id", "created_by"),
    ("issues", "id", "user_id"),
    ("resources", "id", "created_by"),
    ("session_request", "id", "created_by"),
    ("question_sets", "id", "created_by"),
    ("questions", "id", "created_by"),
    ("post_session_details", "id", "session:session_id"),
];

/// Where a stored spec's mapping comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingSource {
    /// At submit: inline or a file, required.
    Required,
    /// From the database: the spec no longer carries it.
    Stored,
}

/// Parses a duration option written in the fleet's one syntax (`"500ms"`, `"2s"`, `"5m"`), at
/// most `max`. A bare number is refused at submit; a stored spec from the previous release may
/// still hold one (milliseconds then), so `source` [`MappingSource::Stored`] reads it that way.
fn duration_opt(
    name: &str,
    v: &Option<serde_json::Value>,
    max: Duration,
    source: MappingSource,
) -> Result<Option<Duration>, SpecError> {
    let Some(v) = v else { return Ok(None) };
    let d = match (v, source) {
        (serde_json::Value::String(s), _) => fleet_shared::duration::parse(s),
        (serde_json::Value::Number(n), MappingSource::Stored) if n.is_u64() => {
            Ok(Duration::from_millis(n.as_u64().unwrap_or_default()))
        }
        (other, _) => fleet_shared::duration::parse(&other.to_string()),
    }
    .map_err(|e| SpecError::Option(format!("{name}: {e}")))?;
    if d.is_zero() || d > max {
        return Err(SpecError::Option(format!(
            "{name}: must be between 1ms and {}",
            fleet_shared::duration::format(max)
        )));
    }
    Ok(Some(d))
}

/// Checks that `statement` uses `$1` and `$2` and no other parameter.
pub fn check_bounds(statement: &str) -> Result<(), SpecError> {
    let b = statement.as_bytes();
    let (mut one, mut two) = (false, false);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j > start {
                match &statement[start..j] {
                    "1" => one = true,
                    "2" => two = true,
                    other => {
                        return Err(SpecError::Bounds(format!(
                            "${other} is not allowed (only $1 and $2)"
                        )))
                    }
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    match (one, two) {
        (true, true) => Ok(()),
        (false, _) => Err(SpecError::Bounds("$1 is missing".into())),
        (_, false) => Err(SpecError::Bounds("$2 is missing".into())),
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const TEN_MINUTES: Duration = Duration::from_secs(600);

impl JobSpec {
    /// Parses submitted JSON. `allow_sql` is the FLEET_BACKFILL_ALLOW_SQL setting.
    pub fn parse(
        json: &[u8],
        allow_sql: bool,
        source: MappingSource,
    ) -> Result<JobSpec, SpecError> {
        let raw: RawSpec = serde_json::from_slice(json).map_err(|e| {
            // Name an unknown kind before any field error: it is the likelier mistake.
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) {
                if let Some(k) = v.get("kind").and_then(|k| k.as_str()) {
                    if !KINDS.contains(&k) {
                        return SpecError::UnknownKind(fleet_shared::events::quoted(k));
                    }
                }
            }
            SpecError::Json(fleet_shared::events::shorten_quotes(
                &fleet_shared::errors::one_line(&e.to_string()),
            ))
        })?;
        Self::from_raw(raw, allow_sql, source)
    }

    pub fn from_raw(
        mut raw: RawSpec,
        allow_sql: bool,
        source: MappingSource,
    ) -> Result<JobSpec, SpecError> {
        let kind_name: &'static str = match raw.kind.as_str() {
            "sql" => "sql",
            "tenant_codes" => "tenant_codes",
            "copy_to_tenant" => "copy_to_tenant",
            other => return Err(SpecError::UnknownKind(fleet_shared::events::quoted(other))),
        };
        let schema = Ident::parse("schema", raw.schema.as_deref().unwrap_or("public"))?;
        let database = fleet_shared::Name::parse(
            raw.database
                .as_deref()
                .unwrap_or(fleet_shared::databases::CONTROL),
        )
        .map_err(|e| SpecError::Database(e.to_string()))?;
        let options = Options {
            chunk_size: raw.chunk_size,
            target_chunk: fleet_shared::duration::renamed(
                "backfill spec",
                "target_chunk",
                duration_opt("target_chunk", &raw.target_chunk, TEN_MINUTES, source)?,
                "target_chunk_ms",
                raw.target_chunk_ms,
                Duration::from_millis(1),
            )
            .map_err(SpecError::Option)?,
            max_rows_per_sec: raw.max_rows_per_sec,
            parallelism: raw.parallelism,
            lock_timeout: duration_opt("lock_timeout", &raw.lock_timeout, DAY, source)?,
            statement_timeout: duration_opt(
                "statement_timeout",
                &raw.statement_timeout,
                DAY,
                source,
            )?,
            dry_run: raw.dry_run,
            max_replica_lag: duration_opt("max_replica_lag", &raw.max_replica_lag, DAY, source)?,
            max_lock_waiters: raw.max_lock_waiters,
            throttle_on_vacuum: raw.throttle_on_vacuum,
            max_transaction_age: duration_opt(
                "max_transaction_age",
                &raw.max_transaction_age,
                7 * DAY,
                source,
            )?,
        };
        if options.max_lock_waiters.is_some_and(|n| n > 10_000) {
            return Err(SpecError::Option(
                "max_lock_waiters: must be between 0 and 10000".into(),
            ));
        }
        if options
            .chunk_size
            .is_some_and(|c| !(1..=10_000_000).contains(&c))
        {
            return Err(SpecError::Option(
                "chunk_size: must be between 1 and 10000000".into(),
            ));
        }
        if options
            .target_chunk
            .is_some_and(|t| t.is_zero() || t > TEN_MINUTES)
        {
            return Err(SpecError::Option(
                "target_chunk: must be between 1ms and 10m".into(),
            ));
        }
        if options.parallelism.is_some_and(|p| !(1..=64).contains(&p)) {
            return Err(SpecError::Option(
                "parallelism: must be between 1 and 64".into(),
            ));
        }
        if options
            .max_rows_per_sec
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(SpecError::Option(
                "max_rows_per_sec: must be a positive number".into(),
            ));
        }

        let req = |v: &Option<String>, field: &'static str| {
            v.clone().ok_or(SpecError::Missing {
                kind: kind_name,
                field,
            })
        };
        let not_for = |set: bool, field: &'static str| {
            if set {
                Err(SpecError::NotForKind {
                    kind: kind_name,
                    field,
                })
            } else {
                Ok(())
            }
        };
        let kind = match kind_name {
            "sql" => {
                for (set, f) in [
                    (raw.mapping_csv.is_some(), "mapping_csv"),
                    (raw.mapping_path.is_some(), "mapping_path"),
                    (raw.org_tables.is_some(), "org_tables"),
                    (raw.user_tables.is_some(), "user_tables"),
                    (raw.tenant_code.is_some(), "tenant_code"),
                    (raw.tenant_column.is_some(), "tenant_column"),
                    (raw.delete_source, "delete_source"),
                ] {
                    not_for(set, f)?;
                }
                let table = Ident::parse("table", &req(&raw.table, "table")?)?;
                let key = Ident::parse("key", raw.key.as_deref().unwrap_or("id"))?;
                let statement = req(&raw.statement, "statement")?;
                check_bounds(&statement)?;
                if !allow_sql {
                    return Err(SpecError::SqlNotAllowed);
                }
                Kind::Sql(SqlJob {
                    table,
                    key,
                    statement,
                })
            }
            "tenant_codes" => {
                for (set, f) in [
                    (raw.statement.is_some(), "statement"),
                    (raw.table.is_some(), "table"),
                    (raw.tenant_code.is_some(), "tenant_code"),
                    (raw.tenant_column.is_some(), "tenant_column"),
                    (raw.delete_source, "delete_source"),
                ] {
                    not_for(set, f)?;
                }
                let mapping = match source {
                    MappingSource::Stored => None,
                    MappingSource::Required => {
                        let text = match (raw.mapping_csv.take(), raw.mapping_path.take()) {
                            (Some(_), Some(_)) => return Err(SpecError::MappingTwice),
                            (Some(t), None) => t,
                            // `crate::mapping_file::inline` turns a readable one into mapping_csv
                            // first; one left here was not allowed to be read.
                            (None, Some(p)) => {
                                return Err(SpecError::MappingFile {
                                    path: fleet_shared::events::quoted(&p),
                                    problem: "files are read only through the mapping_dir rules (inline the CSV as mapping_csv)".into(),
                                })
                            }
                            (None, None) => {
                                return Err(SpecError::Missing {
                                    kind: kind_name,
                                    field: "mapping_csv or mapping_path",
                                })
                            }
                        };
                        Some(mapping::parse(&text)?)
                    }
                };
                let org_specs = raw.org_tables.clone().unwrap_or_else(|| {
                    SEED_ORG_TABLES
                        .iter()
                        .map(|t| OrgTableSpec {
                            table: (*t).into(),
                            key: None,
                            org_column: None,
                        })
                        .collect()
                });
                let user_specs = raw.user_tables.clone().unwrap_or_else(|| {
                    SEED_USER_TABLES
                        .iter()
                        .map(|(t, k, link)| {
                            let (user_column, session_column) = match link.strip_prefix("session:")
                            {
                                Some(c) => (None, Some(c.to_string())),
                                None => (Some(link.to_string()), None),
                            };
                            UserTableSpec {
                                table: (*t).into(),
                                key: Some((*k).into()),
                                user_column,
                                session_column,
                            }
                        })
                        .collect()
                });
                let mut seen = std::collections::BTreeSet::new();
                let mut org_tables = Vec::new();
                for o in &org_specs {
                    let t = OrgTable {
                        table: Ident::parse("org_tables.table", &o.table)?,
                        key: Ident::parse("org_tables.key", o.key.as_deref().unwrap_or("id"))?,
                        org_column: Ident::parse(
                            "org_tables.org_column",
                            o.org_column.as_deref().unwrap_or("organization_id"),
                        )?,
                    };
                    if !seen.insert(t.table.clone()) {
                        return Err(SpecError::Tables(format!(
                            "tenant_codes job: table {} is listed twice",
                            t.table
                        )));
                    }
                    org_tables.push(t);
                }
                let mut user_tables = Vec::new();
                for u in &user_specs {
                    let link = match (&u.user_column, &u.session_column) {
                        (Some(c), None) => Link::User(Ident::parse("user_tables.user_column", c)?),
                        (None, Some(c)) => {
                            Link::Session(Ident::parse("user_tables.session_column", c)?)
                        }
                        _ => {
                            return Err(SpecError::Tables(format!(
                                "tenant_codes job: user_tables entry {} needs exactly one of user_column, session_column",
                                fleet_shared::events::quoted(&u.table)
                            )))
                        }
                    };
                    let t = UserTable {
                        table: Ident::parse("user_tables.table", &u.table)?,
                        key: Ident::parse("user_tables.key", u.key.as_deref().unwrap_or("id"))?,
                        link,
                    };
                    if !seen.insert(t.table.clone()) {
                        return Err(SpecError::Tables(format!(
                            "tenant_codes job: table {} is listed twice",
                            t.table
                        )));
                    }
                    user_tables.push(t);
                }
                if org_tables.is_empty() && user_tables.is_empty() {
                    return Err(SpecError::Tables(
                        "tenant_codes job: no tables to fill".into(),
                    ));
                }
                Kind::TenantCodes(TenantCodesJob {
                    mapping,
                    org_tables,
                    user_tables,
                })
            }
            _ => {
                for (set, f) in [
                    (raw.statement.is_some(), "statement"),
                    (raw.mapping_csv.is_some(), "mapping_csv"),
                    (raw.mapping_path.is_some(), "mapping_path"),
                    (raw.org_tables.is_some(), "org_tables"),
                    (raw.user_tables.is_some(), "user_tables"),
                ] {
                    not_for(set, f)?;
                }
                let table = Ident::parse("table", &req(&raw.table, "table")?)?;
                let key = Ident::parse("key", raw.key.as_deref().unwrap_or("id"))?;
                let tenant_column = Ident::parse(
                    "tenant_column",
                    raw.tenant_column.as_deref().unwrap_or("tenant_code"),
                )?;
                let code = req(&raw.tenant_code, "tenant_code")?;
                let tenant_code =
                    Code::parse(&code).map_err(|e| SpecError::TenantCode(e.to_string()))?;
                let tenant_value = raw
                    .tenant_value
                    .clone()
                    .unwrap_or_else(|| tenant_code.as_str().to_owned());
                if tenant_value.is_empty()
                    || tenant_value.len() > 200
                    || tenant_value.contains('\0')
                {
                    return Err(SpecError::Option(
                        "tenant_value: must be 1 to 200 characters".into(),
                    ));
                }
                Kind::CopyToTenant(CopyJob {
                    table,
                    key,
                    tenant_column,
                    tenant_code,
                    tenant_value,
                    delete_source: raw.delete_source,
                    create_target: raw.create_target.unwrap_or(true),
                })
            }
        };
        raw.mapping_csv = None;
        raw.mapping_path = None;
        Ok(JobSpec {
            job_id: raw.job_id,
            database,
            schema,
            options,
            kind,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: &str, allow: bool) -> Result<JobSpec, SpecError> {
        JobSpec::parse(j.as_bytes(), allow, MappingSource::Required)
    }

    #[test]
    fn bad_specs_have_reasons() {
        for (j, needle) in [
            (r#"{"kind":"magic"}"#, "unknown kind \"magic\""),
            (r#"{"kind":"magic","x":1}"#, "unknown kind"),
            (r#"{nope"#, "not valid JSON"),
            (
                r#"{"kind":"sql","table":"t","statement":"UPDATE t SET a=1 WHERE id > $1"}"#,
                "$2 is missing",
            ),
            (
                r#"{"kind":"sql","table":"t","statement":"UPDATE t SET a=$3 WHERE id > $1 AND id <= $2"}"#,
                "$3 is not allowed",
            ),
            (
                r#"{"kind":"sql","table":"T x","statement":"x $1 $2"}"#,
                "is not an identifier",
            ),
            (
                r#"{"kind":"sql","table":"t","statement":"x $1 $2","chunksize":5}"#,
                "unknown field `chunksize`",
            ),
            (
                r#"{"kind":"tenant_codes","mapping_csv":"organization_id,tenant_code\n1,a"}"#,
                "organization_code",
            ),
            (r#"{"kind":"tenant_codes"}"#, "mapping_csv or mapping_path"),
            (
                r#"{"kind":"copy_to_tenant","table":"t","tenant_code":"Bad Code"}"#,
                "tenant_code",
            ),
            (
                r#"{"kind":"sql","table":"t","statement":"x $1 $2","statement_timeout":"soon"}"#,
                "statement_timeout",
            ),
            (
                r#"{"kind":"sql","table":"t","statement":"x $1 $2","lock_timeout":2000}"#,
                "lock_timeout: \"2000\" is not a duration: a bare number has no unit",
            ),
            (
                r#"{"kind":"sql","table":"t","statement":"x $1 $2","target_chunk":"20m"}"#,
                "target_chunk: must be between 1ms and 10m",
            ),
        ] {
            let e = parse(j, true).unwrap_err().to_string();
            assert!(e.contains(needle), "{j}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = parse(r#"{"kind":"sql","table":"t","statement":"x $1 $2"}"#, false).unwrap_err();
        assert_eq!(e, SpecError::SqlNotAllowed);
    }

    #[test]
    fn tenant_codes_defaults_cover_every_org_and_user_table() {
        let s = parse(
            r#"{"kind":"tenant_codes","mapping_csv":"organization_id,organization_code,tenant_code\n1,o1,t1","lock_timeout":"2s","statement_timeout":"800ms"}"#,
            false,
        )
        .unwrap();
        let Kind::TenantCodes(t) = &s.kind else {
            panic!()
        };
        assert_eq!(t.org_tables.len(), 10);
        assert_eq!(t.user_tables.len(), 13);
        assert_eq!(s.options.lock_timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            s.options.statement_timeout,
            Some(Duration::from_millis(800))
        );
        assert!(s.raw.mapping_csv.is_none());
    }

    #[test]
    fn durations_use_the_one_syntax_and_stored_specs_keep_their_milliseconds() {
        let s = parse(
            r#"{"kind":"sql","table":"t","statement":"x $1 $2","target_chunk":"5m","lock_timeout":"1m"}"#,
            true,
        )
        .unwrap();
        assert_eq!(s.options.target_chunk, Some(Duration::from_secs(300)));
        assert_eq!(s.options.lock_timeout, Some(Duration::from_secs(60)));
        let s = parse(
            r#"{"kind":"sql","table":"t","statement":"x $1 $2","target_chunk_ms":250}"#,
            true,
        )
        .unwrap();
        assert_eq!(s.options.target_chunk, Some(Duration::from_millis(250)));
        let stored = br#"{"kind":"sql","table":"t","statement":"x $1 $2","lock_timeout":2000}"#;
        let s = JobSpec::parse(stored, true, MappingSource::Stored).unwrap();
        assert_eq!(s.options.lock_timeout, Some(Duration::from_secs(2)));
    }
}
