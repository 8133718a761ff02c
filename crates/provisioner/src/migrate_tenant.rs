//! `tenant.migrate`: applies the pending tenant migrations to one existing tenant.
//!
//! Same lock as provisioning, so a migrate never races a provision of the same code. An applied
//! migration whose file changed stops the run with an error naming the file (never a silent
//! re-run); everything this delivery applied is rolled back with it. Applying nothing is a
//! success: a redelivery after commit finds the ledger complete.

use fleet_shared::migrate::{self, Migration};
use fleet_shared::Code;
use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::provision::{lock_tenant, TenantRow};

/// What a `tenant.migrate` delivery did.
#[derive(Debug, Clone)]
pub struct Migrated {
    pub tenant: TenantRow,
    pub applied: Vec<i64>,
}

pub async fn migrate_tenant(
    pg: &PgPool,
    migrations: &[Migration],
    code: &Code,
) -> Result<Migrated, ProvisionError> {
    let mut tx = pg
        .begin()
        .await
        .map_err(ProvisionError::db("begin a transaction"))?;
    lock_tenant(&mut tx, code.as_str()).await?;
    let row: Option<TenantRow> = sqlx::query_as(
        "SELECT tenant_id, code, plan, status, schema_name, schema_version
           FROM fleet.tenants WHERE code = $1 AND status <> 'deleted' FOR UPDATE",
    )
    .bind(code.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(ProvisionError::db("read the tenant registry"))?;
    let Some(row) = row else {
        return Err(ProvisionError::UnknownTenant(code.to_string()));
    };
    if row.status != "active" {
        return Err(ProvisionError::WrongStatus {
            code: code.to_string(),
            status: row.status,
        });
    }
    // The stored schema name is the one the provisioner wrote (tenant_<code>); migrate::apply
    // checks it is a plain identifier before using it.
    let report = migrate::apply(&mut tx, &row.schema_name, migrations).await?;
    let tenant: TenantRow = sqlx::query_as(
        "UPDATE fleet.tenants SET schema_version = $2, updated_at = now()
          WHERE tenant_id = $1
         RETURNING tenant_id, code, plan, status, schema_name, schema_version",
    )
    .bind(row.tenant_id)
    .bind(report.version)
    .fetch_one(&mut *tx)
    .await
    .map_err(ProvisionError::db("record the schema version"))?;
    tx.commit()
        .await
        .map_err(ProvisionError::db("commit the migration transaction"))?;
    Ok(Migrated {
        tenant,
        applied: report.applied,
    })
}
