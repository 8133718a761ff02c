//! Purging archived tenants: dropping the archived schema and deleting the registry row and its
//! configs, one tenant per transaction under its lock, with an audit row each.
//!
//! Reached three ways: `tenant.deleted {mode: "purge", tenant_id}` (the provisioner), the
//! scheduler's built-in purge task (which publishes exactly that event for every tenant archived
//! longer than `[provisioner] purge_after`), and `fleetctl tenants purge --older-than 30d`, which
//! calls [`purge_older_than`] directly so an operator can purge without a running provisioner.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_shared::Code;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{begin, finish, AuditRow, Begun, Cause, LifecycleError, Tenant, TENANT_COLUMNS};
use fleet_shared::databases::{DatabasePools, CONTROL};

/// Postgres truncates identifiers longer than this many bytes.
pub const MAX_IDENT: usize = 63;

/// A schema name the registry holds, checked before it is spliced (quoted) into DDL.
pub fn checked_ident(schema: &str) -> Result<&str, LifecycleError> {
    let ok = !schema.is_empty()
        && schema.len() <= MAX_IDENT
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(schema)
    } else {
        Err(LifecycleError::NotAllowed(format!(
            "the registry holds schema name {schema:?}, which is not a plain identifier; refusing to touch it"
        )))
    }
}

/// Drops `schema` (a checked identifier) and everything in it, if it exists.
pub async fn drop_schema(con: &mut PgConnection, schema: &str) -> Result<(), LifecycleError> {
    let schema = checked_ident(schema)?;
    fleet_shared::migrate::exec_simple(
        &mut *con,
        &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
    )
    .await
    .map_err(LifecycleError::db("drop the tenant's schema"))
}

/// The pool of a tenant's database (`control` is the control plane's own).
pub fn tenant_pool(pools: &DatabasePools, database: &str) -> Result<PgPool, LifecycleError> {
    pools
        .get(database)
        .map_err(|e| LifecycleError::NotAllowed(format!("the tenant's database: {e}")))
}

/// Drops `schema` on a tenant database other than the control plane's, in a transaction of its
/// own under the tenant's lock there, committed before the registry changes: `IF EXISTS` makes
/// a redelivery after a crash between the two a no-op here.
pub async fn drop_schema_on(
    pools: &DatabasePools,
    database: &str,
    code: &str,
    schema: &str,
) -> Result<(), LifecycleError> {
    let pool = tenant_pool(pools, database)?;
    let mut tx = pool.begin().await.map_err(LifecycleError::db(
        "begin a transaction on the tenant database",
    ))?;
    crate::tenant_lock::lock_tenant(&mut tx, code).await?;
    drop_schema(&mut tx, schema).await?;
    tx.commit()
        .await
        .map_err(LifecycleError::db("commit the drop on the tenant database"))
}

/// Renames `schema` to `archived` on a tenant database other than the control plane's, in its
/// own transaction before the registry changes. Idempotent: when only `archived` exists, an
/// earlier delivery did it; when neither does, there is nothing to rename.
pub async fn archive_schema_on(
    pools: &DatabasePools,
    database: &str,
    code: &str,
    schema: &str,
    archived: &str,
) -> Result<(), LifecycleError> {
    let (schema, archived) = (checked_ident(schema)?, checked_ident(archived)?);
    let pool = tenant_pool(pools, database)?;
    let mut tx = pool.begin().await.map_err(LifecycleError::db(
        "begin a transaction on the tenant database",
    ))?;
    crate::tenant_lock::lock_tenant(&mut tx, code).await?;
    let exists = |name: &str| {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        )
        .bind(name.to_owned())
    };
    let live = exists(schema)
        .fetch_one(&mut *tx)
        .await
        .map_err(LifecycleError::db("look up a schema"))?;
    let done = exists(archived)
        .fetch_one(&mut *tx)
        .await
        .map_err(LifecycleError::db("look up a schema"))?;
    match (live, done) {
        (true, false) => {
            fleet_shared::migrate::exec_simple(
                &mut tx,
                &format!("ALTER SCHEMA \"{schema}\" RENAME TO \"{archived}\""),
            )
            .await
            .map_err(LifecycleError::db("rename the schema to its archive name"))?;
        }
        (true, true) => {
            return Err(LifecycleError::NotAllowed(format!(
                "both {schema} and {archived} exist on database {database}; refusing to archive over an archive"
            )))
        }
        _ => {}
    }
    tx.commit().await.map_err(LifecycleError::db(
        "commit the archive on the tenant database",
    ))
}

