//! `finalize`: the finalize steps (NOT NULL, primary keys with `tenant_code`, tenant-aware
//! foreign keys, indexes, Citus) on tables filled earlier, as a job of its own
//! (docs/backfill.md#finalize). It has no chunks: once planned it goes straight to its
//! finalize, which [`crate::finalize`] runs.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::job::{CheckCtx, JobKind, PlanCtx};
use super::tenant_codes::{SEED_ORG_TABLES, SEED_USER_TABLES};
use crate::error::SpecError;
use crate::finalize::job::FinalizePlan;
use crate::finalize::spec::{self as fspec, TableSpec};
use crate::ident::Ident;
use crate::plan::Plan;
use crate::validate::{refused, ValidateError};

/// The wire form of a `finalize` spec's own fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalizeSpec {
    /// Default: the 23 tables of the `tenant_codes` defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<TableSpec>>,
    /// `true` (default), or an object picking steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<serde_json::Value>,
}

pub const FIELDS: &[&str] = &["tables", "steps"];

#[derive(Debug, Clone, PartialEq)]
pub struct FinalizeJob {
    pub plan: FinalizePlan,
}

impl FinalizeJob {
    pub fn check(spec: &FinalizeSpec) -> Result<FinalizeJob, SpecError> {
        let steps =
            fspec::selection("steps", spec.steps.as_ref(), true).map_err(SpecError::Option)?;
        if steps.is_empty() {
            return Err(SpecError::Option("steps: no step selected".into()));
        }
        let defaults: Vec<(&str, &str)> = SEED_ORG_TABLES
            .iter()
            .map(|t| (*t, "id"))
            .chain(SEED_USER_TABLES.iter().map(|(t, k, _)| (*t, *k)))
            .collect();
        let tables = fspec::tables(spec.tables.as_deref(), &defaults)?;
        if let Some(e) = fspec::duplicate(&tables) {
            return Err(SpecError::Tables(e));
        }
        if tables.is_empty() {
            return Err(SpecError::Tables("finalize job: no tables".into()));
        }
        Ok(FinalizeJob {
            plan: FinalizePlan { tables, steps },
        })
    }

    /// Refused when finalize would refuse the tables as they are (NULL codes left, ...).
    async fn validate_inner(
        &self,
        con: &mut PgConnection,
        schema: &Ident,
    ) -> Result<(), ValidateError> {
        match fspec::check(con, schema, &self.plan).await? {
            Some(reason) => Err(refused(reason)),
            None => Ok(()),
        }
    }

    async fn plan_inner(
        &self,
        con: &mut PgConnection,
        ctx: PlanCtx<'_>,
    ) -> Result<Plan, ValidateError> {
        self.validate_inner(con, ctx.schema).await?;
        Ok(Plan::default())
    }
}

impl JobKind for FinalizeJob {
    fn name(&self) -> &'static str {
        "finalize"
    }

    fn validate<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: CheckCtx<'a>,
    ) -> BoxFuture<'a, Result<(), ValidateError>> {
        Box::pin(self.validate_inner(con, ctx.schema))
    }

    fn plan<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: PlanCtx<'a>,
    ) -> BoxFuture<'a, Result<Plan, ValidateError>> {
        Box::pin(self.plan_inner(con, ctx))
    }

    fn finalize_plan(&self) -> Option<FinalizePlan> {
        Some(self.plan.clone())
    }
}
