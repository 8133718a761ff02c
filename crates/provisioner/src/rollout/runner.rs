//! What a replica runs rollouts with ([`Runner`]) and the running rollout as it sees it
//! ([`Active`]); shared by the replica's loop ([`super::run`]) and one tenant's step
//! ([`super::step`]), so neither depends on the other for these types.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use fleet_shared::migrate::Migration;
use sqlx::PgPool;
use uuid::Uuid;

use super::metrics::RolloutMetrics;

/// What a replica needs to run rollouts. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    pub pg: PgPool,
    /// Every database's pool: tenants on another database are migrated there.
    pub pools: fleet_shared::databases::DatabasePools,
    pub js: jetstream::Context,
    pub migrations: Arc<Vec<Migration>>,
    pub metrics: RolloutMetrics,
}

/// The running rollout as a replica sees it.
#[derive(Debug, Clone)]
pub struct Active {
    pub rollout_id: Uuid,
    pub concurrency: i32,
    pub lock_timeout: Duration,
    pub set_digest: String,
}
