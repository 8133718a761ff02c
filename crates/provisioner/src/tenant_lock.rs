//! The per-tenant lock: every transaction that changes one tenant (provisioning, migrating, a
//! rollout step, a lifecycle change, an import) takes it first, so changes to one tenant run one
//! at a time across every replica while different tenants go in parallel. It is a transaction
//! advisory lock, released by commit or rollback, so a crash can never leave it held.

use sqlx::PgConnection;

use crate::error::ProvisionError;

/// The advisory-lock class of tenant locks (`"prov"`); the second key is `hashtext(code)`. A hash
/// collision only serializes two unrelated tenants, never merges them.
const TENANT_LOCK_CLASS: i32 = 0x7072_6f76;

/// Takes the per-tenant lock for the rest of the transaction.
pub async fn lock_tenant(con: &mut PgConnection, code: &str) -> Result<(), ProvisionError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(TENANT_LOCK_CLASS)
        .bind(code)
        .execute(&mut *con)
        .await
        .map_err(ProvisionError::db("take the tenant lock"))?;
    Ok(())
}
