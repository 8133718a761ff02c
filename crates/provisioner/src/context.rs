//! What every message handler of the provisioner works with: connections, plans, the tenant
//! migrations and metrics. Kept apart from `handler.rs` (which dispatches to the lifecycle and
//! rollout receivers) so those receivers can use it without depending back on the dispatcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fleet_shared::migrate::Migration;
use sqlx::PgPool;

use crate::metrics::{EventLabels, ProvisionerMetrics};
use crate::plans::Plans;

/// The provisioner worker: one per process, shared by every in-flight message.
pub struct Provisioner {
    pub pg: PgPool,
    /// Where new tenants go, and every database's pool.
    pub placement: crate::placement::Placement,
    pub js: jetstream::Context,
    pub plans: Plans,
    pub migrations: Arc<Vec<Migration>>,
    pub metrics: ProvisionerMetrics,
    /// `FLEET_CONFIG_KEYS`, for `tenant.config.set` with `encrypted: true`.
    pub config_keys: Option<fleet_shared::config_keys::ConfigKeys>,
}

impl Provisioner {
    pub(crate) fn observe(&self, event: &str, started: Instant) -> Duration {
        let took = started.elapsed();
        self.metrics
            .transaction_seconds
            .get_or_create(&EventLabels {
                event: event.into(),
            })
            .observe(took.as_secs_f64());
        took
    }
}
