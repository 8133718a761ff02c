//! The built-in purge task: with `[provisioner] purge_after = "30d"`, the leader looks every
//! [`EVERY`] for tenants archived longer than that and publishes, for each,
//! `tenant.deleted {"code", "tenant_id", "mode": "purge"}` with `Nats-Msg-Id = purge:<tenant_id>`.
//!
//! The provisioner does the purge (one transaction under the tenant's lock, audited). Publishing
//! the same tenant again before it is purged is harmless: within the stream's duplicate window
//! JetStream drops it, and later the provisioner finds the message id among its processed events.
//! Only the leader runs it, so a fleet of schedulers publishes each purge once.

use std::time::Duration;

use async_nats::jetstream;
use fleet_shared::events::{DeleteMode, TenantDeleted, TENANT_DELETED};
use fleet_shared::Code;
use sqlx::PgPool;
use uuid::Uuid;

/// How often the leader looks for archived tenants due for purging.
pub const EVERY: Duration = Duration::from_secs(60);

/// The `Nats-Msg-Id` of the purge of one tenant.
pub fn msg_id(tenant_id: Uuid) -> String {
    format!("purge:{tenant_id}")
}

/// Publishes a purge for every tenant archived longer than `purge_after`; returns how many.
pub async fn publish_due(
    js: &jetstream::Context,
    pg: &PgPool,
    purge_after: Duration,
) -> anyhow::Result<usize> {
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT tenant_id, code FROM fleet.tenants
          WHERE status = 'deleted' AND deleted_at < now() - make_interval(secs => $1)
          ORDER BY deleted_at LIMIT 1000",
    )
    .bind(purge_after.as_secs_f64())
    .fetch_all(pg)
    .await?;
    let mut n = 0;
    for (tenant_id, code) in due {
        let Ok(code) = Code::parse(&code) else {
            tracing::warn!(tenant.id = %tenant_id, "archived tenant has a bad code; not purged");
            continue;
        };
        let body = TenantDeleted {
            code,
            mode: DeleteMode::Purge,
            tenant_id: Some(tenant_id),
        };
        fleet_shared::publish::publish_json(js, TENANT_DELETED, &msg_id(tenant_id), &body, None)
            .await?;
        n += 1;
    }
    if n > 0 {
        tracing::info!(tenants = n, "published purges of archived tenants");
    }
    Ok(n)
}
