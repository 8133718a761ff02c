//! The provisioner's own metrics, next to the worker loop's (`fleet_messages_*`). Each is bumped
//! in the same place as the matching log line (see `handler.rs`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use fleet_shared::metrics::{latency_histogram, HistogramFamily, Metrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    pub plan: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}

#[derive(Clone)]
pub struct ProvisionerMetrics {
    /// Tenants newly provisioned, by plan.
    pub provisioned: Family<PlanLabels, Counter>,
    /// `tenant.created` deliveries that found the tenant already active.
    pub duplicates: Counter,
    /// Tenant migrations applied (by provisioning or by `tenant.migrate`).
    pub migrations_applied: Counter,
    /// Lifecycle changes committed (update, config, suspend/resume, delete), by event.
    pub lifecycle_changes: Family<EventLabels, Counter>,
    /// Duration of the provisioning / migration transaction, by event.
    pub transaction_seconds: HistogramFamily<EventLabels>,
    /// Current, unowned warm-pool schemas ready to be claimed (as this replica last counted).
    pub warm_pool_size: Gauge,
    /// Tenants provisioned by claiming a warm-pool schema.
    pub warm_pool_claims: Counter,
}

impl ProvisionerMetrics {
    pub fn register(metrics: &Metrics) -> ProvisionerMetrics {
        let m = ProvisionerMetrics {
            provisioned: Family::default(),
            duplicates: Counter::default(),
            migrations_applied: Counter::default(),
            lifecycle_changes: Family::default(),
            transaction_seconds: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            warm_pool_size: Gauge::default(),
            warm_pool_claims: Counter::default(),
        };
        metrics.register(|r| {
            r.register(
                "provisioner_tenants_provisioned",
                "Tenants provisioned (schema, migrations, configs committed), by plan",
                m.provisioned.clone(),
            );
            r.register(
                "provisioner_duplicates",
                "tenant.created deliveries that found the tenant already active",
                m.duplicates.clone(),
            );
            r.register(
                "provisioner_migrations_applied",
                "Tenant migrations applied",
                m.migrations_applied.clone(),
            );
            r.register(
                "provisioner_lifecycle_changes",
                "Tenant lifecycle changes committed, by event",
                m.lifecycle_changes.clone(),
            );
            r.register(
                "provisioner_transaction_duration_seconds",
                "Time the provisioning or migration transaction took",
                m.transaction_seconds.clone(),
            );
            r.register(
                "provisioner_warm_pool_schemas",
                "Warm-pool schemas at the current migration set, ready to be claimed",
                m.warm_pool_size.clone(),
            );
            r.register(
                "provisioner_warm_pool_claims",
                "Tenants provisioned by claiming a warm-pool schema",
                m.warm_pool_claims.clone(),
            );
        });
        m
    }
}
