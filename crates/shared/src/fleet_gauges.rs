//! Gauges of the fleet's state for alerting, refreshed every [`PERIOD`] by every process that
//! serves `/metrics` (so any replica can be scraped; take `max` across replicas):
//!
//! - `fleet_ready` (1/0): what `/readyz` would answer now;
//! - `fleet_consumer_pending{stream,consumer}`, `fleet_consumer_ack_pending{…}`,
//!   `fleet_consumer_redelivered{…}`: each durable consumer's backlog on `FLEET_EVENTS` and
//!   `FLEET_JOBS`;
//! - `fleet_dlq_letters{worker}`: dead letters stored per worker;
//! - `fleet_backfill_jobs{state}`: backfill jobs per state, with `throttled` counting running
//!   jobs whose lanes wait on a throttle.
//!
//! Reading them costs a few JetStream and Postgres requests per period, not per scrape. A read
//! that fails leaves the last values (and is logged at debug).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::topology::durable_consumers;

pub const PERIOD: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub stream: String,
    pub consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Default)]
pub struct FleetGauges {
    pub ready: Gauge,
    pub pending: Family<ConsumerLabels, Gauge>,
    pub ack_pending: Family<ConsumerLabels, Gauge>,
    pub redelivered: Family<ConsumerLabels, Gauge>,
    pub dlq_letters: Family<WorkerLabels, Gauge>,
    pub backfill_jobs: Family<StateLabels, Gauge>,
}

impl FleetGauges {
    pub fn register(metrics: &Metrics) -> FleetGauges {
        let g = FleetGauges::default();
        metrics.register(|r| {
            r.register(
                "ready",
                "1 while this process is ready (as /readyz)",
                g.ready.clone(),
            );
            r.register(
                "consumer_pending",
                "Messages a durable consumer has not been delivered yet",
                g.pending.clone(),
            );
            r.register(
                "consumer_ack_pending",
                "Messages delivered to a durable consumer and not acked yet",
                g.ack_pending.clone(),
            );
            r.register(
                "consumer_redelivered",
                "Messages a durable consumer is redelivering now",
                g.redelivered.clone(),
            );
            r.register(
                "dlq_letters",
                "Dead letters stored, per worker",
                g.dlq_letters.clone(),
            );
            r.register(
                "backfill_jobs",
                "Backfill jobs per state (throttled: running jobs waiting on a throttle)",
                g.backfill_jobs.clone(),
            );
        });
        g
    }
}

/// Refreshes `g` every [`PERIOD`] until `shutdown`; `ready` answers the readiness question.
pub async fn run<F, Fut>(
    g: FleetGauges,
    nats: async_nats::Client,
    pg: Option<sqlx::PgPool>,
    ready: Arc<F>,
    shutdown: CancellationToken,
) where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let js = async_nats::jetstream::new(nats);
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        g.ready.set(i64::from(ready().await));
        if let Err(e) = consumers(&g, &js).await {
            tracing::debug!(error = %e, "fleet gauges: cannot read the consumers");
        }
        if let Ok(counts) = crate::dlq::counts(&js).await {
            g.dlq_letters.clear();
            for (w, n) in counts {
                g.dlq_letters
                    .get_or_create(&WorkerLabels { worker: w })
                    .set(n as i64);
            }
        }
        if let Some(pg) = &pg {
            if let Err(e) = backfills(&g, pg).await {
                tracing::debug!(error = %e, "fleet gauges: cannot read the backfill jobs");
            }
        }
    }
}

async fn consumers(g: &FleetGauges, js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    for (stream_name, i) in durable_consumers(js).await? {
        let l = ConsumerLabels {
            stream: stream_name.to_owned(),
            consumer: i.name.clone(),
        };
        g.pending.get_or_create(&l).set(i.num_pending as i64);
        g.ack_pending
            .get_or_create(&l)
            .set(i.num_ack_pending as i64);
        g.redelivered
            .get_or_create(&l)
            .set(i.num_redelivered as i64);
    }
    Ok(())
}

async fn backfills(g: &FleetGauges, pg: &sqlx::PgPool) -> anyhow::Result<()> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM fleet.backfill_jobs GROUP BY state
         UNION ALL
         SELECT 'throttled', count(*) FROM fleet.backfill_jobs WHERE state = 'running' AND throttled IS NOT NULL",
    )
    .fetch_all(pg)
    .await?;
    for s in [
        "pending",
        "running",
        "paused",
        "succeeded",
        "failed",
        "cancelled",
        "throttled",
    ] {
        let n = rows.iter().find(|(st, _)| st == s).map_or(0, |r| r.1);
        g.backfill_jobs
            .get_or_create(&StateLabels {
                state: s.to_owned(),
            })
            .set(n);
    }
    Ok(())
}
