//! The backfill-worker's own metric families (registered once per process), bumped next to the
//! log line of the same event in the runner.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `done`, `failed`, `split` (timed out and split), `retry` (transient error).
    pub outcome: String,
}

#[derive(Clone)]
pub struct BackfillMetrics {
    pub chunks: Family<Outcome, Counter>,
    pub rows: Counter,
    pub chunk_seconds: Histogram,
}

impl BackfillMetrics {
    pub fn register(m: &fleet_shared::metrics::Metrics) -> BackfillMetrics {
        let b = BackfillMetrics {
            chunks: Family::default(),
            rows: Counter::default(),
            chunk_seconds: fleet_shared::metrics::latency_histogram(),
        };
        m.register(|r| {
            r.register(
                "backfill_chunks",
                "Backfill chunk transactions by outcome",
                b.chunks.clone(),
            );
            r.register(
                "backfill_rows",
                "Rows changed (or counted, in dry runs) by committed chunks",
                b.rows.clone(),
            );
            r.register(
                "backfill_chunk_seconds",
                "Duration of committed chunk transactions",
                b.chunk_seconds.clone(),
            );
        });
        b
    }

    pub fn outcome(&self, o: &str) {
        self.chunks
            .get_or_create(&Outcome { outcome: o.into() })
            .inc();
    }
}
