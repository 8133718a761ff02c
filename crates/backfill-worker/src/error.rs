//! Why a job spec is refused before any database is asked. Every message is one line that says
//! what to fix; parsing (the spec, its options) and each kind's own checks return these.

use crate::ident::BadIdent;
use crate::mapping::MappingError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("job spec is not valid JSON: {0}")]
    Json(String),
    /// The kind as given (quoted) and the accepted ones.
    #[error("unknown kind {kind} (accepted: {accepted})")]
    UnknownKind { kind: String, accepted: String },
    #[error("{kind} job: missing field {field:?}")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{kind} job: field {field:?} does not apply to this kind")]
    NotForKind { kind: &'static str, field: String },
    /// A field serde refused (unknown, missing, or of the wrong type), named.
    #[error("{kind} job: {problem}")]
    Field { kind: String, problem: String },
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
