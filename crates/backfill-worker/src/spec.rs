//! Job specs: the JSON an operator submits (`fleetctl backfill submit job.json` or a
//! `backfill.submit` message), parsed into a typed [`JobSpec`].
//!
//! Everything that can be checked without a database is checked here: the kind, the fields
//! (serde owns them: each kind's wire struct and the common options refuse unknown fields, so
//! a typo like `chunksize` must not silently run with defaults), identifiers ([`Ident`]), the
//! option ranges ([`crate::options`]) and each kind's own rules ([`crate::kind`]). The kind
//! then checks the spec against the target database's catalog ([`JobSpec::validate`]). Every
//! error is one line that says what to fix and names the field.

use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

pub use crate::error::SpecError;
use crate::ident::Ident;
pub use crate::kind::{Kind, KindSpec, KINDS};
use crate::options::{CommonSpec, COMMON_FIELDS};
pub use crate::options::{Effective, MappingSource, Options};
use crate::validate::ValidateError;

/// The wire form, kept (normalized: without a mapping) in `fleet.backfill_jobs.spec`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RawSpec {
    #[serde(flatten)]
    pub common: CommonSpec,
    #[serde(flatten)]
    pub kind: KindSpec,
}

fn refused_field(kind: &str, e: serde_path_to_error::Error<serde_json::Error>) -> SpecError {
    let path = e.path().to_string();
    let inner = fleet_shared::events::shorten_quotes(&fleet_shared::errors::one_line(
        &e.into_inner().to_string(),
    ));
    let kind_name = KINDS.iter().find(|k| **k == kind).copied().unwrap_or("job");
    if let Some(field) = inner
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        if KINDS
            .iter()
            .any(|k| *k != kind && KindSpec::fields(k).contains(&field))
        {
            return SpecError::NotForKind {
                kind: kind_name,
                field: field.to_owned(),
            };
        }
        let own = KindSpec::fields(kind);
        return SpecError::Field {
            kind: kind.to_owned(),
            problem: format!(
                "unknown field `{field}` (accepted: {}{}{})",
                own.join(", "),
                if own.is_empty() { "" } else { ", " },
                COMMON_FIELDS.join(", ")
            ),
        };
    }
    SpecError::Field {
        kind: kind.to_owned(),
        problem: if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        },
    }
}

