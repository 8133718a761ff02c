//! `tenant.config.set {code, key, value, encrypted?}` and `tenant.config.unset {code, key}`.
//!
//! A set writes an **override** (kept across plan changes). With `encrypted: true` the value is
//! sealed under the newest key of `FLEET_CONFIG_KEYS` before it reaches the database; without
//! keys the event is refused and nothing is stored (never plaintext). An unset removes an
//! override: the key falls back to the current plan's default when the plan has one and is
//! removed otherwise. Unsetting a key that is not overridden is refused (there is nothing to
//! fall back from). Allowed for `active` and `suspended` tenants.

use fleet_shared::config_keys::{ConfigKeys, SealError};
use fleet_shared::events::{
    TenantConfigSet, TenantConfigUnset, TENANT_CONFIG_SET, TENANT_CONFIG_UNSET,
};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::audit::masked;
use super::{begin, finish, live_tenant, require_status, Begun, Cause, LifecycleError, Outcome};
use crate::plans::Plans;

/// One row of `fleet.tenant_configurations`.
#[derive(Debug, Clone)]
pub struct ConfigRow {
    pub key: String,
    pub value: Value,
    pub is_encrypted: bool,
    pub source: String,
}
fleet_shared::from_row!(ConfigRow {
    key = "config_key",
    value = "config_value",
    is_encrypted,
    source,
});

/// A tenant's config rows, locked, by key.
pub async fn config_rows(
    con: &mut PgConnection,
    tenant_id: Uuid,
) -> Result<Vec<ConfigRow>, LifecycleError> {
    sqlx::query_as(
        "SELECT config_key, config_value, is_encrypted, source FROM fleet.tenant_configurations
          WHERE tenant_id = $1 ORDER BY config_key FOR UPDATE",
    )
    .bind(tenant_id)
    .fetch_all(&mut *con)
    .await
    .map_err(LifecycleError::db("read the tenant's configs"))
}

pub async fn set(
    pg: &PgPool,
    keys: Option<&ConfigKeys>,
    cause: &Cause,
    req: &TenantConfigSet,
) -> Result<Outcome, LifecycleError> {
    req.validate()?;
    // Seal before anything touches the database: without keys there is nothing to store.
    let (stored, encrypted) = if req.encrypted {
        let seal_err = |source| LifecycleError::Seal {
            event: TENANT_CONFIG_SET.into(),
            key: req.key.clone(),
            source,
        };
        let keys = keys.ok_or_else(|| seal_err(SealError::NoKeys))?;
        let sealed = keys.seal(&req.key, &req.value).map_err(seal_err)?;
        (sealed.to_value(), true)
    } else {
        (req.value.clone(), false)
    };
    let mut tx = match begin(pg, req.code.as_str(), cause).await? {
        Begun::Fresh(tx) => tx,
        Begun::Repeat(a) => return Ok(Outcome::Repeat(a)),
    };
    let t = live_tenant(&mut tx, TENANT_CONFIG_SET, req.code.as_str()).await?;
    require_status(
        TENANT_CONFIG_SET,
        &t,
        &["active", "suspended"],
        "configured",
    )?;
    let previous = config_rows(&mut tx, t.tenant_id)
        .await?
        .into_iter()
        .find(|r| r.key == req.key);
    sqlx::query(
        "INSERT INTO fleet.tenant_configurations (tenant_id, config_key, config_value, is_encrypted, source)
         VALUES ($1, $2, $3, $4, 'override')
         ON CONFLICT (tenant_id, config_key) DO UPDATE
            SET config_value = EXCLUDED.config_value, is_encrypted = EXCLUDED.is_encrypted,
                source = 'override', updated_at = now()",
    )
    .bind(t.tenant_id)
    .bind(&req.key)
    .bind(&stored)
    .bind(encrypted)
    .execute(&mut *tx)
    .await
    .map_err(LifecycleError::db("write the config"))?;
    let old = match &previous {
        Some(r) => {
            json!({ "key": req.key, "value": masked(&r.value, r.is_encrypted), "source": r.source })
        }
        None => json!({ "key": req.key, "value": null }),
    };
    let new = json!({ "key": req.key, "value": masked(&stored, encrypted), "source": "override" });
    let row = finish(tx, cause, &t, old, new).await?;
    Ok(Outcome::Done(row))
}

pub async fn unset(
    pg: &PgPool,
    plans: &Plans,
    cause: &Cause,
    req: &TenantConfigUnset,
) -> Result<Outcome, LifecycleError> {
    req.validate()?;
    let mut tx = match begin(pg, req.code.as_str(), cause).await? {
        Begun::Fresh(tx) => tx,
        Begun::Repeat(a) => return Ok(Outcome::Repeat(a)),
    };
    let t = live_tenant(&mut tx, TENANT_CONFIG_UNSET, req.code.as_str()).await?;
    require_status(
        TENANT_CONFIG_UNSET,
        &t,
        &["active", "suspended"],
        "configured",
    )?;
    let Some(current) = config_rows(&mut tx, t.tenant_id)
        .await?
        .into_iter()
        .find(|r| r.key == req.key)
    else {
        return Err(LifecycleError::NotAllowed(format!(
            "{TENANT_CONFIG_UNSET}: tenant {} has no config {}",
            t.code, req.key
        )));
    };
    if current.source != "override" {
        return Err(LifecycleError::NotAllowed(format!(
            "{TENANT_CONFIG_UNSET}: config {} of tenant {} is not overridden (its value is the {} default)",
            req.key, t.code, current.source
        )));
    }
    let default = plans.get(&t.plan).and_then(|d| d.get(&req.key)).cloned();
    let source = format!("plan:{}", t.plan);
    match &default {
        Some(v) => sqlx::query(
            "UPDATE fleet.tenant_configurations
                SET config_value = $3, is_encrypted = false, source = $4, updated_at = now()
              WHERE tenant_id = $1 AND config_key = $2",
        )
        .bind(t.tenant_id)
        .bind(&req.key)
        .bind(v)
        .bind(&source),
        None => sqlx::query(
            "DELETE FROM fleet.tenant_configurations WHERE tenant_id = $1 AND config_key = $2",
        )
        .bind(t.tenant_id)
        .bind(&req.key),
    }
    .execute(&mut *tx)
    .await
    .map_err(LifecycleError::db("unset the config"))?;
    let old = json!({ "key": req.key, "value": masked(&current.value, current.is_encrypted), "source": "override" });
    let new = match default {
        Some(v) => json!({ "key": req.key, "value": v, "source": source }),
        None => json!({ "key": req.key, "value": null }),
    };
    let row = finish(tx, cause, &t, old, new).await?;
    Ok(Outcome::Done(row))
}
