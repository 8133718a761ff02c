//! `tenant.suspended {code, reason?}` and `tenant.resumed {code}`.
//!
//! Suspending turns an `active` tenant `suspended` (with the time and the reason); resuming turns
//! a `suspended` tenant `active` again. Any other starting status is refused: resuming an active
//! tenant or suspending a suspended one is a mistake worth a dead letter, not a silent success.
//! Only the registry changes; the schema and the configs stay. The scheduler does not fan out to
//! suspended tenants unless a schedule selects `suspended`, and rollouts skip them.

use fleet_shared::events::{TenantResumed, TenantSuspended, TENANT_RESUMED, TENANT_SUSPENDED};
use serde_json::json;
use sqlx::PgPool;

use super::{begin, finish, live_tenant, require_status, Begun, Cause, LifecycleError, Outcome};
use super::{Tenant, TENANT_COLUMNS};

/// The longest reason kept (longer ones are cut, on a character boundary).
pub const MAX_REASON: usize = 500;

pub async fn suspend(
    pg: &PgPool,
    cause: &Cause,
    req: &TenantSuspended,
) -> Result<Outcome, LifecycleError> {
    let reason: Option<String> = req
        .reason
        .as_deref()
        .map(|r| fleet_shared::errors::one_line(r.trim()))
        .filter(|r| !r.is_empty())
        .map(|r| r.chars().take(MAX_REASON).collect());
    let mut tx = match begin(pg, req.code.as_str(), cause).await? {
        Begun::Fresh(tx) => tx,
        Begun::Repeat(a) => return Ok(Outcome::Repeat(a)),
    };
    let t = live_tenant(&mut tx, TENANT_SUSPENDED, req.code.as_str()).await?;
    require_status(TENANT_SUSPENDED, &t, &["active"], "suspended")?;
    let after: Tenant = sqlx::query_as(&format!(
        "UPDATE fleet.tenants
            SET status = 'suspended', suspended_at = now(), suspend_reason = $2, updated_at = now()
          WHERE tenant_id = $1
         RETURNING {TENANT_COLUMNS}"
    ))
    .bind(t.tenant_id)
    .bind(&reason)
    .fetch_one(&mut *tx)
    .await
    .map_err(LifecycleError::db("suspend the tenant"))?;
    let row = finish(
        tx,
        cause,
        &after,
        json!({ "status": t.status }),
        json!({ "status": "suspended", "reason": reason }),
    )
    .await?;
    Ok(Outcome::Done(row))
}

pub async fn resume(
    pg: &PgPool,
    cause: &Cause,
    req: &TenantResumed,
) -> Result<Outcome, LifecycleError> {
    let mut tx = match begin(pg, req.code.as_str(), cause).await? {
        Begun::Fresh(tx) => tx,
        Begun::Repeat(a) => return Ok(Outcome::Repeat(a)),
    };
    let t = live_tenant(&mut tx, TENANT_RESUMED, req.code.as_str()).await?;
    require_status(TENANT_RESUMED, &t, &["suspended"], "resumed")?;
    let after: Tenant = sqlx::query_as(&format!(
        "UPDATE fleet.tenants
            SET status = 'active', suspended_at = NULL, suspend_reason = NULL, updated_at = now()
          WHERE tenant_id = $1
         RETURNING {TENANT_COLUMNS}"
    ))
    .bind(t.tenant_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(LifecycleError::db("resume the tenant"))?;
    let row = finish(
        tx,
        cause,
        &after,
        json!({ "status": "suspended" }),
        json!({ "status": "active" }),
    )
    .await?;
    Ok(Outcome::Done(row))
}
