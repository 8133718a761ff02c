//! A database per tenant: `isolation = "database"` on a `[databases.<name>]` tenant home.
//!
//! The tenant gets a database of its own on that server, named like its schema
//! (`tenant_<code>`, a validated code, so a plain identifier of at most 55 bytes). Inside it the
//! tenant's tables live in the schema `tenant_<code>`, exactly as in a shared database: the
//! migrations, the ledger, `pg_dump -n`, the isolation check and an application's
//! `search_path` are the same whichever isolation a tenant has; only the connection differs.
//! The registry records the server in `fleet.tenants.database` and the database's name in
//! `fleet.tenants.own_database`.
//!
//! `CREATE DATABASE` cannot run in a transaction, so creating one is a sequence of steps, each
//! redone or skipped when a redelivery finds what an interrupted attempt left:
//!
//! 1. (control plane, by the caller) the registry row, `provisioning`, naming the server and the
//!    database, committed first;
//! 2. [`prepare`]: `CREATE DATABASE fleet_new_<32 hex of tenant_id>` (a staging name that only this
//!    tenant can have), then in one transaction there the marker table `public.fleet_tenant` with
//!    this tenant's id and every migration with its ledger, then
//!    `ALTER DATABASE fleet_new_… RENAME TO tenant_<code>`;
//! 3. (control plane, by the caller) configs, audit row, `active`.
//!
//! A redelivery after a crash anywhere in 2 finds either the staging database (ours by its name:
//! it is migrated, or finished migrating, and renamed) or `tenant_<code>` with our marker (only
//! the migration is checked); it never creates a second one. A `tenant_<code>` database without
//! our marker existed before this tenant was registered: it is refused (the caller removes the
//! registration and the staging database), as a foreign schema is in a shared database.
//!
//! Archive renames the database to `archived_<code>_<16 hex of tenant_id>`
//! ([`crate::lifecycle::delete::remote_archive_name`], a name that depends only on the tenant)
//! after closing the fleet's pool to it and terminating the sessions still connected (a rename
//! needs none); purge drops it with `DROP DATABASE … WITH (FORCE)`. Both are idempotent.

use fleet_shared::databases::DatabasePools;
use fleet_shared::migrate::{self, exec_simple, ApplyReport, Migration, Start};
use fleet_shared::retry::RetryPolicy;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use crate::error::ProvisionError;

/// The table in a tenant's own database that says whose it is.
pub const MARKER_TABLE: &str = "fleet_tenant";

/// The name a tenant's database is created and migrated under before it takes its own.
pub fn staging_name(tenant_id: Uuid) -> String {
    format!("fleet_new_{}", tenant_id.simple())
}

/// A database name the registry holds or this module derives: `[a-z0-9_]`, 1 to 63 bytes.
pub fn checked_name(name: &str) -> Result<&str, ProvisionError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(ProvisionError::BadInput(
            fleet_shared::events::BadInput::new(format!(
                "database name {name:?} is not a plain identifier; refusing to touch it"
            )),
        ))
    }
}

/// A connection to the server's configured database (where `CREATE`/`ALTER`/`DROP DATABASE`
/// are sent).
async fn admin(
    pools: &DatabasePools,
    server: &str,
) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, ProvisionError> {
    let pool = pools.get(server).map_err(ProvisionError::bad_input)?;
    pool.acquire()
        .await
        .map_err(ProvisionError::db("connect to the tenant database server"))
}

/// A connection of its own (not pooled) to database `name` on `server`, so that nothing of the
/// fleet stays connected to it once it is closed.
async fn direct(
    pools: &DatabasePools,
    server: &str,
    name: &str,
) -> Result<PgConnection, ProvisionError> {
    let url = pools
        .databases()
        .tenant_url(server, Some(name))
        .map_err(ProvisionError::bad_input)?;
    PgConnection::connect(fleet_shared::secret::ExposeSecret::expose_secret(&url))
        .await
        .map_err(ProvisionError::db("connect to the tenant's database"))
}

