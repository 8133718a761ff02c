//! What a job kind is to the rest of the worker: [`JobKind`], the one trait the runner, the
//! submit path and the planner call. Everything a kind means (its checks against the catalog,
//! its plan and chunk statements, its work once every chunk is done) lives in the kind's own
//! file next to this one.

use std::sync::Arc;

use fleet_shared::databases::DatabasePools;
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::ident::{qualified, Ident};
use crate::options::Effective;
use crate::plan::Plan;
use crate::target::{Target, TargetAccess};
use crate::validate::ValidateError;

/// What validation needs besides the spec and a connection to the job's database.
#[derive(Clone, Copy)]
pub struct CheckCtx<'a> {
    pub schema: &'a Ident,
    /// The job's database (the one the connection is to).
    pub database: &'a fleet_shared::Name,
    /// Every configured database (the control plane's registry among them).
    pub pools: &'a DatabasePools,
}

/// What planning needs besides the spec.
pub struct PlanCtx<'a> {
    pub job_id: Uuid,
    pub schema: &'a Ident,
    pub eff: &'a Effective,
    /// Where the target database holds a `tenant_codes` job's mapping.
    pub map_table: &'a str,
    /// Every configured database (the control plane's registry among them).
    pub pools: &'a DatabasePools,
    /// The job's own database (the one `con` is connected to).
    pub target: &'a Target,
}

/// One claimed chunk, for a kind that runs its chunks itself ([`ChunkRunner`]).
pub struct ChunkCall<'a> {
    pub job_id: Uuid,
    pub chunk_id: i64,
    pub lo: i64,
    pub hi: i64,
    /// The part's planned statement (what the kind stored at planning).
    pub statement: &'a str,
    /// `SET LOCAL` statements (timeouts) for every transaction of the chunk.
    pub settings: &'a [String],
}

/// What a chunk did once its effect committed (or did not: `Unsettled` rolled it all back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Committed with this many rows; the runner records the checkpoint.
    Done { rows: i64 },
    /// It had committed before (a crash came before its checkpoint): recorded, not run again.
    Recorded { rows: i64 },
    /// Nothing committed: up to 10 keys of rows the target holds differently, and the count.
    Unsettled { keys: Vec<i64>, total: i64 },
    /// Nothing done: the chunk has to wait (the job shows `throttled: <reason>`) and is
    /// claimed again later.
    Held { reason: String },
    /// Nothing done, and the job cannot go on as it was planned: it fails with the reason.
    Replan { reason: String },
}

/// Runs chunks whose effect is not one statement on the job's database: the kind owns how the
/// effect happens exactly once (see `copy_to_tenant`); the runner still claims the chunk,
/// paces it, splits it on timeouts and records its checkpoint.
pub trait ChunkRunner: Send + Sync {
    fn run<'a>(&'a self, call: ChunkCall<'a>) -> BoxFuture<'a, sqlx::Result<ChunkOutcome>>;
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
        ctx: CheckCtx<'a>,
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

    /// For parts planned with mode `copy`: the kind's own chunk runner, on the job's database
    /// `source` and the other configured databases.
    fn chunk_runner(
        &self,
        _pools: &DatabasePools,
        _source: &Target,
    ) -> Option<Arc<dyn ChunkRunner>> {
        None
    }

    /// Databases besides the job's own that its chunks write to, whose health the throttle
    /// also reads (`copy_to_tenant`: the tenant's, when it lives elsewhere).
    fn written_databases<'a>(
        &'a self,
        _pools: &'a DatabasePools,
        _job_db: &'a fleet_shared::Name,
    ) -> BoxFuture<'a, Vec<PgPool>> {
        Box::pin(async { Vec::new() })
    }

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
