//! Rollout metrics (the registry adds the `fleet_` prefix), bumped beside the one log line per tenant outcome (see `step.rs`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use fleet_shared::metrics::{latency_histogram, Metrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `done`, `failed` or `skipped`.
    pub outcome: String,
}

#[derive(Clone)]
pub struct RolloutMetrics {
    /// `fleet_rollout_tenants_total{outcome}`: tenants finished by rollouts on this replica.
    pub tenants: Family<OutcomeLabels, Counter>,
    /// `fleet_rollout_in_flight`: tenant transactions open on this replica.
    pub in_flight: Gauge,
    /// `fleet_rollout_tenant_duration_seconds`: one tenant's transaction, claim to commit.
    pub duration: Histogram,
    /// `fleet_rollout_lock_timeouts_total`: attempts that hit `lock_timeout` and were retried.
    pub lock_timeouts: Counter,
}

impl RolloutMetrics {
    pub fn register(metrics: &Metrics) -> RolloutMetrics {
        let m = RolloutMetrics {
            tenants: Family::default(),
            in_flight: Gauge::default(),
            duration: latency_histogram(),
            lock_timeouts: Counter::default(),
        };
        metrics.register(|r| {
            r.register(
                "rollout_tenants",
                "Tenants finished by rollouts, by outcome (done, failed, skipped)",
                m.tenants.clone(),
            );
            r.register(
                "rollout_in_flight",
                "Rollout tenant transactions open on this replica",
                m.in_flight.clone(),
            );
            r.register(
                "rollout_tenant_duration_seconds",
                "Time one tenant's rollout transaction took",
                m.duration.clone(),
            );
            r.register(
                "rollout_lock_timeouts",
                "Tenant migration attempts that hit lock_timeout and were retried",
                m.lock_timeouts.clone(),
            );
        });
        m
    }

    pub fn outcome(&self, outcome: &str) {
        self.tenants
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }
}