/// Drops what holds tenant `t`'s data, wherever the registry says it is: its own database
/// (`DROP DATABASE … WITH (FORCE)`, see [`crate::own_db`]), its schema on another database (in a
/// transaction there, committed first), or its schema here in `con`'s transaction. Each is
/// idempotent, so a redelivery after a crash before the registry changed finds nothing to drop.
pub async fn drop_storage(
    pools: &DatabasePools,
    con: &mut PgConnection,
    t: &Tenant,
) -> Result<(), LifecycleError> {
    match (&t.own_database, t.database == CONTROL) {
        (Some(own), _) => Ok(crate::own_db::purge(pools, &t.database, own, t.tenant_id).await?),
        (None, true) => drop_schema(con, &t.schema_name).await,
        (None, false) => drop_schema_on(pools, &t.database, &t.code, &t.schema_name).await,
    }
}

/// Deletes the registry row and (by cascade) its configs.
pub async fn purge_rows(con: &mut PgConnection, tenant_id: Uuid) -> Result<(), LifecycleError> {
    sqlx::query("DELETE FROM fleet.tenants WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(&mut *con)
        .await
        .map_err(LifecycleError::db("delete the tenant row"))?;
    Ok(())
}

/// An archived tenant due for purging.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Archived {
    pub tenant_id: Uuid,
    pub code: String,
    pub schema_name: String,
    pub deleted_at: DateTime<Utc>,
}
fleet_shared::from_row!(Archived {
    tenant_id,
    code,
    schema_name,
    deleted_at
});

/// Archived tenants deleted more than `older_than` ago, oldest first.
pub async fn due(pg: &PgPool, older_than: Duration) -> Result<Vec<Archived>, LifecycleError> {
    sqlx::query_as(
        "SELECT tenant_id, code, schema_name, deleted_at FROM fleet.tenants
          WHERE status = 'deleted' AND deleted_at < now() - make_interval(secs => $1)
          ORDER BY deleted_at",
    )
    .bind(older_than.as_secs_f64())
    .fetch_all(pg)
    .await
    .map_err(LifecycleError::db("list archived tenants"))
}

/// Purges one archived tenant by id; `None` when it is gone already or no longer archived.
pub async fn purge_archived(
    pools: &DatabasePools,
    cause: &Cause,
    tenant_id: Uuid,
    code: &Code,
) -> Result<Option<AuditRow>, LifecycleError> {
    let mut tx = match begin(pools.control(), code.as_str(), cause).await? {
        Begun::Fresh(tx) => tx,
        Begun::Repeat(_) => return Ok(None),
    };
    let t: Option<Tenant> = sqlx::query_as(&format!(
        "SELECT {TENANT_COLUMNS} FROM fleet.tenants WHERE tenant_id = $1 AND status = 'deleted' FOR UPDATE"
    ))
    .bind(tenant_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(LifecycleError::db("read the tenant registry"))?;
    let Some(t) = t else {
        return Ok(None);
    };
    drop_storage(pools, &mut tx, &t).await?;
    purge_rows(&mut tx, t.tenant_id).await?;
    let after = Tenant {
        status: "purged".into(),
        ..t.clone()
    };
    let row = finish(
        tx,
        cause,
        &after,
        json!({ "status": "deleted", "schema": t.schema_name }),
        json!({ "status": "purged", "mode": "purge", "schema": null }),
    )
    .await?;
    Ok(Some(row))
}

/// Purges every tenant archived longer than `older_than`, one transaction each; `progress` is
/// called after each. Stops at the first failure (what is purged stays purged).
pub async fn purge_older_than(
    pools: &DatabasePools,
    actor: &str,
    older_than: Duration,
    mut progress: impl FnMut(&Archived, &AuditRow),
) -> Result<Vec<AuditRow>, LifecycleError> {
    let mut done = Vec::new();
    for a in due(pools.control(), older_than).await? {
        let code = Code::parse(&a.code).map_err(|e| {
            LifecycleError::NotAllowed(format!("the registry holds a bad code: {e}"))
        })?;
        let cause = Cause::direct("fleetctl.tenants.purge", actor);
        if let Some(row) = purge_archived(pools, &cause, a.tenant_id, &code).await? {
            progress(&a, &row);
            done.push(row);
        }
    }
    Ok(done)
}