impl RawSpec {
    /// Splits a spec into its common options and its kind's fields, each deserialized by serde.
    /// An unknown kind is named before any field error: it is the likelier mistake.
    pub fn from_value(v: serde_json::Value) -> Result<RawSpec, SpecError> {
        let serde_json::Value::Object(mut fields) = v else {
            return Err(SpecError::Json(format!(
                "a job spec is a JSON object, not {}",
                fleet_shared::events::shorten_quotes(&v.to_string())
            )));
        };
        let kind = match fields.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            Some(other) => {
                return Err(SpecError::Json(format!(
                    "kind must be a string, not {}",
                    fleet_shared::events::shorten_quotes(&other.to_string())
                )))
            }
            None => return Err(SpecError::Json("missing field `kind`".into())),
        };
        let unknown = || SpecError::UnknownKind {
            kind: fleet_shared::events::quoted(&kind),
            accepted: KINDS.join(", "),
        };
        if !KINDS.contains(&kind.as_str()) {
            return Err(unknown());
        }
        let mut common = serde_json::Map::new();
        for f in COMMON_FIELDS {
            if let Some(v) = fields.remove(*f) {
                common.insert((*f).to_owned(), v);
            }
        }
        let common: CommonSpec =
            serde_path_to_error::deserialize(serde_json::Value::Object(common))
                .map_err(|e| refused_field(&kind, e))?;
        let kind_spec = KindSpec::from_fields(&kind, serde_json::Value::Object(fields))
            .ok_or_else(unknown)?
            .map_err(|e| refused_field(&kind, e))?;
        Ok(RawSpec {
            common,
            kind: kind_spec,
        })
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

impl JobSpec {
    /// Parses submitted JSON. `allow_sql` is the FLEET_BACKFILL_ALLOW_SQL setting.
    pub fn parse(
        json: &[u8],
        allow_sql: bool,
        source: MappingSource,
    ) -> Result<JobSpec, SpecError> {
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
            SpecError::Json(fleet_shared::events::shorten_quotes(
                &fleet_shared::errors::one_line(&e.to_string()),
            ))
        })?;
        Self::from_value(v, allow_sql, source)
    }

    /// Parses a spec already read as JSON (a stored one: [`MappingSource::Stored`]).
    pub fn from_value(
        v: serde_json::Value,
        allow_sql: bool,
        source: MappingSource,
    ) -> Result<JobSpec, SpecError> {
        Self::from_raw(RawSpec::from_value(v)?, allow_sql, source)
    }

    pub fn from_raw(
        mut raw: RawSpec,
        allow_sql: bool,
        source: MappingSource,
    ) -> Result<JobSpec, SpecError> {
        let schema = Ident::parse("schema", raw.common.schema.as_deref().unwrap_or("public"))?;
        let database = fleet_shared::Name::parse(
            raw.common
                .database
                .as_deref()
                .unwrap_or(fleet_shared::databases::CONTROL),
        )
        .map_err(|e| SpecError::Database(e.to_string()))?;
        let options = Options::parse(&raw.common, source)?;
        let kind = Kind::check(&mut raw.kind, allow_sql, source)?;
        if options.dry_run && kind.job().finalize_plan().is_some() {
            return Err(SpecError::Option(
                "dry_run: a dry run changes nothing, so it cannot finalize (drop dry_run or finalize)"
                    .into(),
            ));
        }
        Ok(JobSpec {
            job_id: raw.common.job_id,
            database,
            schema,
            options,
            kind,
            raw,
        })
    }

    /// Checks the spec against the database `con` is connected to (see [`crate::validate`]).
    pub fn validate<'a>(
        &'a self,
        con: &'a mut PgConnection,
        pools: &'a fleet_shared::databases::DatabasePools,
    ) -> BoxFuture<'a, Result<(), ValidateError>> {
        let ctx = crate::kind::CheckCtx {
            schema: &self.schema,
            database: &self.database,
            pools,
        };
        self.kind.job().validate(con, ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            (
                r#"{"kind":"sql","table":"t","statement":"x $1 $2","mapping_csv":"a"}"#,
                "sql job: field \"mapping_csv\" does not apply to this kind",
            ),
            (
                r#"{"kind":"copy_to_tenant","tenant_code":"acme"}"#,
                "copy_to_tenant job: missing field `table`",
            ),
            (
                r#"{"kind":"sql","table":5,"statement":"x $1 $2"}"#,
                "sql job: table: invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"kind":"sql","table":"t","statement":"x $1 $2","chunk_size":"big"}"#,
                "sql job: chunk_size: invalid type",
            ),
            (r#"{"table":"t"}"#, "missing field `kind`"),
            (r#"[1]"#, "a job spec is a JSON object"),
            (
                r#"{"kind":"tenant_codes","mapping_csv":"organization_id,organization_code,tenant_code\n1,o,t","finalize":"yes"}"#,
                "finalize: must be true, false or an object of steps",
            ),
            (
                r#"{"kind":"tenant_codes","mapping_csv":"organization_id,organization_code,tenant_code\n1,o,t","finalize":true,"dry_run":true}"#,
                "a dry run changes nothing, so it cannot finalize",
            ),
            (
                r#"{"kind":"tenant_codes","mapping_csv":"organization_id,organization_code,tenant_code\n1,o,t","steps":true}"#,
                "tenant_codes job: field \"steps\" does not apply to this kind",
            ),
            (
                r#"{"kind":"finalize","steps":{"nul":true}}"#,
                "steps: unknown step \"nul\"",
            ),
            (
                r#"{"kind":"finalize","steps":false}"#,
                "steps: no step selected",
            ),
            (
                r#"{"kind":"finalize","tables":[{"table":"Sessions"}]}"#,
                "tables.table \"Sessions\" is not an identifier",
            ),
            (
                r#"{"kind":"finalize","tables":[{"table":"a","keys":"id"}]}"#,
                "unknown field `keys`",
            ),
            (
                r#"{"kind":"finalize","tables":[{"table":"a"},{"table":"a"}]}"#,
                "finalize job: table a is listed twice",
            ),
        ] {
            let e = parse(j, true).unwrap_err().to_string();
            assert!(e.contains(needle), "{j}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = parse(r#"{"kind":"sql","table":"t","statement":"x $1 $2"}"#, false).unwrap_err();
        assert_eq!(e, SpecError::SqlNotAllowed);
    }

    /// What is stored is what was submitted, less the mapping, and parses again as stored.
    #[test]
    fn stored_specs_round_trip() {
        let s = parse(
            r#"{"kind":"copy_to_tenant","table":"notes","tenant_code":"acme","delete_source":true,"chunk_size":5,"lock_timeout":"2s"}"#,
            false,
        )
        .unwrap();
        let stored = serde_json::to_value(&s.raw).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"kind":"copy_to_tenant","table":"notes","tenant_code":"acme","delete_source":true,"chunk_size":5,"lock_timeout":"2s"})
        );
        let again = JobSpec::from_value(stored, false, MappingSource::Stored).unwrap();
        assert_eq!(again, s);
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
        let KindSpec::TenantCodes(wire) = &s.raw.kind else {
            panic!()
        };
        assert!(wire.mapping_csv.is_none());
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
