//! `fleetctl tenants rotate-keys`: re-seals every encrypted config under the newest key of
//! `FLEET_CONFIG_KEYS` (archived tenants included, so an old key can be dropped afterwards).
//!
//! A direct action, not an event: it needs the keys, which only the operator's environment and
//! the provisioner hold, and it reports progress. Before touching anything it checks that every
//! key id in use is configured; then it works one tenant per transaction under the tenant's lock
//! with one audit row each (old → new key ids, never values). A value that does not open (a
//! wrong key for its id) stops the run with the tenant and key named; that tenant is left as it
//! was, tenants already done stay done, and running it again continues.

use fleet_shared::config_keys::{ConfigKeys, Sealed};
use fleet_shared::Code;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::{begin, finish, Begun, Cause, LifecycleError, Tenant, TENANT_COLUMNS};

pub const ACTION: &str = "fleetctl.tenants.rotate-keys";

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RotateReport {
    pub tenants: usize,
    pub values: usize,
    pub key_id: String,
}

pub async fn rotate_keys(
    pg: &PgPool,
    keys: &ConfigKeys,
    actor: &str,
    mut progress: impl FnMut(&str, usize),
) -> Result<RotateReport, LifecycleError> {
    let newest = keys.current_id().to_owned();
    let in_use: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT COALESCE(config_value->>'kid', '') FROM fleet.tenant_configurations
          WHERE is_encrypted ORDER BY 1",
    )
    .fetch_all(pg)
    .await
    .map_err(LifecycleError::db("list the key ids in use"))?;
    let missing: Vec<&String> = in_use
        .iter()
        .filter(|k| !keys.ids().any(|id| id == k.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(LifecycleError::NotAllowed(format!(
            "encrypted configs use key ids {missing:?}, which FLEET_CONFIG_KEYS does not hold; nothing was re-encrypted"
        )));
    }
    let tenants: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT t.tenant_id, t.code FROM fleet.tenants t
           JOIN fleet.tenant_configurations c ON c.tenant_id = t.tenant_id
          WHERE c.is_encrypted AND c.config_value->>'kid' IS DISTINCT FROM $1
          ORDER BY t.code",
    )
    .bind(&newest)
    .fetch_all(pg)
    .await
    .map_err(LifecycleError::db(
        "list tenants with configs under older keys",
    ))?;

    let mut report = RotateReport {
        key_id: newest.clone(),
        ..Default::default()
    };
    for (tenant_id, code) in tenants {
        let code = Code::parse(&code).map_err(|e| {
            LifecycleError::NotAllowed(format!("the registry holds a bad code: {e}"))
        })?;
        let cause = Cause::direct(ACTION, actor);
        let mut tx = match begin(pg, code.as_str(), &cause).await? {
            Begun::Fresh(tx) => tx,
            Begun::Repeat(_) => continue,
        };
        let t: Tenant = sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM fleet.tenants WHERE tenant_id = $1 FOR UPDATE"
        ))
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(LifecycleError::db("read the tenant registry"))?;
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT config_key, config_value FROM fleet.tenant_configurations
              WHERE tenant_id = $1 AND is_encrypted AND config_value->>'kid' IS DISTINCT FROM $2
              ORDER BY config_key FOR UPDATE",
        )
        .bind(tenant_id)
        .bind(&newest)
        .fetch_all(&mut *tx)
        .await
        .map_err(LifecycleError::db("read the encrypted configs"))?;
        let mut old = Map::new();
        let mut new = Map::new();
        for (key, stored) in &rows {
            let seal_err = |source| LifecycleError::Seal {
                event: format!("{ACTION}: tenant {code}"),
                key: key.clone(),
                source,
            };
            let sealed = Sealed::from_value(stored).map_err(seal_err)?;
            let plain = keys.open(key, &sealed).map_err(seal_err)?;
            let resealed = keys.seal(key, &plain).map_err(seal_err)?;
            sqlx::query(
                "UPDATE fleet.tenant_configurations SET config_value = $3, updated_at = now()
                  WHERE tenant_id = $1 AND config_key = $2",
            )
            .bind(tenant_id)
            .bind(key)
            .bind(resealed.to_value())
            .execute(&mut *tx)
            .await
            .map_err(LifecycleError::db("write a re-encrypted config"))?;
            old.insert(key.clone(), Value::String(sealed.kid.clone()));
            new.insert(key.clone(), Value::String(resealed.kid.clone()));
        }
        finish(
            tx,
            &cause,
            &t,
            serde_json::json!({ "kids": old }),
            serde_json::json!({ "kids": new }),
        )
        .await?;
        report.tenants += 1;
        report.values += rows.len();
        progress(code.as_str(), rows.len());
    }
    Ok(report)
}
