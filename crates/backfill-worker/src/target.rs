//! The database a job works on, and how a chunk's effect is recorded there exactly once.
//!
//! Jobs, parts and chunks always live in the control plane (`fleet.backfill_*` on
//! `DATABASE_URL`). A job's statements run on its `database` (a `[databases.<name>]` entry, see
//! [docs/backfill.md](../../../docs/backfill.md#named-databases)); by default the control-plane
//! database itself.
//!
//! **Same database**: a chunk's statement and its checkpoint (chunk → `done`) commit in one
//! transaction, as they always did.
//!
//! **Another database**: one transaction cannot span two databases, so the checkpoint is written
//! twice, in a fixed order:
//! 1. the lane claims the chunk in the control plane (`FOR UPDATE SKIP LOCKED`, held open);
//! 2. on the target it runs the chunk's statement **and** inserts the chunk's marker
//!    (`fleet_backfill.chunk_marks`, primary key `(job_id, chunk_id)`) in one transaction, and
//!    commits it;
//! 3. it marks the chunk `done` in the control plane and commits.
//!
//! A crash before 2 commits loses both the effect and the marker; a crash between 2 and 3 leaves
//! the effect with its marker and the chunk `pending`: whoever claims the chunk next finds the
//! marker inside its own target transaction and only records the chunk as done, with the rows
//! the marker holds, without running the statement again. The marker's primary key makes a
//! second run impossible even if two claimers somehow raced. So every chunk's effect happens
//! exactly once on the target, whatever dies when.
//!
//! The target gets only the small `fleet_backfill` schema (markers, and a copy of a
//! `tenant_codes` job's mapping that its fill statements join); the control plane is never
//! created there.

use fleet_shared::databases::{DatabasePools, UnknownDatabase};
use fleet_shared::Name;
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

/// Advisory lock serializing the creation of `fleet_backfill` on a target.
const SCHEMA_LOCK: i64 = 0x666c_6565_7402;

/// A job's target database.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: Name,
    pub pool: PgPool,
    /// The control-plane database: one transaction holds effect and checkpoint.
    pub is_control: bool,
}

impl Target {
    pub fn resolve(pools: &DatabasePools, name: &Name) -> Result<Target, UnknownDatabase> {
        let db = pools.databases().get(name.as_str())?;
        Ok(Target {
            name: db.name.clone(),
            pool: pools.get(name.as_str())?,
            is_control: db.is_control(),
        })
    }

    /// The table a `tenant_codes` job's mapping is joined from, on this target.
    pub fn map_table(&self) -> &'static str {
        if self.is_control {
            "fleet.backfill_org_map"
        } else {
            "fleet_backfill.org_map"
        }
    }
}

/// The job's database while the job finishes: the control plane's own transaction (the one
/// that holds the job row) when it is the target, else a connection from the target's pool
/// taken on first use; either way without a statement timeout (a verification scans whole
/// tables).
pub struct TargetAccess<'a> {
    control_tx: &'a mut PgConnection,
    target: &'a Target,
    held: Option<PoolConnection<Postgres>>,
    untimed: bool,
}

impl<'a> TargetAccess<'a> {
    pub fn new(control_tx: &'a mut PgConnection, target: &'a Target) -> Self {
        TargetAccess {
            control_tx,
            target,
            held: None,
            untimed: false,
        }
    }

    pub async fn con(&mut self) -> sqlx::Result<&mut PgConnection> {
        if self.target.is_control {
            if !self.untimed {
                sqlx::query("SET LOCAL statement_timeout = 0")
                    .execute(&mut *self.control_tx)
                    .await?;
                self.untimed = true;
            }
            return Ok(&mut *self.control_tx);
        }
        let con = match &mut self.held {
            Some(c) => c,
            held @ None => {
                let mut c = self.target.pool.acquire().await?;
                sqlx::query("SET statement_timeout = 0")
                    .execute(&mut *c)
                    .await?;
                held.insert(c)
            }
        };
        Ok(&mut **con)
    }

    /// Gives a target connection back with its usual statement timeout.
    pub async fn release(self) {
        if let Some(mut c) = self.held {
            let _ = sqlx::query("RESET statement_timeout")
                .execute(&mut *c)
                .await;
        }
    }
}

/// Creates `fleet_backfill` on a target (idempotent, serialized across replicas).
pub fn ensure_schema(con: &mut PgConnection) -> BoxFuture<'_, sqlx::Result<()>> {
    Box::pin(ensure_schema_inner(con))
}

