//! Whether a tenant is being moved to another database (`fleetctl tenants move`), for the paths
//! that must not change its schema meanwhile.
//!
//! A move is long (an initial copy, then streaming), so it cannot hold the per-tenant advisory
//! lock, which is a transaction lock. Instead its row in `fleet.tenant_moves` (state `running`)
//! is the mark: the move inserts it, and later switches the registry, under the tenant lock, and
//! every path below reads it under the same lock, so a change either committed before the move
//! began or sees the move. While a move runs:
//!
//! - `tenant.migrate` is retried with backoff (transient): it waits for the move and then
//!   applies on the tenant's new database;
//! - a rollout step skips the tenant, saying why (a later rollout or `tenant.migrate` brings it
//!   up to date);
//! - `tenant.deleted` (archive or purge) is refused with one line;
//! - another move is refused (the same move, re-run, continues where it stopped).

use sqlx::PgConnection;
use uuid::Uuid;

/// A running move of one tenant.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub move_id: Uuid,
    pub source: String,
    pub target: String,
    pub step: String,
}
fleet_shared::from_row!(InFlight {
    move_id,
    source,
    target,
    step
});

impl std::fmt::Display for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "being moved from {} to {} (move {}, step {}); wait for it to finish or run fleetctl tenants move --abort",
            self.source, self.target, self.move_id, self.step
        )
    }
}

/// The running move of `tenant_id`, if any. Call with the tenant's lock held.
pub async fn in_flight(
    con: &mut PgConnection,
    tenant_id: Uuid,
) -> Result<Option<InFlight>, sqlx::Error> {
    sqlx::query_as(
        "SELECT move_id, source, target, step FROM fleet.tenant_moves
          WHERE tenant_id = $1 AND state = 'running'",
    )
    .bind(tenant_id)
    .fetch_optional(&mut *con)
    .await
}
