//! `tenant.updated {code, name?, org_code?, plan?}`: renames, re-homes or re-plans a live tenant.
//!
//! A plan (even the same one, which refreshes changed defaults) **re-merges** the configs: a key
//! whose source is a plan (`plan:<name>`) takes the new plan's value, or is removed when the new
//! plan lacks it; keys the new plan adds are written with source `plan:<new>`; keys set
//! explicitly (source `override`, at creation or later) are kept as they are. Allowed for
//! `active` and `suspended` tenants.

use std::collections::BTreeMap;

use fleet_shared::events::{TenantUpdated, TENANT_UPDATED};
use serde_json::{json, Map, Value};
use sqlx::PgPool;

use super::audit::masked;
use super::config::{config_rows, ConfigRow};
use super::{begin, finish, live_tenant, require_status, Begun, Cause, LifecycleError, Outcome};
use super::{Tenant, TENANT_COLUMNS};
use crate::plans::Plans;

pub async fn update(
    pg: &PgPool,
    plans: &Plans,
    cause: &Cause,
    req: &TenantUpdated,
) -> Result<Outcome, LifecycleError> {
    req.validate()?;
    let new_plan = match &req.plan {
        Some(p) => Some((
            p.as_str(),
            plans.get(p).ok_or_else(|| LifecycleError::UnknownPlan {
                event: TENANT_UPDATED.into(),
                plan: p.clone(),
                known: plans.names().collect::<Vec<_>>().join(", "),
            })?,
        )),
        None => None,
    };
    let mut tx = match begin(pg, req.code.as_str(), cause).await? {
        Begun::Fresh(tx) => tx,
        Begun::Repeat(a) => return Ok(Outcome::Repeat(a)),
    };
    let t = live_tenant(&mut tx, TENANT_UPDATED, req.code.as_str()).await?;
    require_status(TENANT_UPDATED, &t, &["active", "suspended"], "updated")?;

    let mut old = Map::new();
    let mut new = Map::new();
    let name = req.name.as_deref().map(str::trim);
    if let Some(n) = name.filter(|n| *n != t.name) {
        old.insert("name".into(), json!(t.name));
        new.insert("name".into(), json!(n));
    }
    let org = req.org_code.as_ref().map(|c| c.as_str());
    if let Some(o) = org.filter(|o| Some(*o) != t.org_code.as_deref()) {
        old.insert("org_code".into(), json!(t.org_code));
        new.insert("org_code".into(), json!(o));
    }
    if let Some((plan, defaults)) = new_plan {
        if plan != t.plan {
            old.insert("plan".into(), json!(t.plan));
            new.insert("plan".into(), json!(plan));
        }
        let rows = config_rows(&mut tx, t.tenant_id).await?;
        let (was, now) = remerge(&mut tx, &t, &rows, plan, defaults).await?;
        if !was.is_empty() || !now.is_empty() {
            old.insert("configs".into(), Value::Object(was));
            new.insert("configs".into(), Value::Object(now));
        }
    }

    let after: Tenant = sqlx::query_as(&format!(
        "UPDATE fleet.tenants
            SET name = COALESCE($2, name), org_code = COALESCE($3, org_code),
                plan = COALESCE($4, plan), updated_at = now()
          WHERE tenant_id = $1
         RETURNING {TENANT_COLUMNS}"
    ))
    .bind(t.tenant_id)
    .bind(name)
    .bind(org)
    .bind(req.plan.as_deref())
    .fetch_one(&mut *tx)
    .await
    .map_err(LifecycleError::db("update the tenant row"))?;
    let row = finish(tx, cause, &after, Value::Object(old), Value::Object(new)).await?;
    Ok(Outcome::Done(row))
}

/// Applies `plan`'s defaults to the plan-sourced rows; returns the changed keys' old and new
/// values (`null` for absent).
async fn remerge(
    con: &mut sqlx::PgConnection,
    t: &Tenant,
    rows: &[ConfigRow],
    plan: &str,
    defaults: &BTreeMap<String, Value>,
) -> Result<(Map<String, Value>, Map<String, Value>), LifecycleError> {
    let source = format!("plan:{plan}");
    let mut was = Map::new();
    let mut now = Map::new();
    for r in rows.iter().filter(|r| r.source.starts_with("plan:")) {
        match defaults.get(&r.key) {
            Some(v) if *v == r.value && r.source == source && !r.is_encrypted => {}
            Some(v) => {
                sqlx::query(
                    "UPDATE fleet.tenant_configurations
                        SET config_value = $3, is_encrypted = false, source = $4, updated_at = now()
                      WHERE tenant_id = $1 AND config_key = $2",
                )
                .bind(t.tenant_id)
                .bind(&r.key)
                .bind(v)
                .bind(&source)
                .execute(&mut *con)
                .await
                .map_err(LifecycleError::db("update a plan config"))?;
                if *v != r.value {
                    was.insert(r.key.clone(), masked(&r.value, r.is_encrypted));
                    now.insert(r.key.clone(), v.clone());
                }
            }
            None => {
                sqlx::query(
                    "DELETE FROM fleet.tenant_configurations WHERE tenant_id = $1 AND config_key = $2",
                )
                .bind(t.tenant_id)
                .bind(&r.key)
                .execute(&mut *con)
                .await
                .map_err(LifecycleError::db("remove a plan config"))?;
                was.insert(r.key.clone(), masked(&r.value, r.is_encrypted));
                now.insert(r.key.clone(), Value::Null);
            }
        }
    }
    for (k, v) in defaults {
        if rows.iter().any(|r| &r.key == k) {
            continue;
        }
        sqlx::query(
            "INSERT INTO fleet.tenant_configurations (tenant_id, config_key, config_value, source)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(t.tenant_id)
        .bind(k)
        .bind(v)
        .bind(&source)
        .execute(&mut *con)
        .await
        .map_err(LifecycleError::db("add a plan config"))?;
        was.insert(k.clone(), Value::Null);
        now.insert(k.clone(), v.clone());
    }
    Ok((was, now))
}
