//! `tenant.deleted {code, mode: "archive" (default) | "purge", tenant_id?}`.
//!
//! **Archive** renames the schema out of the way (`archived_<code>_<UTC yyyymmddhhmmss>`, see
//! [`archive_schema_name`]), marks the tenant `deleted` and records when. Codes are unique only
//! among tenants that are not deleted, so the code is free at once for a new tenant, whose
//! `tenant_<code>` schema no longer collides; the archived row keeps its configs for an export
//! or an audit until it is purged. After commit the announcement `tenant.lifecycle.deleted`
//! carries the tenant's `org_code`, and the cache-invalidator clears that org's cache patterns.
//!
//! **Purge** of a live tenant drops its schema and deletes its registry row and configs in the
//! same single transaction (and is announced the same way). An archived tenant is purged by
//! naming it with `tenant_id` (its code may belong to a new tenant by now), or by
//! `fleetctl tenants purge --older-than` / the scheduler's purge task (see [`super::purge`]).
//! The audit trail is kept after a purge.
//!
//! A tenant with a database of its own (`isolation = "database"`) is archived by renaming that
//! database (to the archive name of [`remote_archive_name`]) and purged by dropping it; see
//! [`crate::own_db`].

use chrono::{DateTime, Utc};
use fleet_shared::events::{BadInput, DeleteMode, TenantDeleted, TENANT_DELETED};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::purge::{archive_schema_on, checked_ident, drop_storage, purge_rows, MAX_IDENT};
use super::{begin, finish, live_tenant, Begun, Cause, LifecycleError, Outcome};
use super::{Tenant, TENANT_COLUMNS};
use fleet_shared::databases::{DatabasePools, CONTROL};

/// `archived_<code>_<yyyymmddhhmmss>`, or, for a code too long for that to fit in 63 bytes,
/// `archived_<first 30 of code>_<first 8 hex of tenant_id>_<yyyymmddhhmmss>` (exactly 63).
pub fn archive_schema_name(code: &str, tenant_id: Uuid, at: DateTime<Utc>) -> String {
    let ts = at.format("%Y%m%d%H%M%S");
    let full = format!("archived_{code}_{ts}");
    if full.len() <= MAX_IDENT {
        return full;
    }
    hashed_name(code, tenant_id, at)
}

fn hashed_name(code: &str, tenant_id: Uuid, at: DateTime<Utc>) -> String {
    let ts = at.format("%Y%m%d%H%M%S");
    let short: String = code.chars().take(30).collect();
    let id = tenant_id.simple().to_string();
    format!("archived_{short}_{}_{ts}", &id[..8])
}

/// The archive name on a tenant database other than the control plane's:
/// `archived_<first 30 of code>_<first 16 hex of tenant_id>` (at most 56 bytes). It depends only on
/// the tenant, so the step that renames there and the registry update here always agree.
pub fn remote_archive_name(code: &str, tenant_id: Uuid) -> String {
    let short: String = code.chars().take(30).collect();
    let id = tenant_id.simple().to_string();
    format!("archived_{short}_{}", &id[..16])
}

/// Whether a schema exists.
pub async fn schema_exists(con: &mut PgConnection, schema: &str) -> Result<bool, LifecycleError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut *con)
        .await
        .map_err(LifecycleError::db("look up a schema"))
}

/// What an archive renamed, so the registry column that names it for a later purge.
#[derive(Clone, Copy)]
enum Archived {
    /// The tenant's schema (`schema_name`).
    Schema,
    /// The tenant's own database (`own_database`).
    OwnDatabase,
}

