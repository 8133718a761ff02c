//! The provisioner worker: turns `tenant.created` into a ready tenant and `tenant.migrate` into
//! an up-to-date one.
//!
//! For each `tenant.created` it registers the tenant in `fleet.tenants`, creates the schema
//! `tenant_<code>`, applies the versioned tenant migrations ([`migrations`]) with a per-schema
//! ledger, writes the plan's configurations ([`plans`]) and marks the tenant `active`, all in one
//! transaction serialized per tenant ([`provision`]); after the commit it publishes
//! `tenant.provisioned`. The effect happens once under at-least-once delivery because the
//! registry row is the record: a repeat finds the tenant active and only re-announces it.
//!
//! Each replica also runs the rollout loop ([`rollout`]): fleet-wide migrations whose state is in
//! Postgres, claimed tenant by tenant by whichever replicas are up (docs/migrations.md).
//!
//! It reads one durable consumer, `provisioner`, filtered to `tenant.>` (nats-server 2.9 allows
//! one filter per consumer, and a second durable would hold one of the shared concurrency permits
//! idle). The lifecycle events after creation (`tenant.updated`, `tenant.config.set` / `.unset`,
//! `tenant.suspended` / `.resumed`, `tenant.deleted`) are handled by [`lifecycle`] with the same
//! one-transaction-per-change guarantee; every other subject is acked and ignored.

pub mod config;
pub mod context;
pub mod error;
pub mod handler;
pub mod lifecycle;
pub mod metrics;
pub mod migrate_tenant;
pub mod migrations;
pub mod moves;
pub mod own_db;
pub mod placement;
pub mod plans;
pub mod pool;
pub mod provision;
pub mod rollout;
pub mod tenant_lock;

use std::sync::Arc;

use anyhow::Context as _;
use fleet_shared::topology::{ConsumerSpec, EVENTS_STREAM};
use fleet_shared::Fleet;
use tokio_util::sync::CancellationToken;

use crate::config::ProvisionerConfig;
use crate::context::Provisioner;
use crate::metrics::ProvisionerMetrics;
use crate::plans::Plans;

/// Largest `tenant.created`/`tenant.migrate` payload read; larger ones are dead-lettered unread.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
pub const NAME: &str = "provisioner";
/// Whether `/readyz` of this worker's binary checks Redis.
pub const USES_REDIS: bool = false;
/// The durable consumer every replica shares.
pub const DURABLE: &str = "provisioner";
/// Its filter: every tenant event (see the module docs for why not two durables).
pub const FILTER: &str = "tenant.>";

/// Runs the worker until `shutdown` is cancelled. Fails at once, with one line naming the
/// setting, when `[provisioner]`, `[plans]` or `FLEET_TENANT_MIGRATIONS` is bad.
pub async fn run(fleet: Fleet, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = ProvisionerConfig::from_settings(&fleet.settings)?;
    let plans = Plans::from_settings(&fleet.settings)?;
    let migrations = migrations::load(&fleet.settings)?;
    tracing::info!(
        migrations = migrations.len(),
        schema.version = fleet_shared::migrate::latest_version(&migrations),
        plans = %plans.names().collect::<Vec<_>>().join(","),
        concurrency = config.concurrency,
        "provisioner starting"
    );
    let pools = fleet_shared::databases::DatabasePools::new(
        fleet.settings.databases.clone(),
        fleet.pg.clone(),
        placement::POOL_CONNECTIONS,
    )
    .with_tenant_pools(fleet.settings.tenant_pools);
    // Pools to tenants' own databases unused for `[tenant_pools] idle_timeout` are closed,
    // checked every idle_timeout / 4 (so within 1.25 idle times of their last use).
    let sweep_stop = shutdown.child_token();
    let sweep = tokio::spawn({
        let pools = pools.clone();
        let stop = sweep_stop.clone();
        let every = fleet.settings.tenant_pools.idle_timeout / 4;
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {
                        let closed = pools.close_idle();
                        if closed > 0 {
                            tracing::debug!(closed, open = pools.tenant_pools(), "closed idle tenant database pools");
                        }
                    }
                }
            }
        }
    });
    for plan in config.plan_databases.keys() {
        if plans.resolve(plan, None).is_none() {
            anyhow::bail!("FLEET_CONFIG [provisioner] plan_databases: unknown plan {plan:?}");
        }
    }
    let placement = placement::Placement::new(pools.clone(), &config.plan_databases)
        .map_err(|e| anyhow::anyhow!(e))?;
    let metrics = ProvisionerMetrics::register(&fleet.metrics);
    let migrations = Arc::new(migrations);
    let refiller = pool::Refiller {
        pg: fleet.pg.clone(),
        database_url: fleet.settings.database_url.clone(),
        migrations: migrations.clone(),
        target: config.warm_pool,
        size: metrics.warm_pool_size.clone(),
    };
    let refill_stop = shutdown.child_token();
    let refill = tokio::spawn(pool::run(refiller, refill_stop.clone()));
    let rollouts = rollout::Runner {
        pg: fleet.pg.clone(),
        pools: pools.clone(),
        js: fleet.js.clone(),
        migrations: migrations.clone(),
        metrics: rollout::metrics::RolloutMetrics::register(&fleet.metrics),
    };
    let rollout_task = tokio::spawn(rollouts.run(shutdown.clone()));
    let handler = Provisioner {
        pg: fleet.pg.clone(),
        placement,
        js: fleet.js.clone(),
        plans,
        migrations,
        metrics,
        config_keys: fleet.settings.config_keys.clone(),
    };
    let mut consumer = ConsumerSpec::new(EVENTS_STREAM, DURABLE, FILTER);
    consumer.ack_wait = config.ack_wait();
    let mut spec = fleet.worker_spec(NAME, vec![consumer], MAX_EVENT_BYTES);
    spec.concurrency = config.concurrency;
    spec.max_attempts = config.max_attempts;
    let res = fleet_shared::worker::run(
        fleet.js.clone(),
        fleet.metrics.clone(),
        spec,
        Arc::new(handler),
        shutdown.clone(),
    )
    .await
    .context("Failed to run the provisioner");
    // The refill loop stops with the worker; a step in flight is one transaction, so stopping
    // it mid-way leaves nothing behind.
    refill_stop.cancel();
    let _ = refill.await;
    sweep_stop.cancel();
    let _ = sweep.await;
    // The rollout loop stops claiming at once; a tenant step in flight commits or rolls back.
    shutdown.cancel();
    if tokio::time::timeout(fleet.settings.shutdown_timeout, rollout_task)
        .await
        .is_err()
    {
        tracing::warn!("a rollout step outlived the shutdown timeout; its transaction rolls back");
    }
    res
}
