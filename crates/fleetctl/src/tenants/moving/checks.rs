//! What must hold before a move starts; each refusal is one line and nothing is done:
//!
//! - the target is a configured database, a tenant home, not the tenant's own database, and
//!   neither side keeps a database per tenant (`isolation = "database"` is not moved by schema);
//! - the tenant exists and is `active`;
//! - the source server has `wal_level = logical` (logical replication needs it);
//! - the schema exists on the source and not on the target;
//! - every table can be replicated: it is logged (logical replication skips unlogged tables,
//!   whose rows would be missing on the target), and it has a primary key or a replica identity
//!   (without one, the source itself would refuse the tenant's updates and deletes once it is
//!   published);
//! - no `copy_to_tenant` backfill job of the tenant is pending, running or paused (checked under
//!   the tenant's lock when the move is recorded): it writes to the tenant's schema on the
//!   database it planned for, and may create tables there, which the subscription cannot carry.
//!
//! Not a refusal, a warning: a source server with `max_slot_wal_keep_size = -1` keeps WAL for
//! the move's slot without limit while the move is stopped or stuck.

use anyhow::Context as _;
use fleet_shared::databases::{DatabaseConfig, Isolation};
use fleet_shared::{Code, Settings};
use sqlx::PgPool;
use uuid::Uuid;

use super::sides::{schema_comment, Sides};

/// The registry row of the tenant being moved.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub tenant_id: Uuid,
    pub code: String,
    pub status: String,
    pub database: String,
    pub schema_name: String,
}
fleet_shared::from_row!(Tenant {
    tenant_id,
    code,
    status,
    database,
    schema_name
});

/// The live tenant with `code`.
pub async fn tenant(pg: &PgPool, code: &Code) -> anyhow::Result<Tenant> {
    sqlx::query_as(
        "SELECT tenant_id, code, status, database, schema_name FROM fleet.tenants
          WHERE code = $1 AND status <> 'deleted'",
    )
    .bind(code.as_str())
    .fetch_optional(pg)
    .await
    .context("Failed to read fleet.tenants")?
    .with_context(|| format!("no tenant with code {code}"))
}

/// The source and target configurations of moving `t` to `to`.
pub fn databases(
    settings: &Settings,
    t: &Tenant,
    to: &str,
) -> anyhow::Result<(DatabaseConfig, DatabaseConfig)> {
    let target = settings.databases.get(to)?.clone();
    anyhow::ensure!(
        t.database != target.name.as_str(),
        "tenant {} is already on database {to}",
        t.code
    );
    anyhow::ensure!(
        target.tenants,
        "database {to} is not a tenant home (set tenants = true in [databases.{to}])"
    );
    let source = settings
        .databases
        .get(&t.database)
        .with_context(|| format!("tenant {} is on database {}", t.code, t.database))?
        .clone();
    for d in [&source, &target] {
        anyhow::ensure!(
            d.isolation == Isolation::Schema,
            "database {} keeps a database per tenant (isolation = \"database\"); a move copies a schema between schema-isolated homes only",
            d.name
        );
    }
    Ok((source, target))
}

/// The tenant's status allows starting a move.
pub fn active(t: &Tenant) -> anyhow::Result<()> {
    anyhow::ensure!(
        t.status == "active",
        "tenant {} is {}; only an active tenant can be moved",
        t.code,
        t.status
    );
    anyhow::ensure!(
        t.schema_name == format!("tenant_{}", t.code),
        "tenant {}'s schema is {}, not tenant_{}; only a schema named for its tenant is moved",
        t.code,
        t.schema_name,
        t.code
    );
    Ok(())
}

/// The checks on the two servers (see the module docs).
pub async fn servers(s: &Sides) -> anyhow::Result<()> {
    let wal_level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&s.source_pg)
        .await
        .with_context(|| format!("cannot reach database {} (the source)", s.source.name))?;
    anyhow::ensure!(
        wal_level == "logical",
        "database {} (the source) has wal_level = {wal_level}; a move streams the tenant with logical replication, which needs wal_level = logical on the source server (ALTER SYSTEM SET wal_level = logical, then restart it)",
        s.source.name
    );
    anyhow::ensure!(
        super::sides::schema_exists(&s.source_pg, &s.schema).await?,
        "schema {} does not exist on database {}",
        s.schema,
        s.source.name
    );
    let on_target = schema_comment(&s.target_pg, &s.schema)
        .await
        .with_context(|| format!("cannot reach database {} (the target)", s.target.name))?;
    anyhow::ensure!(
        on_target.is_none(),
        "schema {} already exists on database {}; drop or rename it there first",
        s.schema,
        s.target.name
    );
    let unlogged: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relpersistence = 'u'
          ORDER BY 1",
    )
    .bind(&s.schema)
    .fetch_all(&s.source_pg)
    .await
    .context("Failed to read the tables' persistence")?;
    anyhow::ensure!(
        unlogged.is_empty(),
        "table(s) {} of {} are unlogged, and logical replication does not carry unlogged tables (make them logged with ALTER TABLE … SET LOGGED, or drop them)",
        unlogged.join(", "),
        s.schema
    );
    let unreplicable: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind = 'r'
            AND (c.relreplident = 'n'
                 OR (c.relreplident = 'd' AND NOT EXISTS
                       (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
          ORDER BY 1",
    )
    .bind(&s.schema)
    .fetch_all(&s.source_pg)
    .await
    .context("Failed to read the tables' replica identities")?;
    anyhow::ensure!(
        unreplicable.is_empty(),
        "table(s) {} of {} have no primary key or replica identity, so logical replication cannot move them (add a primary key, or ALTER TABLE … REPLICA IDENTITY FULL)",
        unreplicable.join(", "),
        s.schema
    );
    Ok(())
}

/// A warning when the source server keeps WAL for a replication slot without limit
/// (`max_slot_wal_keep_size = -1`, the default): a move stopped at `--until copied` or stuck
/// keeps the source's WAL growing until it continues or is aborted.
pub async fn wal_warning(s: &Sides) -> anyhow::Result<Option<String>> {
    let keep: String = sqlx::query_scalar("SELECT current_setting('max_slot_wal_keep_size')")
        .fetch_one(&s.source_pg)
        .await
        .context("Failed to read max_slot_wal_keep_size")?;
    Ok((keep == "-1").then(|| {
        format!(
            "warning: database {}'s server has max_slot_wal_keep_size = -1: while this move is stopped or stuck, its replication slot keeps the server's WAL without limit; finish or --abort it soon, or set a limit",
            s.source.name
        )
    }))
}

/// Refuses while a `copy_to_tenant` backfill job of `code` is not finished (call under the
/// tenant's lock).
pub async fn no_copy_job(con: &mut sqlx::PgConnection, code: &Code) -> anyhow::Result<()> {
    let job: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT job_id, state FROM fleet.backfill_jobs
          WHERE kind = 'copy_to_tenant' AND state IN ('pending', 'running', 'paused')
            AND spec->>'tenant_code' = $1
          ORDER BY created_at LIMIT 1",
    )
    .bind(code.as_str())
    .fetch_optional(&mut *con)
    .await
    .context("Failed to read fleet.backfill_jobs")?;
    if let Some((job_id, state)) = job {
        anyhow::bail!(
            "tenant {code} has copy_to_tenant backfill job {job_id} {state}; a move waits until it has finished (or cancel it with fleetctl backfill cancel {job_id})"
        );
    }
    Ok(())
}