/// Whether database `name` exists on the server `admin` is connected to.
pub async fn exists(admin: &mut PgConnection, name: &str) -> Result<bool, ProvisionError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut *admin)
        .await
        .map_err(ProvisionError::db("look up a database"))
}

/// The tenant its marker names, if database `name` has one.
async fn owner(
    pools: &DatabasePools,
    server: &str,
    name: &str,
) -> Result<Option<Uuid>, ProvisionError> {
    Ok(marked_tenant(pools, server, name).await?.map(|(id, _)| id))
}

/// Step 2 of the module docs: makes sure the tenant's database `own` exists on `server`, is
/// this tenant's, and holds `schema` migrated to the latest version. The caller holds the
/// tenant's lock (on the control plane) for the whole call.
pub async fn prepare(
    pools: &DatabasePools,
    server: &str,
    own: &str,
    schema: &str,
    tenant_id: Uuid,
    code: &str,
    migrations: &[Migration],
) -> Result<ApplyReport, ProvisionError> {
    let own = checked_name(own)?;
    let staging = staging_name(tenant_id);
    let latest = migrate::latest_version(migrations);
    let mut admin = admin(pools, server).await?;
    if exists(&mut admin, own).await? {
        if owner(pools, server, own).await? != Some(tenant_id) {
            return Err(ProvisionError::OrphanDatabase(format!(
                "{own} (on database server {server})"
            )));
        }
        // Ours, renamed by an earlier delivery: only the migrations are checked (and finished).
        let mut con = direct(pools, server, own).await?;
        let report = migrate_in(&mut con, schema, tenant_id, code, migrations, latest).await?;
        let _ = con.close().await;
        if exists(&mut admin, &staging).await? {
            drop_database_on(&mut admin, &staging).await?;
        }
        return Ok(report);
    }
    if !exists(&mut admin, &staging).await? {
        match exec_simple(&mut admin, &format!("CREATE DATABASE \"{staging}\"")).await {
            Ok(()) => tracing::info!(database = %staging, server, "created the tenant's database"),
            // Another delivery created it between our look and our create: it is ours as well.
            Err(e)
                if matches!(
                    fleet_shared::errors::sqlstate(&e).as_deref(),
                    Some("42P04") | Some("23505")
                ) => {}
            Err(e) => {
                return Err(ProvisionError::Db {
                    what: "create the tenant's database",
                    source: e,
                })
            }
        }
    }
    let mut con = direct(pools, server, &staging).await?;
    let report = migrate_in(&mut con, schema, tenant_id, code, migrations, latest).await?;
    let _ = con.close().await;
    rename_to_own(&mut admin, server, &staging, own).await?;
    Ok(report)
}

/// In one transaction on the tenant's database: the marker and every migration.
async fn migrate_in(
    con: &mut PgConnection,
    schema: &str,
    tenant_id: Uuid,
    code: &str,
    migrations: &[Migration],
    latest: i64,
) -> Result<ApplyReport, ProvisionError> {
    let mut tx = con.begin().await.map_err(ProvisionError::db(
        "begin a transaction on the tenant's database",
    ))?;
    crate::tenant_lock::lock_tenant(&mut tx, code).await?;
    write_marker(&mut tx, tenant_id, code).await?;
    let report = migrate::migrate_to(&mut tx, schema, migrations, latest, Start::Existing).await?;
    tx.commit().await.map_err(ProvisionError::db(
        "commit the migrations on the tenant's database",
    ))?;
    Ok(report)
}

