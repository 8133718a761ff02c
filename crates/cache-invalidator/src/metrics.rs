//! The invalidator's metrics, and the log lines that go with them.
//!
//! Each event kind (a pass finished, a pass failed) is reported by one function here that both
//! writes the log line and bumps the metrics, so the two never disagree.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use fleet_shared::metrics::{latency_histogram, Metrics};

use crate::keyspace::{KeyspaceError, PassReport};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone)]
pub struct CacheMetrics {
    pub keys_deleted: Family<RuleLabels, Counter>,
    pub passes: Family<OutcomeLabels, Counter>,
    pub pass_seconds: Histogram,
    pub patterns_per_pass: Histogram,
    pub requests_per_pass: Histogram,
    pub queue_depth: Gauge,
}

impl CacheMetrics {
    /// Creates the families and registers them (names are prefixed `fleet_cache_`).
    pub fn register(metrics: &Metrics) -> CacheMetrics {
        let m = CacheMetrics {
            keys_deleted: Family::default(),
            passes: Family::default(),
            pass_seconds: latency_histogram(),
            patterns_per_pass: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            requests_per_pass: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            queue_depth: Gauge::default(),
        };
        let c = m.clone();
        metrics.register(|r| {
            let r = r.sub_registry_with_prefix("cache");
            r.register(
                "keys_deleted",
                "Keys deleted by invalidation, per rule",
                c.keys_deleted,
            );
            r.register(
                "passes",
                "Passes over the keyspace, by outcome (ok, failed)",
                c.passes,
            );
            r.register(
                "pass_duration_seconds",
                "Time one pass over every master took",
                c.pass_seconds,
            );
            r.register(
                "patterns_per_pass",
                "Distinct patterns one pass served",
                c.patterns_per_pass,
            );
            r.register(
                "events_per_pass",
                "Events (handler requests) one pass served",
                c.requests_per_pass,
            );
            r.register(
                "queue_depth",
                "Events waiting for the next pass",
                c.queue_depth,
            );
        });
        m
    }

    /// A pass finished: one log line and its metrics.
    pub fn pass_finished(
        &self,
        report: &PassReport,
        rule_names: &[String],
        patterns: usize,
        requests: usize,
        took: Duration,
    ) {
        let mut deleted = 0u64;
        for (rule, n) in &report.per_rule {
            deleted += n;
            let rule = rule_names.get(*rule).cloned().unwrap_or_default();
            self.keys_deleted
                .get_or_create(&RuleLabels { rule })
                .inc_by(*n);
        }
        self.observe(patterns, requests, took, "ok");
        tracing::info!(
            pass.patterns = patterns,
            pass.events = requests,
            pass.scanned = report.scanned,
            pass.deleted = deleted,
            pass.ms = took.as_millis() as u64,
            "invalidation pass finished"
        );
    }

    /// A pass failed (Redis unreachable, cluster resharding): its events are retried.
    pub fn pass_failed(
        &self,
        error: &KeyspaceError,
        patterns: usize,
        requests: usize,
        took: Duration,
    ) {
        self.observe(patterns, requests, took, "failed");
        tracing::warn!(
            pass.patterns = patterns,
            pass.events = requests,
            error = %error,
            "invalidation pass failed; its events will be retried"
        );
    }

    fn observe(&self, patterns: usize, requests: usize, took: Duration, outcome: &str) {
        self.passes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        self.pass_seconds.observe(took.as_secs_f64());
        self.patterns_per_pass.observe(patterns as f64);
        self.requests_per_pass.observe(requests as f64);
    }
}
