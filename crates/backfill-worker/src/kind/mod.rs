//! The job kinds, one file each: its wire form (a serde struct with `deny_unknown_fields`), its
//! checked form implementing [`JobKind`] (validation against the catalog, planning and chunk
//! statements, what happens once every chunk is done), and nothing else.
//!
//! This file is only the registry. A new kind (a `finalize` job, say) is a new file here plus
//! one line in each of [`KINDS`], [`KindSpec`], [`Kind`], [`KindSpec::from_fields`],
//! [`Kind::check`] and [`Kind::job`]; nothing outside `kind/` names a kind.

pub mod copy_to_tenant;
pub mod finalize;
pub mod job;
pub mod sql;
pub mod tenant_codes;

use serde::{Deserialize, Serialize};

pub use copy_to_tenant::{CopyJob, CopySpec};
pub use finalize::{FinalizeJob, FinalizeSpec};
pub use job::{
    CheckCtx, ChunkCall, ChunkOutcome, ChunkRunner, FinishCtx, Finished, JobKind, PlanCtx,
};
pub use sql::{SqlJob, SqlSpec};
pub use tenant_codes::{TenantCodesJob, TenantCodesSpec};

use crate::error::SpecError;
use crate::options::MappingSource;

/// Every accepted `kind`.
pub const KINDS: &[&str] = &["sql", "tenant_codes", "copy_to_tenant", "finalize"];

/// A spec's kind-specific fields as submitted and stored (`kind` is the tag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KindSpec {
    Sql(SqlSpec),
    TenantCodes(TenantCodesSpec),
    CopyToTenant(CopySpec),
    Finalize(FinalizeSpec),
}

impl KindSpec {
    /// The fields of a spec of `kind` that are its own (not the common options), for naming a
    /// field that belongs to another kind.
    pub fn fields(kind: &str) -> &'static [&'static str] {
        match kind {
            "sql" => sql::FIELDS,
            "tenant_codes" => tenant_codes::FIELDS,
            "copy_to_tenant" => copy_to_tenant::FIELDS,
            "finalize" => finalize::FIELDS,
            _ => &[],
        }
    }

    /// Deserializes the kind's own fields (`kind` already taken out), naming the field serde
    /// refuses. `None` for a kind that is not in [`KINDS`].
    pub fn from_fields(
        kind: &str,
        fields: serde_json::Value,
    ) -> Option<Result<KindSpec, serde_path_to_error::Error<serde_json::Error>>> {
        fn de<T: serde::de::DeserializeOwned>(
            v: serde_json::Value,
        ) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
            serde_path_to_error::deserialize(v)
        }
        Some(match kind {
            "sql" => de(fields).map(KindSpec::Sql),
            "tenant_codes" => de(fields).map(KindSpec::TenantCodes),
            "copy_to_tenant" => de(fields).map(KindSpec::CopyToTenant),
            "finalize" => de(fields).map(KindSpec::Finalize),
            _ => return None,
        })
    }
}

/// A checked spec's kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Sql(SqlJob),
    TenantCodes(TenantCodesJob),
    CopyToTenant(CopyJob),
    Finalize(FinalizeJob),
}

impl Kind {
    /// Checks the wire form (a `tenant_codes` mapping is taken out of it: it is stored apart).
    pub fn check(
        wire: &mut KindSpec,
        allow_sql: bool,
        source: MappingSource,
    ) -> Result<Kind, SpecError> {
        Ok(match wire {
            KindSpec::Sql(s) => Kind::Sql(SqlJob::check(s, allow_sql)?),
            KindSpec::TenantCodes(t) => Kind::TenantCodes(TenantCodesJob::check(t, source)?),
            KindSpec::CopyToTenant(c) => Kind::CopyToTenant(CopyJob::check(c)?),
            KindSpec::Finalize(f) => Kind::Finalize(FinalizeJob::check(f)?),
        })
    }

    pub fn job(&self) -> &dyn JobKind {
        match self {
            Kind::Sql(k) => k,
            Kind::TenantCodes(k) => k,
            Kind::CopyToTenant(k) => k,
            Kind::Finalize(k) => k,
        }
    }

    pub fn name(&self) -> &'static str {
        self.job().name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field lists name exactly what serde accepts, and every kind is registered.
    #[test]
    fn field_lists_match_the_wire_structs() {
        for kind in KINDS {
            let fields = KindSpec::fields(kind);
            assert!(!fields.is_empty(), "{kind}");
            let Some(Err(e)) = KindSpec::from_fields(kind, serde_json::json!({"nope": 1})) else {
                panic!("{kind}: an unknown field must be refused")
            };
            let msg = e.into_inner().to_string();
            for f in fields {
                assert!(msg.contains(&format!("`{f}`")), "{kind}: {f} in {msg}");
            }
            assert_eq!(
                msg.matches('`').count(),
                2 * (fields.len() + 1),
                "{kind}: {msg}"
            );
        }
    }
}
