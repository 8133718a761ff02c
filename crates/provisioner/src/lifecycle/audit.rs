//! The audit trail: one `fleet.tenant_events` row per committed lifecycle change, written in the
//! change's own transaction together with its `fleet.processed_events` record, so a change and
//! its trail commit together or not at all.
//!
//! `old` and `new` hold only what changed. Secrets never enter it: an encrypted config value is
//! recorded as [`MASK`] (with the id of the key it is sealed under).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Cause, LifecycleError, Tenant};

/// What the trail (and `fleetctl tenants show`) prints for an encrypted value.
pub const MASK: &str = "<encrypted>";

/// A row of `fleet.tenant_events`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub tenant_id: Uuid,
    pub code: String,
    pub org_code: Option<String>,
    pub event: String,
    pub event_id: String,
    pub actor: String,
    pub status: String,
    pub old: Value,
    pub new: Value,
    pub at: DateTime<Utc>,
}
fleet_shared::from_row!(AuditRow {
    id,
    tenant_id,
    code,
    org_code,
    event,
    event_id,
    actor,
    status,
    old,
    new,
    at
});

const COLUMNS: &str = "id, tenant_id, code, org_code, event, event_id, actor, status, old, new, at";

/// A config value as the trail records it.
pub fn masked(value: &Value, encrypted: bool) -> Value {
    if encrypted {
        let kid = value.get("kid").and_then(Value::as_str).unwrap_or("?");
        json!({ "encrypted": MASK, "kid": kid })
    } else {
        value.clone()
    }
}

/// Writes the audit row and the processed-event record of `cause`.
pub async fn record(
    con: &mut PgConnection,
    cause: &Cause,
    after: &Tenant,
    old: Value,
    new: Value,
) -> Result<AuditRow, LifecycleError> {
    sqlx::query(
        "INSERT INTO fleet.processed_events (consumer, event_key, subject) VALUES ($1, $2, $3)",
    )
    .bind(crate::NAME)
    .bind(&cause.event_id)
    .bind(&cause.event)
    .execute(&mut *con)
    .await
    .map_err(LifecycleError::db("record the processed event"))?;
    sqlx::query_as(&format!(
        "INSERT INTO fleet.tenant_events (tenant_id, code, org_code, event, event_id, actor, status, old, new)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {COLUMNS}"
    ))
    .bind(after.tenant_id)
    .bind(&after.code)
    .bind(&after.org_code)
    .bind(&cause.event)
    .bind(&cause.event_id)
    .bind(&cause.actor)
    .bind(&after.status)
    .bind(old)
    .bind(new)
    .fetch_one(&mut *con)
    .await
    .map_err(LifecycleError::db("write the audit row"))
}

/// The audit row an event id produced (the latest, if a direct action wrote several).
pub async fn by_event_id(
    con: &mut PgConnection,
    event_id: &str,
) -> Result<Option<AuditRow>, LifecycleError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM fleet.tenant_events WHERE event_id = $1 ORDER BY id DESC LIMIT 1"
    ))
    .bind(event_id)
    .fetch_optional(&mut *con)
    .await
    .map_err(LifecycleError::db("read the audit trail"))
}

/// Every audit row of tenants that had `code` (a re-created code shows both tenants), oldest
/// first.
pub async fn history(pg: &sqlx::PgPool, code: &str) -> Result<Vec<AuditRow>, LifecycleError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM fleet.tenant_events WHERE code = $1 ORDER BY id"
    ))
    .bind(code)
    .fetch_all(pg)
    .await
    .map_err(LifecycleError::db("read the audit trail"))
}
