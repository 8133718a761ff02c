//! Prometheus metrics, one registry per process.
//!
//! The worker loop's metrics live in [`WorkerMetrics`], labelled by worker so `fleetctl up` (every
//! worker in one process) exposes them side by side. A worker registers its own families with
//! [`Metrics::register`] at start. Every counter here is bumped in the same function that writes
//! the matching log line (see `worker::report`), so logs and metrics never disagree.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub worker: String,
    /// The subject's first two tokens (`tenant.created`), so per-tenant subjects do not explode
    /// the label set.
    pub event: String,
}

pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to ~65 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Clone)]
pub struct WorkerMetrics {
    pub received: Family<EventLabels, Counter>,
    pub acked: Family<EventLabels, Counter>,
    pub retried: Family<EventLabels, Counter>,
    pub dead_lettered: Family<EventLabels, Counter>,
    pub handler_seconds: HistogramFamily<WorkerLabels>,
    pub in_flight: Family<WorkerLabels, Gauge>,
    pub dlq_publish_failures: Family<WorkerLabels, Counter>,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub worker: WorkerMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("fleet");
        let worker = WorkerMetrics {
            received: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            handler_seconds: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            dlq_publish_failures: Family::default(),
        };
        registry.register(
            "messages_received",
            "Messages delivered to a worker",
            worker.received.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages acknowledged after their work committed",
            worker.acked.clone(),
        );
        registry.register(
            "messages_retried",
            "Messages NAKed with a delay after a transient failure",
            worker.retried.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages sent to the dead-letter stream",
            worker.dead_lettered.clone(),
        );
        registry.register(
            "handler_duration_seconds",
            "Time a handler took, per message",
            worker.handler_seconds.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages being handled now",
            worker.in_flight.clone(),
        );
        registry.register(
            "dlq_publish_failures",
            "Dead letters the dead-letter stream did not take (the message is retried, then terminated)",
            worker.dlq_publish_failures.clone(),
        );
        Arc::new(Metrics {
            registry: Mutex::new(registry),
            worker,
        })
    }

    /// Lets a worker add its own metric families.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut reg);
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
            out.clear();
        }
        out
    }
}

/// `tenant.created.x.y` → `tenant.created`
pub fn event_label(subject: &str) -> String {
    let mut parts = subject.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}.{b}"),
        (Some(a), None) => a.to_owned(),
        _ => String::new(),
    }
}