/// Marks the tenant `deleted`, with the name of its archive in the column of `what`.
async fn mark_archived(
    con: &mut PgConnection,
    tenant_id: Uuid,
    what: Archived,
    archived: &str,
) -> Result<Tenant, LifecycleError> {
    let column = match what {
        Archived::Schema => "schema_name",
        Archived::OwnDatabase => "own_database",
    };
    sqlx::query_as(&format!(
        "UPDATE fleet.tenants
            SET status = 'deleted', {column} = $2, deleted_at = now(), updated_at = now()
          WHERE tenant_id = $1
         RETURNING {TENANT_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(archived)
    .fetch_one(&mut *con)
    .await
    .map_err(LifecycleError::db("mark the tenant deleted"))
}

pub async fn delete(
    pools: &DatabasePools,
    cause: &Cause,
    req: &TenantDeleted,
) -> Result<Outcome, LifecycleError> {
    let code = req.code.as_str();
    let mut tx = match begin(pools.control(), code, cause).await? {
        Begun::Fresh(tx) => tx,
        Begun::Repeat(a) => return Ok(Outcome::Repeat(a)),
    };
    let t = match req.tenant_id {
        Some(id) => {
            let t: Tenant = sqlx::query_as(&format!(
                "SELECT {TENANT_COLUMNS} FROM fleet.tenants WHERE tenant_id = $1 FOR UPDATE"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(LifecycleError::db("read the tenant registry"))?
            .ok_or_else(|| {
                LifecycleError::NotAllowed(format!(
                    "{TENANT_DELETED}: no tenant with tenant_id {id} (already purged?)"
                ))
            })?;
            if t.code != code {
                return Err(BadInput::new(format!(
                    "{TENANT_DELETED}: tenant_id {id} has code {}, not {code}",
                    t.code
                ))
                .into());
            }
            t
        }
        None => live_tenant(&mut tx, TENANT_DELETED, code).await?,
    };
    if let Some(moving) = crate::moves::in_flight(&mut tx, t.tenant_id)
        .await
        .map_err(LifecycleError::db("read the tenant's moves"))?
    {
        return Err(LifecycleError::NotAllowed(format!(
            "{TENANT_DELETED}: tenant {} is {moving}",
            t.code
        )));
    }
    let schema = checked_ident(&t.schema_name)?.to_owned();
    // On another database the schema is renamed or dropped there first, in its own transaction
    // (idempotent, see purge.rs), then the registry changes here; the archive name there does
    // not depend on the time, so a redelivery after a crash in between finds what it renamed.
    let remote = t.database != CONTROL;

    let (after, old, new) = match (t.status.as_str(), req.mode) {
        ("deleted", DeleteMode::Archive) => {
            return Err(LifecycleError::NotAllowed(format!(
                "{TENANT_DELETED}: tenant {} ({}) is already archived as {schema}; purge it with mode \"purge\"",
                t.code, t.tenant_id
            )))
        }
        // A live tenant and an archived one (`deleted`) are purged alike.
        (_, DeleteMode::Purge) => {
            drop_storage(pools, &mut tx, &t).await?;
            purge_rows(&mut tx, t.tenant_id).await?;
            let after = Tenant {
                status: "purged".into(),
                ..t.clone()
            };
            let old = json!({ "status": t.status, "schema": schema });
            let new = json!({ "status": "purged", "mode": "purge", "schema": null });
            (after, old, new)
        }
        (_, DeleteMode::Archive) if t.own_database.is_some() => {
            // Its own database is renamed (the schema inside keeps its name); the registry then
            // names the archive, which is what a purge drops.
            let own = t.own_database.as_deref().unwrap_or_default();
            let archived = remote_archive_name(&t.code, t.tenant_id);
            crate::own_db::archive(pools, &t.database, own, &archived, t.tenant_id).await?;
            let after = mark_archived(&mut tx, t.tenant_id, Archived::OwnDatabase, &archived).await?;
            let old = json!({ "status": t.status, "schema": schema, "database": own });
            let new = json!({ "status": "deleted", "mode": "archive", "schema": schema, "database": archived });
            (after, old, new)
        }
        (_, DeleteMode::Archive) => {
            let now = Utc::now();
            let mut archived = archive_schema_name(&t.code, t.tenant_id, now);
            if remote {
                archived = remote_archive_name(&t.code, t.tenant_id);
                archive_schema_on(pools, &t.database, &t.code, &schema, &archived).await?;
            } else if schema_exists(&mut tx, &archived).await? {
                // The same code archived twice within a second: the id-qualified name is unique.
                archived = hashed_name(&t.code, t.tenant_id, now);
            }
            if !remote && schema_exists(&mut tx, &schema).await? {
                fleet_shared::migrate::exec_simple(
                    &mut tx,
                    &format!("ALTER SCHEMA \"{schema}\" RENAME TO \"{archived}\""),
                )
                .await
                .map_err(LifecycleError::db("rename the schema to its archive name"))?;
            }
            // Even without a schema the row takes the archive name, so that purging it later can
            // never drop the `tenant_<code>` schema of a new tenant with the same code.
            let after = mark_archived(&mut tx, t.tenant_id, Archived::Schema, &archived).await?;
            let old = json!({ "status": t.status, "schema": schema });
            let new = json!({ "status": "deleted", "mode": "archive", "schema": archived });
            (after, old, new)
        }
    };
    let row = finish(tx, cause, &after, old, new).await?;
    Ok(Outcome::Done(row))
}