async fn ensure_schema_inner(con: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *con)
        .await?;
    for ddl in [
        "CREATE SCHEMA IF NOT EXISTS fleet_backfill",
        "CREATE TABLE IF NOT EXISTS fleet_backfill.chunk_marks (
             job_id   uuid NOT NULL,
             chunk_id bigint NOT NULL,
             lo       bigint NOT NULL,
             hi       bigint NOT NULL,
             rows     bigint NOT NULL,
             done_at  timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (job_id, chunk_id))",
        "CREATE TABLE IF NOT EXISTS fleet_backfill.org_map (
             job_id            uuid NOT NULL,
             organization_id   text NOT NULL,
             organization_code text NOT NULL,
             tenant_code       text NOT NULL,
             PRIMARY KEY (job_id, organization_id))",
    ] {
        sqlx::query(ddl).execute(&mut *con).await?;
    }
    Ok(())
}

/// Copies a job's mapping from the control plane into the target (idempotent).
pub fn copy_mapping<'a>(
    control: &'a PgPool,
    target: &'a mut PgConnection,
    job_id: Uuid,
) -> BoxFuture<'a, sqlx::Result<()>> {
    Box::pin(copy_mapping_inner(control, target, job_id))
}

async fn copy_mapping_inner(
    control: &PgPool,
    target: &mut PgConnection,
    job_id: Uuid,
) -> sqlx::Result<()> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT organization_id, organization_code, tenant_code FROM fleet.backfill_org_map WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_all(control)
    .await?;
    let (ids, orgs, tenants) = org_map_arrays(rows);
    sqlx::query(
        "INSERT INTO fleet_backfill.org_map (job_id, organization_id, organization_code, tenant_code)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(&ids)
    .bind(&orgs)
    .bind(&tenants)
    .execute(&mut *target)
    .await?;
    Ok(())
}

/// Org-map rows `(organization_id, organization_code, tenant_code)` as the three arrays the
/// inserts hand to `unnest($2::text[], $3::text[], $4::text[])`, in the same order.
pub(crate) fn org_map_arrays<S>(
    rows: impl IntoIterator<Item = (S, S, S)>,
) -> (Vec<S>, Vec<S>, Vec<S>) {
    let (mut ids, mut orgs, mut tenants) = (Vec::new(), Vec::new(), Vec::new());
    for (id, org, tenant) in rows {
        ids.push(id);
        orgs.push(org);
        tenants.push(tenant);
    }
    (ids, orgs, tenants)
}

/// The rows a chunk recorded on the target, if its effect already committed there.
pub fn marker(
    con: &mut PgConnection,
    job_id: Uuid,
    chunk_id: i64,
) -> BoxFuture<'_, sqlx::Result<Option<i64>>> {
    Box::pin(marker_inner(con, job_id, chunk_id))
}

async fn marker_inner(
    con: &mut PgConnection,
    job_id: Uuid,
    chunk_id: i64,
) -> sqlx::Result<Option<i64>> {
    // The schema may not exist yet on a target planned by an older worker: no marker then.
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('fleet_backfill.chunk_marks') IS NOT NULL")
            .fetch_one(&mut *con)
            .await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar(
        "SELECT rows FROM fleet_backfill.chunk_marks WHERE job_id = $1 AND chunk_id = $2",
    )
    .bind(job_id)
    .bind(chunk_id)
    .fetch_optional(&mut *con)
    .await
}

/// Records a chunk's effect on the target, in the chunk's own transaction.
pub fn mark(
    con: &mut PgConnection,
    job_id: Uuid,
    chunk_id: i64,
    lo: i64,
    hi: i64,
    rows: i64,
) -> BoxFuture<'_, sqlx::Result<()>> {
    Box::pin(mark_inner(con, job_id, chunk_id, lo, hi, rows))
}

async fn mark_inner(
    con: &mut PgConnection,
    job_id: Uuid,
    chunk_id: i64,
    lo: i64,
    hi: i64,
    rows: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO fleet_backfill.chunk_marks (job_id, chunk_id, lo, hi, rows) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(job_id)
    .bind(chunk_id)
    .bind(lo)
    .bind(hi)
    .bind(rows)
    .execute(&mut *con)
    .await?;
    Ok(())
}

/// Removes what a deleted job left on its target (markers, mapping copy).
pub async fn forget(pool: &PgPool, job_id: Uuid) -> sqlx::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('fleet_backfill.chunk_marks') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if exists {
        sqlx::query("DELETE FROM fleet_backfill.chunk_marks WHERE job_id = $1")
            .bind(job_id)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM fleet_backfill.org_map WHERE job_id = $1")
            .bind(job_id)
            .execute(pool)
            .await?;
    }
    Ok(())
}