/// Writes (once) the marker that makes a database this tenant's: `public.fleet_tenant` with its
/// `tenant_id` and code. Call it in the transaction that fills the database, so the marker and
/// the tenant's tables commit together. A marker naming another tenant is refused.
pub async fn write_marker(
    con: &mut PgConnection,
    tenant_id: Uuid,
    code: &str,
) -> Result<(), ProvisionError> {
    exec_simple(
        &mut *con,
        "CREATE TABLE IF NOT EXISTS public.fleet_tenant (
             tenant_id  uuid PRIMARY KEY,
             code       text NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(ProvisionError::db("create the tenant marker"))?;
    let others: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.fleet_tenant WHERE tenant_id <> $1")
            .bind(tenant_id)
            .fetch_one(&mut *con)
            .await
            .map_err(ProvisionError::db("read the tenant marker"))?;
    if others > 0 {
        return Err(ProvisionError::OrphanDatabase(
            "the staging database of this tenant_id names another tenant".into(),
        ));
    }
    sqlx::query(
        "INSERT INTO public.fleet_tenant (tenant_id, code) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(tenant_id)
    .bind(code)
    .execute(&mut *con)
    .await
    .map_err(ProvisionError::db("write the tenant marker"))?;
    Ok(())
}

/// The tenant (id and code) that the marker of database `name` on `server` names, if it has one.
pub async fn marked_tenant(
    pools: &DatabasePools,
    server: &str,
    name: &str,
) -> Result<Option<(Uuid, String)>, ProvisionError> {
    let mut con = direct(pools, server, checked_name(name)?).await?;
    let has: bool = sqlx::query_scalar("SELECT to_regclass('public.fleet_tenant') IS NOT NULL")
        .fetch_one(&mut con)
        .await
        .map_err(ProvisionError::db("look for the tenant marker"))?;
    let marked = if has {
        sqlx::query_as("SELECT tenant_id, code FROM public.fleet_tenant LIMIT 1")
            .fetch_optional(&mut con)
            .await
            .map_err(ProvisionError::db("read the tenant marker"))?
    } else {
        None
    };
    let _ = con.close().await;
    Ok(marked)
}

/// The staging databases (`fleet_new_…`) on `server`.
pub async fn staging_databases(
    pools: &DatabasePools,
    server: &str,
) -> Result<Vec<String>, ProvisionError> {
    let mut admin = admin(pools, server).await?;
    sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'fleet\\_new\\_%' ORDER BY 1",
    )
    .fetch_all(&mut *admin)
    .await
    .map_err(ProvisionError::db("list the staging databases"))
}

/// Drops database `name` on `server` (with every session on it), if it exists.
pub async fn drop_database(
    pools: &DatabasePools,
    server: &str,
    name: &str,
) -> Result<(), ProvisionError> {
    pools.close_tenant_pool(server, name).await;
    let mut admin = admin(pools, server).await?;
    drop_database_on(&mut admin, name).await
}

/// Whether database `name` exists on `server`.
pub async fn exists_on(
    pools: &DatabasePools,
    server: &str,
    name: &str,
) -> Result<bool, ProvisionError> {
    let mut admin = admin(pools, server).await?;
    exists(&mut admin, name).await
}

/// For an import: a new, empty staging database for `tenant_id` on `server` (a leftover of an
/// interrupted import of the same tenant is dropped first), and a connection of its own to it.
pub async fn fresh_staging(
    pools: &DatabasePools,
    server: &str,
    tenant_id: Uuid,
) -> Result<PgConnection, ProvisionError> {
    let staging = staging_name(tenant_id);
    let mut admin = admin(pools, server).await?;
    drop_database_on(&mut admin, &staging).await?;
    exec_simple(&mut admin, &format!("CREATE DATABASE \"{staging}\""))
        .await
        .map_err(ProvisionError::db("create the tenant's database"))?;
    direct(pools, server, &staging).await
}

/// Gives the staging database of `tenant_id` its name `own` (refused when `own` exists).
pub async fn adopt_staging(
    pools: &DatabasePools,
    server: &str,
    tenant_id: Uuid,
    own: &str,
) -> Result<(), ProvisionError> {
    let mut admin = admin(pools, server).await?;
    rename_to_own(&mut admin, server, &staging_name(tenant_id), own).await
}

/// Renames the staging database `staging` to the tenant's name `own`; an `own` that already
/// exists (42P04) belongs to no tenant, since the caller found none there: an orphan.
async fn rename_to_own(
    admin: &mut PgConnection,
    server: &str,
    staging: &str,
    own: &str,
) -> Result<(), ProvisionError> {
    rename(admin, staging, own).await.map_err(|e| match e {
        ProvisionError::Db { source, .. }
            if fleet_shared::errors::sqlstate(&source).as_deref() == Some("42P04") =>
        {
            ProvisionError::OrphanDatabase(format!("{own} (on database server {server})"))
        }
        other => other,
    })
}

/// Terminates every other session connected to database `name` (a rename or drop needs none).
async fn terminate(admin: &mut PgConnection, name: &str) -> Result<(), ProvisionError> {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut *admin)
    .await
    .map_err(ProvisionError::db(
        "end the sessions on the tenant's database",
    ))?;
    Ok(())
}

