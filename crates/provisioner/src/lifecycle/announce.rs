//! Announcing a committed lifecycle change on `tenant.lifecycle.<kind>`.
//!
//! The body is the change's audit row ([`TenantLifecycle`]); the message id is
//! `tenant.lifecycle:<audit id>`, so announcing the same change again (a redelivery after a crash
//! between commit and ack) is dropped by JetStream's duplicate window.
//!
//! | kind | after |
//! |---|---|
//! | `updated` | `tenant.updated` |
//! | `config_set` / `config_unset` | `tenant.config.set` / `tenant.config.unset` |
//! | `suspended` / `resumed` | `tenant.suspended` / `tenant.resumed` |
//! | `deleted` | `tenant.deleted` of a live tenant (archive or purge); the cache-invalidator clears the org's keys |
//! | `purged` | an archived tenant purged (event, scheduler or `fleetctl tenants purge`) |
//! | `keys_rotated` | `fleetctl tenants rotate-keys` re-sealed a tenant's configs |

use async_nats::jetstream;
use fleet_shared::events::{
    lifecycle_subject, TenantLifecycle, TENANT_CONFIG_SET, TENANT_CONFIG_UNSET, TENANT_DELETED,
    TENANT_RESUMED, TENANT_SUSPENDED, TENANT_UPDATED,
};
use fleet_shared::Code;

use super::{AuditRow, LifecycleError};

/// The `<kind>` of the announcement of `row`.
pub fn kind(row: &AuditRow) -> &'static str {
    match row.event.as_str() {
        TENANT_UPDATED => "updated",
        TENANT_CONFIG_SET => "config_set",
        TENANT_CONFIG_UNSET => "config_unset",
        TENANT_SUSPENDED => "suspended",
        TENANT_RESUMED => "resumed",
        TENANT_DELETED if row.old.get("status").and_then(|s| s.as_str()) == Some("deleted") => {
            "purged"
        }
        TENANT_DELETED => "deleted",
        super::rotate::ACTION => "keys_rotated",
        _ => "purged",
    }
}

pub fn body(row: &AuditRow) -> Result<TenantLifecycle, LifecycleError> {
    let bad = |e: fleet_shared::codes::InvalidCode| {
        LifecycleError::NotAllowed(format!("the audit trail holds a bad code: {e}"))
    };
    Ok(TenantLifecycle {
        tenant_id: row.tenant_id,
        code: Code::parse(&row.code).map_err(bad)?,
        org_code: row
            .org_code
            .as_deref()
            .map(Code::parse)
            .transpose()
            .map_err(bad)?,
        event: row.event.clone(),
        event_id: row.event_id.clone(),
        status: row.status.clone(),
        audit_id: row.id,
        old: row.old.clone(),
        new: row.new.clone(),
    })
}

pub async fn announce(
    js: &jetstream::Context,
    row: &AuditRow,
    traceparent: Option<&str>,
) -> Result<(), LifecycleError> {
    let subject = lifecycle_subject(kind(row));
    let id = format!("tenant.lifecycle:{}", row.id);
    fleet_shared::publish::publish_json(js, &subject, &id, &body(row)?, traceparent)
        .await
        .map_err(LifecycleError::Announce)?;
    Ok(())
}
