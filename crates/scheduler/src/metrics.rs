//! The scheduler's metric families (registered on the process registry at start):
//! `fleet_scheduler_jobs_published` and `fleet_scheduler_jobs_deduplicated` per schedule,
//! `fleet_scheduler_runs` per schedule and outcome (`started`, `done`, `skipped_overlap`,
//! `skipped_missed`, `failed`), and `fleet_scheduler_leader` (1 while this process leads).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    pub schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub schedule: String,
    pub outcome: String,
}

#[derive(Clone, Default)]
pub struct SchedulerMetrics {
    pub published: Family<ScheduleLabels, Counter>,
    pub deduplicated: Family<ScheduleLabels, Counter>,
    pub runs: Family<RunLabels, Counter>,
    pub leader: Gauge,
}

impl SchedulerMetrics {
    pub fn register(fleet_metrics: &fleet_shared::metrics::Metrics) -> SchedulerMetrics {
        let m = SchedulerMetrics::default();
        fleet_metrics.register(|r| {
            r.register(
                "scheduler_jobs_published",
                "Scheduled jobs stored in their stream",
                m.published.clone(),
            );
            r.register(
                "scheduler_jobs_deduplicated",
                "Re-published jobs the stream dropped by Nats-Msg-Id (resumed fan-outs)",
                m.deduplicated.clone(),
            );
            r.register(
                "scheduler_runs",
                "Schedule ticks by outcome",
                m.runs.clone(),
            );
            r.register(
                "scheduler_leader",
                "1 while this process is the scheduler leader",
                m.leader.clone(),
            );
        });
        m
    }

    fn label(schedule: &str) -> ScheduleLabels {
        ScheduleLabels {
            schedule: schedule.to_owned(),
        }
    }

    pub fn published(&self, schedule: &str, n: u64) {
        self.published
            .get_or_create(&Self::label(schedule))
            .inc_by(n);
    }

    pub fn deduplicated(&self, schedule: &str) {
        self.deduplicated
            .get_or_create(&Self::label(schedule))
            .inc();
    }

    pub fn run_finished(&self, schedule: &str, outcome: &str) {
        self.runs
            .get_or_create(&RunLabels {
                schedule: schedule.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
