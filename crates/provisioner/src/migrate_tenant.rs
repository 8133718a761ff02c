//! `tenant.migrate`, and the step every path that moves an existing tenant shares.
//!
//! [`move_tenant`] brings one locked, active tenant's schema to a target version through the one
//! apply path ([`fleet_shared::migrate::migrate_to`]) and writes the version it reached into
//! `fleet.tenants.schema_version` in the same transaction, so the registry always equals the
//! ledger. `tenant.migrate` and every rollout step call it; provisioning writes the version it
//! created in its own activation statement.
//!
//! DDL on a live schema runs under `SET LOCAL lock_timeout` (2 s here): an `ALTER TABLE` that
//! would queue behind application traffic (and make every later query queue behind it) gives up
//! instead, and the delivery is retried with backoff. An applied migration whose file changed
//! stops the run with an error naming the file (never a silent re-run); everything this delivery
//! applied is rolled back with it. Applying nothing is a success: a redelivery after commit finds
//! the ledger complete.

use std::time::Duration;

use fleet_shared::migrate::{self, ApplyReport, Migration, Start};
use fleet_shared::Code;
use sqlx::PgConnection;

use crate::error::ProvisionError;
use crate::provision::{TenantRow, TENANT_ROW};
use crate::tenant_lock::lock_tenant;
use fleet_shared::databases::{DatabasePools, CONTROL};

/// `lock_timeout` of a `tenant.migrate` transaction (rollouts take theirs from `--lock-timeout`).
pub const MIGRATE_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a `tenant.migrate` delivery did.
#[derive(Debug, Clone)]
pub struct Migrated {
    pub tenant: TenantRow,
    pub applied: Vec<i64>,
}

/// `SET LOCAL lock_timeout` for the rest of the transaction.
pub async fn set_lock_timeout(con: &mut PgConnection, d: Duration) -> Result<(), ProvisionError> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", d.as_millis().max(1)))
        .execute(&mut *con)
        .await
        .map_err(ProvisionError::db("set lock_timeout"))?;
    Ok(())
}

/// Reads the registry row of `code` for update (call with the tenant's lock held). A deleted
/// tenant has given up its code, so it is not found by it.
pub async fn lock_row(
    con: &mut PgConnection,
    code: &str,
) -> Result<Option<TenantRow>, ProvisionError> {
    sqlx::query_as(&format!(
        "SELECT {TENANT_ROW} FROM fleet.tenants WHERE code = $1 AND status <> 'deleted' FOR UPDATE"
    ))
    .bind(code)
    .fetch_optional(&mut *con)
    .await
    .map_err(ProvisionError::db("read the tenant registry"))
}

/// Brings `row`'s schema to `target` and records the version reached in the registry. The caller
/// holds the tenant's lock and its row lock, and commits.
///
/// A tenant on another database (`row.database`, see [`crate::placement`]), or in a database of
/// its own there (`row.own_database`, see [`crate::own_db`]), is migrated there in
/// a transaction of its own, under the same per-tenant lock and `lock_timeout`, committed before
/// the caller's registry update: the ledger in the schema is the record, so if the registry
/// update is lost (a crash between the two commits) the next delivery applies nothing and
/// records the version the ledger has.
pub async fn move_tenant(
    con: &mut PgConnection,
    pools: &DatabasePools,
    row: &TenantRow,
    migrations: &[Migration],
    target: i64,
    lock_timeout: Duration,
) -> Result<ApplyReport, ProvisionError> {
    // The stored schema name is the one the provisioner wrote (tenant_<code>); migrate_to checks
    // it is a plain identifier before using it.
    let report = if row.database == CONTROL && row.own_database.is_none() {
        migrate::migrate_to(con, &row.schema_name, migrations, target, Start::Existing).await?
    } else {
        // Its own database (`isolation = "database"`) comes from the bounded pool cache.
        let pool = pools
            .tenant(&row.database, row.own_database.as_deref())
            .map_err(|e| {
                ProvisionError::BadInput(fleet_shared::events::BadInput::new(format!(
                    "tenant {}: {e}",
                    row.code
                )))
            })?;
        let mut ttx = pool.begin().await.map_err(ProvisionError::db(
            "begin a transaction on the tenant database",
        ))?;
        set_lock_timeout(&mut ttx, lock_timeout).await?;
        lock_tenant(&mut ttx, &row.code).await?;
        let report = migrate::migrate_to(
            &mut ttx,
            &row.schema_name,
            migrations,
            target,
            Start::Existing,
        )
        .await?;
        ttx.commit().await.map_err(ProvisionError::db(
            "commit the migration on the tenant database",
        ))?;
        report
    };
    if report.version != row.schema_version {
        sqlx::query(
            "UPDATE fleet.tenants SET schema_version = $2, updated_at = now() WHERE tenant_id = $1",
        )
        .bind(row.tenant_id)
        .bind(report.version)
        .execute(&mut *con)
        .await
        .map_err(ProvisionError::db("record the schema version"))?;
    }
    Ok(report)
}

pub async fn migrate_tenant(
    pools: &DatabasePools,
    migrations: &[Migration],
    code: &Code,
) -> Result<Migrated, ProvisionError> {
    let mut tx = pools
        .control()
        .begin()
        .await
        .map_err(ProvisionError::db("begin a transaction"))?;
    set_lock_timeout(&mut tx, MIGRATE_LOCK_TIMEOUT).await?;
    lock_tenant(&mut tx, code.as_str()).await?;
    let Some(row) = lock_row(&mut tx, code.as_str()).await? else {
        return Err(ProvisionError::UnknownTenant(code.to_string()));
    };
    if row.status != "active" {
        return Err(ProvisionError::WrongStatus {
            code: code.to_string(),
            status: row.status,
        });
    }
    if let Some(moving) = crate::moves::in_flight(&mut tx, row.tenant_id)
        .await
        .map_err(ProvisionError::db("read the tenant's moves"))?
    {
        return Err(ProvisionError::Moving {
            code: code.to_string(),
            moving,
        });
    }
    let report = move_tenant(
        &mut tx,
        pools,
        &row,
        migrations,
        migrate::latest_version(migrations),
        MIGRATE_LOCK_TIMEOUT,
    )
    .await?;
    tx.commit()
        .await
        .map_err(ProvisionError::db("commit the migration transaction"))?;
    Ok(Migrated {
        tenant: TenantRow {
            schema_version: report.version,
            ..row
        },
        applied: report.applied,
    })
}