/// `ALTER DATABASE from RENAME TO to`, after terminating the sessions on `from`; a session that
/// reconnects in between (55006, object in use) makes it try again, with backoff.
async fn rename(admin: &mut PgConnection, from: &str, to: &str) -> Result<(), ProvisionError> {
    let (from, to) = (checked_name(from)?, checked_name(to)?);
    let mut delays = RENAME_RETRY.delays();
    loop {
        terminate(admin, from).await?;
        match exec_simple(
            admin,
            &format!("ALTER DATABASE \"{from}\" RENAME TO \"{to}\""),
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(e) if fleet_shared::errors::sqlstate(&e).as_deref() == Some("55006") => {
                match delays.next() {
                    Some(d) => tokio::time::sleep(d).await,
                    None => {
                        return Err(ProvisionError::Db {
                            what: "rename the tenant's database (still in use)",
                            source: e,
                        })
                    }
                }
            }
            Err(e) => {
                return Err(ProvisionError::Db {
                    what: "rename the tenant's database",
                    source: e,
                })
            }
        }
    }
}

/// How often a rename is tried again while sessions keep reconnecting.
const RENAME_RETRY: RetryPolicy = RetryPolicy::new(
    std::time::Duration::from_millis(50),
    std::time::Duration::from_secs(1),
)
.with_max_times(8);

async fn drop_database_on(admin: &mut PgConnection, name: &str) -> Result<(), ProvisionError> {
    let name = checked_name(name)?;
    exec_simple(
        admin,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await
    .map_err(ProvisionError::db("drop the tenant's database"))
}

/// Drops the staging database of a refused tenant, if there is one (it is ours by its name).
pub async fn drop_staging(
    pools: &DatabasePools,
    server: &str,
    tenant_id: Uuid,
) -> Result<(), ProvisionError> {
    let mut admin = admin(pools, server).await?;
    drop_database_on(&mut admin, &staging_name(tenant_id)).await
}

/// Archive: renames the tenant's database `own` to `archived` (idempotent: when only `archived`
/// exists an earlier delivery did it; when neither does there is nothing to rename). The
/// fleet's pool to `own` is closed first. A tenant archived before its provisioning finished
/// may only have its staging database: that one is archived instead.
pub async fn archive(
    pools: &DatabasePools,
    server: &str,
    own: &str,
    archived: &str,
    tenant_id: Uuid,
) -> Result<(), ProvisionError> {
    let (own, archived) = (checked_name(own)?, checked_name(archived)?);
    pools.close_tenant_pool(server, own).await;
    let mut admin = admin(pools, server).await?;
    let staging = staging_name(tenant_id);
    match (exists(&mut admin, own).await?, exists(&mut admin, archived).await?) {
        (false, false) if exists(&mut admin, &staging).await? => {
            rename(&mut admin, &staging, archived).await
        }
        (true, false) => rename(&mut admin, own, archived).await,
        (true, true) => Err(ProvisionError::OrphanDatabase(format!(
            "both {own} and {archived} exist on database server {server}; refusing to archive over an archive"
        ))),
        _ => Ok(()),
    }
}

/// Purge: drops the tenant's database `name` (live or archived) with every session on it, and
/// the staging database of `tenant_id` if an unfinished provisioning left one.
pub async fn purge(
    pools: &DatabasePools,
    server: &str,
    name: &str,
    tenant_id: Uuid,
) -> Result<(), ProvisionError> {
    let name = checked_name(name)?;
    pools.close_tenant_pool(server, name).await;
    let mut admin = admin(pools, server).await?;
    drop_database_on(&mut admin, name).await?;
    drop_database_on(&mut admin, &staging_name(tenant_id)).await
}
