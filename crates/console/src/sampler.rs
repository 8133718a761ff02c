//! The overview's moving parts: each durable consumer's state, its ack rate, and events handled
//! per minute over the last hour.
//!
//! Every [`PERIOD`] the sampler reads every consumer of the fleet's work streams once; the rate
//! is the growth of the consumer's ack floor between two samples, and the per-minute counts are
//! the growth of all ack floors together, bucketed by minute (the chart fills from the moment the
//! console starts). Pages read the last sample instead of asking JetStream themselves, so a page
//! costs the same with one consumer or a hundred.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_shared::topology::durable_consumers;
use tokio_util::sync::CancellationToken;

use crate::Shared;

pub const PERIOD: Duration = Duration::from_secs(10);
const MINUTES: usize = 60;

#[derive(Clone, Debug)]
pub struct ConsumerRow {
    pub stream: String,
    pub name: String,
    pub filter: String,
    pub num_pending: u64,
    pub num_ack_pending: usize,
    pub num_redelivered: usize,
    /// Pull requests waiting: a worker process is connected and asking.
    pub num_waiting: usize,
    pub acked: u64,
    pub ack_rate: f64,
}

#[derive(Default)]
struct State {
    at: Option<Instant>,
    consumers: Vec<ConsumerRow>,
    /// (minute as unix seconds / 60, messages acked in it), oldest first.
    minutes: VecDeque<(i64, u64)>,
    started: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Default)]
pub struct Sampler {
    state: Mutex<State>,
}

pub struct Snapshot {
    pub consumers: Vec<ConsumerRow>,
    pub minutes: Vec<(i64, u64)>,
    pub started: Option<chrono::DateTime<chrono::Utc>>,
}

impl Sampler {
    pub fn snapshot(&self) -> Snapshot {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            consumers: g.consumers.clone(),
            minutes: g.minutes.iter().copied().collect(),
            started: g.started,
        }
    }

    fn record(&self, mut rows: Vec<ConsumerRow>) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let before: BTreeMap<String, u64> = g
            .consumers
            .iter()
            .map(|c| (format!("{}/{}", c.stream, c.name), c.acked))
            .collect();
        let dt = g.at.map(|t| now.duration_since(t).as_secs_f64());
        let mut grown = 0u64;
        for r in &mut rows {
            if let (Some(prev), Some(dt)) = (before.get(&format!("{}/{}", r.stream, r.name)), dt) {
                let d = r.acked.saturating_sub(*prev);
                grown += d;
                r.ack_rate = if dt > 0.0 { d as f64 / dt } else { 0.0 };
            }
        }
        let minute = chrono::Utc::now().timestamp() / 60;
        match g.minutes.back_mut() {
            Some((m, n)) if *m == minute => *n += grown,
            _ => g.minutes.push_back((minute, grown)),
        }
        while g.minutes.len() > MINUTES {
            g.minutes.pop_front();
        }
        g.started.get_or_insert_with(chrono::Utc::now);
        g.at = Some(now);
        g.consumers = rows;
    }
}

/// Reads every consumer of the work streams once.
pub async fn sample(js: &async_nats::jetstream::Context) -> anyhow::Result<Vec<ConsumerRow>> {
    let mut rows: Vec<ConsumerRow> = durable_consumers(js)
        .await?
        .into_iter()
        .map(|(stream_name, i)| ConsumerRow {
            stream: stream_name.to_owned(),
            name: i.name.clone(),
            filter: i.config.filter_subject.clone(),
            num_pending: i.num_pending,
            num_ack_pending: i.num_ack_pending,
            num_redelivered: i.num_redelivered,
            num_waiting: i.num_waiting,
            acked: i.ack_floor.consumer_sequence,
            ack_rate: 0.0,
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

pub async fn run(c: Shared, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sample(&c.js).await {
            Ok(rows) => c.sampler.record(rows),
            Err(e) => tracing::debug!(error = %e, "console sampler could not read the consumers"),
        }
    }
}
