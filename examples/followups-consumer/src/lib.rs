//! An example consumer built on the job runtime ([`fleet_jobs`]): it handles the jobs of the
//! example `followups` schedule (`deploy/local/fleet.toml`), one per active premium tenant per
//! minute, on `jobs.followups.<tenant_code>`.
//!
//! A real follow-up would look in the tenant's schema for mentorships without a session in the
//! last `window_days` and queue reminders, committing its record of the job in the same
//! transaction (see docs/scheduler.md, "Writing a consumer"). This example only reads and checks
//! the payload, logs, and returns a verdict, so it shows the shape: bad input is
//! [`HandleError::invalid`] (dead-lettered), a failing dependency [`HandleError::Transient`]
//! (retried with backoff). `simulate_work` in a job's payload (a duration, e.g. `"10s"`) makes
//! the handler take that long, to watch in-progress acks, shutdown and redelivery.
//!
//! `fleetctl up` runs it with the other workers; its binary runs it alone.

use std::sync::Arc;

use fleet_jobs::{HandleError, Job, JobHandler, RuntimeSpec};
use fleet_shared::Fleet;
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "followups-consumer";
pub const TASK: &str = "followups";
/// Whether `/readyz` checks Redis for this worker.
pub const USES_REDIS: bool = false;

pub struct Followups;

impl JobHandler for Followups {
    async fn handle(&self, job: &Job) -> Result<(), HandleError> {
        let window_days = match job.get("window_days") {
            None => 7,
            Some(v) => v
                .as_u64()
                .filter(|d| (1..=365).contains(d))
                .ok_or_else(|| {
                    HandleError::invalid(format!("window_days {v} is not a number of days (1-365)"))
                })?,
        };
        if let Some(v) = job.get("simulate_work") {
            let d = v
                .as_str()
                .and_then(|t| fleet_shared::duration::parse(t).ok())
                .ok_or_else(|| {
                    HandleError::invalid(format!(
                        "simulate_work {v} is not a duration such as \"2s\""
                    ))
                })?;
            tokio::time::sleep(d).await;
        }
        tracing::info!(
            tenant.code = %job.tenant_code,
            schedule = job.schedule.as_deref().unwrap_or(""),
            tick = ?job.tick,
            window_days,
            "follow-up job handled"
        );
        Ok(())
    }
}

/// Runs the consumer until `shutdown` is cancelled.
pub async fn run(fleet: Fleet, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spec = RuntimeSpec::for_fleet(&fleet, NAME, TASK)?;
    fleet_jobs::run_fleet(&fleet, spec, Arc::new(Followups), shutdown).await
}
