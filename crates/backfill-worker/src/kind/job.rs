//! What a job kind is to the rest of the worker: [`JobKind`], the one trait the runner, the
//! submit path and the planner call. Everything a kind means (its checks against the catalog,
//! its plan and chunk statements, its work once every chunk is done) lives in the kind's own
//! file next to this one.

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::ident::{qualified, Ident};
use crate::options::Effective;
use crate::plan::Plan;
use crate::target::TargetAccess;
use crate::validate::ValidateError;

/// What planning needs besides the spec.
pub struct PlanCtx<'a> {
    pub job_id: Uuid,
    pub schema: &'a Ident,
    pub eff: &'a Effective,
    /// Where the target database holds a `tenant_codes` job's mapping.
    pub map_table: &'a str,
}

/// A job whose chunks are all finished, as the kind's [`JobKind::finish`] sees it.
pub struct FinishCtx<'a> {
    pub schema: &'a Ident,
    pub dry_run: bool,
    /// The report as planned (or as a previous finish left it).
    pub report: Option<serde_json::Value>,
    /// Rows the committed chunks wrote (a dry run: counted), per part name.
    pub rows_per_part: Vec<(String, i64)>,
    /// Why the job fails so far (failed chunks), if it does.
    pub error: Option<String>,
}

/// What [`JobKind::finish`] decided: the job's final report, and its error (`failed`) if any.
pub struct Finished {
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// One job kind (see the module docs). Methods return boxed futures so `&dyn JobKind` works.
pub trait JobKind: Send + Sync {
    /// The `kind` of the spec, also stored in `fleet.backfill_jobs.kind`.
    fn name(&self) -> &'static str;

    /// Whether the kind runs operator-written SQL (`FLEET_BACKFILL_ALLOW_SQL=1` required).
    fn runs_operator_sql(&self) -> bool {
        false
    }

    /// Checks the spec against the catalog of the database `con` is connected to (at submit,
    /// and again at planning).
    fn validate<'a>(
        &'a self,
        con: &'a mut PgConnection,
        schema: &'a Ident,
    ) -> BoxFuture<'a, Result<(), ValidateError>>;

    /// Stores what the job needs besides its spec, in the submit's transaction on the
    /// control plane (a `tenant_codes` mapping).
    fn store<'a>(
        &'a self,
        _tx: &'a mut PgConnection,
        _job_id: Uuid,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// On a target other than the control plane, before planning and in the planning
    /// transaction there: copies what the chunk statements join (idempotent).
    fn prepare_target<'a>(
        &'a self,
        _control: &'a PgPool,
        _con: &'a mut PgConnection,
        _job_id: Uuid,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Re-validates and builds the parts (see [`crate::plan`]). `Refused` fails the job.
    fn plan<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: PlanCtx<'a>,
    ) -> BoxFuture<'a, Result<Plan, ValidateError>>;

    /// The `search_path` a chunk transaction sets, if the statements rely on one.
    fn search_path(&self, _schema: &Ident) -> Option<String> {
        None
    }

    /// The tables a part writes, qualified and quoted (what the health check watches).
    fn watched_tables(&self, schema: &Ident, part: &Ident) -> Vec<String> {
        vec![qualified(schema, part)]
    }

    /// What finalize runs once [`JobKind::finish`] found nothing wrong (docs/backfill.md#finalize):
    /// the runner then runs it outside the job row's lock (see [`crate::finalize::job`]).
    fn finalize_plan(&self) -> Option<crate::finalize::job::FinalizePlan> {
        None
    }

    /// Once every chunk is finished, under the job row's lock: the kind's last word on the
    /// job (a `tenant_codes` verification; where a `finalize` step plugs in). `target` is the
    /// job's database, on a connection without statement timeout.
    fn finish<'a>(
        &'a self,
        _target: &'a mut TargetAccess<'_>,
        ctx: FinishCtx<'a>,
    ) -> BoxFuture<'a, sqlx::Result<Finished>> {
        Box::pin(async move {
            Ok(Finished {
                report: ctx.report,
                error: ctx.error,
            })
        })
    }
}
